"""`train` without --n-classes refuses labels whose classes skip values, instead of training them all.

A label holding 254 (another tool's numbering) or a scan saved as a label made `train` plan 255
classes from the largest value and train 255 output channels, about 80x slower on the CPU, with no
word but `n_classes = 255` in the plan. Now it says which classes no label has and how to go on;
`--n-classes` still trains the classes as given, and an all-background cohort still trains.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.data.io import write_image
from reciprocalseg.data.phantom import write_phantom_cohort


def _train(pairs: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reciprocalseg", "train", "--images", str(pairs), "--out", str(out)]
        + ["--iterations", "0", "--supervised-iterations", "1", "--device", "cpu", *options],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize("preset", ["auto", "lite"])
def test_labels_skipping_classes_are_refused_without_n_classes(tmp_path: Path, preset: str) -> None:
    (case,) = write_phantom_cohort(tmp_path / "pairs", 1, shape_zyx=(16, 16, 16))
    label = sitk.ReadImage(str(case.label))
    relabelled = sitk.GetImageFromArray(np.where(sitk.GetArrayFromImage(label) > 0, 254, 0).astype(np.uint8))
    relabelled.CopyInformation(label)
    write_image(relabelled, case.label)

    refused = _train(tmp_path / "pairs", tmp_path / "run", "--preset", preset)
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "no label has class 1..253" in refused.stderr and "--n-classes 255" in refused.stderr, (
        refused.stderr
    )
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "run" / "supervised.pt").exists()


def test_an_all_background_label_still_trains(tmp_path: Path) -> None:
    (case,) = write_phantom_cohort(tmp_path / "pairs", 1, shape_zyx=(16, 16, 16))
    label = sitk.ReadImage(str(case.label))
    empty = sitk.GetImageFromArray(np.zeros(sitk.GetArrayFromImage(label).shape, np.uint8))
    empty.CopyInformation(label)
    write_image(empty, case.label)
    done = _train(tmp_path / "pairs", tmp_path / "run", "--preset", "lite")
    assert done.returncode == 0, done.stderr[-2000:]
