"""A dataset fingerprint: what the planner needs to know about a cohort, computed fast.

The fingerprint is combined from one record per case (`CaseFingerprint`), so a case is read
once: the service computes a case's record when the case is added or its label changes and
keeps it beside the case; the CLI computes the records of a folder when it plans.

A record holds the case's spacing and size, a summary of its intensities (mean, std, min, max
and 1001 quantiles of a fixed-size voxel sample), and for a labelled case the voxels of each
class, the annotated voxels, the voxel volume and the same intensity summary inside the labels
(as nnU-Net's fingerprint: what a CT clip and z-score use). Records combine with every case
weighing the same. The CLI reads sizes and spacings of every case from the file headers (no
voxel read), intensities of at most `MAX_INTENSITY_CASES` scans spread over the cohort, and at
most `MAX_LABEL_CASES` label maps (there are few of them in semi-supervised work).

CT is recognised from Hounsfield units: air is -1000 HU, so a cohort whose 1st intensity
percentile is below -500 is CT. MRI and other modalities have no absolute scale and are
normalised per scan. Voxels a partial label leaves unannotated (value 255) count as no class.

Several channels per case (issue 24): the geometry and the classes come from the case (channel 0's
grid); the intensity summaries are kept per channel too (`ChannelSummary`), pooled per channel
(`Fingerprint.channels`), so each channel is recognised as CT or MRI and planned on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..common.errors import DataError
from ..common.file_formats import UNANNOTATED  # label value of voxels a partial label leaves out
from ..data.channels import image_channels, read_case_image
from ..data.io import Case, read_image

MAX_INTENSITY_CASES = 16
MAX_LABEL_CASES = 50
SAMPLES_PER_CASE = 100_000  # voxels drawn per scan for its intensity summary (bounds the cost)
QUANTILES = np.linspace(0.0, 100.0, 1001)  # a case's intensity distribution in 0.1% steps
CT_AIR_THRESHOLD = -500.0  # HU: below it at the 1st percentile, a scan holds air in Hounsfield units
ANISOTROPY_THRESHOLD = 3.0  # nnU-Net's: an axis this many times coarser than the others is "thick"

RECORD_FORMAT = "reciprocalseg-case-fingerprint-1"


@dataclass
class ClassStats:
    """One foreground class over the labelled cases."""

    cases: int  # labelled cases that contain it
    median_voxels: float
    median_ml: float  # physical volume, millilitres
    median_fraction: float  # of the case's annotated voxels


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
    # Several channels: per channel {"modality", "intensity", "foreground_intensity"} (else empty).
    channels: list[dict[str, Any]] = field(default_factory=list)

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
            **({"channels": self.channels} if self.channels else {}),
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


@dataclass
class IntensitySummary:
    """The intensity distribution of one case (or of its labelled voxels)."""

    mean: float
    std: float
    min: float
    max: float
    quantiles: list[float]  # at `QUANTILES` percent

    @classmethod
    def of(cls, values: np.ndarray, rng: np.random.Generator) -> IntensitySummary | None:
        """The summary of `values` (None when empty); at most `SAMPLES_PER_CASE` of them are used
        for the moments and quantiles, the extremes are exact."""
        values = np.asarray(values).ravel()
        if values.size == 0:
            return None
        if values.size > SAMPLES_PER_CASE:
            sample = values[rng.integers(0, values.size, SAMPLES_PER_CASE)].astype(np.float64)
        else:
            sample = values.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            raise DataError("a scan holds NaN or infinite intensities; fix or remove it before training")
        return cls(
            mean=float(sample.mean()),
            std=float(sample.std()),
            min=low,
            max=high,
            quantiles=[round(float(q), 4) for q in np.percentile(sample, QUANTILES)],
        )


@dataclass
class LabelSummary:
    """What one label map says about the classes, and the intensities inside it."""

    version: int | None  # the label version it was computed from (the service's), or None
    class_voxels: dict[int, int]  # foreground class -> voxels
    annotated: int  # voxels with a class (background included; unannotated ones not)
    voxel_ml: float
    foreground: IntensitySummary | None  # the scan's intensities inside the labels


@dataclass
class ChannelSummary:
    """One channel's intensities in a case with several channels (and inside its label)."""

    intensity: IntensitySummary | None
    foreground: IntensitySummary | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelSummary:
        return cls(
            *(IntensitySummary(**data[k]) if data.get(k) else None for k in ("intensity", "foreground"))
        )


