"""Segment names resolve to classes per case (issue 26, item 2), on real MRML and a real service.

A segment the user adds takes its class from its name, as the case's *own* label (or scribbles)
names its classes, then as the default ``Class k``; never as another case's label does. The old
code took the names of the first label segmentation in the scene: in one scene order a segment
was exported with another case's class number, in the other the same edit was refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from mrml_helpers import add_volume, blob_image, oblique_ijk_to_ras, paint, service_label

SHAPE = (20, 24, 28)


def mask() -> np.ndarray:
    out = np.zeros(SHAPE, np.uint8)
    out[4:9, 5:12, 6:14] = 1
    return out


def new_case(loop, name: str) -> tuple:
    image, _ = blob_image(shape=SHAPE, seed=21)
    volume = add_volume(loop.logics.scene, name, image, oblique_ijk_to_ras())
    case_id = loop.add_volume(volume)
    _, label = loop.show_case(case_id)
    return volume, case_id, label


def cases_in_order(loop, tag: str, order: list) -> dict:
    """Cases ``x`` (its class 1 named Tumour), ``y`` (its class 2 named Tumour) and ``z`` (default
    names), added to the scene in ``order``."""
    made = {which: new_case(loop, f"{which}_{tag}") for which in order}
    made["x"][2].GetSegmentation().GetSegment("class_1").SetName("Tumour")
    if "y" in made:
        made["y"][2].GetSegmentation().GetSegment("class_2").SetName("Tumour")
    return made


ORDERS = {"x-y": ["x", "y"], "y-x": ["y", "x"], "x-y-z": ["x", "y", "z"], "z-y-x": ["z", "y", "x"]}


@pytest.mark.parametrize("order", list(ORDERS))
def test_a_segment_named_like_a_class_takes_its_own_cases_class(
    two_class_service, loop_factory, tmp_path, order
):
    loop = loop_factory(two_class_service)
    cases = cases_in_order(loop, order.replace("-", ""), ORDERS[order])
    for which, expected_class in (("x", 1), ("y", 2)):
        volume, case_id, label = cases[which]
        added = label.GetSegmentation().AddEmptySegment(
            "", "tumour ", (1.0, 0.0, 0.0)
        )  # case and spaces ignored
        paint(mask(), label, added, volume)
        loop.submit_segmentation(case_id, label, volume)
        np.testing.assert_array_equal(
            service_label(two_class_service.client, case_id, tmp_path), mask() * expected_class
        )


@pytest.mark.parametrize("order", ["x-y-z", "z-y-x"])
def test_a_name_only_another_case_gives_is_refused(two_class_service, loop_factory, order):
    from ReciprocalSegLib.segment_export import SegmentClassError

    loop = loop_factory(two_class_service)
    cases = cases_in_order(loop, f"refused{order.replace('-', '')}", ORDERS[order])
    volume, case_id, label = cases["z"]
    added = label.GetSegmentation().AddEmptySegment("", "Tumour", (1.0, 0.0, 0.0))
    paint(mask(), label, added, volume)
    with pytest.raises(SegmentClassError, match="Tumour"):
        loop.submit_segmentation(case_id, label, volume)
    assert two_class_service.client.get_case(case_id).label_version is None  # nothing uploaded


@pytest.mark.parametrize("order", ["x-y", "y-x"])
def test_scribbles_and_predictions_use_their_own_cases_names(
    two_class_service, loop_factory, tmp_path, order
):
    """A scribble segment named like the case's class 2, in either scene order; the case's scribble
    segments are named after its own label."""
    loop = loop_factory(two_class_service)
    cases = cases_in_order(loop, f"strokes{order.replace('-', '')}", ORDERS[order])
    volume, case_id, _ = cases["y"]
    scribbles = loop.scribble_segmentation(case_id)
    seg = scribbles.GetSegmentation()
    assert seg.GetSegment("class_2").GetName() == "Tumour"  # y's own name, not x's
    assert seg.GetSegment("class_1").GetName() == "Class 1"
    seg.RemoveSegment("class_2")
    added = seg.AddEmptySegment("", "Tumour", (1.0, 0.0, 0.0))
    paint(mask(), scribbles, added, volume)
    loop.submit_scribbles(case_id)
    expected = np.full(SHAPE, 255, np.uint8)
    expected[mask() > 0] = 2
    np.testing.assert_array_equal(service_label(two_class_service.client, case_id, tmp_path), expected)
