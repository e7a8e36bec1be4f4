"""The working grid a plan resamples a scan onto is bounded before anything is allocated.

A target spacing much finer than a scan's own (an edited plan, `--target-spacing`, or a cohort
whose median spacing is far finer than one uploaded scan) would otherwise make SimpleITK try to
allocate terabytes: a traceback in the CLI, a 500 or an out-of-memory kill in the service.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.common.errors import DataError
from reciprocalseg.data.phantom import write_phantom_cohort
from reciprocalseg.data.preprocess import (
    MAX_WORKING_VOXELS,
    Preprocessing,
    preprocess_image,
    preprocess_label,
)


def _image(spacing: float = 1.0) -> sitk.Image:
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    img.SetSpacing((spacing,) * 3)
    return img


def test_a_working_grid_over_the_bound_is_refused_before_allocating() -> None:
    prep = Preprocessing(target_spacing=(0.001, 0.001, 0.001))  # 16 000^3 voxels: 4e12
    with pytest.raises(DataError, match=r"voxels on the working grid at the target spacing"):
        preprocess_image(_image(), prep)
    label = sitk.GetImageFromArray(np.full((16, 16, 16), 255, np.uint8))
    label[0, 0, 0] = 1  # a partial label takes its own resampling path
    with pytest.raises(DataError, match="working grid"):
        preprocess_label(label, prep)


def test_a_working_grid_within_the_bound_is_resampled() -> None:
    out = preprocess_image(_image(), Preprocessing(target_spacing=(0.5, 0.5, 0.5)))
    assert out.shape == (32, 32, 32)
    assert 32**3 < MAX_WORKING_VOXELS


def test_config_refuses_a_target_spacing_that_is_not_positive_and_finite() -> None:
    from reciprocalseg.config import make_config

    for bad in ((0.0, 1.0, 1.0), (-1.0, 1.0, 1.0), (float("nan"), 1.0, 1.0), (1.0, float("inf"), 1.0)):
        with pytest.raises(Exception, match="target_spacing"):
            make_config("lite", target_spacing=bad)


def test_cli_train_with_a_far_too_fine_target_spacing_says_so(tmp_path) -> None:
    write_phantom_cohort(tmp_path / "pairs", 1, shape_zyx=(16, 16, 16))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "reciprocalseg",
            "train",
            "--images",
            str(tmp_path / "pairs"),
            "--out",
            str(tmp_path / "run"),
            "--preset",
            "lite",
            "--iterations",
            "0",
            "--supervised-iterations",
            "1",
            "--device",
            "cpu",
            "--target-spacing",
            "0.001",
            "0.001",
            "0.001",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "working grid" in result.stderr
