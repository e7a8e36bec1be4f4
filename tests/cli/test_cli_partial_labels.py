"""`reciprocalseg train` and `evaluate` with partial labels (255 = unannotated), on real files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from reciprocalseg.common.file_formats import UNANNOTATED
from reciprocalseg.data.io import write_image
from reciprocalseg.data.phantom import write_phantom_cohort
from reciprocalseg.evaluation.evaluate import evaluate_folders
from reciprocalseg.training.events import read_events

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "ReciprocalSeg"), "OMP_NUM_THREADS": "1"}
TINY = ["--preset", "demo", "--patch-size", "16", "16", "16", "--n-filters", "4", "--device", "cpu"]


def _make_partial(label_path: Path, out: Path, slices: slice) -> np.ndarray:
    """The label annotated on axial `slices` only (255 elsewhere), written to `out`."""
    label = sitk.ReadImage(str(label_path))
    array = np.full(sitk.GetArrayFromImage(label).shape, UNANNOTATED, np.uint8)
    array[slices] = sitk.GetArrayFromImage(label)[slices]
    partial = sitk.GetImageFromArray(array)
    partial.CopyInformation(label)
    write_image(partial, out)
    return array


def test_train_on_a_folder_where_some_labels_are_partial(tmp_path: Path) -> None:
    cases = write_phantom_cohort(tmp_path / "all", 5, seed=2, shape_zyx=(24, 24, 24))
    labelled, unlabelled = tmp_path / "labelled", tmp_path / "unlabelled"
    labelled.mkdir(), unlabelled.mkdir()
    for i, case in enumerate(cases):
        if i >= 3:
            os.symlink(case.image, unlabelled / case.image.name)
            continue
        os.symlink(case.image, labelled / case.image.name)
        target = labelled / case.label.name
        if i == 0:
            os.symlink(case.label, target)
        else:  # two of the three labels are partial: a few axial slices annotated
            _make_partial(case.label, target, slice(9 + i, 13 + i))
    out = tmp_path / "run"
    args = ["--images", labelled, "--unlabeled", unlabelled, "--out", out]
    args += ["--iterations", "2", "--supervised-iterations", "2", *TINY]
    res = subprocess.run(
        [sys.executable, "-m", "reciprocalseg", "train", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["n_classes"] == 2  # background + 1: 255 is no class
    events = read_events(out / "events.jsonl")
    assert [e.get("partial") for e in events if e["event"] == "preprocessed"] == [2]
    assert (out / "teacher.pt").is_file() and (out / "student.pt").is_file()


def test_evaluate_against_a_partial_label_counts_annotated_voxels(tmp_path: Path) -> None:
    (case,) = write_phantom_cohort(tmp_path / "all", 1, seed=4, shape_zyx=(24, 24, 24))
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    labels.mkdir(), preds.mkdir()
    partial = _make_partial(case.label, labels / f"{case.case_id}.nrrd", slice(8, 16))
    assert (partial == 1).any()  # the structure crosses the annotated slices
    truth = sitk.ReadImage(str(case.label))
    # A prediction right on the annotated slices and wrong (all foreground) everywhere else.
    wrong_elsewhere = np.where(partial == UNANNOTATED, 1, partial).astype(np.uint8)
    pred = sitk.GetImageFromArray(wrong_elsewhere)
    pred.CopyInformation(truth)
    write_image(pred, preds / f"{case.case_id}.nrrd")
    rows, missing = evaluate_folders(preds, labels)
    assert missing == [] and [r["class"] for r in rows] == [1]  # 255 is no class
    assert rows[0]["dice"] == 1.0 and rows[0]["jaccard"] == 1.0
    assert all(math.isnan(rows[0][k]) for k in ("hd95_mm", "asd_mm", "hd95_vox", "asd_vox"))
