"""Helpers shared by the service tests (imported as ``service_helpers``)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from reciprocalseg.client import Client, LocalService

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


def write_models(
    folder: Path,
    n_classes: int = 2,
    teacher_bias: list[float] | None = None,
    student_bias: list[float] | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Real model files (tiny untrained V-Nets) ``teacher.pt`` and ``student.pt`` in ``folder``.

    ``*_bias``: zero the network's last layer and give it this bias per class, so that it predicts
    the class with the largest bias everywhere (e.g. ``[50, -50]``: background only).
    """
    import torch

    from reciprocalseg.config import make_config
    from reciprocalseg.model.vnet import VNet
    from reciprocalseg.training.checkpoint import save_model

    config = make_config("demo", n_filters=1, n_classes=n_classes)
    files = {}
    for name, bias in (("teacher", teacher_bias), ("student", student_bias)):
        torch.manual_seed(seed + (name == "student"))
        model = VNet(1, n_classes, config.n_filters, config.normalization)
        if bias is not None:
            with torch.no_grad():
                model.head.weight.zero_()
                model.head.bias.copy_(torch.tensor(bias))
        files[name] = folder / f"{name}.pt"
        save_model(model, config, files[name])
    return files


def write_bundle(path: Path, n_classes: int = 2, **kwargs: object) -> Path:
    """A real model bundle, as GET /models/export writes it (``kwargs``: see :func:`write_models`)."""
    import json
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        files = write_models(Path(tmp), n_classes=n_classes, **kwargs)  # type: ignore[arg-type]
        with zipfile.ZipFile(path, "w") as zf:
            zf.write(files["teacher"], "teacher.pt")
            zf.write(files["student"], "student.pt")
            meta = {"format": "reciprocalseg-models", "format_version": 2, "n_classes": n_classes}
            zf.writestr("meta.json", json.dumps({**meta, "preset": "demo"}))
    return path
