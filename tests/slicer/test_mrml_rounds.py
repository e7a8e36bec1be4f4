"""Rounds of work on real MRML leave the scene as they found it: flat node counts, no orphans,
and a saved scene that reloads with every case node (issue 14, "Scene clutter", "Data lost on save").
"""

from __future__ import annotations

import numpy as np
import pytest
from mrml_helpers import add_linear_transform, node_counts, orphans, save_and_reload

ROUNDS = 5


def _case_nodes(nodes) -> dict:
    from ReciprocalSegLib.scene_cases import ATTR_CASE_ID, ATTR_ROLE

    return {(n.GetAttribute(ATTR_CASE_ID), n.GetAttribute(ATTR_ROLE)): n for n in nodes.tagged()}


def test_node_counts_stay_flat_over_five_rounds(trained_service, loop_factory, tmp_path):
    """Scene clutter (fails on the old logic): submit and predict leave no colour table, display or
    storage node behind."""
    loop = loop_factory(trained_service)
    ids = [c.id for c in trained_service.client.list_cases() if c.id.startswith("phantom_")][:2]
    counts = []
    for _ in range(ROUNDS):
        volume, _ = loop.show_case(ids[0])
        loop.predict(ids[0])
        label = loop.copy_student_to_label(ids[0])
        loop.submit_segmentation(ids[0], label, volume)
        loop.show_case(ids[1])
        loop.predict(ids[1])
        counts.append(node_counts(loop.logics.scene))
        assert orphans(loop.logics.scene) == []
    assert all(c == counts[0] for c in counts), counts


@pytest.mark.realdata
@pytest.mark.slow
def test_five_rounds_on_left_atrium_under_a_transform_then_save_and_reload(la_dir, tmp_path):
    """The scripted run: three LA scans under a parent transform, two labelled from their files,
    five tiny CPU rounds (train, predict, next case), the scene saved, reloaded, every node there."""
    from ReciprocalSegLib.logic import ReciprocalSegLoop
    from ReciprocalSegLib.slicer_logics import SlicerLogics
    from ReciprocalSegLib.volume_files import read_volume
    from service_helpers import start_service
    from slicer.util import arrayFromVolume, updateSegmentBinaryLabelmapFromArray

    from reciprocalseg.data.io import discover_cases

    cases = sorted(discover_cases(la_dir), key=lambda c: c.case_id)[:3]
    logics = SlicerLogics.standalone()
    scene = logics.scene
    transform = add_linear_transform(scene)
    volumes = []
    for case in cases:
        volume = read_volume(logics.volumes, case.image, case.case_id)
        volume.SetAndObserveTransformNodeID(transform.GetID())
        volumes.append(volume)
    run = start_service(tmp_path / "ws", device="cpu")
    try:
        loop = ReciprocalSegLoop(logics, keep_dir=tmp_path / "keep", scratch_dir=tmp_path / "scratch")
        loop.connect(run.launcher.url, run.launcher.token)
        added, skipped = loop.add_all_volumes()
        assert added == [c.case_id for c in cases] and skipped == []
        for case, volume in zip(cases[:2], volumes[:2], strict=True):
            label_file = read_volume(logics.volumes, case.label, "label file", labelmap=True)
            mask = (arrayFromVolume(label_file) > 0).astype(np.uint8)
            loop.nodes.remove(label_file)
            _, label = loop.show_case(case.case_id)
            updateSegmentBinaryLabelmapFromArray(mask, label, "class_1", volume)
            loop.submit_segmentation(case.case_id, label, volume)
        counts = []
        for round_ in range(ROUNDS):
            loop.start_training(
                preset="demo", iterations=1, supervised_iterations=2, device="cpu", warm_start=round_ > 0
            )
            final = loop.wait_for_training(poll=0.5, timeout=900)
            assert final.state == "completed", final.message
            loop.predict(cases[2].case_id)
            next_id, _ = loop.next_case()
            assert next_id == cases[2].case_id
            counts.append(node_counts(scene))
            assert orphans(scene) == []
        assert all(c == counts[0] for c in counts), counts
        for node in (loop.case_node(cases[2].case_id, "disagreement"),):
            assert node.GetTransformNodeID() == transform.GetID()

        before = _case_nodes(loop.nodes)
        reloaded = save_and_reload(logics, tmp_path / "saved")
        from ReciprocalSegLib.scene_cases import CaseNodes

        after = _case_nodes(CaseNodes(reloaded.scene))
        assert set(after) == set(before)
        for key, node in before.items():
            again = after[key]
            assert (
                again.GetTransformNodeID() == transform.GetID()
                or key[1] == "image"
                and again.GetTransformNodeID()
            )
            if node.IsA("vtkMRMLVolumeNode"):
                np.testing.assert_array_equal(arrayFromVolume(again), arrayFromVolume(node), err_msg=str(key))
            else:
                assert (
                    again.GetSegmentation().GetNumberOfSegments()
                    == node.GetSegmentation().GetNumberOfSegments()
                )
        assert orphans(reloaded.scene) == []
    finally:
        run.launcher.stop()
