"""The service's own log file, ``WORKSPACE/.service/service.log``, rotated.

Error answers say "details are in the service log": this is that file, written by the service
itself however it was started (``reciprocalseg serve`` in a terminal, the launcher, a script).
It is rotated so a service left running for weeks never fills the disk: at ``MAX_BYTES`` the file
becomes ``service.log.1`` (``.2``, ``.3``: older), and the oldest is dropped. (``server.log`` beside
it is different: the console output of a service the launcher started, start-up errors included.)
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

LOG_FILE = "service.log"
MAX_BYTES = 5 * 1024 * 1024
BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_path(workspace: Path) -> Path:
    """Where the service of ``workspace`` writes its log."""
    return workspace / ".service" / LOG_FILE


def start_log_file(workspace: Path, level: int = logging.INFO) -> Path:
    """Send the package's log records (and everything else logged to the root logger) to the
    workspace's rotated log file too; returns its path. Call once the workspace lock is held:
    only one service may rotate the file."""
    path = log_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8", delay=False
    )
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(level)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    return path
