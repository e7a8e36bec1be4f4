"""Start, find, reconnect to and stop a local service for one workspace (Slicer module, tests).

>>> svc = LocalService("~/rs-workspace")
>>> url, token = svc.start()     # reconnects if a live service already serves this workspace
>>> client = svc.client()        # reciprocalseg.client.Client(url, token)
>>> svc.stop()                   # graceful: a running training is checkpointed first

The launcher makes a random token, writes it to ``WORKSPACE/.service/token`` readable by the user
alone (mode 0600) and passes the file, not the token, on the command line (command lines are
visible to other users).  It then waits for the service to write ``WORKSPACE/.service/url`` and to
answer ``GET /health``.

Lifecycle (see docs/SLICER.md, "Service lifecycle"):

* The service is started with ``--parent-pid`` = this process, so it stops gracefully when this
  process (3D Slicer) dies, even by SIGKILL or a crash.
* :func:`find_live_service` finds a service that already serves a workspace (its OS file lock is
  held) and returns its URL and token; :meth:`LocalService.start` reconnects to it instead of
  failing with "workspace in use".
* :func:`clear_stale_service_files` removes what a service that died without clean-up left
  (its URL and pid files; the OS released its lock), with a message.
* :meth:`LocalService.stop` asks over HTTP first (``POST /service/stop``: it reaches the real
  service process even behind Slicer's ``PythonSlicer`` launcher on Windows), then sends SIGTERM
  (POSIX) or CTRL_BREAK_EVENT (Windows, new process group), then terminates the process tree
  through psutil.

Standard library and ``requests`` only (psutil where a process tree is ended): this runs in 3D
Slicer's process, which must not load the server stack (starlette, pydantic) or torch. The files
the service keeps in ``.service/`` are described in ``common/service_files.py``.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from reciprocalseg.common.processes import (
    WINDOWS,
    child_env,
    end_processes,
    process_alive,
    process_tree,
    start_process,
    terminate_pid,
    wait_pid,
)
from reciprocalseg.common.service_files import (
    LOG_FILE,
    SERVICE_DIR,
    STOP_PATH,
    TOKEN_FILE,
    URL_FILE,
    clear_stale_service_files,
    read_pid,
    read_service_file,
    service_dir_of,
    workspace_in_use,
    write_private,
)

from .client import Client

log = logging.getLogger("reciprocalseg.launcher")


class LaunchError(RuntimeError):
    """The service did not come up; the message holds the tail of its log."""


@dataclass(frozen=True)
class LiveService:
    """A service found running for a workspace."""

    url: str
    token: str | None
    pid: int | None


def find_live_service(workspace: str | Path, timeout: float = 10.0) -> LiveService | None:
    """The service that serves ``workspace`` now, or None (stale files are cleared on the way).

    A service counts as live when it holds the workspace lock, has written its URL and answers
    ``GET /info`` with the workspace's token.  Waits up to ``timeout`` seconds for one that is
    still starting.  Raises :class:`LaunchError` when a live process holds the workspace but does
    not answer (hung, or it runs with a token this user cannot read).
    """
    sdir = service_dir_of(workspace)
    if not workspace_in_use(workspace):
        note = clear_stale_service_files(workspace)
        if note:
            log.warning(note)
        return None
    token = read_service_file(sdir, TOKEN_FILE)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout
    problem = "it has not written its address yet"
    while True:
        url = read_service_file(sdir, URL_FILE)
        if url is not None:
            try:
                r = requests.get(url + "/info", headers=headers, timeout=2)
                if r.status_code == 200:
                    return LiveService(url, token, read_pid(sdir))
                problem = f"GET {url}/info answered {r.status_code}"
            except requests.RequestException as exc:
                problem = f"it does not answer at {url} ({type(exc).__name__})"
        if not workspace_in_use(workspace):
            return None  # it ended while we waited
        if time.monotonic() >= deadline:
            pid = read_pid(sdir)
            raise LaunchError(
                f"a service (pid {pid or '?'}) holds the workspace {sdir.parent} but {problem}; "
                "stop that process (or wait for it to finish starting), then try again"
            )
        time.sleep(0.2)


def running_inside_slicer() -> bool:
    """Whether this interpreter is 3D Slicer's embedded Python (``slicer.app`` exists)."""
    slicer = sys.modules.get("slicer")
    return slicer is not None and getattr(slicer, "app", None) is not None


