"""Revert one fix of issue 14 (or one rule of issue 17's scribbles) at a time in a scratch copy of
the repository and run the test that guards it: each must fail there.
``python tests/slicer/revert_fixes.py [name-part ...]``.

Not collected by pytest (a developer's check of the tests themselves; it runs the real-MRML tests
once per fix, several minutes on a small machine).
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parents[2]
W = Path(tempfile.mkdtemp(prefix="revert-fixes-")) / "repo"
L = "ReciprocalSeg/ReciprocalSegLib/"
T = "tests/slicer/test_mrml_scene.py::"
S = "tests/slicer/test_mrml_scribbles.py::"
TOGGLES = [
    (
        "transform: nodes not placed under the scan's transform",
        L + "scene_cases.py",
        "            node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())",
        "            pass",
        [T + "test_volume_under_a_parent_transform_labels_and_predictions_land_on_the_scan"],
    ),
    (
        "identity: class = position in the segment list",
        L + "segment_export.py",
        "        k = class_of_segment(segment_id, name, class_names)",
        "        k = i + 1",
        [T + "test_class_values_follow_segment_identity_after_delete_reorder_add"],
    ),
    (
        "overlap: later segment silently wins",
        L + "segment_export.py",
        "        if clash.any():",
        "        if False:",
        [T + "test_overlapping_segments_are_a_clear_error_never_a_silent_choice"],
    ),
    (
        "files: a prediction's files left beside the scene",
        L + "logic.py",
        "            shutil.rmtree(Path(result.teacher).parent, ignore_errors=True)",
        "            pass",
        ["tests/slicer/test_mrml_scene_files.py"],
    ),
    (
        "batch: every vtkMRMLScalarVolumeNode subclass sent",
        L + "volume_files.py",
        '    if node is None or node.GetClassName() != "vtkMRMLScalarVolumeNode":',
        '    return node is not None and node.IsA("vtkMRMLScalarVolumeNode")\n    if True:',
        [T + "test_non_scalar_volumes_are_skipped_with_a_message_and_the_batch_goes_on"],
    ),
    (
        "disagreement: no threshold (zero drawn)",
        L + "prediction_display.py",
        "    display.SetApplyThreshold(True)",
        "    display.SetApplyThreshold(False)",
        [T + "test_disagreement_overlay_is_transparent_where_zero"],
    ),
    (
        "show_case: other cases left visible",
        L + "scene_cases.py",
        "                display.SetVisibility(node.GetAttribute(ATTR_CASE_ID) == case_id)",
        "                if node.GetAttribute(ATTR_CASE_ID) == case_id:\n"
        "                    display.SetVisibility(True)",
        [T + "test_show_case_hides_other_cases"],
    ),
    (
        "learning curve: nodes made anew each round",
        L + "learning_curve.py",
        "        self._offset = 0\n",
        "        self._offset = 0\n        self._chart = None\n",
        [T + "test_learning_curve_reports_a_new_chart_only_once"],
    ),
    (
        "scribbles: unpainted voxels submitted as background",
        L + "scribbles.py",
        "            label = np.full(mask.shape, UNANNOTATED, dtype=np.uint8)",
        "            label = np.zeros(mask.shape, dtype=np.uint8)",
        [S + "test_only_painted_voxels_are_annotated_under_a_parent_transform"],
    ),
    (
        "scribbles: contradicting strokes resolved by segment order",
        L + "scribbles.py",
        "    label[conflict] = UNANNOTATED",
        "    pass",
        [S + "test_contradicting_strokes_are_left_unannotated_whatever_the_segment_order"],
    ),
    (
        "scribbles: a segment named Background is no background",
        L + "scribbles.py",
        '    named_background = (name or "").strip().casefold() == BACKGROUND_NAME.casefold()',
        "    named_background = False",
        [S + "test_scribble_classes_follow_segment_identity_after_delete_rename_reorder_add"],
    ),
    (
        "scribbles/labels: a segment named Class 255 collides with unannotated",
        L + "segment_export.py",
        "MAX_CLASS = UNANNOTATED - 1",
        "MAX_CLASS = UNANNOTATED",
        [S + "test_scribble_classes_follow_segment_identity_after_delete_rename_reorder_add"],
    ),
    (
        "scribbles: a partial label from the service imported with 255 as a class",
        L + "case_content.py",
        "    classes = max(min_classes, int(np.where(unannotated, 0, on_grid).max()), 1)",
        "    classes = max(min_classes, int(on_grid.max()), 1)",
        [S + "test_a_partial_label_comes_back_as_its_strokes_never_as_class_255"],
    ),
    (
        "orphans: only the node itself removed",
        L + "scene_cases.py",
        "        for other in owned:\n            if other.GetScene() is not None:",
        "        for other in []:\n            if other.GetScene() is not None:",
        ["tests/slicer/test_mrml_rounds.py::test_node_counts_stay_flat_over_five_rounds"],
    ),
    # issue 26
    (
        "left-handed: the label written on Slicer's grid, not the stored one",
        L + "logic.py",
        "        result.version = self._upload_label(client, case_id, label, stored, author)",
        "        result.version = self._upload_label(client, case_id, label, painted.grid, author)",
        ["tests/slicer/test_mrml_left_handed.py"],
    ),
    (
        "classes: names from the first label segmentation of the scene",
        L + "logic.py",
        "        return CaseState(names=self.nodes.class_names(case_id)).class_names(count)",
        "        first = next((n.GetAttribute(ATTR_CASE_ID) for n in self.nodes.tagged()\n"
        "                      if n.GetAttribute(ATTR_ROLE) == ROLE_LABEL), case_id)\n"
        "        return CaseState(names=self.nodes.class_names(first)).class_names(count)",
        ["tests/slicer/test_mrml_case_classes.py"],
    ),
    (
        "batch: the first failure stops the batch",
        L + "logic.py",
        "                except Exception as error:  # named and reported; the batch goes on",
        "                except KeyError as error:",
        ["tests/slicer/test_mrml_batches.py::test_add_all_with_a_bad_volume_in_the_middle"],
    ),
    (
        "re-add: a tagged volume is never sent again",
        L + "logic.py",
        "                if snapshot.case_id in known:",
        "                if snapshot.case_id:",
        ["tests/slicer/test_mrml_empty_and_readd.py::test_a_deleted_cases_volume_is_sent_again"],
    ),
    (
        "empty label: submitted silently",
        L + "logic.py",
        "            if not label.any():",
        "            if False:",
        ["tests/slicer/test_mrml_empty_and_readd.py::test_an_empty_full_label_is_asked_about_and_warned_of"],
    ),
    (
        "GUI thread: a downloaded scan read on the GUI thread",
        L + "logic.py",
        "                scan = scan_content(files.image)\n            grid",
        "                scan = context.on_main(lambda: scan_content(files.image))\n            grid",
        ["tests/slicer/test_gui_thread.py::test_the_gui_thread_reads_and_writes_no_file"],
    ),
    (
        "quit: waits for the service",
        L + "logic.py",
        "            service.request_stop()",
        "            service.stop()",
        [
            "tests/slicer/test_gui_thread.py::test_quitting_does_not_wait_and_the_service_checkpoints_by_itself"
        ],
    ),
]
only = sys.argv[1:]
for name, path, old, new, tests in TOGGLES:
    if only and not any(o in name for o in only):
        continue
    shutil.rmtree(W, ignore_errors=True)
    W.mkdir(parents=True)
    for part in ("ReciprocalSeg", "tests", "pyproject.toml"):
        (shutil.copytree if (SRC / part).is_dir() else shutil.copy)(SRC / part, W / part)
    f = W / path
    s = f.read_text()
    assert s.count(old) == 1, (name, old)
    f.write_text(s.replace(old, new))
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=W,
        # the scratch copy first, in the tests and in the services they start
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(W / "ReciprocalSeg"), str(W)])),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    last = [line for line in r.stdout.splitlines() if line.strip()][-1]
    reason = next((line[1:].strip() for line in r.stdout.splitlines() if line.startswith("E ")), "")
    print(f"{name}: {last}  [{reason[:150]}]", flush=True)
