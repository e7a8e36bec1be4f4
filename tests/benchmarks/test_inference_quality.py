"""benchmarks/inference_quality.py: inference modes side by side, on real files and a real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from benchmarks.inference_quality import compare, main, summarise, whole_scan_model
from benchmarks.la import load_eval_cases
from reciprocalseg.config import make_config
from reciprocalseg.data.io import Case
from reciprocalseg.inference.sliding_window import load_model
from reciprocalseg.model.vnet import build_model
from reciprocalseg.training.checkpoint import save_model


def _model_file(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "teacher.pt"
    save_model(
        build_model(2, 4, "batchnorm", False), make_config("demo", patch_size=(16, 16, 16), n_filters=4), path
    )
    return path


def _write_case(folder: Path, case_id: str, size_xyz: tuple[int, int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    z, y, x = size_xyz[::-1]
    label = np.zeros((z, y, x), np.uint8)
    label[z // 4 : 3 * z // 4, y // 4 : 3 * y // 4, x // 4 : 3 * x // 4] = 1
    image = (rng.normal(0, 1, (z, y, x)) + 2 * label).astype(np.float32)
    for array, suffix in ((image, "image"), (label, "label")):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing((0.8, 0.8, 1.5))
        sitk.WriteImage(img, str(folder / f"{case_id}_{suffix}.nrrd"))


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    _write_case(data, "small", (12, 14, 10), seed=1)  # smaller than the 16^3 patch: one window
    _write_case(data, "large", (40, 29, 21), seed=2)
    return data


def test_the_whole_scan_window_covers_the_scan_and_divides_by_16(tmp_path: Path, cases: Path) -> None:
    model = load_model(_model_file(tmp_path), "cpu")
    image = sitk.ReadImage(str(cases / "large_image.nrrd"))
    grown = whole_scan_model(model, image)
    assert grown.patch_zyx == (32, 32, 48)  # 21 -> 32, 29 -> 32, 40 -> 48
    assert model.patch_zyx == (16, 16, 16)  # the loaded model is left as it was
    small = whole_scan_model(model, sitk.ReadImage(str(cases / "small_image.nrrd")))
    assert small.patch_zyx == (16, 16, 16)  # never below the training patch


def test_modes_side_by_side(tmp_path: Path, cases: Path) -> None:
    model = load_model(_model_file(tmp_path), "cpu")
    eval_cases = load_eval_cases(
        [Case(i, cases / f"{i}_image.nrrd", cases / f"{i}_label.nrrd") for i in ("small", "large")]
    )
    rows = compare(model, eval_cases, ["fast", "paper", "whole"])
    assert [r["case"] for r in rows] == ["small", "large"]
    for r in rows:
        for mode in ("fast", "paper", "whole"):
            assert 0.0 <= r[f"{mode}_dice"] <= 1.0 and r[f"{mode}_s"] > 0
    # A scan that fits in one training patch is one window either way: the same prediction.
    assert rows[0]["whole_dice"] == rows[0]["fast_dice"]
    summary = summarise(rows, ["fast", "paper", "whole"])
    assert summary["fast"]["delta_mean"] == 0.0 and summary["fast"]["better"] == 0
    expected = 100 * np.mean([r["whole_dice"] - r["fast_dice"] for r in rows])
    assert summary["whole"]["delta_mean"] == pytest.approx(expected)


def test_the_command_line_prints_a_json_record(
    tmp_path: Path, cases: Path, capsys: pytest.CaptureFixture
) -> None:
    model = _model_file(tmp_path)
    assert main([str(model), "--data", str(cases), "--ids", "small,large", "--modes", "fast,whole"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["n_cases"] == 2
    assert set(record[str(model)]) == {"device", "fast", "whole"}
    with pytest.raises(SystemExit, match="not found"):
        main([str(model), "--data", str(cases), "--ids", "missing"])
    with pytest.raises(SystemExit):
        main([str(model), "--data", str(cases), "--ids", "small", "--modes", "fast,tiled"])
    assert "unknown mode(s) ['tiled']" in capsys.readouterr().err
