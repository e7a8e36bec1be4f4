"""Strokes painted on a case: checks against the case and the model, and counting them.

A stroke map follows the partial-label convention (docs/DESIGN.md, "Partial labels"): 255 =
unannotated, 0 = background, k = class k, on the scan's own grid. A stroke is a connected piece
(26-connected) of the voxels painted with one value, so K counts what a person drew: three
scribbles of the same class are three strokes, a scribble crossing from class 1 into class 2 two.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..common.errors import DataError
from ..common.file_formats import UNANNOTATED
from ..data.validation import check_image_structure, check_same_grid, present_values

# 26-connectivity: a stroke drawn across slices is one stroke.
_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


def full_map_refusal(what: str) -> str:
    """Why a stroke map with no unannotated voxel is refused: it is almost always a mask (a bool
    or 0/1 array) whose False voxels would count as painted background over the whole scan, and
    stored as the case's label it would make that label full."""
    return (
        f"{what}: every voxel is annotated (no {UNANNOTATED}), so this is a whole label map, not "
        f"strokes; a 0/1 or bool mask would paint background over the whole scan. Start from "
        f"{UNANNOTATED} everywhere (numpy: np.full(shape, {UNANNOTATED}, np.uint8)) and set only the "
        "painted voxels, or submit a whole map as the case's label"
    )


def check_strokes(strokes: sitk.Image, image: sitk.Image, n_classes: int) -> np.ndarray:
    """The stroke map as a uint8 (z, y, x) array, or a DataError that names the problem.

    Refused: a map that is not on the scan's voxel grid, non-integer or non-finite values,
    negative values, classes the model does not have (`n_classes` counts the background), a
    map with no stroke at all (every voxel 255) and a map with nothing unannotated (a mask).
    """
    check_image_structure(strokes, "strokes")
    diffs = check_same_grid(strokes, image, names=("strokes", "image"))
    if diffs:
        raise DataError(
            "the strokes are not on the case's voxel grid: " + "; ".join(diffs) + ". Paint them on "
            "the case's own image (or resample them onto it with nearest neighbour)."
        )
    array = sitk.GetArrayFromImage(strokes)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DataError("the strokes hold NaN or infinite values; a stroke map holds whole class numbers")
        if np.any(np.abs(array - np.rint(array)) > 1e-3):
            raise DataError(
                "the strokes hold non-integer values; a stroke map holds whole class numbers "
                f"(0 background, 1..K classes, {UNANNOTATED} unannotated)"
            )
        array = np.rint(array)
    elif not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"the strokes have the unsupported pixel type {array.dtype}; use an integer type")
    values = [int(v) for v in present_values(array)]
    if values and values[0] < 0:
        raise DataError(
            f"the strokes hold negative values ({values[0]}); 0 is background, {UNANNOTATED} unannotated"
        )
    unknown = [v for v in values if v >= n_classes and v != UNANNOTATED]
    if unknown:
        raise DataError(
            f"the strokes hold class(es) {', '.join(map(str, unknown))} but the model segments classes "
            f"1..{n_classes - 1} (0 = background, {UNANNOTATED} = unannotated): paint only the "
            "workspace's classes"
        )
    if UNANNOTATED not in values:
        raise DataError(full_map_refusal("the strokes"))
    if values == [UNANNOTATED]:
        raise DataError(
            f"there are no strokes: every voxel is {UNANNOTATED} (unannotated); paint at least one "
            "stroke of a class (or of background, 0) where the prediction is wrong"
        )
    return array.astype(np.uint8)


def stroke_components(array: np.ndarray) -> list[np.ndarray]:
    """One (n, 3) int array of (z, y, x) voxels per stroke, strokes of value 0 first, then by class."""
    strokes = []
    for value in (int(v) for v in present_values(array)):
        if value == UNANNOTATED:
            continue
        pieces, count = ndimage.label(array == value, structure=_CONNECTIVITY)
        if count == 0:
            continue
        # One pass over the voxels for all pieces of this value (sorted by piece number).
        where = np.argwhere(pieces > 0)
        order = np.argsort(pieces[tuple(where.T)], kind="stable")
        where = where[order]
        bounds = np.cumsum(np.bincount(pieces[tuple(where.T)], minlength=count + 1))
        strokes.extend(where[bounds[i] : bounds[i + 1]] for i in range(count))
    return strokes


def count_strokes(array: np.ndarray) -> int:
    """K: the connected pieces of annotated voxels, per value (background strokes count too)."""
    return len(stroke_components(array))
