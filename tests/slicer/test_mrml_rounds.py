"""Rounds of work on real MRML leave the scene as they found it: flat node counts, no orphans,
and a saved scene that reloads with every case node (issue 14, "Scene clutter", "Data lost on save").
"""

from __future__ import annotations

import numpy as np
import pytest
from mrml_helpers import (
    add_linear_transform,
    add_volume,
    ijk_to_ras,
    node_counts,
    orphans,
    paint,
    save_and_reload,
    service_label,
    use_as_application,
)

ROUNDS = 5
CROP_KJI = (48, 80, 80)


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


def _block_start(mask: np.ndarray, size: tuple) -> tuple:
    """Start of a ``size`` block centred on the label, inside the array."""
    centre = np.argwhere(mask).mean(axis=0).astype(int)
    return tuple(
        int(min(max(c - n // 2, 0), dim - n)) for c, n, dim in zip(centre, size, mask.shape, strict=True)
    )


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_five_rounds_on_left_atrium_under_a_transform_then_save_and_reload(la_dir, tmp_path):
    """The scripted run: three LA scans under a parent transform, two labelled from their files,
    five tiny CPU rounds (train, predict, next case), the scene saved, reloaded, every node there."""
    from ReciprocalSegLib.logic import ReciprocalSegLoop
    from ReciprocalSegLib.scene_cases import CaseNodes
    from ReciprocalSegLib.slicer_logics import SlicerLogics
    from ReciprocalSegLib.volume_files import read_volume
    from service_helpers import start_service
    from slicer.util import arrayFromVolume

    from reciprocalseg.data.io import discover_cases

    cases = sorted(discover_cases(la_dir), key=lambda c: c.case_id)[:3]
    logics = SlicerLogics.standalone()
    use_as_application(logics)
    scene = logics.scene
    transform = add_linear_transform(scene)
    nodes = CaseNodes(scene)
    volumes, masks = [], []
    for case in cases:
        # A block around the atrium (as Crop Volume would make), so that five CPU rounds take minutes.
        full = read_volume(logics.volumes, case.image, "full scan")
        label_file = read_volume(logics.volumes, case.label, "label file", labelmap=True)
        image, mask = arrayFromVolume(full), (arrayFromVolume(label_file) > 0).astype(np.uint8)
        start = _block_start(mask, CROP_KJI)
        block = tuple(slice(a, a + n) for a, n in zip(start, CROP_KJI, strict=True))
        matrix = ijk_to_ras(full)
        matrix[:3, 3] = (matrix @ np.array([start[2], start[1], start[0], 1.0]))[:3]
        volume = add_volume(scene, case.case_id, image[block].copy(), matrix)
        volume.SetAndObserveTransformNodeID(transform.GetID())
        nodes.remove(full)
        nodes.remove(label_file)
        volumes.append(volume)
        masks.append(mask[block].copy())
    run = start_service(tmp_path / "ws", device="cpu")
    try:
        loop = ReciprocalSegLoop(logics, scratch_dir=tmp_path / "scratch")
        loop.connect(run.launcher.url, run.launcher.token)
        added, skipped = loop.add_all_volumes()
        assert added == [c.case_id for c in cases] and skipped == []
        for case, volume, mask in zip(cases[:2], volumes[:2], masks[:2], strict=True):
            _, label = loop.show_case(case.case_id)
            paint(mask, label, "class_1", volume)
            loop.submit_segmentation(case.case_id, label, volume)
            np.testing.assert_array_equal(service_label(run.client, case.case_id, tmp_path), mask)
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
