"""Start and stop a local service in a child process (used by the Slicer module and by tests).

>>> svc = LocalService("~/rs-workspace")
>>> url, token = svc.start()
>>> client = svc.client()        # reciprocalseg.client.Client(url, token)
>>> svc.stop()

The launcher makes a random token, writes it to ``WORKSPACE/.service/token`` readable by the user
alone (mode 0600) and passes the file, not the token, on the command line (command lines are
visible to other users).  It then waits for the service to write ``WORKSPACE/.service/url`` and to
answer ``GET /health``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from .jobs import child_env
from .server import TOKEN_FILE, URL_FILE, write_private


class LaunchError(RuntimeError):
    """The service did not come up; the message holds the tail of its log."""


class LocalService:
    """A ``reciprocalseg`` service on loopback for one workspace, run as a child process."""

    def __init__(
        self,
        workspace: str | Path,
        python: str = sys.executable,
        device: str | None = None,
        n_classes: int | None = None,
        max_upload_mb: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workspace = Path(workspace).expanduser().resolve()
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
        self.process: subprocess.Popen | None = None

    @property
    def service_dir(self) -> Path:
        return self.workspace / ".service"

    @property
    def log_path(self) -> Path:
        return self.service_dir / "server.log"

    @property
    def running(self) -> bool:
        """Whether the service process is alive."""
        return self.process is not None and self.process.poll() is None

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
        return cmd + self.extra_args

    def start(self, timeout: float = 60.0) -> tuple[str, str]:
        """Start the service and wait until it answers; return ``(url, token)``."""
        import requests

        if self.running:
            assert self.url is not None and self.token is not None
            return self.url, self.token
        self.service_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        token_file = self.service_dir / TOKEN_FILE
        write_private(token_file, token + "\n")
        url_file = self.service_dir / URL_FILE
        url_file.unlink(missing_ok=True)
        env = child_env() if self.env is None else dict(self.env)
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                self.command(token_file),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=(os.name == "posix"),
            )
        finally:
            log.close()
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
        """Stop the service (it checkpoints a running training job first) and any process it left.

        Sends SIGTERM to the service, waits up to ``timeout`` seconds, then kills what is left of
        its process tree.  Returns the service's exit code (``None`` if it was not started).
        """
        proc = self.process
        if proc is None:
            return None
        try:
            ps = psutil.Process(proc.pid)
            tree = [ps, *ps.children(recursive=True)]
        except psutil.Error:
            tree = []
        if proc.poll() is None:
            try:
                proc.terminate()
            except OSError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        _, alive = psutil.wait_procs(tree, timeout=0.1) if tree else ([], [])
        for p in alive:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(alive, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        self.url = None
        return code

    def kill(self) -> None:
        """SIGKILL the service process only (its training worker survives); for fault-injection tests."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def client(self, timeout: float = 30.0) -> Any:
        """A :class:`reciprocalseg.client.Client` for this service."""
        from reciprocalseg.client import Client

        if self.url is None:
            raise LaunchError("the service is not running; call start() first")
        return Client(self.url, self.token, timeout=timeout)

    def __enter__(self) -> LocalService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
