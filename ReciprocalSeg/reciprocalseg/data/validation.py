"""Checks on images and label maps, with errors that say which file is wrong and how.

Conventions: arrays are in SimpleITK order (z, y, x); sizes, spacings and origins in
messages are in ITK order (x, y, z), in LPS millimetres, as a viewer shows them.

Labels are integer maps with 0 = background and 1..K = the K foreground classes; the value
255 (`UNANNOTATED`) marks voxels a partial label leaves unannotated and is never a class.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from ..common.errors import DataError
from ..common.file_formats import UNANNOTATED

__all__ = [
    "check_image",
    "check_image_structure",
    "check_label",
    "check_same_grid",
    "infer_n_classes",
    "largest_class",
    "present_values",
]

# Labels are returned as uint8: no value above this can be represented (and 255 itself marks
# unannotated voxels, so 254 is the largest class value).
MAX_LABEL = 255


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def _few(values: Sequence, limit: int = 10) -> str:
    shown = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in list(values)[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def check_image_structure(img: sitk.Image, source: str) -> None:
    """Raise DataError unless ``img`` is a 3D, non-empty, single-component image.

    Cheap (no pixel access); ``read_image`` runs it on every file it reads.
    """
    dim = img.GetDimension()
    size = tuple(img.GetSize())
    if dim == 2:
        raise DataError(f"{source}: is a 2D image of size {size}; a 3D volume is needed.")
    if dim != 3:
        raise DataError(f"{source}: is a {dim}D image of size {size}; a 3D volume is needed.")
    if min(size) == 0:
        raise DataError(f"{source}: the image is empty (size {size} has a zero-length axis).")
    n_comp = img.GetNumberOfComponentsPerPixel()
    if n_comp != 1:
        raise DataError(
            f"{source}: has {n_comp} components per voxel (a vector/RGB image); a scalar (grey-value) "
            "volume is needed. Extract one channel first."
        )


def check_image(img: sitk.Image, source: str) -> None:
    """Raise DataError unless ``img`` is 3D, non-empty, scalar and has only finite values."""
    check_image_structure(img, source)
    arr = sitk.GetArrayViewFromImage(img)
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            n_bad = int(arr.size - np.count_nonzero(finite))
            raise DataError(
                f"{source}: {n_bad} voxel(s) are NaN or infinite; the image must hold finite values."
            )


def check_same_grid(
    a: sitk.Image,
    b: sitk.Image,
    tol: float = 1e-3,
    names: tuple[str, str] = ("label", "image"),
) -> list[str]:
    """Human-readable differences between the voxel grids of ``a`` and ``b`` (empty if none).

    Size must match exactly. ``tol`` is relative, like ITK's own tolerance: spacing is
    compared relative to the spacing, origin in units of the (smallest) voxel spacing, and
    direction cosines (unitless) absolutely. The default 1e-3 absorbs the rounding of
    header writers but not a real misregistration.
    """
    na, nb = names
    diffs: list[str] = []
    size_a, size_b = tuple(a.GetSize()), tuple(b.GetSize())
    if size_a != size_b:
        diffs.append(f"size differs: {na} {size_a} vs {nb} {size_b} (x, y, z voxels)")
    sp_a, sp_b = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    if sp_a.shape != sp_b.shape:
        diffs.append(f"dimension differs: {na} {a.GetDimension()}D vs {nb} {b.GetDimension()}D")
        return diffs
    if np.any(np.abs(sp_a - sp_b) > tol * np.maximum(np.abs(sp_a), np.abs(sp_b))):
        diffs.append(f"spacing differs: {na} {_fmt(sp_a)} vs {nb} {_fmt(sp_b)} mm")
    org_a, org_b = np.array(a.GetOrigin()), np.array(b.GetOrigin())
    voxel = float(min(sp_a.min(), sp_b.min()))
    if np.any(np.abs(org_a - org_b) > tol * voxel):
        diffs.append(f"origin differs: {na} {_fmt(org_a)} vs {nb} {_fmt(org_b)} mm")
    dir_a, dir_b = np.array(a.GetDirection()), np.array(b.GetDirection())
    if np.any(np.abs(dir_a - dir_b) > tol):
        diffs.append(f"direction differs: {na} {_fmt(dir_a)} vs {nb} {_fmt(dir_b)}")
    return diffs


def present_values(arr: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer-valued array (bincount: much faster than np.unique)."""
    lo, hi = int(arr.min()), int(arr.max())
    if hi - lo > 1 << 16:
        return np.unique(arr)
    flat = arr.ravel()
    seen = np.zeros(hi - lo + 1, dtype=bool)
    # Chunks bound the int64 temporary on large volumes (a 512^3 label would need 1 GiB at once).
    step = 1 << 24
    for start in range(0, flat.size, step):
        chunk = flat[start : start + step].astype(np.int64) - lo
        seen |= np.bincount(chunk, minlength=hi - lo + 1) > 0
    return np.nonzero(seen)[0] + lo


