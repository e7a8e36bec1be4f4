"""The "live" model: the latest checkpoint of the round that is training, usable for prediction.

The trainer writes ``RUN/checkpoints/latest.pt`` atomically (temporary file, fsync, rename), so
whatever file the path names is complete, and it holds teacher *and* student of the same
iteration: one file gives a consistent pair (the separate ``checkpoints/teacher.pt`` and
``student.pt`` are renamed one after the other, so a reader could catch one new and one old).
The service only reads it: the file is opened, read into memory in one go and closed (no lock,
nothing written in the run folder), and loaded with ``torch.load(weights_only=True)``. It is
reloaded only when the file changed (another inode, size or modification time), and refused
when a weight is NaN or infinite.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reciprocalseg.common.errors import ReciprocalSegError

from .errors import Conflict

if TYPE_CHECKING:  # torch is imported when a checkpoint is loaded, not when the service starts
    from reciprocalseg.inference.sliding_window import LoadedModel, TeacherStudentPredictor

log = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "latest.pt"
Key = tuple[str, int, int, int]  # path, inode, size, modification time (ns)


@dataclass(frozen=True)
class LiveCheckpoint:
    """Which checkpoint a live predictor was loaded from (the provenance of its predictions)."""

    run_id: str
    phase: str
    iteration: int
    n_classes: int


class LiveModel:
    """The latest checkpoint of a run as a predictor, reloaded only when the file changed."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self.loads = 0  # how many times a checkpoint was read (the tests check the reuse)
        self._key: Key | None = None
        self._loaded: tuple[LiveCheckpoint, TeacherStudentPredictor] | None = None

    def get(self, run_dir: Path) -> tuple[LiveCheckpoint, TeacherStudentPredictor] | None:
        """The predictor of ``run_dir``'s latest checkpoint; None before the first one is written."""
        data, key = _read_if_changed(run_dir / CHECKPOINT, self._key)
        if key is None:
            return None
        if data is not None:
            self._loaded = None
            self._key = None
            self._loaded = _build(run_dir.name, data, self.device)
            self._key = key
            self.loads += 1
            checkpoint = self._loaded[0]
            log.info(
                "live model loaded: run %s, %s iteration %d",
                run_dir.name,
                checkpoint.phase,
                checkpoint.iteration,
            )
        return self._loaded


def _read_if_changed(path: Path, known: Key | None) -> tuple[bytes | None, Key | None]:
    """``(bytes or None when unchanged, identity key)``; ``(None, None)`` when there is no file."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
            if key == known:
                return None, key
            # One read, then closed: the open file is the inode we stat'ed even if the trainer renames
            # a newer checkpoint over the path meanwhile, and the handle is held as briefly as possible
            # (Windows cannot rename over an open file; the trainer's atomic write waits for it).
            return f.read(), key
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise Conflict(f"cannot read {path.name} of the round in training: {exc}") from None


def _build(run_id: str, data: bytes, device: str) -> tuple[LiveCheckpoint, TeacherStudentPredictor]:
    import torch

    from reciprocalseg.config import TrainConfig
    from reciprocalseg.inference.sliding_window import TeacherStudentPredictor
    from reciprocalseg.training.checkpoint import model_meta, nonfinite_tensors

    where = f"the latest checkpoint of run {run_id}"
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        config = TrainConfig.from_dict(TrainConfig.completed(ckpt["config"]))
        phase, iteration = str(ckpt["phase"]), int(ckpt["iteration"])
        states = {name: ckpt[name] for name in ("teacher", "student")}
    except Exception as exc:  # torch raises many types for a bad file; KeyError/TypeError for a bad layout
        raise Conflict(f"{where} cannot be read ({exc}); predict with the current round instead") from None
    for name, state in states.items():
        bad = nonfinite_tensors(state) if isinstance(state, dict) else ["(no weights)"]
        if bad:
            raise Conflict(
                f"{where} ({phase} iteration {iteration}) has NaN or infinite {name} weights "
                f"({', '.join(bad[:3])}); it cannot be used: the round is diverging (see its events)"
            )
    meta = model_meta(config)
    try:
        teacher, student = (
            _network(states[n], meta, device, f"{where} ({n})") for n in ("teacher", "student")
        )
    except ReciprocalSegError as exc:
        # A damaged file (a tensor of another shape, another class count): refused, never a 500.
        raise Conflict(f"{exc}; predict with the current round instead") from None
    pair = TeacherStudentPredictor.from_models(teacher, student)
    return LiveCheckpoint(run_id, phase, iteration, config.n_classes), pair


def _network(state: dict[str, Any], meta: dict[str, Any], device: str, source: str) -> LoadedModel:
    import torch

    from reciprocalseg.common.device import resolve_device
    from reciprocalseg.inference.model_check import build_network
    from reciprocalseg.inference.sliding_window import LoadedModel

    dev = resolve_device(device)
    # The planned strides too: an `auto` round's V-Net may halve an axis fewer times than the paper's.
    module = build_network(meta, state, source)
    # As inference.load_model: channels-last weights, evaluation mode.
    module.to(dev, memory_format=torch.channels_last_3d).eval()
    return LoadedModel(module, meta, dev)
