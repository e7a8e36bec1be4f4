"""Scribbles simulated from a ground-truth label (issue 17 part 3): what about a minute of
clicking gives, so the benchmark can ask whether partial labels pay.

The rule, per case (`scribble_label`):
- take `slices` axial slices (default 3) through the structures, evenly spaced between the
  20th and 80th percentile of the slices that contain foreground (the middle of the organ,
  where a user would start);
- on each, per foreground class: a stroke along the class's 2D skeleton (scikit-image's
  `skeletonize`, one pixel wide), thickened to `stroke_width` pixels (default 3, a thin brush)
  and kept inside the structure;
- on each, one background stroke: a closed ring `stroke_width` pixels wide, `margin` pixels
  (default 5: about 3 mm on left atrium's 0.625 mm grid) outside the union of the structures;
- every other voxel is unannotated (255, `UNANNOTATED`).

About six strokes per case (three skeleton strokes, three rings): a user with a brush draws
one in a few seconds, so about a minute per case. The annotated fraction is reported per case
(`annotated_fraction`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.morphology import skeletonize

from reciprocalseg.common.file_formats import UNANNOTATED
from reciprocalseg.data.annotation import annotated_fraction

__all__ = ["UNANNOTATED", "annotated_fraction", "scribble_label", "scribble_slices", "write_scribbled_label"]


def scribble_slices(label_zyx: np.ndarray, slices: int) -> list[int]:
    """The axial slice indices to scribble on: evenly spaced through the middle of the organ."""
    with_fg = np.flatnonzero((label_zyx > 0).any(axis=(1, 2)))
    if with_fg.size == 0:
        return []
    lo, hi = np.percentile(with_fg, [20, 80])
    picks = np.unique(np.round(np.linspace(lo, hi, slices)).astype(int))
    return [int(z) for z in picks if (label_zyx[z] > 0).any()]


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def _thicken(mask: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return mask
    return ndimage.binary_dilation(mask, structure=_disk(width // 2))


def scribble_slice(label_yx: np.ndarray, stroke_width: int = 3, margin: int = 5) -> np.ndarray:
    """One slice's scribble: class strokes along skeletons, a background ring; 255 elsewhere."""
    out = np.full(label_yx.shape, UNANNOTATED, dtype=np.uint8)
    foreground = label_yx > 0
    outer = ndimage.binary_dilation(foreground, structure=_disk(margin))
    ring = outer & ~ndimage.binary_erosion(outer, structure=_disk(max(1, stroke_width // 2)))
    out[ring & ~foreground] = 0
    for cls in (int(c) for c in np.unique(label_yx) if c > 0):
        inside = label_yx == cls
        stroke = _thicken(skeletonize(inside), stroke_width) & inside
        out[stroke] = cls
    return out


def scribble_label(
    label_zyx: np.ndarray, slices: int = 3, stroke_width: int = 3, margin: int = 5
) -> np.ndarray:
    """The whole case's partial label (z, y, x): scribbled slices, 255 everywhere else."""
    out = np.full(label_zyx.shape, UNANNOTATED, dtype=np.uint8)
    for z in scribble_slices(label_zyx, slices):
        out[z] = scribble_slice(label_zyx[z], stroke_width, margin)
    return out


def write_scribbled_label(label_path: Path, out_path: Path, **rule: int) -> float:
    """Write the scribbled version of `label_path` (same geometry) to `out_path`; its annotated
    fraction."""
    from reciprocalseg.common.atomic import atomic_path

    label = sitk.ReadImage(str(label_path))
    partial = scribble_label(sitk.GetArrayFromImage(label), **rule)
    image = sitk.GetImageFromArray(partial)
    image.CopyInformation(label)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return annotated_fraction(partial)
