"""Stroke maps: counting strokes."""

from __future__ import annotations

import numpy as np

from reciprocalseg.common.file_formats import UNANNOTATED
from reciprocalseg.refine.strokes import count_strokes, stroke_components


def test_a_stroke_is_a_connected_piece_of_one_value() -> None:
    array = np.full((10, 10, 10), UNANNOTATED, np.uint8)
    array[1, 1, 1:6] = 1  # a line of class 1
    array[2, 2, 6] = 1  # touches the line's end only diagonally: the same stroke (26-connected)
    array[8, 8, 2:5] = 1  # a second stroke of class 1
    array[5, 5, 5:8] = 0  # a background stroke
    array[5, 5, 8:10] = 2  # continues the background stroke in class 2: a stroke of its own
    assert count_strokes(array) == 4
    pieces = stroke_components(array)
    assert [len(p) for p in pieces] == [3, 6, 3, 2]  # background first, then class 1, then 2
    assert all(len({int(array[tuple(v)]) for v in piece}) == 1 for piece in pieces)
    assert count_strokes(np.full((4, 4, 4), UNANNOTATED, np.uint8)) == 0


def test_a_map_with_nothing_unannotated_is_refused_as_a_mask() -> None:
    """A bool or 0/1 mask sent as strokes counted every False voxel as painted background."""
    import pytest
    import SimpleITK as sitk

    from reciprocalseg.common.errors import DataError
    from reciprocalseg.refine.strokes import check_strokes

    image = sitk.Image(6, 5, 4, sitk.sitkFloat32)
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[2, 2, 2:4] = 1
    strokes = sitk.GetImageFromArray(mask)
    strokes.CopyInformation(image)
    with pytest.raises(DataError, match="every voxel is annotated"):
        check_strokes(strokes, image, n_classes=2)
    mask[mask == 0] = UNANNOTATED  # the same stroke, the rest unannotated: accepted
    strokes = sitk.GetImageFromArray(mask)
    strokes.CopyInformation(image)
    assert check_strokes(strokes, image, n_classes=2).tolist() == mask.tolist()
