"""The whole annotation loop on phantoms, checked step by step: the body of the in-Slicer test.

``ReciprocalSegTest`` (ReciprocalSeg.py) loads the phantoms with Slicer's reader, starts the
local service and calls ``check_whole_loop``; tests/slicer runs the same function on slicer-core
and a real service, so the scenario the in-Slicer test runs is exercised in CI too.

scene -> add all volumes -> paint and submit two labels -> train a few iterations (demo, CPU)
-> predict (segments ``class_1``, thresholded disagreement on the image grid) -> correct from
student -> next case -> scribbles on the last case -> what the service stored is checked ->
refine from those scribbles (``<case> refined``, named for its round and strokes) -> accept it
(the case's full label).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .scene_cases import case_id_from_name
from .scribbles import BACKGROUND_SEGMENT_ID
from .segment_export import segment_id_for_class


def write_phantoms(folder: Path, count: int = 4, shape_zyx: tuple = (32, 48, 48)) -> tuple:
    """([phantom<i>.nrrd files], [their structures as (k, j, i) arrays]) for ``check_whole_loop``."""
    import SimpleITK as sitk

    from reciprocalseg.data.phantom import make_phantom

    paths, truths = [], []
    for i in range(count):
        image, label = make_phantom(i, shape_zyx=shape_zyx)
        paths.append(Path(folder) / f"phantom{i}.nrrd")
        sitk.WriteImage(image, str(paths[-1]), True)
        truths.append(sitk.GetArrayFromImage(label))
    return paths, truths


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def check_whole_loop(
    logic: Any,
    volumes: Sequence[Any],
    truths: Sequence[np.ndarray],
    folder: Path,
    say: Callable[[str], Any] = print,
    iterations: int = 4,
) -> None:
    """Run the loop on ``volumes`` (scene nodes, not cases yet; ``truths`` their structures as
    (k, j, i) arrays) with a connected ``logic``; AssertionError names the first step that fails."""
    from slicer.util import updateSegmentBinaryLabelmapFromArray

    expected_ids = [case_id_from_name(v.GetName()) for v in volumes]  # a fresh workspace
    case_ids, skipped = logic.add_all_volumes()
    _check((case_ids, skipped) == (expected_ids, []), f"added {case_ids}, skipped {skipped}")
    _check(logic.add_all_volumes() == ([], []), "a second Add all added volumes again")

    say("Submitting two labels")
    for i in (0, 1):
        volume, segmentation = logic.show_case(case_ids[i])
        updateSegmentBinaryLabelmapFromArray(truths[i], segmentation, segment_id_for_class(1), volume)
        logic.submit_segmentation(case_ids[i], segmentation, volume)
    statuses = {c.id: c.status for c in logic.list_cases()}
    _check((statuses[case_ids[0]], statuses[case_ids[2]]) == ("labelled", "unlabelled"), f"{statuses}")

    say("Training a few iterations")
    logic.start_training(preset="demo", iterations=iterations, supervised_iterations=iterations, device="cpu")
    final = logic.wait_for_training(poll=0.5, timeout=900)
    _check(final.state == "completed", f"training ended {final.state}: {final.message}")

    say("Predicting")
    teacher, student, disagreement = logic.predict(case_ids[2])
    for node in (teacher, student):
        first = node.GetSegmentation().GetNthSegmentID(0)
        _check(first == segment_id_for_class(1), f"{node.GetName()} starts with segment {first}")
    _check(bool(disagreement.GetDisplayNode().GetApplyThreshold()), "zero disagreement is drawn")
    dimensions = disagreement.GetImageData().GetDimensions()
    _check(dimensions == volumes[2].GetImageData().GetDimensions(), f"disagreement on {dimensions}")
    label = logic.copy_student_to_label(case_ids[2])
    _check(label.GetSegmentation().GetNumberOfSegments() == 1, "the corrected label has extra segments")
    _check(logic.next_case()[0] in case_ids[2:], "next case is a labelled one")

    say("Submitting scribbles")
    _check_scribbles(logic, case_ids[3], truths[3], folder)
    say("Refining from the scribbles, then accepting")
    _check_refine(logic, case_ids[3], volumes[3], folder)


def _check_scribbles(logic: Any, case_id: str, truth: np.ndarray, folder: Path) -> None:
    """One stroke of the structure and one of background on the middle slice: the service's
    label is 1 and 0 there and 255 (unannotated) everywhere else."""
    import SimpleITK as sitk
    from slicer.util import updateSegmentBinaryLabelmapFromArray

    volume = logic.show_case(case_id)[0]
    scribbles = logic.scribble_segmentation(case_id)
    middle = truth.shape[0] // 2
    stroke, background = np.zeros(truth.shape, np.uint8), np.zeros(truth.shape, np.uint8)
    stroke[middle] = truth[middle] > 0
    background[middle, :2] = truth[middle, :2] == 0  # along the slice's edge
    updateSegmentBinaryLabelmapFromArray(stroke, scribbles, segment_id_for_class(1), volume)
    updateSegmentBinaryLabelmapFromArray(background, scribbles, BACKGROUND_SEGMENT_ID, volume)
    summary = logic.submit_scribbles(case_id)
    expected = np.full(truth.shape, 255, np.uint8)
    expected[background > 0] = 0
    expected[stroke > 0] = 1
    _check(summary.annotated == int((expected != 255).sum()), f"scribbles annotated {summary.text()}")
    uploaded = logic.client.get_label(case_id, str(Path(folder) / f"{case_id}_scribbles.nrrd"))
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(uploaded)))
    _check(np.array_equal(stored, expected), "the service's scribble label differs from the strokes")


def _check_refine(logic: Any, case_id: str, volume: Any, folder: Path, seconds: float = 10.0) -> None:
    """The scribbles refine a copy of the round's student: ``<case> refined`` on the scan's grid,
    the strokes merged with the submitted ones; Accept makes the refined map the full label."""
    import SimpleITK as sitk

    from .scene_cases import ROLE_LABEL

    refined = logic.refine(case_id, seconds=seconds)
    result = logic.last_refined
    _check(result.name.startswith("refined from round 1, "), f"refined named {result.name!r}")
    _check(refined.GetName() == f"{case_id} refined ({result.name[len('refined ') :]})", refined.GetName())
    _check(result.merged_with == 1 and result.label_version == 2, f"strokes stored as {result}")
    _check(refined.GetSegmentation().GetSegment(segment_id_for_class(1)) is not None, "no class_1 segment")
    version = logic.accept_refined(case_id)
    _check(version.annotated_fraction == 1.0, f"accepted as {version}")
    stored = logic.client.get_label(case_id, str(Path(folder) / f"{case_id}_accepted.nrrd"))
    downloaded = logic.client.get_refined(case_id, out_dir=str(Path(folder) / "refined")).labels
    same = np.array_equal(*(sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in (stored, downloaded)))
    _check(same, "the accepted label differs from the refined map")
    label = logic.case_node(case_id, ROLE_LABEL)
    _check(label.GetSegmentation().GetNumberOfSegments() >= 1, "the case label is empty after Accept")
