"""benchmarks/loop.py: the simulated annotator's rule on synthetic masks, and the tables' arithmetic."""

from __future__ import annotations

import numpy as np

from benchmarks.loop import dice_per_class, largest_error, next_stroke, stroke_in, strokes_to, summarise


def test_the_largest_error_component_and_its_true_class() -> None:
    truth = np.zeros((12, 20, 20), np.uint8)
    truth[2:8, 2:10, 2:10] = 1
    predicted = truth.copy()
    predicted[2:8, 2:10, 2:5] = 0  # 144 voxels of class 1 missed
    predicted[9:11, 12:15, 12:15] = 2  # 18 background voxels called class 2
    predicted[0, 0, 0] = 1  # a single false voxel elsewhere
    component, cls = largest_error(truth, predicted)
    assert cls == 1 and component.sum() == 144
    assert np.all(truth[component] == 1) and np.all(predicted[component] == 0)
    assert largest_error(truth, truth) is None
    assert next_stroke(truth, truth, (1.0, 1.0, 1.0), 7) is None


def test_a_stroke_runs_through_the_deepest_voxel_along_the_section_inside_the_component() -> None:
    component = np.zeros((9, 30, 30), bool)
    component[2:7, 10:15, 3:28] = True  # long along x, 5 slices thick: the deepest voxels are at z 4
    voxels = stroke_in(component, (1.0, 1.0, 1.0), 7)
    assert len(voxels) == 7
    assert np.all(voxels[:, 0] == 4)  # one axial slice, the middle one
    assert np.all(voxels[:, 1] == 12)  # along x: y stays at the section's middle
    assert np.all(np.diff(voxels[:, 2]) == 1)  # a connected straight line
    assert np.all(component[tuple(voxels.T)])
    # A component thinner than the stroke: the stroke stops at its border.
    small = np.zeros((5, 9, 9), bool)
    small[2, 4, 3:6] = True
    voxels = stroke_in(small, (1.0, 1.0, 1.0), 7)
    assert len(voxels) == 3 and np.all(small[tuple(voxels.T)])
    # Anisotropic spacing: the longest side in millimetres wins (y here, 4 voxels of 3 mm).
    wide = np.zeros((3, 12, 12), bool)
    wide[1, 4:8, 2:10] = True  # 4 voxels along y at 3 mm = 12 mm, 8 along x at 1 mm = 8 mm
    voxels = stroke_in(wide, (1.0, 3.0, 1.0), 7)
    assert len(set(voxels[:, 2].tolist())) == 1 and len(voxels) == 4


def test_the_stroke_carries_the_true_class() -> None:
    truth = np.zeros((8, 16, 16), np.uint8)
    truth[2:6, 3:13, 3:13] = 2
    predicted = np.where(truth == 2, 1, 0).astype(np.uint8)
    voxels, cls = next_stroke(truth, predicted, (1.0, 1.0, 1.0), 5)
    assert cls == 2 and len(voxels) == 5 and np.all(truth[tuple(voxels.T)] == 2)


def test_dice_and_strokes_to_dice() -> None:
    truth = np.zeros((4, 4, 4), np.uint8)
    truth[0, 0, :2] = 1
    predicted = np.zeros_like(truth)
    predicted[0, 0, 0] = 1
    assert dice_per_class(predicted, truth, 3) == [2 / 3, 1.0]  # class 2 absent in both: 1
    assert strokes_to([0.5, 0.79, 0.81, 0.9], 0.80) == 2
    assert strokes_to([0.85], 0.80) == 0 and strokes_to([0.1, 0.2], 0.8) is None


def test_summary_counts_unreached_thresholds_as_cap_plus_one() -> None:
    rows = [
        {"case": "a", "arm": "paste", "strokes": 0, "dice": [0.7]},
        {"case": "a", "arm": "paste", "strokes": 1, "dice": [0.72]},
        {"case": "a", "arm": "refine", "strokes": 0, "dice": [0.7]},
        {"case": "a", "arm": "refine", "strokes": 1, "dice": [0.86], "seconds": 3.0},
        {"case": "a", "arm": "refine", "strokes": 2, "dice": [0.91], "seconds": 5.0},
    ]
    s = summarise(rows, cap=4)
    assert s["paste"]["to_0.85"] == {"mean": 5.0, "median": 5.0, "reached": 0}
    assert s["refine"]["to_0.85"] == {"mean": 1.0, "median": 1.0, "reached": 1}
    assert s["refine"]["to_0.90"]["mean"] == 2.0
    assert s["refine"]["dice_at"]["4"] == 0.91  # carried forward after the last stroke
    assert s["refine"]["seconds"]["max"] == 5.0 and s["paste_over_refine_to_0.85"] == 5.0
    assert s["refine"]["class_dice_at"] == {"0": [0.7], "1": [0.86], "4": [0.91]}
