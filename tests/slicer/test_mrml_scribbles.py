"""Scribble mode (issue 17 part 2) on Slicer's real MRML classes (slicer-core), a real service.

Only painted voxels are annotated: a voxel in no segment is 255 in the label map submitted, a
voxel of the Background segment 0, a voxel of class k's segment k. Tested on oblique grids, under
a parent transform, after segments are deleted, renamed, reordered and added, with overlapping
strokes and with nothing painted.
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

from reciprocalseg.common import file_formats

UNPAINTED = 255
SHAPE = (20, 24, 28)


def strokes() -> dict:
    """Thin strokes on a few slices: segment ID -> mask (k, j, i)."""
    background, one, two = (np.zeros(SHAPE, np.uint8) for _ in range(3))
    background[3, 2:20, 2] = 1  # a line along j on slice 3
    background[12, 1, 3:25] = 1  # a line along i on slice 12
    one[5, 8:14, 10] = 1
    one[6, 9, 9:13] = 1
    two[14, 15:18, 18:22] = 1
    return {"background": background, "class_1": one, "class_2": two}


def expected_label(masks: dict) -> np.ndarray:
    label = np.full(SHAPE, UNPAINTED, np.uint8)
    label[masks["background"] > 0] = 0
    label[masks["class_1"] > 0] = 1
    label[masks["class_2"] > 0] = 2
    return label


def scribble_case(loop, name: str, left_handed: bool = False, transform=None):
    """A scan on an oblique grid (optionally under ``transform``) added to the service, shown, with
    its scribble segmentation: (volume, case ID, scribbles)."""
    image, _ = blob_image(shape=SHAPE, seed=7)
    volume = add_volume(loop.logics.scene, name, image, oblique_ijk_to_ras(left_handed=left_handed))
    if transform is not None:
        volume.SetAndObserveTransformNodeID(transform.GetID())
    case_id = loop.add_volume(volume)
    loop.show_case(case_id)
    return volume, case_id, loop.scribble_segmentation(case_id)


def submitted(loop, case_id: str) -> tuple:
    """(the partial label map the scribbles give on the volume's grid; the summary)."""
    return loop.scribble_label(case_id)


def segment_ids(segmentation) -> list:
    seg = segmentation.GetSegmentation()
    return [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]


def test_scribble_segmentation_has_background_and_a_segment_per_class(two_class_service, loop_factory):
    from ReciprocalSegLib.scene_cases import ATTR_ROLE, ROLE_LABEL, ROLE_SCRIBBLES

    loop = loop_factory(two_class_service)
    transform = add_linear_transform(loop.logics.scene)
    volume, case_id, scribbles = scribble_case(loop, "scribble_segments", transform=transform)
    seg = scribbles.GetSegmentation()
    assert segment_ids(scribbles) == ["background", "class_1", "class_2"]
    assert [seg.GetNthSegment(i).GetName() for i in range(3)] == ["Background", "Class 1", "Class 2"]
    assert len({seg.GetNthSegment(i).GetColor() for i in range(3)}) == 3  # told apart by colour
    assert (
        scribbles.GetName() == f"{case_id} scribbles" and scribbles.GetAttribute(ATTR_ROLE) == ROLE_SCRIBBLES
    )
    assert scribbles.GetTransformNodeID() == transform.GetID()  # lies on the scan in world space
    assert loop.scribble_segmentation(case_id) is scribbles  # strokes are kept, not replaced
    assert loop.case_node(case_id, ROLE_LABEL) is not scribbles  # the full label is a separate node


@pytest.mark.parametrize("left_handed", [False, True], ids=["oblique", "oblique-left-handed"])
def test_only_painted_voxels_are_annotated_under_a_parent_transform(
    two_class_service, loop_factory, left_handed
):
    loop = loop_factory(two_class_service)
    transform = add_linear_transform(loop.logics.scene)
    volume, case_id, scribbles = scribble_case(
        loop, f"scribble_grid{int(left_handed)}", left_handed=left_handed, transform=transform
    )
    masks = strokes()
    for segment_id, mask in masks.items():
        paint(mask, scribbles, segment_id, volume)
    before = node_counts(loop.logics.scene)

    label, summary = submitted(loop, case_id)

    expected = expected_label(masks)
    np.testing.assert_array_equal(label, expected)
    assert summary.per_class == {k: int((expected == k).sum()) for k in (0, 1, 2)}
    assert summary.annotated == int((expected != UNPAINTED).sum()) and summary.conflicts == 0
    assert summary.fraction == pytest.approx(summary.annotated / expected.size)
    assert f"{summary.annotated} voxels annotated" in summary.text()
    assert node_counts(loop.logics.scene) == before and not orphans(loop.logics.scene)  # nothing left


def test_scribble_classes_follow_segment_identity_after_delete_rename_reorder_add(
    two_class_service, loop_factory
):
    from ReciprocalSegLib.segment_export import SegmentClassError

    loop = loop_factory(two_class_service)
    volume, case_id, scribbles = scribble_case(loop, "scribble_identity")
    seg = scribbles.GetSegmentation()
    masks = strokes()
    for segment_id, mask in masks.items():
        paint(mask, scribbles, segment_id, volume)
    expected = expected_label(masks)

    seg.GetSegment("background").SetName("Hintergrund")  # renamed: its ID still says background
    seg.SetSegmentIndex("class_2", 0)  # reordered: Class 2 first
    np.testing.assert_array_equal(submitted(loop, case_id)[0], expected)

    seg.RemoveSegment("class_2")  # deleted: its strokes are no longer annotated
    without_two = expected.copy()
    without_two[masks["class_2"] > 0] = UNPAINTED
    np.testing.assert_array_equal(submitted(loop, case_id)[0], without_two)

    added = seg.AddEmptySegment("", "Class 2", (0.2, 0.9, 0.2))  # added in the Segment Editor, by name
    paint(masks["class_2"], scribbles, added, volume)
    seg.SetSegmentIndex(added, 0)
    np.testing.assert_array_equal(submitted(loop, case_id)[0], expected)

    seg.RemoveSegment("background")  # a user's own background segment, recognised by its name
    own = seg.AddEmptySegment("", "background", (0.5, 0.5, 0.5))
    paint(masks["background"], scribbles, own, volume)
    np.testing.assert_array_equal(submitted(loop, case_id)[0], expected)

    for name in ("tumour?", "Class 255"):  # no class, and the value that means "unannotated"
        unknown = seg.AddEmptySegment("", name, (0.0, 1.0, 0.0))
        with pytest.raises(SegmentClassError, match=name.replace("?", r"\?")):
            loop.scribble_label(case_id)
        seg.RemoveSegment(unknown)


def test_contradicting_strokes_are_left_unannotated_whatever_the_segment_order(
    two_class_service, loop_factory
):
    loop = loop_factory(two_class_service)
    volume, case_id, scribbles = scribble_case(loop, "scribble_overlap")
    seg = scribbles.GetSegmentation()
    masks = strokes()
    background = masks["background"].copy()
    background[5, 8:14, 8:12] = 1  # crosses the class-1 stroke on slice 5
    for segment_id, mask in {**masks, "background": background}.items():
        paint(mask, scribbles, segment_id, volume)
    same_class = seg.AddEmptySegment("", "Class 1", (1.0, 0.5, 0.0))  # a second class-1 segment
    paint(masks["class_1"], scribbles, same_class, volume)  # overlapping its own class: fine
    crossed = (background > 0) & (masks["class_1"] > 0)
    assert crossed.sum() > 0

    label, summary = submitted(loop, case_id)
    expected = expected_label({**masks, "background": background})
    expected[crossed] = UNPAINTED
    np.testing.assert_array_equal(label, expected)
    assert summary.conflicts == int(crossed.sum()) and "left unannotated" in summary.text()

    for order in (["class_1", "background"], ["background", "class_1"]):
        for index, segment_id in enumerate(order):
            seg.SetSegmentIndex(segment_id, index)
        np.testing.assert_array_equal(submitted(loop, case_id)[0], expected)


def test_an_empty_scribble_is_refused_and_leaves_nothing_behind(two_class_service, loop_factory):
    from ReciprocalSegLib.scribbles import ScribbleError

    loop = loop_factory(two_class_service)
    volume, case_id, scribbles = scribble_case(loop, "scribble_empty")
    versions = len(two_class_service.client.label_history(case_id).versions)
    before = node_counts(loop.logics.scene)
    with pytest.raises(ScribbleError, match="Nothing is painted"):
        loop.submit_scribbles(case_id)
    assert node_counts(loop.logics.scene) == before
    # Strokes that only contradict each other annotate nothing either.
    stroke = strokes()["class_1"]
    paint(stroke, scribbles, "class_1", volume)
    paint(stroke, scribbles, "class_2", volume)
    with pytest.raises(ScribbleError, match="two classes"):
        loop.submit_scribbles(case_id)
    assert len(two_class_service.client.label_history(case_id).versions) == versions  # nothing uploaded
    with pytest.raises(RuntimeError, match="Select"):
        loop.scribble_segmentation("no_such_case")


def test_full_label_mode_is_unchanged_beside_the_scribbles(two_class_service, loop_factory, tmp_path):
    """The correction mode still submits every voxel of the label (0 where unpainted), even when
    the case also has scribbles."""
    from ReciprocalSegLib.scene_cases import ROLE_LABEL

    loop = loop_factory(two_class_service)
    volume, case_id, scribbles = scribble_case(loop, "scribble_and_full")
    paint(strokes()["class_1"], scribbles, "class_1", volume)
    label = loop.case_node(case_id, ROLE_LABEL)
    _, mask = blob_image(shape=SHAPE, seed=7)
    paint(mask, label, "class_1", volume)
    loop.submit_segmentation(case_id, label, volume)
    np.testing.assert_array_equal(service_label(two_class_service.client, case_id, tmp_path), mask)


def _label_file_on_the_scans_grid(client, case_id: str, array: np.ndarray, folder) -> object:
    """A label map as the service stores it: the case image's grid, these voxel values."""
    folder.mkdir(parents=True)
    image = sitk.ReadImage(str(client.get_image(case_id, str(folder / f"{case_id}.nrrd"))))
    label = sitk.GetImageFromArray(array.astype(np.uint8))
    label.CopyInformation(image)
    path = folder / f"{case_id}_label.nrrd"
    sitk.WriteImage(label, str(path), True)
    return path


def test_a_partial_label_comes_back_as_its_strokes_never_as_class_255(
    two_class_service, loop_factory, tmp_path
):
    """Showing a case whose current label is partial (scribbles submitted before): the label
    segmentation holds its classes only (the old import made a segment per value up to 255), and
    the strokes come back as the case's scribbles, which export to the same partial label."""
    from ReciprocalSegLib.logic import CaseFiles
    from ReciprocalSegLib.scene_cases import ROLE_SCRIBBLES

    loop = loop_factory(two_class_service)
    scene = loop.logics.scene
    transform = add_linear_transform(scene)
    expected = expected_label(strokes())
    ids = []
    for name in ("partial_back", "full_back"):
        image, _ = blob_image(shape=SHAPE, seed=7)
        volume = add_volume(scene, name, image, oblique_ijk_to_ras(left_handed=True))
        volume.SetAndObserveTransformNodeID(transform.GetID())
        ids.append(loop.add_volume(volume))
    partial, full = ids
    full_label = np.where(expected == UNPAINTED, 0, expected)

    for case_id, array in ((partial, expected), (full, full_label)):
        path = _label_file_on_the_scans_grid(two_class_service.client, case_id, array, tmp_path / case_id)
        volume, label = loop.apply_case(case_id, CaseFiles(case_id, label=path))
        assert segment_ids(label) == ["class_1", "class_2"]
        np.testing.assert_array_equal(segmentation_on_grid(loop.nodes, label, volume), full_label)

    scribbles = loop.case_node(partial, ROLE_SCRIBBLES)
    assert segment_ids(scribbles) == ["background", "class_1", "class_2"]
    assert scribbles.GetTransformNodeID() == transform.GetID()
    np.testing.assert_array_equal(submitted(loop, partial)[0], expected)  # the same strokes go back
    assert loop.case_node(full, ROLE_SCRIBBLES) is None  # a full label has no strokes to restore
    assert not orphans(scene)


PARTIAL_LABELS = hasattr(file_formats, "UNANNOTATED")


@pytest.mark.skipif(
    not PARTIAL_LABELS,
    reason="this core package does not accept partial labels yet (issue 17 part 1: file_formats.UNANNOTATED)",
)
def test_scribbles_reach_the_service_voxel_exact_as_a_partial_label(
    two_class_service, loop_factory, tmp_path
):
    loop = loop_factory(two_class_service)
    transform = add_linear_transform(loop.logics.scene)
    volume, case_id, scribbles = scribble_case(loop, "scribble_upload", left_handed=True, transform=transform)
    masks = strokes()
    for segment_id, mask in masks.items():
        paint(mask, scribbles, segment_id, volume)
    summary = loop.submit_scribbles(case_id)
    expected = expected_label(masks)
    np.testing.assert_array_equal(service_label(two_class_service.client, case_id, tmp_path), expected)
    case = two_class_service.client.get_case(case_id)
    assert case.annotation == "partial"
    assert case.annotated_fraction == pytest.approx(summary.fraction)
    # Another session (a new scene) shows the case: the strokes come back from the service.
    loop.remove_case_nodes(case_id)
    loop.show_case(case_id)
    np.testing.assert_array_equal(submitted(loop, case_id)[0], expected)
