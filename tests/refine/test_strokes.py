"""Stroke maps: counting strokes, and crop centres drawn per stroke."""

from __future__ import annotations

import numpy as np

from reciprocalseg.common.file_formats import UNANNOTATED
from reciprocalseg.refine.strokes import StrokeCentres, count_strokes, stroke_components


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


def test_centres_draw_each_stroke_alike_whatever_its_size() -> None:
    array = np.full((20, 20, 20), UNANNOTATED, np.uint8)
    array[:, :, 0] = 0  # a large background stroke: 400 voxels
    array[10, 10, 10] = 1  # a one-voxel stroke
    centres = StrokeCentres.from_label(array)
    rng = np.random.default_rng(1)
    drawn = [tuple(centres.draw(rng)) for _ in range(400)]
    share = sum(c == (10, 10, 10) for c in drawn) / len(drawn)
    assert 0.4 < share < 0.6
    assert all(array[c] != UNANNOTATED for c in drawn)
