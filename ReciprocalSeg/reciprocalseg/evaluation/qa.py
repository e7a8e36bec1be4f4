"""Per-structure quality checks of predictions: volume, pieces, teacher/student disagreement.

For each predicted case and class (structure):

- ``volume_ml``: voxels x voxel volume (the scan's spacing), in millilitres;
- ``pieces``: connected components (26-neighbourhood, as `postprocess`), so a structure
  broken into islands stands out;
- ``disagreement``: with both networks, the fraction of the structure (voxels that either
  network gives this class) where they do not agree: 1 - Jaccard(teacher, student);
  0 when neither finds it.

Flags compare the values with what the labelled cases show (`ReferenceRanges`, computed
from their label maps): ``empty`` (absent, though every labelled case has it),
``volume_low`` / ``volume_high`` (outside [min, max] of the labelled volumes widened by
``margin``, 25 % by default: a labelled set is a small sample), ``more_pieces`` (more
pieces than any labelled case). Labelled cases do not show how much two networks may
disagree, so ``high_disagreement`` uses a fixed threshold instead (more than half of the
structure). Partially annotated label maps (any voxel 255) leave the reference out: their
volumes are not the structure's.

`structure_qa` and `reference_ranges` are the whole interface: the CLI's predict calls them,
and the service or the Slicer panel can call them the same way on their arrays;
`predicts_only_background` is the check behind "this model finds nothing".
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..common.atomic import atomic_write_json, atomic_write_text
from ..common.errors import DataError
from ..common.file_formats import UNANNOTATED  # the label value of voxels a partial label leaves unannotated

VOLUME_MARGIN = 0.25
HIGH_DISAGREEMENT = 0.5
_STRUCTURE = ndimage.generate_binary_structure(3, 3)  # 26-neighbourhood, as postprocess


@dataclass
class StructureQA:
    """The checks of one class in one case's prediction by one model."""

    case_id: str
    model: str
    label: int
    volume_ml: float
    pieces: int
    disagreement: float | None = None  # None: one network only
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # the flags in words

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClassRange:
    """What the labelled cases show for one class."""

    volume_ml_min: float
    volume_ml_max: float
    pieces_max: int
    present_in: int  # how many of the reference cases have the class at all


