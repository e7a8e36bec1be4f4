"""How far a refine may change the round's prediction (refine/reach.py): distances in mm on an
anisotropic grid, and the blend of the adapted and the round's labels."""

from __future__ import annotations

import numpy as np

from reciprocalseg.refine.reach import keep_far_from_strokes, within_reach


def test_reach_is_measured_in_millimetres_on_the_scans_spacing() -> None:
    stroked = np.zeros((9, 21, 21), bool)
    stroked[4, 10, 10] = True
    near = within_reach(stroked, (3.0, 1.0, 1.0), reach_mm=6.0)
    assert near[4, 10, 16] and not near[4, 10, 17]  # 6 mm and 7 mm along x (1 mm voxels)
    assert near[6, 10, 10] and not near[7, 10, 10]  # 6 mm and 9 mm along z (3 mm slices)
    assert near[5, 10, 15] and not near[5, 10, 16]  # sqrt(9 + 25) = 5.8 mm, sqrt(9 + 36) = 6.7 mm
    expected = {
        (z, y, x)
        for z in range(9)
        for y in range(21)
        for x in range(21)
        if ((3 * (z - 4)) ** 2 + (y - 10) ** 2 + (x - 10) ** 2) ** 0.5 <= 6.0
    }
    assert set(map(tuple, np.argwhere(near))) == expected


def test_no_stroke_reaches_nothing_and_the_box_is_clipped_at_the_border() -> None:
    assert not within_reach(np.zeros((4, 5, 6), bool), (1.0, 1.0, 1.0), 3.0).any()
    stroked = np.zeros((4, 5, 6), bool)
    stroked[0, 0, 0] = True
    near = within_reach(stroked, (1.0, 1.0, 1.0), 100.0)
    assert near.all()


def test_the_round_keeps_its_labels_beyond_the_reach() -> None:
    refined, base = np.ones((1, 1, 12), np.uint8), np.zeros((1, 1, 12), np.uint8)
    stroked = np.zeros((1, 1, 12), bool)
    stroked[0, 0, 0] = True
    out = keep_far_from_strokes(refined, base, stroked, (1.0, 1.0, 2.0), reach_mm=4.0)
    assert out[0, 0].tolist() == [1, 1, 1] + [0] * 9  # 0, 2 and 4 mm away: the adapted copy's
    assert keep_far_from_strokes(refined, base, stroked, (1.0, 1.0, 2.0), None) is refined
