"""How a running service learns that it must end: its parent died, or it was asked to stop.

Both end the service the way SIGTERM does: uvicorn's ``should_exit`` is set, uvicorn finishes the
requests in flight, and ``run_serve`` closes the :class:`~reciprocalseg.service.app.Service`, which
stops a running training worker with a checkpoint (it resumes at the next start-up).  Setting a flag
works the same on Linux, macOS and Windows, where no signal reaches a process gracefully once the
PythonSlicer launcher in front of it is terminated.

* :class:`ParentWatch` (``serve --parent-pid PID``): the launcher passes the PID of the process
  that started the service (3D Slicer); when that process is gone, even killed without a chance to
  clean up, the service stops within about a second instead of living on as an orphan that holds
  the workspace.
* :func:`add_stop_route`: ``POST /service/stop`` (token-protected like every route but ``/health``,
  hidden from the OpenAPI schema so that API fuzzing never calls it) asks for the same shutdown.
* :func:`stale_service_note`: what a previous service that died without clean-up left behind.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reciprocalseg.common.processes import create_time, process_alive
from reciprocalseg.common.service_files import STOP_PATH

log = logging.getLogger("reciprocalseg.service")


class ParentWatch(threading.Thread):
    """Calls ``on_parent_exit`` once when process ``pid`` has ended (polled every ``interval`` s)."""

    def __init__(self, pid: int, on_parent_exit: Callable[[], None], interval: float = 1.0) -> None:
        super().__init__(name=f"parent-watch-{pid}", daemon=True)
        self.pid = pid
        self.on_parent_exit = on_parent_exit
        self.interval = interval
        self._stop_event = threading.Event()
        self._created = create_time(pid)  # None: already gone, the first poll stops the service

    def run(self) -> None:
        while not self._stop_event.is_set():
            if self._created is None or not process_alive(self.pid, self._created):
                log.warning(
                    "parent process %d has ended: stopping the service (a running training is checkpointed)",
                    self.pid,
                )
                self.on_parent_exit()
                return
            self._stop_event.wait(self.interval)

    def cancel(self) -> None:
        self._stop_event.set()


def add_stop_route(app: Any, request_stop: Callable[[], None]) -> None:
    """Add ``POST /service/stop``: a graceful shutdown that answers before the service ends."""

    @app.post(STOP_PATH, status_code=202, include_in_schema=False)
    def stop_service() -> dict[str, str]:
        log.info("stop requested over HTTP")
        request_stop()
        return {"detail": "the service is stopping (a running training is checkpointed first)"}


def stale_service_note(pid_file: Path) -> str | None:
    """A message about the service that wrote ``pid_file`` if it died without cleaning up.

    Call it after taking the workspace lock: the lock is an OS file lock, released by the OS when
    its holder dies, so a pid file still present at that point names a service that ended without
    running its clean-up (killed, crashed, power loss).  Its URL file is then stale too.
    """
    try:
        text = pid_file.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return (
        f"recovered the workspace from a service that ended without cleaning up (pid {text or '?'}); "
        "its stale address file was replaced"
    )