@dataclass
class ReferenceRanges:
    """Per-class ranges over the fully labelled cases, and the margin the volume flags allow."""

    classes: dict[int, ClassRange]
    cases: int
    margin: float = VOLUME_MARGIN
    partial_skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "margin": self.margin,
            "partial_skipped": self.partial_skipped,
            "classes": {str(k): asdict(v) for k, v in self.classes.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceRanges:
        classes = {int(k): ClassRange(**v) for k, v in data["classes"].items()}
        return cls(classes, int(data["cases"]), float(data["margin"]), int(data.get("partial_skipped", 0)))


def _voxel_ml(spacing_xyz: Sequence[float]) -> float:
    spacing = [float(s) for s in spacing_xyz]
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise DataError(f"spacing {spacing} must be three positive finite numbers (mm)")
    return math.prod(spacing) / 1000.0


def _pieces(mask: np.ndarray) -> int:
    found = ndimage.find_objects(mask.view(np.uint8), max_label=1)
    if not found or found[0] is None:
        return 0
    _, n = ndimage.label(mask[found[0]], structure=_STRUCTURE)  # the bounding box only
    return int(n)


def measure_structures(
    labels: np.ndarray, spacing_xyz: Sequence[float], n_classes: int
) -> dict[int, tuple[float, int]]:
    """``{class: (volume_ml, pieces)}`` for classes 1..n_classes-1 of a (z, y, x) label map."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise DataError(f"a label map must be 3-D (z, y, x), got shape {labels.shape}")
    voxel_ml = _voxel_ml(spacing_xyz)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=n_classes) if labels.size else None
    out = {}
    for c in range(1, n_classes):
        n = int(counts[c]) if counts is not None and c < len(counts) else 0
        out[c] = (n * voxel_ml, _pieces(labels == c) if n else 0)
    return out


def disagreement_fractions(a: np.ndarray, b: np.ndarray, n_classes: int) -> dict[int, float]:
    """Per class, 1 - Jaccard of the two networks' masks (0 when neither has the class)."""
    if a.shape != b.shape:
        raise DataError(f"the two predictions have different shapes {a.shape} and {b.shape}")
    out = {}
    for c in range(1, n_classes):
        ma, mb = a == c, b == c
        union = int(np.count_nonzero(ma | mb))
        out[c] = 0.0 if union == 0 else 1.0 - int(np.count_nonzero(ma & mb)) / union
    return out


def reference_ranges(
    label_maps: Iterable[tuple[np.ndarray, Sequence[float]]], n_classes: int, margin: float = VOLUME_MARGIN
) -> ReferenceRanges:
    """Ranges of volume and pieces per class over labelled cases given as (array, spacing_xyz)."""
    if margin < 0:
        raise DataError(f"the volume margin must be >= 0, got {margin}")
    measured, partial = [], 0
    for labels, spacing in label_maps:
        labels = np.asarray(labels)
        if np.any(labels == UNANNOTATED):
            partial += 1
            continue
        measured.append(measure_structures(labels, spacing, n_classes))
    classes = {}
    for c in range(1, n_classes):
        values = [m[c] for m in measured]
        if values:
            volumes = [v for v, _ in values]
            classes[c] = ClassRange(
                min(volumes), max(volumes), max(p for _, p in values), sum(v > 0 for v in volumes)
            )
    return ReferenceRanges(classes, len(measured), margin, partial)


def reference_ranges_from_files(
    label_paths: Iterable[Path], n_classes: int, margin: float = VOLUME_MARGIN
) -> ReferenceRanges:
    """`reference_ranges` of label map files (read with SimpleITK, one at a time)."""
    import SimpleITK as sitk

    from ..data.io import read_image

    def maps() -> Iterable[tuple[np.ndarray, Sequence[float]]]:
        for path in label_paths:
            image = read_image(path)
            yield sitk.GetArrayFromImage(image), image.GetSpacing()

    return reference_ranges(maps(), n_classes, margin)


def _flag(qa: StructureQA, ranges: ReferenceRanges | None) -> None:
    rng = ranges.classes.get(qa.label) if ranges is not None else None
    if rng is not None and ranges is not None:
        lo, hi = rng.volume_ml_min * (1 - ranges.margin), rng.volume_ml_max * (1 + ranges.margin)
        of = f"labelled {rng.volume_ml_min:.3g}-{rng.volume_ml_max:.3g} mL +-{ranges.margin:.0%}"
        if qa.volume_ml == 0 and rng.present_in == ranges.cases:
            qa.flags.append("empty")
            qa.notes.append(f"class {qa.label} missing; every labelled case has it")
        elif qa.volume_ml < lo:
            qa.flags.append("volume_low")
            qa.notes.append(f"volume {qa.volume_ml:.3g} mL below the range ({of})")
        elif qa.volume_ml > hi:
            qa.flags.append("volume_high")
            qa.notes.append(f"volume {qa.volume_ml:.3g} mL above the range ({of})")
        if qa.pieces > rng.pieces_max:
            qa.flags.append("more_pieces")
            qa.notes.append(f"{qa.pieces} pieces; labelled cases have at most {rng.pieces_max}")
    if qa.disagreement is not None and qa.disagreement > HIGH_DISAGREEMENT:
        qa.flags.append("high_disagreement")
        qa.notes.append(f"the networks disagree on {qa.disagreement:.0%} of the structure")


def reflag(rows: Iterable[StructureQA], ranges: ReferenceRanges | None) -> None:
    """Set the flags of measured rows anew against ``ranges`` (the labelled cases changed since)."""
    for qa in rows:
        qa.flags.clear()
        qa.notes.clear()
        _flag(qa, ranges)


def structure_qa(
    case_id: str,
    predictions: dict[str, np.ndarray],
    spacing_xyz: Sequence[float],
    n_classes: int,
    ranges: ReferenceRanges | None = None,
) -> list[StructureQA]:
    """The checks of every model's prediction of one case, per class.

    ``predictions``: model name -> (z, y, x) label map; with exactly two (teacher and
    student) the disagreement of each class is filled in for both rows.
    """
    fractions = None
    if len(predictions) == 2:
        fractions = disagreement_fractions(*predictions.values(), n_classes)
    rows = []
    for model, labels in predictions.items():
        for c, (volume, pieces) in measure_structures(labels, spacing_xyz, n_classes).items():
            qa = StructureQA(case_id, model, c, volume, pieces, fractions[c] if fractions else None)
            _flag(qa, ranges)
            rows.append(qa)
    return rows


def predicts_only_background(label_maps: Iterable[np.ndarray]) -> bool:
    """True when there is at least one map and none holds a foreground voxel.

    A model that finds nothing in every case has not learned the structure (too few
    iterations, a collapsed student, labels that do not match the scans); callers say so.
    """
    seen = False
    for labels in label_maps:
        seen = True
        if np.any(np.asarray(labels) != 0):
            return False
    return seen


def background_only_message(model: str, n_cases: int) -> str:
    """What to tell the user when `predicts_only_background` holds for a model's predictions."""
    cases = "the case" if n_cases == 1 else f"all {n_cases} cases"
    return (
        f"the {model} predicts only background in {cases}: it has not learned the structure "
        "(train longer or with more labelled cases, check that the labels match the scans)"
    )


QA_CSV_FIELDS = ("case_id", "model", "label", "volume_ml", "pieces", "disagreement", "flags", "notes")


def write_qa(rows: Sequence[StructureQA], ranges: ReferenceRanges | None, out_dir: Path) -> tuple[Path, Path]:
    """``OUT/qa.json`` (rows and the reference ranges) and ``OUT/qa.csv`` (one row per structure)."""
    json_path, csv_path = out_dir / "qa.json", out_dir / "qa.csv"
    atomic_write_json(
        json_path,
        {
            "structures": [r.to_dict() for r in rows],
            "reference": ranges.to_dict() if ranges is not None else None,
        },
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=QA_CSV_FIELDS)
    writer.writeheader()
    for r in rows:
        d = r.to_dict()
        d["flags"], d["notes"] = " ".join(r.flags), "; ".join(r.notes)
        d["disagreement"] = "" if r.disagreement is None else r.disagreement
        writer.writerow(d)
    atomic_write_text(csv_path, buffer.getvalue())
    return json_path, csv_path
