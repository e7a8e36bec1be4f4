"""A dataset fingerprint: what the planner needs to know about a cohort, computed fast.

Sizes and spacings come from the file headers of every case (no voxel is read). Intensities
come from a fixed-size voxel sample of at most `MAX_INTENSITY_CASES` scans, spread over the
cohort; for CT, the statistics of the voxels inside the labels (as nnU-Net's fingerprint),
which is what its clip and z-score use. Classes come from the labelled cases' label maps
(there are few of them in semi-supervised work; at most `MAX_LABEL_CASES` are read).

CT is recognised from Hounsfield units: air is -1000 HU, so a scan whose 1st intensity
percentile is below -500 is CT. MRI and other modalities have no absolute scale and are
normalised per scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..data.io import Case, read_image
from ..errors import DataError
from ..file_formats import UNANNOTATED

MAX_INTENSITY_CASES = 16
MAX_LABEL_CASES = 50
SAMPLES_PER_CASE = 10_000
CT_AIR_THRESHOLD = -500.0  # HU: below it at the 1st percentile, a scan holds air in Hounsfield units
ANISOTROPY_THRESHOLD = 3.0  # nnU-Net's: an axis this many times coarser than the others is "thick"


@dataclass
class ClassStats:
    """One foreground class over the labelled cases."""

    cases: int  # labelled cases that contain it
    median_voxels: float
    median_ml: float  # physical volume, millilitres
    median_fraction: float  # of the scan's voxels


@dataclass
class Fingerprint:
    n_labeled: int
    n_unlabeled: int
    spacings: list[tuple[float, float, float]]  # (x, y, z) mm, one per case
    sizes: list[tuple[int, int, int]]  # (x, y, z) voxels, one per case
    modality: str  # "CT" or "MRI" (anything without an absolute intensity scale)
    intensity: dict[str, float]  # mean, std, p00_5, p01, p99_5, min, max of the sampled voxels
    foreground_intensity: dict[str, float] | None  # the same inside the labels (None: no labels)
    classes: dict[int, ClassStats] = field(default_factory=dict)

    @property
    def median_spacing(self) -> tuple[float, float, float]:
        m = np.median(np.array(self.spacings), axis=0)
        return (float(m[0]), float(m[1]), float(m[2]))

    @property
    def median_size(self) -> tuple[int, int, int]:
        m = np.median(np.array(self.sizes), axis=0)
        return (int(round(m[0])), int(round(m[1])), int(round(m[2])))

    @property
    def anisotropy(self) -> float:
        """Coarsest over finest median spacing (1 = isotropic; 6.7 for 10 mm slices at 1.5 mm)."""
        spacing = self.median_spacing
        return max(spacing) / min(spacing)

    @property
    def anisotropic(self) -> bool:
        return self.anisotropy > ANISOTROPY_THRESHOLD

    def summary(self) -> dict[str, Any]:
        """What a person wants to see (the per-case lists left out)."""
        return {
            "cases": {"labeled": self.n_labeled, "unlabeled": self.n_unlabeled},
            "median_spacing": [round(s, 4) for s in self.median_spacing],
            "median_size": list(self.median_size),
            "anisotropy": round(self.anisotropy, 2),
            "modality": self.modality,
            "intensity": self.intensity,
            "foreground_intensity": self.foreground_intensity,
            "classes": {str(k): asdict(v) for k, v in self.classes.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["classes"] = {str(k): asdict(v) for k, v in self.classes.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        values = dict(data)
        values["spacings"] = [tuple(s) for s in values["spacings"]]
        values["sizes"] = [tuple(s) for s in values["sizes"]]
        values["classes"] = {int(k): ClassStats(**v) for k, v in values.get("classes", {}).items()}
        return cls(**values)


def read_geometry(path: Path) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """(spacing, size) from the header alone; a DICOM folder is read through `read_image`."""
    if Path(path).is_dir():
        image = read_image(path)
        return image.GetSpacing(), image.GetSize()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(
            f"{path}: cannot read the image header ({str(exc).strip().splitlines()[-1]})"
        ) from exc
    if reader.GetDimension() != 3:
        raise DataError(f"{path}: a {reader.GetDimension()}D image; ReciprocalSeg needs 3D scans")
    return reader.GetSpacing(), reader.GetSize()


def _spread(items: Sequence[Case], limit: int) -> list[Case]:
    """At most `limit` items, evenly spread over the sequence (the same ones every time)."""
    if len(items) <= limit:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round()]


def _stats(values: np.ndarray) -> dict[str, float]:
    p = np.percentile(values, [0.5, 1, 99.5])
    return {
        "mean": round(float(values.mean()), 4),
        "std": round(float(values.std()), 4),
        "p00_5": round(float(p[0]), 4),
        "p01": round(float(p[1]), 4),
        "p99_5": round(float(p[2]), 4),
        "min": round(float(values.min()), 4),
        "max": round(float(values.max()), 4),
    }


def _sample(values: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if values.size <= count:
        return values
    return values[rng.choice(values.size, count, replace=False)]


def _class_stats(per_case: list[dict[int, int]], totals: list[int], voxel_ml: list[float]) -> dict:
    classes = sorted({c for counts in per_case for c in counts if c != 0})
    out = {}
    for cls in classes:
        present = [
            (counts[cls], total, ml)
            for counts, total, ml in zip(per_case, totals, voxel_ml, strict=True)
            if cls in counts
        ]
        voxels = np.array([v for v, _, _ in present], dtype=float)
        out[cls] = ClassStats(
            cases=len(present),
            median_voxels=float(np.median(voxels)),
            median_ml=round(float(np.median([v * ml for v, _, ml in present])), 4),
            median_fraction=float(np.median([v / t for v, t, _ in present])),
        )
    return out


def compute_fingerprint(
    labeled: Sequence[Case], unlabeled: Sequence[Case] = (), seed: int = 0
) -> Fingerprint:
    """The fingerprint of a cohort (`labeled` cases need labels)."""
    cases = [*labeled, *unlabeled]
    if not cases:
        raise DataError("no cases to plan from")
    geometry = [read_geometry(c.image) for c in cases]
    rng = np.random.default_rng(seed)
    samples, fg_samples = [], []
    label_cases = _spread(list(labeled), MAX_LABEL_CASES)
    per_case, totals, voxel_ml = [], [], []
    intensity_ids = {c.case_id for c in _spread(label_cases, MAX_INTENSITY_CASES)}
    for case in label_cases:
        label = sitk.GetArrayFromImage(read_image(case.label))
        counts = np.bincount(label.ravel().astype(np.int64))
        # A partial label's unannotated voxels (255) are no class: sizes and fractions count the
        # annotated voxels only.
        counts[UNANNOTATED:] = 0
        per_case.append({int(c): int(n) for c, n in enumerate(counts) if n})
        totals.append(int(counts.sum()))
        voxel_ml.append(float(np.prod(read_geometry(case.label)[0])) / 1000.0)
        if case.case_id in intensity_ids:
            image = sitk.GetArrayFromImage(read_image(case.image)).astype(np.float64)
            if image.shape == label.shape:
                fg_samples.append(_sample(image[(label > 0) & (label != UNANNOTATED)], SAMPLES_PER_CASE, rng))
            samples.append(_sample(image.ravel(), SAMPLES_PER_CASE, rng))
    for case in _spread(list(unlabeled), max(0, MAX_INTENSITY_CASES - len(samples))):
        image = sitk.GetArrayFromImage(read_image(case.image)).astype(np.float64)
        samples.append(_sample(image.ravel(), SAMPLES_PER_CASE, rng))
    values = np.concatenate(samples)
    if not np.isfinite(values).all():
        raise DataError("a scan holds NaN or infinite intensities; fix or remove it before training")
    intensity = _stats(values)
    foreground = np.concatenate(fg_samples) if fg_samples else np.empty(0)
    return Fingerprint(
        n_labeled=len(labeled),
        n_unlabeled=len(unlabeled),
        spacings=[tuple(float(s) for s in g[0]) for g in geometry],  # type: ignore[misc]
        sizes=[tuple(int(n) for n in g[1]) for g in geometry],  # type: ignore[misc]
        modality="CT" if intensity["p01"] < CT_AIR_THRESHOLD else "MRI",
        intensity=intensity,
        foreground_intensity=_stats(foreground) if foreground.size else None,
        classes=_class_stats(per_case, totals, voxel_ml),
    )
