"""The module's scene logic on Slicer's real MRML classes (slicer-core) against a real service.

Each test names the defect of issue 14 it guards; the ones marked "fails on the old logic" were
run against the previous behaviour (see docs/SLICER.md, "Tests") and failed there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mrml_helpers import (
    add_linear_transform,
    add_volume,
    blob_image,
    node_counts,
    oblique_ijk_to_ras,
    segmentation_on_grid,
    service_label,
    service_prediction,
    volume_on_grid_of,
)

# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("left_handed", [False, True], ids=["oblique", "oblique-left-handed"])
def test_submit_and_predict_are_voxel_exact_on_oblique_grids(
    trained_service, loop_factory, tmp_path, left_handed
):
    from ReciprocalSegLib.scene_cases import ROLE_LABEL

    loop = loop_factory(trained_service)
    image, mask = blob_image(seed=3)
    volume = add_volume(
        loop.logics.scene, f"obl{int(left_handed)}", image, oblique_ijk_to_ras(left_handed=left_handed)
    )
    case_id = loop.add_volume(volume)

    _, label = loop.show_case(case_id)
    assert loop.case_node(case_id, ROLE_LABEL) is label
    from slicer.util import updateSegmentBinaryLabelmapFromArray

    updateSegmentBinaryLabelmapFromArray(mask, label, "class_1", volume)
    loop.submit_segmentation(case_id, label, volume)
    np.testing.assert_array_equal(service_label(trained_service.client, case_id, tmp_path), mask)

    teacher, student, disagreement = loop.predict(case_id)
    truth = service_prediction(trained_service.client, case_id, tmp_path)
    np.testing.assert_array_equal(segmentation_on_grid(loop.nodes, teacher, volume), truth["teacher"])
    np.testing.assert_array_equal(segmentation_on_grid(loop.nodes, student, volume), truth["student"])


@pytest.mark.parametrize("left_handed", [False, True], ids=["oblique", "oblique-left-handed"])
def test_volume_under_a_parent_transform_labels_and_predictions_land_on_the_scan(
    trained_service, loop_factory, tmp_path, left_handed
):
    """Wrong place (fails on the old logic): nodes made for a case sit under the scan's transform."""
    from slicer.util import updateSegmentBinaryLabelmapFromArray

    loop = loop_factory(trained_service)
    scene = loop.logics.scene
    transform = add_linear_transform(scene)
    image, mask = blob_image(seed=4)
    volume = add_volume(scene, f"moved{int(left_handed)}", image, oblique_ijk_to_ras(left_handed=left_handed))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    case_id = loop.add_volume(volume)

    # Scene -> service: a label painted on the scan (in its voxels) is uploaded on those voxels.
    _, label = loop.show_case(case_id)
    updateSegmentBinaryLabelmapFromArray(mask, label, "class_1", volume)
    loop.submit_segmentation(case_id, label, volume)
    np.testing.assert_array_equal(service_label(trained_service.client, case_id, tmp_path), mask)

    # Service -> scene: predictions sit on the scan in world space.
    teacher, student, disagreement = loop.predict(case_id)
    truth = service_prediction(trained_service.client, case_id, tmp_path)
    np.testing.assert_array_equal(segmentation_on_grid(loop.nodes, teacher, volume), truth["teacher"])
    # The same transform and the same grid up to axis order (Slicer reads left-handed files right-handed).
    np.testing.assert_allclose(volume_on_grid_of(disagreement, volume), truth["disagreement"])

    # "Correct from student" then submit uploads the student's voxels, not shifted ones.
    corrected = loop.copy_student_to_label(case_id)
    loop.submit_segmentation(case_id, corrected, volume)
    np.testing.assert_array_equal(service_label(trained_service.client, case_id, tmp_path), truth["student"])
    for node in (label, teacher, student, disagreement, corrected):
        assert node.GetTransformNodeID() == transform.GetID(), node.GetName()


# --------------------------------------------------------------------------- class by segment identity


def _two_class_case(loop, name):
    from slicer.util import updateSegmentBinaryLabelmapFromArray

    image, _ = blob_image(seed=5)
    volume = add_volume(loop.logics.scene, name, image, oblique_ijk_to_ras())
    case_id = loop.add_volume(volume)
    _, label = loop.show_case(case_id)
    shape = image.shape
    one, two = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    one[2:8, 3:10, 4:12] = 1
    two[10:16, 12:20, 14:24] = 1
    seg = label.GetSegmentation()
    assert [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())] == ["class_1", "class_2"]
    updateSegmentBinaryLabelmapFromArray(one, label, "class_1", volume)
    updateSegmentBinaryLabelmapFromArray(two, label, "class_2", volume)
    return volume, case_id, label, one, two


