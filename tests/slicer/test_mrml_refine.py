"""Refine and Accept (issue 27) through the scene logic, on Slicer's real MRML classes (slicer-core),
a real service on loopback with a trained round, and the real refine engine.

The case's scribbles, painted over the shown prediction, refine a copy of the round's student;
the result is the segmentation ``<case> refined (from round N, K strokes)`` beside teacher and
student, on the scan under its parent transform; *Accept* makes it the case's full label, in the
scene and on the service.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from mrml_helpers import (
    add_linear_transform,
    add_volume,
    blob_image,
    node_counts,
    oblique_ijk_to_ras,
    orphans,
    paint,
    segmentation_on_grid,
    service_label,
)

pytestmark = pytest.mark.slow

SECONDS = 10.0
UNPAINTED = 255


def refined_map(client, case_id: str, tmp) -> np.ndarray:
    res = client.get_refined(case_id, out_dir=tmp / f"{case_id}_check_refined")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(res.labels)))


def test_refine_shows_the_refined_map_beside_teacher_and_student_and_accept_labels_the_case(
    trained_service, loop_factory, tmp_path
):
    from ReciprocalSegLib.logic import ATTR_MODEL
    from ReciprocalSegLib.prediction_display import REFINED_COLORS
    from ReciprocalSegLib.scene_cases import ATTR_ROLE, ROLE_LABEL, ROLE_REFINED, ROLE_STUDENT, ROLE_TEACHER

    loop = loop_factory(trained_service)
    client = trained_service.client
    scene = loop.logics.scene
    transform = add_linear_transform(scene)
    image, mask = blob_image(seed=11)
    volume = add_volume(scene, "refined_case", image, oblique_ijk_to_ras())
    volume.SetAndObserveTransformNodeID(transform.GetID())
    case_id = loop.add_volume(volume)
    loop.predict(case_id)
    current = client.info().current_round

    # Strokes painted over the prediction: one in the structure, one of background beside it.
    scribbles = loop.scribble_segmentation(case_id)
    inside, outside = np.zeros(mask.shape, np.uint8), np.zeros(mask.shape, np.uint8)
    k = mask.shape[0] // 2
    inside[k, 10:14, 12:16] = mask[k, 10:14, 12:16]
    outside[k, 1:3, 1:20] = 1 - mask[k, 1:3, 1:20]
    paint(inside, scribbles, "class_1", volume)
    paint(outside, scribbles, "background", volume)
    counts = node_counts(scene)

    refined = loop.refine(case_id, seconds=SECONDS)
    name = loop.last_refined.name
    assert name == f"refined from round {current}, 2 strokes"
    assert refined.GetName() == f"{case_id} refined (from round {current}, 2 strokes)"
    assert refined.GetAttribute(ATTR_MODEL) == name and refined.GetAttribute(ATTR_ROLE) == ROLE_REFINED
    assert refined.GetTransformNodeID() == transform.GetID()
    display = refined.GetDisplayNode()
    assert display.GetVisibility() and display.GetSegmentVisibility2DFill("class_1")
    assert display.GetSegmentVisibility2DOutline("class_1")
    segment = refined.GetSegmentation().GetSegment("class_1")
    assert segment is not None and tuple(round(c, 3) for c in segment.GetColor()) == REFINED_COLORS[0]
    # Beside teacher and student, which stay as they were.
    for role in (ROLE_TEACHER, ROLE_STUDENT):
        assert loop.case_node(case_id, role) is not None
    # On the scan in world space: exactly the service's refined map.
    np.testing.assert_array_equal(
        segmentation_on_grid(loop.nodes, refined, volume), refined_map(client, case_id, tmp_path)
    )
    # The strokes were stored as the case's partial label.
    expected = np.full(mask.shape, UNPAINTED, np.uint8)
    expected[outside > 0] = 0
    expected[inside > 0] = 1
    np.testing.assert_array_equal(service_label(client, case_id, tmp_path), expected)

    # Another stroke, another refine: one refined node, named for the accumulated strokes.
    more = np.zeros(mask.shape, np.uint8)
    more[k + 3, 9:12, 11:14] = mask[k + 3, 9:12, 11:14]
    paint(more, scribbles, "class_1", volume)
    refined = loop.refine(case_id, seconds=SECONDS)
    assert loop.last_refined.label_version == 2 and loop.last_refined.merged_with == 1
    strokes = loop.last_refined.strokes
    assert refined.GetName() == f"{case_id} refined (from round {current}, {strokes} strokes)"
    assert [n for n in loop.nodes.tagged() if n.GetAttribute(ATTR_ROLE) == ROLE_REFINED] == [refined]
    assert node_counts(scene)["vtkMRMLSegmentationNode"] == counts["vtkMRMLSegmentationNode"] + 1
    assert orphans(scene) == []

    # Accept: the refined map is the case's full label, on the service and in its label node.
    truth = refined_map(client, case_id, tmp_path)
    version = loop.accept_refined(case_id)
    assert version.kind == "submitted" and version.annotated_fraction == 1.0
    np.testing.assert_array_equal(service_label(client, case_id, tmp_path), truth)
    label = loop.case_node(case_id, ROLE_LABEL)
    np.testing.assert_array_equal(segmentation_on_grid(loop.nodes, label, volume), truth)
    assert label.GetTransformNodeID() == transform.GetID()
    assert client.get_case(case_id).annotation == "full"

    # Another case shown hides it; the case's removal takes it along.
    other = loop.add_volume(add_volume(scene, "other_case", image, oblique_ijk_to_ras()))
    loop.show_case(other)
    assert not refined.GetDisplayNode().GetVisibility()
    loop.remove_case_nodes(case_id)
    assert loop.case_node(case_id, ROLE_REFINED) is None and orphans(scene) == []


def test_nothing_painted_is_refused_before_the_service_is_asked(trained_service, loop_factory):
    from ReciprocalSegLib.scribbles import ScribbleError

    loop = loop_factory(trained_service)
    image, _ = blob_image(seed=12)
    volume = add_volume(loop.logics.scene, "unpainted_case", image, oblique_ijk_to_ras())
    case_id = loop.add_volume(volume)
    loop.show_case(case_id)
    loop.scribble_segmentation(case_id)
    with pytest.raises(ScribbleError, match="Nothing is painted"):
        loop.refine(case_id, seconds=SECONDS)
    case = trained_service.client.get_case(case_id)
    assert (case.n_label_versions, case.annotation) == (0, "none")
    with pytest.raises(Exception, match="no refined prediction"):
        trained_service.client.get_refined(case_id)
