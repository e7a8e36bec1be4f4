"""Helpers shared by the service tests (imported as ``service_helpers``)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from reciprocalseg.client import Client
from reciprocalseg.service.launcher import LocalService

SHAPE_ZYX = (32, 32, 32)
# Tiny training rounds: the demo preset with a couple of iterations per phase.
TRAIN_FAST = {"preset": "demo", "supervised_iterations": 2, "iterations": 1, "device": "cpu"}


@dataclass
class Running:
    """A started service with its launcher, client and workspace."""

    launcher: LocalService
    client: Client
    workspace: Path

    def restart(self, timeout: float = 120) -> Running:
        """Start the service again on the same workspace (after stop() or kill())."""
        self.launcher.start(timeout=timeout)
        self.client = self.launcher.client(timeout=120)
        return self


def start_service(workspace: Path, **kwargs: object) -> Running:
    launcher = LocalService(workspace, **kwargs)  # type: ignore[arg-type]
    launcher.start(timeout=120)
    return Running(launcher, launcher.client(timeout=120), workspace)


def snapshot(workspace: Path) -> dict[str, str]:
    """Relative path -> sha256 of every stored file (the service's own runtime files excluded)."""
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(workspace):
        rel_root = Path(root).relative_to(workspace)
        if rel_root.parts and rel_root.parts[0] in (".service", "tmp"):
            continue
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            out[str(rel_root / name)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
