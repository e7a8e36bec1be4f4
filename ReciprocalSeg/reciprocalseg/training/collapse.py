"""Guards against a collapsed network: a class the labelled cases have, lost by a model.

Issue 16: in two rounds on a 3-structure cohort the teacher learned one structure and the
student predicted background everywhere, and nothing warned. During reciprocal learning the
teacher's pseudo labels and the student's predictions on the unlabelled crops are counted per
class (on the device; read back every `CHECK_EVERY` iterations), and compared with each class's
share of the labelled cases' voxels. A class whose share in a model's output over the last
`WINDOW` iterations falls under `LOST_RATIO` of its labelled share is "lost" by that model: a
warning event names it (once, and again if it comes back and is lost anew). The run's summary
says which classes each model lost at the end (and no longer which model to "trust": that was
read from these counts alone, not measured).

Unlabelled crops are random (not class-centred) and include zero padding where a scan is smaller
than the crop, so a healthy model's share sits somewhat below the labelled one; a tenth of it
is far below anything that padding or sampling explains.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..common.file_formats import UNANNOTATED

CHECK_EVERY = 10
WINDOW = 5  # checks (50 iterations)
LOST_RATIO = 0.1
MODELS = ("teacher", "student")


def labeled_fractions(labels: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Each class's share of all the labelled cases' annotated voxels.

    Partial labels (255 = unannotated) count only when no label is full: strokes drawn on a
    structure and around it hold far more foreground than the scan does, which would make a
    healthy model look as if it had lost the class."""
    arrays = [np.asarray(label) for label in labels]
    full = [a for a in arrays if not np.any(a == UNANNOTATED)]
    counts = np.zeros(n_classes, dtype=np.float64)
    for label in full or arrays:
        # [:n_classes] leaves out 255 (unannotated), and any value above the classes.
        counts += np.bincount(label.ravel(), minlength=n_classes)[:n_classes]
    return counts / max(counts.sum(), 1.0)


def class_counts(predictions: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Voxels per class of a label tensor, on its device (no synchronisation)."""
    return torch.bincount(predictions.reshape(-1), minlength=n_classes)[:n_classes]


class CollapseMonitor:
    """Tracks the teacher's pseudo labels and the student's predictions per class."""

    def __init__(self, reference: np.ndarray) -> None:
        self.reference = np.asarray(reference, dtype=np.float64)
        self.n_classes = len(self.reference)
        self.pending: dict[str, torch.Tensor | None] = {m: None for m in MODELS}
        self.window: dict[str, deque[np.ndarray]] = {m: deque(maxlen=WINDOW) for m in MODELS}
        self.lost: dict[str, set[int]] = {m: set() for m in MODELS}
        self.steps = 0

    def add(self, teacher_counts: torch.Tensor, student_counts: torch.Tensor) -> list[dict[str, Any]]:
        """Add one iteration's counts; every CHECK_EVERY iterations, the warnings that are new."""
        for model, counts in zip(MODELS, (teacher_counts, student_counts), strict=True):
            pending = self.pending[model]
            self.pending[model] = counts.detach() if pending is None else pending + counts.detach()
        self.steps += 1
        if self.steps % CHECK_EVERY:
            return []
        return self._check()

    def _check(self) -> list[dict[str, Any]]:
        warnings = []
        for model in MODELS:
            pending = self.pending[model]
            self.pending[model] = None
            if pending is None:
                continue
            self.window[model].append(pending.cpu().numpy().astype(np.float64))
            total = np.sum(self.window[model], axis=0)
            share = total / max(total.sum(), 1.0)
            for cls in range(1, self.n_classes):
                expected = self.reference[cls]
                if expected <= 0:
                    continue
                lost = share[cls] < LOST_RATIO * expected
                if lost and cls not in self.lost[model]:
                    warnings.append(self._warning(model, cls, share[cls], expected))
                    self.lost[model].add(cls)
                elif not lost:
                    self.lost[model].discard(cls)
        return warnings

    def _warning(self, model: str, cls: int, share: float, expected: float) -> dict[str, Any]:
        what = "pseudo labels" if model == "teacher" else "predictions"
        return {
            "kind": "collapse",
            "model": model,
            "class": cls,
            "fraction": round(float(share), 6),
            "labeled_fraction": round(float(expected), 6),
            "message": (
                f"the {model}'s {what} have lost class {cls}: {share:.4%} of unlabelled voxels against "
                f"{expected:.4%} in the labelled cases"
            ),
        }

    def summary(self) -> dict[str, Any]:
        """Classes each model had lost when training ended.

        No verdict on which model to use: losing no class says nothing about how well the rest is
        segmented (a run's student that had lost nothing was 4.8 Dice points below its teacher).
        Which model is better is a measurement against labels (`evaluate`), not this count."""
        return {
            "lost_classes": {"teacher": sorted(self.lost["teacher"]), "student": sorted(self.lost["student"])}
        }
