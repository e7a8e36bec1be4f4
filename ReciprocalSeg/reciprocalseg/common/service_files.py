"""The files a running service keeps in ``WORKSPACE/.service/``, and the lock that makes it the only one.

The service writes them (``service/server.py``); launchers and clients read them to find it
(``client/local_service.py``, ``Client(workspace=...)``), in 3D Slicer's process too, so this
module imports the standard library only.

* ``url``: the address it listens on, written once it accepts connections (atomically);
* ``token``: its bearer token, readable by the user alone (mode 0600);
* ``pid``: its process id, removed when it ends cleanly;
* ``lock``: an OS file lock held while it runs (released by the OS when it dies, even by SIGKILL);
* ``server.log``: its output when a launcher started it.
"""

from __future__ import annotations

import os
from pathlib import Path

SERVICE_DIR = ".service"
URL_FILE = "url"
TOKEN_FILE = "token"
LOCK_FILE = "lock"
PID_FILE = "pid"
LOG_FILE = "server.log"
#: ``POST`` here asks the service to stop gracefully (token-protected, not in the OpenAPI schema).
STOP_PATH = "/service/stop"


class ServeError(Exception):
    """The service cannot start (bad arguments, workspace in use, port taken...)."""


def service_dir_of(workspace: str | Path) -> Path:
    """``WORKSPACE/.service`` (the workspace path made absolute)."""
    return Path(workspace).expanduser().resolve() / SERVICE_DIR


def read_service_file(service_dir: Path, name: str) -> str | None:
    """The stripped text of ``service_dir/name``, None when it is missing, unreadable or empty."""
    try:
        return (service_dir / name).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def read_pid(service_dir: Path) -> int | None:
    """The pid the service wrote, or None."""
    text = read_service_file(service_dir, PID_FILE)
    return int(text) if text and text.isdigit() else None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to a file only the current user can read (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class WorkspaceLock:
    """An exclusive advisory lock on ``.service/lock`` held for the life of the service."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.name == "posix":
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:  # pragma: no cover - Windows
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            os.close(fd)
            other = ""
            try:
                other = (self.path.parent / PID_FILE).read_text().strip()
            except OSError:
                pass
            raise ServeError(
                f"another service is already using the workspace {self.path.parent.parent}"
                + (f" (pid {other})" if other else "")
                + "; stop it first or use another workspace"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def workspace_in_use(workspace: str | Path) -> bool:
    """Whether a live process holds the workspace's service lock (an OS file lock: it dies with
    its holder, so a lock left by a crashed service never counts)."""
    lock = WorkspaceLock(service_dir_of(workspace) / LOCK_FILE)
    try:
        lock.acquire()
    except ServeError:
        return True
    lock.release()
    return False


def clear_stale_service_files(workspace: str | Path) -> str | None:
    """Remove the URL and pid files of a service that ended without cleaning up.

    Returns a message saying what was recovered, or None when there was nothing stale (or a live
    service holds the workspace, whose files are then left alone).
    """
    sdir = service_dir_of(workspace)
    url_file, pid_file = sdir / URL_FILE, sdir / PID_FILE
    if not (url_file.exists() or pid_file.exists()) or workspace_in_use(workspace):
        return None
    pid = read_pid(sdir)
    url_file.unlink(missing_ok=True)
    pid_file.unlink(missing_ok=True)
    return (
        f"recovered the workspace {sdir.parent}: the service that held it"
        + (f" (pid {pid})" if pid else "")
        + " ended without cleaning up; its stale address and pid files were removed"
    )
