"""Stopping a training child: its exit status must reach the service as the child gave it.

Real processes: a child that, like the training worker, exits with 3 ("cancelled") on SIGTERM,
and a grandchild, like a DataLoader worker.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import psutil
import pytest

from reciprocalseg.common.errors import EXIT_CANCELLED
from reciprocalseg.common.processes import terminate_tree

CHILD = f"""
import signal, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
signal.signal(signal.SIGTERM, lambda *_: sys.exit({EXIT_CANCELLED}))
print(grandchild.pid, flush=True)
while True:
    time.sleep(0.05)
"""

needs_posix = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _start() -> tuple[subprocess.Popen, int]:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())
    return child, grandchild


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@needs_posix
def test_the_childs_exit_status_survives_a_stop_when_nobody_waits_yet() -> None:
    """Waiting after the stop (the order that lost the status every time: psutil had reaped the
    child, so Popen.wait() found none and said 0)."""
    child, grandchild = _start()
    terminate_tree(psutil.Process(child.pid), timeout=20, child=child)
    assert child.wait(timeout=5) == EXIT_CANCELLED
    assert _gone(grandchild)  # descendants are stopped too


@needs_posix
def test_the_childs_exit_status_reaches_a_watcher_already_waiting() -> None:
    """The service's order: a watcher thread blocks in Popen.wait() while stop() terminates."""
    child, grandchild = _start()
    codes: list[int] = []
    watcher = threading.Thread(target=lambda: codes.append(child.wait()))
    watcher.start()
    terminate_tree(psutil.Process(child.pid), timeout=20, child=child)
    watcher.join(timeout=10)
    assert codes == [EXIT_CANCELLED]
    assert _gone(grandchild)


@needs_posix
def test_a_child_that_ignores_the_stop_is_killed_after_the_timeout() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    terminate_tree(psutil.Process(child.pid), timeout=0.5, child=child)
    assert child.wait(timeout=10) == -9