@dataclass
class CaseFingerprint:
    """One case's contribution to the fingerprint."""

    spacing: tuple[float, float, float]  # (x, y, z) mm
    size: tuple[int, int, int]  # (x, y, z) voxels
    intensity: IntensitySummary | None = None  # None: the scan's voxels were not read (channel 0's)
    label: LabelSummary | None = None  # None: unlabelled, or its label map was not read
    channels: list[ChannelSummary] = field(default_factory=list)  # several channels: one each

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.channels:
            del out["channels"]  # single-channel records stay as they were
        if self.label is not None:
            out["label"]["class_voxels"] = {str(k): v for k, v in self.label.class_voxels.items()}
        return {"format": RECORD_FORMAT, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseFingerprint:
        if data.get("format") != RECORD_FORMAT:
            raise DataError(f"not a case fingerprint (format {data.get('format')!r})")
        intensity = data.get("intensity")
        label = data.get("label")
        if label is not None:
            foreground = label.get("foreground")
            label = LabelSummary(
                version=label.get("version"),
                class_voxels={int(k): int(v) for k, v in label["class_voxels"].items()},
                annotated=int(label["annotated"]),
                voxel_ml=float(label["voxel_ml"]),
                foreground=IntensitySummary(**foreground) if foreground else None,
            )
        return cls(
            spacing=tuple(float(s) for s in data["spacing"]),  # type: ignore[arg-type]
            size=tuple(int(n) for n in data["size"]),  # type: ignore[arg-type]
            intensity=IntensitySummary(**intensity) if intensity else None,
            label=label,
            channels=[ChannelSummary.from_dict(c) for c in data.get("channels") or []],
        )


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
    if reader.GetDimension() == 4:  # a 4D file with a channel axis: the first three are the grid
        return reader.GetSpacing()[:3], reader.GetSize()[:3]
    if reader.GetDimension() != 3:
        raise DataError(f"{path}: a {reader.GetDimension()}D image; ReciprocalSeg needs 3D scans")
    return reader.GetSpacing(), reader.GetSize()


def case_fingerprint(
    image: sitk.Image, label: np.ndarray | None = None, label_version: int | None = None
) -> CaseFingerprint:
    """A case's record from its scan in memory, and its label map (z, y, x array) when labelled.

    A vector image (several channels) gives channel 0's record plus every channel's summaries."""
    channels = image_channels(image)
    image = channels[0]
    rng = np.random.default_rng(0)  # the same sample every time: a recomputed record is the same
    voxels = sitk.GetArrayViewFromImage(image)  # no copy; `image` outlives it
    record = CaseFingerprint(
        spacing=_xyz(image.GetSpacing(), float),
        size=_xyz(image.GetSize(), int),
        intensity=IntensitySummary.of(voxels, rng),
    )
    if label is not None:
        if label.shape != voxels.shape:
            raise DataError(f"the label's shape {label.shape} differs from the scan's {voxels.shape}")
        record.label = label_summary(label, image.GetSpacing(), label_version, voxels, rng)
    if len(channels) > 1:
        for channel in channels:
            values = sitk.GetArrayFromImage(channel)
            inside = None if label is None else values[(label > 0) & (label != UNANNOTATED)]
            record.channels.append(
                ChannelSummary(
                    IntensitySummary.of(values, np.random.default_rng(0)),
                    None if inside is None else IntensitySummary.of(inside, np.random.default_rng(0)),
                )
            )
    return record


def label_summary(
    label: np.ndarray,
    spacing: Sequence[float],
    version: int | None = None,
    voxels: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> LabelSummary:
    """The classes of a label map, and the scan's `voxels` inside it when given (same grid)."""
    counts = _value_counts(label)
    classes = {c: int(n) for c, n in enumerate(counts) if n and c not in (0, UNANNOTATED)}
    unannotated = int(counts[UNANNOTATED]) if counts.size > UNANNOTATED else 0
    foreground = None
    if voxels is not None:
        inside = (label > 0) & (label != UNANNOTATED)
        foreground = IntensitySummary.of(voxels[inside], rng or np.random.default_rng(0))
    return LabelSummary(
        version=version,
        class_voxels=classes,
        annotated=int(label.size) - unannotated,
        voxel_ml=float(np.prod(spacing)) / 1000.0,
        foreground=foreground,
    )


def _value_counts(label: np.ndarray, chunk: int = 1 << 24) -> np.ndarray:
    """Voxels per label value, counted in slabs (an int64 copy of a whole big label map is GBs)."""
    flat = label.ravel()
    counts = np.zeros(1, np.int64)
    for start in range(0, flat.size, chunk):
        part = flat[start : start + chunk].astype(np.int64)
        if part.size and part.min() < 0:
            raise DataError("the label holds negative values; labels are 0 (background) and 1, 2, ...")
        found = np.bincount(part)
        if found.size > counts.size:
            found[: counts.size] += counts
            counts = found
        else:
            counts[: found.size] += found
    return counts


def read_case_fingerprint(
    case: Case, intensity: bool = True, label: bool = True, channel_resampling: str | None = None
) -> CaseFingerprint:
    """A case's record from its files, reading only what is asked for: the geometry always (from
    the header), the scan's voxels with `intensity`, the label map with `label` (and, with both,
    the scan's voxels inside the label)."""
    label_array = None
    if label and case.label is not None:
        label_image = read_image(case.label)
        label_array = sitk.GetArrayFromImage(label_image)
    if intensity:
        image = read_case_image(case, channel_resampling)
        if label_array is not None and label_array.shape != sitk.GetArrayViewFromImage(image).shape:
            label_array = None  # off the scan's grid: training reports it; plan without that label
        return case_fingerprint(image, label_array)
    spacing, size = read_geometry(case.image)
    record = CaseFingerprint(spacing=_xyz(spacing, float), size=_xyz(size, int))
    if label_array is not None:
        record.label = label_summary(label_array, label_image.GetSpacing())
    return record


def _xyz(values: Sequence[Any], kind: type) -> Any:
    return tuple(kind(v) for v in values)


def _spread(items: Sequence[Any], limit: int) -> list[Any]:
    """At most `limit` items, evenly spread over the sequence (the same ones every time)."""
    if len(items) <= limit:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round()]


def _pooled(summaries: Sequence[IntensitySummary]) -> dict[str, float]:
    """The statistics of the cases' intensities pooled, every case weighing the same."""
    means = np.array([s.mean for s in summaries])
    second = np.array([s.std**2 + s.mean**2 for s in summaries])
    mean = float(means.mean())
    p = np.percentile(np.concatenate([s.quantiles for s in summaries]), [0.5, 1, 99.5])
    return {
        "mean": round(mean, 4),
        "std": round(float(np.sqrt(max(0.0, second.mean() - mean**2))), 4),
        "p00_5": round(float(p[0]), 4),
        "p01": round(float(p[1]), 4),
        "p99_5": round(float(p[2]), 4),
        "min": round(min(s.min for s in summaries), 4),
        "max": round(max(s.max for s in summaries), 4),
    }


def _class_stats(labels: Sequence[LabelSummary]) -> dict[int, ClassStats]:
    classes = sorted({c for summary in labels for c in summary.class_voxels})
    out = {}
    for cls in classes:
        present = [s for s in labels if cls in s.class_voxels]
        voxels = np.array([s.class_voxels[cls] for s in present], dtype=float)
        out[cls] = ClassStats(
            cases=len(present),
            median_voxels=float(np.median(voxels)),
            median_ml=round(float(np.median([s.class_voxels[cls] * s.voxel_ml for s in present])), 4),
            median_fraction=float(np.median([s.class_voxels[cls] / max(1, s.annotated) for s in present])),
        )
    return out


def combine(labeled: Sequence[CaseFingerprint], unlabeled: Sequence[CaseFingerprint] = ()) -> Fingerprint:
    """The cohort's fingerprint from its cases' records (those without intensities or labels
    count for the geometry and the case counts only)."""
    records = [*labeled, *unlabeled]
    if not records:
        raise DataError("no cases to plan from")
    intensities = [r.intensity for r in records if r.intensity is not None]
    if not intensities:
        raise DataError("no case's intensities were read; cannot plan the normalisation")
    labels = [r.label for r in labeled if r.label is not None]
    foreground = [s.foreground for s in labels if s.foreground is not None]
    intensity = _pooled(intensities)
    fingerprint = Fingerprint(
        n_labeled=len(labeled),
        n_unlabeled=len(unlabeled),
        spacings=[r.spacing for r in records],
        sizes=[r.size for r in records],
        modality="CT" if intensity["p01"] < CT_AIR_THRESHOLD else "MRI",
        intensity=intensity,
        foreground_intensity=_pooled(foreground) if foreground else None,
        classes=_class_stats(labels),
    )
    fingerprint.channels = _channel_stats(
        [r for r in labeled if r.channels], [r for r in records if r.channels]
    )
    return fingerprint


def _channel_stats(
    labeled: Sequence[CaseFingerprint], records: Sequence[CaseFingerprint]
) -> list[dict[str, Any]]:
    """Per channel {"modality", "intensity", "foreground_intensity"}, pooled over the records that
    hold channel summaries (empty for single-channel cases)."""
    if not records:
        return []
    counts = {len(r.channels) for r in records}
    if len(counts) > 1:
        raise DataError(
            f"the cases have different numbers of channels ({sorted(counts)}); every case needs the same"
        )
    out = []
    for k in range(counts.pop()):
        summaries = [r.channels[k].intensity for r in records if r.channels[k].intensity is not None]
        foreground = [r.channels[k].foreground for r in labeled if r.channels[k].foreground is not None]
        pooled = _pooled(summaries)
        out.append(
            {
                "modality": "CT" if pooled["p01"] < CT_AIR_THRESHOLD else "MRI",
                "intensity": pooled,
                "foreground_intensity": _pooled(foreground) if foreground else None,
            }
        )
    return out


def compute_fingerprint(
    labeled: Sequence[Case], unlabeled: Sequence[Case] = (), channel_resampling: str | None = None
) -> Fingerprint:
    """The fingerprint of a cohort on disk (`labeled` cases need labels), reading few voxels."""
    if not labeled and not unlabeled:
        raise DataError("no cases to plan from")
    label_ids = {c.case_id for c in _spread(list(labeled), MAX_LABEL_CASES)}
    read_labels = [c for c in labeled if c.case_id in label_ids]
    intensity_ids = {c.case_id for c in _spread(read_labels, MAX_INTENSITY_CASES)}
    room = max(0, MAX_INTENSITY_CASES - len(intensity_ids))
    intensity_ids |= {c.case_id for c in _spread(list(unlabeled), room)}
    labeled_records = [
        read_case_fingerprint(
            c,
            intensity=c.case_id in intensity_ids,
            label=c.case_id in label_ids,
            channel_resampling=channel_resampling,
        )
        for c in labeled
    ]
    unlabeled_records = [
        read_case_fingerprint(
            c, intensity=c.case_id in intensity_ids, label=False, channel_resampling=channel_resampling
        )
        for c in unlabeled
    ]
    return combine(labeled_records, unlabeled_records)
