"""Files of the scene (issue 26, item 3), on real MRML and a real service: counted.

The old code kept one more disagreement file beside the scene at each *Predict* and never deleted
the files of a case whose nodes were removed. Now nodes are made from memory: predicting again
replaces the nodes and leaves no file, removing a case's nodes leaves none, and a scene *Save*
still writes every node (one file each) and reads them all back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mrml_helpers import save_and_reload


def files_under(*folders) -> list:
    out = []
    for folder in folders:
        if folder is not None and Path(folder).exists():
            out += [p for p in Path(folder).rglob("*") if p.is_file()]
    return sorted(out)


def test_predictions_and_removals_leave_no_file_and_a_save_finds_every_node(
    trained_service, loop_factory, tmp_path
):
    from ReciprocalSegLib.scene_cases import ATTR_CASE_ID, ATTR_ROLE, CaseNodes
    from slicer.util import arrayFromVolume

    loop = loop_factory(trained_service)
    module_files = (loop.scratch_dir, getattr(loop, "keep_dir", None))  # keep_dir: the old code's
    case_id = [c.id for c in trained_service.client.list_cases() if c.id.startswith("phantom_")][3]
    loop.show_case(case_id)  # the scan downloaded
    for _ in range(2):
        loop.predict(case_id)  # the second replaces the first
    assert files_under(*module_files) == []
    roles = sorted(
        n.GetAttribute(ATTR_ROLE) for n in loop.nodes.tagged() if n.GetAttribute(ATTR_CASE_ID) == case_id
    )
    assert roles == ["disagreement", "image", "label", "student", "teacher"]

    reloaded = save_and_reload(loop.logics, tmp_path / "bundle")
    saved = [p.name for p in files_under(tmp_path / "bundle") if p.suffix != ".mrml"]
    storable = [n for n in loop.nodes.tagged() if n.GetAttribute(ATTR_CASE_ID) == case_id]
    assert len(saved) >= len(storable)  # one file per node (plus colour tables)
    again = {
        n.GetAttribute(ATTR_ROLE): n
        for n in CaseNodes(reloaded.scene).tagged()
        if n.GetAttribute(ATTR_CASE_ID) == case_id
    }
    assert sorted(again) == roles
    for node in storable:
        role = node.GetAttribute(ATTR_ROLE)
        if node.IsA("vtkMRMLVolumeNode"):
            np.testing.assert_array_equal(arrayFromVolume(again[role]), arrayFromVolume(node), err_msg=role)
        else:
            assert (
                again[role].GetSegmentation().GetNumberOfSegments()
                == node.GetSegmentation().GetNumberOfSegments()
            )
    reloaded.scene.Clear(1)

    bundle = files_under(tmp_path / "bundle")
    loop.remove_case_nodes(case_id)
    assert files_under(*module_files) == []
    assert files_under(tmp_path / "bundle") == bundle  # the saved scene's files are the user's: kept
