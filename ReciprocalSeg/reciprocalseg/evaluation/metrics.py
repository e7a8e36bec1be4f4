"""Segmentation metrics: Dice, Jaccard, HD95, ASD/ASSD, in millimetres and in voxels.

Conventions
-----------
* Arrays are in SimpleITK order **(z, y, x)**. Arguments named ``spacing`` / ``spacing_xyz`` are
  **(x, y, z)** in mm, as returned by ``sitk.Image.GetSpacing()``, and are reversed internally.
  Only :func:`surface_distances` takes ``spacing_zyx`` directly (array order). A scalar spacing means
  isotropic; ``None`` means 1 (distances in voxels).
* Masks are binarised with ``!= 0`` (medpy: "background where 0, object everywhere else").
* Surface distances follow ``medpy.metric.binary``, which the UA-MT / reciprocal-learning evaluation
  code uses: surface = mask XOR its binary erosion with the connectivity-1 structuring element
  (6-neighbourhood in 3D, outside of the array counts as background); the distance of a surface voxel
  is the Euclidean distance (scaled by the spacing) to the nearest surface voxel of the other mask,
  computed with ``scipy.ndimage.distance_transform_edt(..., sampling=spacing_zyx)``.
* ``hd95`` is medpy's ``hd95``: the 95th percentile (numpy's default linear interpolation) of the
  **union** of both directed distance sets, ``percentile(hstack((d_pred_to_ref, d_ref_to_pred)), 95)``.
  The other convention in the literature, ``max(percentile(d_pred_to_ref, 95),
  percentile(d_ref_to_pred, 95))``, is available with ``directed_max=True``; it is never smaller than
  the union version by more than interpolation noise and is usually a little larger.
* ``asd`` is medpy's ``asd``: the mean of the distances from the pred surface to the ref surface
  (directed, so not symmetric). ``assd`` is medpy 0.5's ``assd`` and the usual textbook definition:
  the mean over the pooled distances of both directions, ``mean(hstack((d_pred_to_ref, d_ref_to_pred)))``
  (medpy <= 0.4 averaged the two directed means instead; they differ when the surfaces differ in size).
* ``hausdorff`` is the classic (100th percentile) symmetric Hausdorff distance.

Empty masks (medpy raises or returns 0 here; we choose explicit, testable values instead)
* both empty: dice 1, jaccard 1, every distance 0 -- there was nothing to find and nothing was found,
  which is a perfect answer (happens for a class absent from a case).
* exactly one empty: dice 0, jaccard 0, every distance ``nan``. A distance to an empty surface is
  undefined (the infimum over an empty set is +inf); any finite stand-in (0, the image diagonal, a
  fixed penalty) would silently bias the mean. :func:`summarize` skips ``nan`` and reports how many
  it skipped, so such failures are counted rather than hidden or averaged in.

Speed: distance transforms run on the bounding box of ``pred | ref`` padded by one voxel, not on the
whole volume (scans can be 576 x 576 x 88). This is exact, not an approximation: every surface voxel
lies inside that box, the EDT is exact within any array, and the erosion treats outside-of-array
voxels as background, which they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ..common.errors import DataError

__all__ = [
    "CaseMetrics",
    "Summary",
    "asd",
    "assd",
    "dice",
    "evaluate_case",
    "hausdorff",
    "hd95",
    "jaccard",
    "summarize",
    "surface_distances",
]

Spacing = float | Sequence[float] | None

# Padding of the crop around pred|ref. One voxel keeps each object's outer background shell inside the
# crop, so the crop looks exactly like the full volume to the erosion and to the EDT.
_CROP_PAD = 1


# --------------------------------------------------------------------------------------------------
# helpers


def _as_mask(a: np.ndarray) -> np.ndarray:
    """Binarise like medpy: everything non-zero is object."""
    a = np.asarray(a)
    return a if a.dtype == np.bool_ else a != 0


def _check_same_shape(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise DataError(
            f"Prediction and reference have different shapes {pred.shape} vs {ref.shape}; "
            "resample the prediction onto the reference grid first."
        )


def _normalize_spacing(spacing: Spacing, ndim: int, *, reverse: bool) -> tuple[float, ...]:
    """Return a per-axis spacing in array order; ``reverse`` converts (x, y, z) to (z, y, x)."""
    if spacing is None:
        out: tuple[float, ...] = (1.0,) * ndim
    elif isinstance(spacing, int | float | np.number):
        out = (float(spacing),) * ndim
    else:
        out = tuple(float(s) for s in spacing)
        if len(out) != ndim:
            raise DataError(f"Spacing {out} has {len(out)} values but the arrays are {ndim}-D.")
        if reverse:
            out = out[::-1]
    if not all(math.isfinite(s) and s > 0 for s in out):
        raise DataError(f"Spacing must be positive and finite, got {out}.")
    return out


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the padded bounding box of their union (both must not be empty)."""
    # find_objects does one C pass; the uint8 view of a bool array costs no copy.
    union = (pred | ref).view(np.uint8)
    (box,) = ndimage.find_objects(union, max_label=1)
    slices = tuple(
        slice(max(s.start - _CROP_PAD, 0), min(s.stop + _CROP_PAD, n))
        for s, n in zip(box, pred.shape, strict=True)
    )
    return pred[slices], ref[slices]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: mask minus its erosion by the connectivity-1 structure (as medpy)."""
    footprint = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=footprint, iterations=1, border_value=0)


def _directed(src_surface: np.ndarray, dst_surface: np.ndarray, sampling: tuple[float, ...]) -> np.ndarray:
    """Distance of each surface voxel of src to the nearest surface voxel of dst."""
    dt = ndimage.distance_transform_edt(~dst_surface, sampling=sampling)
    return np.asarray(dt[src_surface], dtype=np.float64)


def _surfaces(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cropped surfaces of two non-empty masks."""
    pc, rc = _crop_to_union(pred, ref)
    return _surface(pc), _surface(rc)


