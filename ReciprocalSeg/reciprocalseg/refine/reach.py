"""How far a refine may change the round's prediction: within `reach_mm` of the strokes.

Strokes are local evidence. The adapted copy is trained on a few voxels, and its tail is shared by
the whole scan, so a stroke can move the prediction far from where it was painted: on left-atrium
scans one stroke took the mean Dice from 0.78 to 0.51 (one case to 0.00), on hippocampus a stroke
of one class could erase the other. The refined map therefore takes the adapted copy's labels
only near the strokes and keeps the round's prediction elsewhere, as a person correcting a mask
expects (benchmarks/RESULTS.md, "The loop in strokes").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def within_reach(stroked: np.ndarray, spacing_zyx: tuple[float, float, float], reach_mm: float) -> np.ndarray:
    """Voxels at most `reach_mm` (Euclidean, in mm) from a stroke voxel; `stroked` is a (z, y, x)
    boolean map. The distance transform runs on the strokes' bounding box widened by the reach
    only, so a large scan with a few strokes costs little."""
    near = np.zeros(stroked.shape, bool)
    where = np.argwhere(stroked)
    if len(where) == 0:
        return near
    margin = np.ceil(reach_mm / np.asarray(spacing_zyx, float)).astype(int)
    lo = np.maximum(where.min(axis=0) - margin, 0)
    hi = np.minimum(where.max(axis=0) + margin + 1, stroked.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    distance = ndimage.distance_transform_edt(~stroked[box], sampling=spacing_zyx)
    near[box] = distance <= reach_mm
    return near


def keep_far_from_strokes(
    refined: np.ndarray,
    base: np.ndarray,
    stroked: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    reach_mm: float | None,
) -> np.ndarray:
    """`refined` within `reach_mm` of the strokes, `base` (the round's prediction) elsewhere;
    `refined` unchanged when `reach_mm` is None."""
    if reach_mm is None:
        return refined
    return np.where(within_reach(stroked, spacing_zyx, reach_mm), refined, base)
