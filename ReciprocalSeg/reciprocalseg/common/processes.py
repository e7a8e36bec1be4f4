"""Child processes: start one in a session of its own, its environment, liveness, ending a tree.

Used by the service (training workers, ``service/jobs.py``; the parent watch,
``service/lifecycle.py``) and by the launcher that starts a local service
(``client/local_service.py``, which runs inside 3D Slicer too).

``psutil`` is imported by the functions that use it, not at load: the launcher imports this module
into Slicer's process, where only the standard library and ``requests`` load with the client.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

WINDOWS = os.name == "nt"


def child_env() -> dict[str, str]:
    """The environment of a child process: it imports the same ``reciprocalseg`` as this one."""
    import reciprocalseg

    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    pkg_parent = str(Path(reciprocalseg.__file__).resolve().parent.parent)
    parts = [str(Path(p).resolve()) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *[p for p in parts if p != pkg_parent]])
    return env


def start_process(
    cmd: list[str],
    stdout: IO[bytes] | int,
    stderr: IO[bytes] | int,
    env: dict[str, str],
    cwd: Path | None = None,
    windows_group: bool = False,
) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own (POSIX): Ctrl-C in the parent's terminal does not
    reach it. ``windows_group``: on Windows, in a new process group, so that CTRL_BREAK_EVENT can
    be sent to it alone."""
    return subprocess.Popen(
        cmd,
        stdout=stdout,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        cwd=None if cwd is None else str(cwd),
        env=env,
        start_new_session=os.name == "posix",
        creationflags=subprocess.CREATE_NEW_PROCESS_GROUP if WINDOWS and windows_group else 0,
    )


def create_time(pid: int) -> float | None:
    """When process ``pid`` started (``psutil``'s clock), None if it is gone."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):
        return None


def process_alive(pid: int, created: float | None = None) -> bool:
    """Whether process ``pid`` runs (and, given ``created``, is the one started at that time).

    A zombie counts as ended. ``created`` (``psutil.Process.create_time()``) guards against the
    PID having been reused by an unrelated process.
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        if created is not None and abs(proc.create_time() - created) > 1e-3:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def find_process(pid: int | None, created: float | None, marker: str) -> psutil.Process | None:
    """The live process ``pid`` if it still is the one started at ``created`` with ``marker`` in
    its command line (guards against pid reuse), else None."""
    import psutil

    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if created is not None and abs(proc.create_time() - created) > 1.0:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if marker not in " ".join(proc.cmdline()):
            return None
        return proc
    except (psutil.Error, OSError):
        return None


def terminate_tree(
    proc: psutil.Process, timeout: float = 30.0, child: subprocess.Popen | None = None
) -> None:
    """SIGTERM a process and its children; SIGKILL whatever is left after ``timeout`` seconds.

    ``child``: the ``Popen`` of ``proc`` when it is this process's own child. Only that ``Popen``
    may then wait for it: psutil would reap it (``waitpid``) first, and the ``Popen``, finding no
    child left, would report an exit status of 0, which the watcher thread records as how the
    run ended (a cancelled run then looked like a failed one, "exited with code 0").
    """
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        procs = [proc]
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout
    if child is not None:
        procs = procs[1:]  # the descendants: not our children, so psutil only polls them
        try:
            child.wait(timeout=timeout)  # shares the watcher's lock: one of the two reaps it
        except subprocess.TimeoutExpired:
            child.kill()
    _, alive = psutil.wait_procs(procs, timeout=max(0.0, deadline - time.monotonic()))
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def terminate_child_tree(child: subprocess.Popen, timeout: float = 30.0) -> None:
    """:func:`terminate_tree` of this process's own child ``child`` (nothing to do once it is gone)."""
    import psutil

    try:
        proc = psutil.Process(child.pid)
    except psutil.NoSuchProcess:
        return
    terminate_tree(proc, timeout=timeout, child=child)


def terminate_pid(pid: int) -> None:
    """Ask process ``pid`` to end (SIGTERM; TerminateProcess on Windows); gone already is fine."""
    import psutil

    try:
        psutil.Process(pid).terminate()
    except (OSError, psutil.Error):
        pass


def wait_pid(pid: int, seconds: float) -> None:
    """Wait up to ``seconds`` for process ``pid`` (not our child) to end."""
    import psutil

    try:
        psutil.Process(pid).wait(timeout=max(0.0, seconds))
    except (psutil.TimeoutExpired, psutil.NoSuchProcess):
        pass


def process_tree(pid: int) -> list[psutil.Process]:
    """Process ``pid`` and all its descendants now (empty when it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def end_processes(procs: list[psutil.Process], grace: float = 10.0) -> None:
    """Terminate, then kill, whichever of ``procs`` still run (same processes: psutil checks)."""
    import psutil

    _, alive = psutil.wait_procs(procs, timeout=0.1) if procs else ([], [])
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