def check_label(
    label: sitk.Image,
    image: sitk.Image,
    source: str,
    n_classes: int | None = None,
    tol: float = 1e-3,
) -> np.ndarray:
    """Check a label map against its image; return the label array (z, y, x) as uint8.

    Raises DataError naming ``source`` when the label is not on the image's voxel grid
    (size, spacing, origin, direction; see ``check_same_grid`` for ``tol``), or when its
    values are not integers in 0..K (K = ``n_classes`` when given, else at most 254) or 255
    (unannotated; a partial label). An all-background label is valid and returned as is; callers
    may warn about it. A label without any annotated voxel (all 255) is refused.
    """
    check_image_structure(label, source)
    diffs = check_same_grid(label, image, tol=tol, names=("label", "image"))
    if diffs:
        raise DataError(
            f"{source}: the label is not on the image's voxel grid: " + "; ".join(diffs) + ". "
            "Resample the label onto the image (nearest neighbour) or pair it with the right image."
        )
    arr = sitk.GetArrayFromImage(label)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError(f"{source}: the label contains NaN or infinite values.")
        rounded = np.rint(arr)
        # Tiny deviations (1.0000001 from a float pipeline) are rounding, not partial volumes.
        frac_mask = np.abs(arr - rounded) > 1e-3
        if frac_mask.any():
            bad = np.unique(arr[frac_mask])
            raise DataError(
                f"{source}: the label has non-integer values ({_few(bad.tolist())}; "
                f"{int(np.count_nonzero(frac_mask))} voxels). A label map must hold whole class numbers; "
                "was it resampled with linear interpolation? Use nearest neighbour."
            )
        arr = rounded
    elif not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{source}: unsupported label pixel type {arr.dtype}; use an integer type.")
    present = present_values(arr)
    negative = present[present < 0]
    if negative.size:
        raise DataError(
            f"{source}: the label has negative values ({_few([int(v) for v in negative])}); "
            f"labels must be 0 (background) or 1..K; {UNANNOTATED} marks an unannotated voxel "
            "(a partial label)."
        )
    if present.size == 1 and int(present[0]) == UNANNOTATED:
        raise DataError(
            f"{source}: every voxel of the label is {UNANNOTATED} (unannotated); a partial label needs "
            "some annotated voxels (0 = background, 1..K = classes). Annotate some, or use the case "
            "as unlabelled."
        )
    limit = MAX_LABEL if n_classes is None else int(n_classes)
    too_high = present[(present > limit) & (present != UNANNOTATED)]
    if too_high.size:
        values = _few([int(v) for v in too_high])
        if n_classes is None:
            raise DataError(
                f"{source}: the label has values above {MAX_LABEL} ({values}); at most {UNANNOTATED - 1} "
                f"classes are supported ({UNANNOTATED} marks unannotated voxels). Remap the label "
                "values to 0..K."
            )
        # n_classes counts the background everywhere the user sets it (train/serve --n-classes).
        needed = int(too_high.max()) + 1
        raise DataError(
            f"{source}: the label has values {values} but the configured number of classes is "
            f"{n_classes + 1} (background + K={n_classes} foreground; labels 0..{n_classes}). Set n_classes "
            f"to {needed}, background included (train --n-classes {needed}), or remap the label values."
        )
    return arr.astype(np.uint8, copy=False)


def infer_n_classes(labels: Iterable[np.ndarray | int] | np.ndarray | int) -> int:
    """Number of foreground classes K: the largest label value over ``labels``, at least 1.

    ``labels`` may be one array, one int, or an iterable of arrays and/or ints (e.g. the
    per-case maxima; give those with `largest_class`, which skips 255). 255 (unannotated) is
    never a class. An all-background cohort still gives 1 (binary segmentation).
    """
    if isinstance(labels, np.ndarray | int | np.integer):
        labels = [labels]
    best = 0
    for item in labels:
        if not np.size(item):
            continue
        lowest = int(np.min(item))
        if lowest < 0:
            raise DataError(f"label values must be >= 0 (0 = background); found {lowest}.")
        best = max(best, largest_class(item))
    return max(best, 1)


def largest_class(label: np.ndarray | int) -> int:
    """The largest class value in ``label`` (0 when it holds only background and/or 255)."""
    array = np.asarray(label)
    classes = array[array != UNANNOTATED] if np.any(array == UNANNOTATED) else array
    return int(np.max(classes)) if classes.size else 0
