"""`reciprocalseg evaluate` checks each reference label as training does.

A reference label of nothing but 255 (unannotated) crashed `evaluate` with an IndexError traceback
(no class left to score, then an empty CSV); the README says such a label is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from reciprocalseg.cli.main import main
from reciprocalseg.data.io import write_image


def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing((1.0, 1.0, 2.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(image, path)


def test_evaluate_refuses_a_reference_with_no_annotated_voxel(tmp_path: Path, capsys) -> None:
    pred = np.zeros((8, 12, 12), np.uint8)
    pred[2:6, 3:9, 3:9] = 1
    _write(pred, tmp_path / "preds" / "c1.nrrd")
    _write(np.full(pred.shape, 255), tmp_path / "labels" / "c1.nrrd")
    assert main(["evaluate", "--pred", str(tmp_path / "preds"), "--labels", str(tmp_path / "labels")]) != 0
    err = capsys.readouterr().err
    assert "c1.nrrd" in err and "every voxel of the label is 255" in err, err
    assert not (tmp_path / "preds" / "metrics.csv").exists()


def test_evaluate_still_scores_a_partial_reference(tmp_path: Path, capsys) -> None:
    pred = np.zeros((8, 12, 12), np.uint8)
    pred[2:6, 3:9, 3:9] = 1
    ref = np.full(pred.shape, 255, np.uint8)
    ref[4] = pred[4]  # one annotated slice, equal to the prediction there
    _write(pred, tmp_path / "preds" / "c1.nrrd")
    _write(ref, tmp_path / "labels" / "c1.nrrd")
    assert main(["evaluate", "--pred", str(tmp_path / "preds"), "--labels", str(tmp_path / "labels")]) == 0
    rows = (tmp_path / "preds" / "metrics.csv").read_text().splitlines()
    header, row = rows[0].split(","), rows[1].split(",")
    assert float(row[header.index("dice")]) == 1.0
