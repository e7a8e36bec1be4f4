"""The naming rule shared by `predict` (writes) and `evaluate` (reads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reciprocalseg.common.errors import DataError
from reciprocalseg.inference.prediction_files import find_predictions, output_format, prediction_path


def test_output_format_follows_the_input_unless_asked(tmp_path: Path) -> None:
    assert output_format("a/scan.nrrd") == ".nrrd"
    assert output_format("scan.NII.GZ") == ".nii.gz"
    assert output_format("scan.mha") == ".mha"
    assert output_format("scan.nhdr") == ".nrrd"  # one file per prediction
    assert output_format("scan.mhd") == ".mha"
    dicom = tmp_path / "series"
    dicom.mkdir()
    assert output_format(dicom) == ".nrrd"
    assert output_format("scan.nrrd", "nii.gz") == ".nii.gz"
    with pytest.raises(DataError, match="--format .png"):
        output_format("scan.nrrd", ".png")


def test_find_predictions_matches_case_ids_then_model_suffixes(tmp_path: Path) -> None:
    names = ["A.nrrd", "B_teacher.nrrd", "B_student.nrrd", "B_disagreement.nrrd", "x_teacher.nrrd", "C.nrrd"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    labelled = {"A", "B", "x_teacher"}  # a case whose own ID ends in _teacher stays that case
    found, unmatched = find_predictions(tmp_path, labelled)
    assert [(p.model, p.case_id, p.path.name) for p in found] == [
        (None, "A", "A.nrrd"),
        (None, "x_teacher", "x_teacher.nrrd"),
        ("student", "B", "B_student.nrrd"),
        ("teacher", "B", "B_teacher.nrrd"),
    ]
    assert unmatched == [tmp_path / "C.nrrd"]  # the disagreement map is not reported as unmatched
    only, _ = find_predictions(tmp_path, labelled, "teacher")
    assert [(p.case_id, p.model) for p in only] == [("B", "teacher")]
    assert prediction_path(tmp_path, "B", "teacher", ".nrrd") == tmp_path / "B_teacher.nrrd"
    assert prediction_path(tmp_path, "A", None, ".mha") == tmp_path / "A.mha"