def test_class_values_follow_segment_identity_after_delete_reorder_add(
    two_class_service, loop_factory, tmp_path
):
    """Wrong class (fails on the old logic): list order never decides the label value."""
    from slicer.util import updateSegmentBinaryLabelmapFromArray

    loop = loop_factory(two_class_service)
    volume, case_id, label, one, two = _two_class_case(loop, "identity")
    seg = label.GetSegmentation()

    # Deleted: class_1 removed, class_2 keeps value 2 (the old logic uploaded it as 1).
    seg.RemoveSegment("class_1")
    loop.submit_segmentation(case_id, label, volume)
    np.testing.assert_array_equal(service_label(two_class_service.client, case_id, tmp_path), two * 2)

    # Added by the Segment Editor (ID Segment_1) and named "Class 1": value 1, placed first in the list.
    new_id = seg.AddEmptySegment("", "Class 1", (1.0, 0.0, 0.0))
    assert new_id != "class_1"
    updateSegmentBinaryLabelmapFromArray(one, label, new_id, volume)
    seg.SetSegmentIndex(new_id, 0) if hasattr(seg, "SetSegmentIndex") else None
    loop.submit_segmentation(case_id, label, volume)
    np.testing.assert_array_equal(service_label(two_class_service.client, case_id, tmp_path), one + two * 2)

    # Reordered: class_2 moved to the front; values unchanged.
    seg.SetSegmentIndex("class_2", 0)
    assert seg.GetNthSegmentID(0) == "class_2"
    loop.submit_segmentation(case_id, label, volume)
    np.testing.assert_array_equal(service_label(two_class_service.client, case_id, tmp_path), one + two * 2)


def test_segment_without_a_class_is_a_clear_error(two_class_service, loop_factory):
    from ReciprocalSegLib.segment_export import SegmentClassError

    loop = loop_factory(two_class_service)
    volume, case_id, label, one, two = _two_class_case(loop, "unnamed")
    label.GetSegmentation().AddEmptySegment("", "tumour?", (0.0, 1.0, 0.0))
    before = len(two_class_service.client.label_history(case_id).versions)
    with pytest.raises(SegmentClassError, match="tumour"):
        loop.submit_segmentation(case_id, label, volume)
    assert len(two_class_service.client.label_history(case_id).versions) == before  # nothing uploaded


def test_overlapping_segments_are_a_clear_error_never_a_silent_choice(two_class_service, loop_factory):
    """Overlap (the old logic logged a warning and uploaded the later segment's class)."""
    from ReciprocalSegLib.segment_export import SegmentClassError
    from slicer.util import updateSegmentBinaryLabelmapFromArray

    loop = loop_factory(two_class_service)
    volume, case_id, label, one, two = _two_class_case(loop, "overlap")
    both = np.maximum(one, two)
    both[5:12, 5:14, 8:18] = 1
    updateSegmentBinaryLabelmapFromArray(both, label, "class_2", volume)
    overlap = int(((both > 0) & (one > 0)).sum())
    with pytest.raises(SegmentClassError, match=rf"{overlap} voxels .*class_2.*class_1|{overlap} voxels"):
        loop.submit_segmentation(case_id, label, volume)
    assert two_class_service.client.get_case(case_id).label_version is None


# --------------------------------------------------------------------------- batches, display


def test_non_scalar_volumes_are_skipped_with_a_message_and_the_batch_goes_on(trained_service, loop_factory):
    """A batch aborted by one volume (fails on the old logic)."""
    from slicer.util import updateVolumeFromArray

    loop = loop_factory(trained_service)
    scene = loop.logics.scene
    image, _ = blob_image(shape=(8, 9, 10), seed=6)
    first = add_volume(scene, "batch_a", image, oblique_ijk_to_ras())
    skipped_nodes = []
    for class_name in ("vtkMRMLVectorVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode"):
        node = scene.AddNewNodeByClass(class_name, f"batch_{class_name}")
        updateVolumeFromArray(node, np.zeros((8, 9, 10, 3), np.float32))
        skipped_nodes.append(node)
    last = add_volume(scene, "batch_b", image, oblique_ijk_to_ras())
    added, skipped = loop.add_all_volumes()
    assert added == ["batch_a", "batch_b"]
    assert len(skipped) == 2 and all("skipped" in s for s in skipped)
    assert {c.id for c in trained_service.client.list_cases()} >= {"batch_a", "batch_b"}
    assert first.GetAttribute("ReciprocalSeg.CaseId") == "batch_a" and last.GetAttribute(
        "ReciprocalSeg.CaseId"
    )