# --------------------------------------------------------------------------------------------------
# overlap


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient 2|P∩R| / (|P|+|R|); 1.0 when both masks are empty."""
    p, r = _as_mask(pred), _as_mask(ref)
    _check_same_shape(p, r)
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & r)) / total


def jaccard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard index |P∩R| / |P∪R|; 1.0 when both masks are empty."""
    p, r = _as_mask(pred), _as_mask(ref)
    _check_same_shape(p, r)
    union = int(np.count_nonzero(p | r))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & r)) / union


# --------------------------------------------------------------------------------------------------
# surface distances


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing_zyx: Spacing = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances ``(pred -> ref, ref -> pred)`` in the unit of ``spacing_zyx``.

    ``spacing_zyx`` is in array order (z, y, x), unlike the other functions of this module.
    Each array has one entry per surface voxel of the source mask. With an empty mask there is no
    partner surface: the other mask's distances are ``inf`` and the empty mask's array is empty.
    """
    p, r = _as_mask(pred), _as_mask(ref)
    _check_same_shape(p, r)
    sampling = _normalize_spacing(spacing_zyx, p.ndim, reverse=False)
    p_any, r_any = bool(p.any()), bool(r.any())
    if not (p_any and r_any):
        # Handled here because distance_transform_edt of an array without zeros is meaningless.
        n_p = int(np.count_nonzero(_surface(p))) if p_any else 0
        n_r = int(np.count_nonzero(_surface(r))) if r_any else 0
        return np.full(n_p, np.inf), np.full(n_r, np.inf)
    ps, rs = _surfaces(p, r)
    return _directed(ps, rs, sampling), _directed(rs, ps, sampling)


def _hd95_from(d_pr: np.ndarray, d_rp: np.ndarray, directed_max: bool) -> float:
    if directed_max:
        return float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))
    return float(np.percentile(np.concatenate((d_pr, d_rp)), 95))


def _distance_metric(pred: np.ndarray, ref: np.ndarray, spacing: Spacing, reduce) -> float:
    """Apply the empty-mask conventions, then ``reduce(d_pred_to_ref, d_ref_to_pred)``."""
    p, r = _as_mask(pred), _as_mask(ref)
    _check_same_shape(p, r)
    sampling = _normalize_spacing(spacing, p.ndim, reverse=True)
    p_any, r_any = bool(p.any()), bool(r.any())
    if not p_any and not r_any:
        return 0.0
    if p_any != r_any:
        return math.nan
    ps, rs = _surfaces(p, r)
    return float(reduce(_directed(ps, rs, sampling), _directed(rs, ps, sampling)))


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None, *, directed_max: bool = False) -> float:
    """95th-percentile Hausdorff distance (medpy's: percentile of the union of both directions).

    ``spacing`` is (x, y, z) in mm; ``None`` gives voxels. ``directed_max=True`` returns
    ``max`` of the two directed 95th percentiles instead. 0 if both empty, nan if one is.
    """
    return _distance_metric(pred, ref, spacing, lambda a, b: _hd95_from(a, b, directed_max))


def hausdorff(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None) -> float:
    """Symmetric (100th percentile) Hausdorff distance between the surfaces; spacing (x, y, z)."""
    return _distance_metric(pred, ref, spacing, lambda a, b: max(a.max(), b.max()))


def asd(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None) -> float:
    """medpy's average surface distance: mean distance from pred's surface to ref's surface.

    Directed (``asd(a, b) != asd(b, a)`` in general); spacing (x, y, z). 0 if both empty, nan if one is.
    """
    return _distance_metric(pred, ref, spacing, lambda a, b: a.mean())


def assd(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None) -> float:
    """Average symmetric surface distance: mean of both directions' pooled distances; spacing (x, y, z)."""
    return _distance_metric(pred, ref, spacing, lambda a, b: np.concatenate((a, b)).mean())


# --------------------------------------------------------------------------------------------------
# per case, per class


@dataclass
class CaseMetrics:
    """Metrics of one class in one case.

    ``*_mm`` use the image spacing; ``*_vox`` use spacing (1, 1, 1), which is how the reciprocal
    learning paper (and UA-MT's test code, medpy without ``voxelspacing``) reports HD95 and ASD.
    """

    dice: float
    jaccard: float
    hd95_mm: float
    asd_mm: float
    hd95_vox: float
    asd_vox: float

    def to_dict(self) -> dict[str, float]:
        """Plain dict, e.g. a row for :func:`summarize` or JSON."""
        return asdict(self)


def _class_metrics(p: np.ndarray, r: np.ndarray, sampling_mm: tuple[float, ...]) -> CaseMetrics:
    p_any, r_any = bool(p.any()), bool(r.any())
    overlap = (dice(p, r), jaccard(p, r))
    if not p_any and not r_any:
        return CaseMetrics(*overlap, 0.0, 0.0, 0.0, 0.0)
    if p_any != r_any:
        return CaseMetrics(*overlap, math.nan, math.nan, math.nan, math.nan)
    # Crop and erode once; only the EDTs differ between the mm and the voxel versions.
    ps, rs = _surfaces(p, r)
    d_pr, d_rp = _directed(ps, rs, sampling_mm), _directed(rs, ps, sampling_mm)
    hd95_mm, asd_mm = _hd95_from(d_pr, d_rp, False), float(d_pr.mean())
    voxel = (1.0,) * p.ndim
    if sampling_mm != voxel:
        d_pr, d_rp = _directed(ps, rs, voxel), _directed(rs, ps, voxel)
    return CaseMetrics(*overlap, hd95_mm, asd_mm, _hd95_from(d_pr, d_rp, False), float(d_pr.mean()))


def evaluate_case(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    spacing_xyz: Spacing,
    n_classes: int | None = None,
) -> dict[int, CaseMetrics]:
    """Per-class metrics of a label map against a reference label map, for classes 1..K.

    ``n_classes`` counts the background, like the network's output channels (2 for the left atrium),
    so K = n_classes - 1; without it K is the largest label found in either array. A class absent
    from both arrays gets dice 1 and distances 0; absent from only one, dice 0 and distances nan.
    """
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    _check_same_shape(pred_labels, ref_labels)
    sampling_mm = _normalize_spacing(spacing_xyz, pred_labels.ndim, reverse=True)
    lo = min(int(pred_labels.min(initial=0)), int(ref_labels.min(initial=0)))
    hi = max(int(pred_labels.max(initial=0)), int(ref_labels.max(initial=0)))
    if lo < 0:
        raise DataError(f"Label maps contain a negative label ({lo}); labels must be 0..K.")
    if n_classes is None:
        k = hi
    else:
        if n_classes < 1:
            raise DataError(f"n_classes must be >= 1 (background included), got {n_classes}.")
        k = n_classes - 1
        if hi > k:
            raise DataError(
                f"Label {hi} found but n_classes={n_classes} allows labels 0..{k} only; "
                "check n_classes or the label file."
            )
    return {c: _class_metrics(pred_labels == c, ref_labels == c, sampling_mm) for c in range(1, k + 1)}


# --------------------------------------------------------------------------------------------------
# aggregation


class Summary(dict[str, tuple[float, float]]):
    """``{key: (mean, std)}`` over non-nan values, with per-key counts as attributes.

    ``counts[key]`` is the number of values used, ``nan_counts[key]`` the number of nan values skipped
    (e.g. cases where one mask was empty). ``std`` is the population std (ddof=0, as ``np.std``).
    A key whose values are all nan maps to ``(nan, nan)``.
    """

    def __init__(
        self, stats: dict[str, tuple[float, float]], counts: dict[str, int], nan_counts: dict[str, int]
    ):
        super().__init__(stats)
        self.counts = counts
        self.nan_counts = nan_counts

    def to_dict(self) -> dict[str, dict[str, float | int]]:
        """JSON-friendly ``{key: {"mean", "std", "n", "n_nan"}}``."""
        return {
            k: {"mean": m, "std": s, "n": self.counts[k], "n_nan": self.nan_counts[k]}
            for k, (m, s) in self.items()
        }


def summarize(rows: Iterable[dict[str, float]]) -> Summary:
    """Mean and std per key over rows (e.g. ``CaseMetrics.to_dict()``), ignoring and counting nan.

    Keys are taken in first-seen order; a key missing from a row simply does not count for that row.
    """
    values: dict[str, list[float]] = {}
    for row in rows:
        for key, v in row.items():
            values.setdefault(key, []).append(float(v))
    stats: dict[str, tuple[float, float]] = {}
    counts: dict[str, int] = {}
    nan_counts: dict[str, int] = {}
    for key, vs in values.items():
        arr = np.asarray(vs, dtype=np.float64)
        valid = arr[~np.isnan(arr)]
        counts[key] = int(valid.size)
        nan_counts[key] = int(arr.size - valid.size)
        stats[key] = (float(valid.mean()), float(valid.std())) if valid.size else (math.nan, math.nan)
    return Summary(stats, counts, nan_counts)