def service_python(inside_slicer: bool | None = None, executable: str = sys.executable) -> str:
    """The Python interpreter to run the service with.

    Outside Slicer: this interpreter.  Inside Slicer ``sys.executable`` is the Slicer application
    itself (starting it would open a second Slicer), so Slicer's own ``PythonSlicer`` is used:
    found on PATH (Slicer puts it there) or next to the application, as
    ``slicer.util.executePythonModule`` does (Base/Python/slicer/util.py, v5.8.1 to v5.12.3).
    """
    if inside_slicer is None:
        inside_slicer = running_inside_slicer()
    if not inside_slicer:
        return executable
    found = shutil.which("PythonSlicer")
    if found:
        return found
    beside = Path(executable).resolve().parent / ("PythonSlicer.exe" if WINDOWS else "PythonSlicer")
    if beside.is_file():
        return str(beside)
    raise LaunchError(
        "cannot find Slicer's Python interpreter 'PythonSlicer' (not on PATH, not beside "
        f"{executable}); reinstall 3D Slicer, or start the service yourself "
        "('reciprocalseg serve --workspace ...') and connect to it as a remote service"
    )


class LocalService:
    """A ``reciprocalseg`` service on loopback for one workspace, run as a child process."""

    def __init__(
        self,
        workspace: str | Path,
        python: str | None = None,
        device: str | None = None,
        n_classes: int | None = None,
        max_upload_mb: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        parent_pid: int | None = os.getpid(),
    ) -> None:
        self.workspace = Path(workspace).expanduser().resolve()
        if python is None or (running_inside_slicer() and _same_file(python, sys.executable)):
            python = service_python()  # inside Slicer sys.executable would start a second Slicer
        self.python = python
        self.device = device
        self.n_classes = n_classes
        self.max_upload_mb = max_upload_mb
        self.host = host
        self.port = port
        self.extra_args = list(extra_args or [])
        self.env = env
        self.url: str | None = None
        self.token: str | None = None
        self.parent_pid = parent_pid
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None  # the service's pid: our child's, or a reconnected service's
        self.reconnected = False
        self.notes: list[str] = []  # what start() recovered or reused, for the panel to show

    @property
    def service_dir(self) -> Path:
        return self.workspace / SERVICE_DIR

    @property
    def log_path(self) -> Path:
        return self.service_dir / LOG_FILE

    @property
    def running(self) -> bool:
        """Whether the service process is alive."""
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and process_alive(self.pid)

    def command(self, token_file: Path) -> list[str]:
        cmd = [
            self.python, "-m", "reciprocalseg.service.server",
            "--workspace", str(self.workspace),
            "--host", self.host,
            "--port", str(self.port),
            "--token-file", str(token_file),
        ]  # fmt: skip
        if self.device:
            cmd += ["--device", self.device]
        if self.n_classes is not None:
            cmd += ["--n-classes", str(self.n_classes)]
        if self.max_upload_mb is not None:
            cmd += ["--max-upload-mb", str(self.max_upload_mb)]
        if self.parent_pid is not None:
            cmd += ["--parent-pid", str(self.parent_pid)]
        return cmd + self.extra_args

    def _note(self, message: str) -> None:
        log.warning(message)
        self.notes.append(message)

    def start(self, timeout: float = 60.0, reconnect: bool = True) -> tuple[str, str | None]:
        """Start the service and wait until it answers; return ``(url, token)``.

        With ``reconnect`` (the default), a service already serving the workspace (left by a
        previous Slicer session, or started by another launcher) is reused: its URL and token are
        returned and :attr:`reconnected` is set.  Files left by a service that died are removed
        first, with a message in :attr:`notes`.
        """
        if self.running and self.url is not None:
            return self.url, self.token
        self.service_dir.mkdir(parents=True, exist_ok=True)
        stale = clear_stale_service_files(self.workspace)
        if stale:
            self._note(stale)
        if reconnect:
            live = find_live_service(self.workspace, timeout=min(timeout, 10.0))
            if live is not None:
                self.process, self.pid, self.reconnected = None, live.pid, True
                self.url, self.token = live.url, live.token
                self._note(f"reconnected to the service already running for {self.workspace} at {live.url}")
                return self.url, self.token
        token = secrets.token_urlsafe(32)
        token_file = self.service_dir / TOKEN_FILE
        write_private(token_file, token + "\n")
        url_file = self.service_dir / URL_FILE
        url_file.unlink(missing_ok=True)
        env = child_env() if self.env is None else dict(self.env)
        log_file = open(self.log_path, "ab")
        try:
            # A session/group of its own: Ctrl-C in Slicer's terminal does not reach it, and on
            # Windows CTRL_BREAK_EVENT can be sent to its group alone.
            self.process = start_process(
                self.command(token_file), log_file, subprocess.STDOUT, env, windows_group=True
            )
        finally:
            log_file.close()
        self.pid, self.reconnected = self.process.pid, False
        deadline = time.monotonic() + timeout
        url = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise LaunchError(f"the service exited with code {code} while starting:\n{self.log_tail()}")
            if url is None and url_file.exists():
                url = url_file.read_text(encoding="utf-8").strip() or None
            if url is not None:
                try:
                    r = requests.get(url + "/health", timeout=2)
                    if r.status_code == 200:
                        self.url, self.token = url, token
                        return url, token
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        self.stop()
        raise LaunchError(f"the service did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 60.0) -> int | None:
        """Stop the service gracefully (it checkpoints a running training first), then what is left.

        In order, each step only if the service still runs: ``POST /service/stop`` (all systems;
        on Windows it reaches the real service behind the ``PythonSlicer`` launcher, which a
        terminate would skip); SIGTERM, or CTRL_BREAK_EVENT to its process group on Windows; after
        ``timeout`` seconds in all, terminate and then kill its whole process tree (psutil).
        Returns the service's exit code when it was our child, else None.
        """
        if self.pid is None:
            return None
        deadline = time.monotonic() + timeout
        tree = process_tree(self.pid)
        if self.running and self._request_stop_over_http():
            self._wait(deadline - time.monotonic())
        if self.running:
            self._signal_stop()
            self._wait(deadline - time.monotonic())
        code = None
        if self.process is not None:  # only its Popen may reap it, or its exit code is lost
            tree = tree[1:]
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
            code = self.process.wait()
        end_processes(tree)
        self.url, self.pid = None, None
        return code

    def request_stop(self) -> None:
        """Ask the service to stop and return at once (3D Slicer quitting): SIGTERM, or
        CTRL_BREAK_EVENT on Windows; the service checkpoints a running training and ends by itself
        (``stop`` waits for that and cleans up what is left)."""
        if self.pid is not None and self.running:
            self._signal_stop()

    def _request_stop_over_http(self) -> bool:
        if self.url is None:
            return False
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            return requests.post(self.url + STOP_PATH, headers=headers, timeout=5).status_code == 202
        except requests.RequestException:
            return False

    def _signal_stop(self) -> None:
        if self.process is None:
            if self.pid is not None:
                terminate_pid(self.pid)
            return
        try:
            if WINDOWS:
                self.process.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
            else:
                self.process.terminate()
        except OSError:
            pass

    def _wait(self, seconds: float) -> None:
        if self.process is not None:
            try:
                self.process.wait(timeout=max(0.0, seconds))
            except subprocess.TimeoutExpired:
                pass
        elif self.pid is not None:
            wait_pid(self.pid, seconds)

    def kill(self) -> None:
        """SIGKILL the service process only (its training worker survives); for fault-injection tests."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.pid = None

    def client(self, timeout: float = 30.0) -> Client:
        """A :class:`reciprocalseg.client.Client` for this service."""
        if self.url is None:
            raise LaunchError("the service is not running; call start() first")
        return Client(self.url, self.token, timeout=timeout)

    def __enter__(self) -> LocalService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