def test_disagreement_overlay_is_transparent_where_zero(trained_service, loop_factory, tmp_path):
    """Display (fails on the old logic): voxels with zero disagreement are not drawn at all."""
    from slicer.util import arrayFromVolume

    loop = loop_factory(trained_service)
    _, _, disagreement = loop.predict(
        "phantom_001" if _has(trained_service, "phantom_001") else _first(trained_service)
    )
    display = disagreement.GetDisplayNode()
    values = arrayFromVolume(disagreement)
    assert display.GetApplyThreshold()
    assert 0.0 < display.GetLowerThreshold()
    if (values > 0).any():
        assert display.GetLowerThreshold() <= values[values > 0].min()
    # The display pipeline itself: RGBA output with alpha 0 where the value is 0.
    display.SetInputImageDataConnection(disagreement.GetImageDataConnection())
    display.UpdateImageDataPipeline()
    algorithm = display.GetOutputImageDataConnection().GetProducer()
    algorithm.Update()
    from vtk.util.numpy_support import vtk_to_numpy

    rgba = vtk_to_numpy(algorithm.GetOutputDataObject(0).GetPointData().GetScalars())
    alpha = rgba[:, 3].reshape(values.shape)
    assert (alpha[values == 0] == 0).all()
    if (values > 0).any():
        assert (alpha[values > 0] > 0).all()


def _has(run, case_id):
    return any(c.id == case_id for c in run.client.list_cases())


def _first(run):
    return run.client.list_cases()[0].id


def test_show_case_hides_other_cases(trained_service, loop_factory):
    """Display (fails on the old logic): another case's segmentations stay hidden."""
    loop = loop_factory(trained_service)
    ids = [c.id for c in trained_service.client.list_cases() if c.id.startswith("phantom_")][:2]
    a_nodes = loop.predict(ids[0])
    loop.show_case(ids[1])
    for node in a_nodes:
        assert not node.GetDisplayNode().GetVisibility(), node.GetName()
    assert loop.case_node(ids[1], "label").GetDisplayNode().GetVisibility()
    loop.show_case(ids[0])
    assert all(node.GetDisplayNode().GetVisibility() for node in a_nodes)
    assert not loop.case_node(ids[1], "label").GetDisplayNode().GetVisibility()


def test_learning_curve_reports_a_new_chart_only_once(logics):
    """The layout is switched only for a new chart (the old widget switched it every round)."""
    from types import SimpleNamespace

    from ReciprocalSegLib.learning_curve import LearningCurve

    curve = LearningCurve(logics.scene)
    new = []
    for round_ in range(3):
        curve.reset()
        for it in range(1, 4):
            status = SimpleNamespace(
                iteration=it, overall_iteration=it, losses={"teacher": 1.0 / it}, run_id=round_
            )
            assert curve.add(status)
            new.append(curve.update_nodes())
    assert new == [True] + [False] * 8
    assert node_counts(logics.scene).get("vtkMRMLPlotChartNode") == 1
    assert node_counts(logics.scene).get("vtkMRMLTableNode") == 1
    logics.scene.RemoveNode(curve.chart)  # the user deleted it: the next update makes (and reports) a new one
    curve.add(SimpleNamespace(iteration=9, overall_iteration=9, losses={"teacher": 0.1}, run_id=9))
    assert curve.update_nodes() is True


def test_scene_saved_and_reloaded_keeps_every_case_node(trained_service, loop_factory, tmp_path: Path):
    """Data lost on save (fails on the old logic): case volumes and disagreement maps are written."""
    import slicer
    from ReciprocalSegLib.scene_cases import ATTR_CASE_ID, ATTR_ROLE
    from ReciprocalSegLib.slicer_logics import SlicerLogics
    from slicer.util import arrayFromVolume

    loop = loop_factory(trained_service)
    case_id = [c.id for c in trained_service.client.list_cases() if c.id.startswith("phantom_")][2]
    volume, label = loop.show_case(case_id)  # downloaded from the service: a temporary file
    teacher, student, disagreement = loop.predict(case_id)
    for node in (volume, disagreement):
        assert node.GetModifiedSinceRead(), node.GetName()  # Save writes it
    expected = {(n.GetAttribute(ATTR_CASE_ID), n.GetAttribute(ATTR_ROLE)): n for n in loop.nodes.tagged()}
    arrays = {key: arrayFromVolume(n).copy() for key, n in expected.items() if n.IsA("vtkMRMLVolumeNode")}
    bundle = tmp_path / "saved-scene"
    bundle.mkdir()
    assert loop.logics.application.SaveSceneToSlicerDataBundleDirectory(str(bundle))

    reloaded = SlicerLogics.standalone()
    mrml = next(bundle.glob("*.mrml"))
    reloaded.scene.SetURL(str(mrml))
    reloaded.scene.SetRootDirectory(str(bundle))
    assert reloaded.scene.Import()
    from ReciprocalSegLib.scene_cases import CaseNodes

    got = {
        (n.GetAttribute(ATTR_CASE_ID), n.GetAttribute(ATTR_ROLE)): n
        for n in CaseNodes(reloaded.scene).tagged()
    }
    assert set(got) >= set(expected), set(expected) - set(got)
    for key, array in arrays.items():
        np.testing.assert_allclose(arrayFromVolume(got[key]), array, err_msg=str(key))
    for key, node in expected.items():
        if node.IsA("vtkMRMLSegmentationNode"):
            assert (
                got[key].GetSegmentation().GetNumberOfSegments()
                == node.GetSegmentation().GetNumberOfSegments()
            )
    slicer.mrmlScene = loop.logics.scene
