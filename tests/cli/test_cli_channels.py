"""Two channels per case through the command line, as subprocesses on real files (issue 24).

train --images (a folder of nnU-Net channel files) --channel-names T2 ADC, planned per channel ->
predict on a folder of channel files and on a 4D NIfTI -> evaluate; a case missing a channel and a
scan with the wrong number of channels are refused by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.data.io import read_image, write_image
from reciprocalseg.data.phantom_channels import write_channel_phantom_cohort
from reciprocalseg.training.checkpoint import load_model_file

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "ReciprocalSeg"), "OMP_NUM_THREADS": "1"}
TINY = ["--patch-size", "16", "16", "16", "--n-filters", "4", "--device", "cpu"]
TINY += ["--iterations", "2", "--supervised-iterations", "2"]


def run_cli(*args: object, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reciprocalseg", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("channels")
    shape = (24, 24, 24)
    write_channel_phantom_cohort(root / "train", 2, seed=1, shape_zyx=shape)
    write_channel_phantom_cohort(root / "unl", 2, seed=2, shape_zyx=shape, prefix="unl")
    write_channel_phantom_cohort(root / "test", 2, seed=3, shape_zyx=shape)
    run = root / "run"
    res = run_cli(
        "train",
        *("--images", root / "train" / "imagesTr", "--labels", root / "train" / "labelsTr"),
        *("--unlabeled", root / "unl" / "imagesTr", "--out", run),
        *("--channel-names", "T2", "ADC"),
        *TINY,
    )
    assert res.returncode == 0, res.stderr
    return {"root": root, "run": run, "stderr": res.stderr}  # type: ignore[dict-item]


def test_the_plan_config_and_model_files_record_the_channels(trained: dict) -> None:
    plan = json.loads((trained["run"] / "plan.json").read_text())
    assert [c["name"] for c in plan["values"]["channels"]] == ["T2", "ADC"]
    assert [c["intensity"] for c in plan["values"]["channels"]] == ["zscore", "zscore"]  # MRI-like
    assert [c["modality"] for c in plan["fingerprint"]["channels"]] == ["MRI", "MRI"]
    assert "T2: MRI" in plan["reasons"]["channels"] and "channels" in trained["stderr"]
    config = json.loads((trained["run"] / "config.json").read_text())
    assert [c["name"] for c in config["channels"]] == ["T2", "ADC"]
    for name in ("teacher", "student"):
        data = load_model_file(trained["run"] / f"{name}.pt")
        assert data["meta"]["in_channels"] == 2
        assert data["meta"]["channel_names"] == ["T2", "ADC"]
        assert [c["intensity"] for c in data["meta"]["preprocessing"]["channels"]] == ["zscore", "zscore"]
        assert data["state_dict"]["enc1.0.weight"].shape[1] == 2  # the first convolution takes two channels
    cases = json.loads((trained["run"] / "cases.json").read_text())
    assert [Path(p).name for p in cases["labeled"][0]["channels"]] == [
        "chan_000_0000.nii.gz",
        "chan_000_0001.nii.gz",
    ]


def test_predict_a_folder_of_channel_files_then_evaluate(trained: dict) -> None:
    root = trained["root"]
    out = root / "pred"
    res = run_cli("predict", "--run", trained["run"], "--images", root / "test" / "imagesTr", "--out", out)
    assert res.returncode == 0, res.stderr
    for cid in ("chan_000", "chan_001"):
        pred = read_image(out / f"{cid}.nii.gz")
        scan = read_image(root / "test" / "imagesTr" / f"{cid}_0000.nii.gz")
        assert pred.GetSize() == scan.GetSize() and pred.GetOrigin() == scan.GetOrigin()
    assert not list(out.glob("*_0000*")) and not list(out.glob("*_0001*"))
    res = run_cli("evaluate", "--pred", out, "--labels", root / "test" / "labelsTr")
    assert res.returncode == 0, res.stderr
    assert "chan_000" in res.stdout and "chan_001" in res.stdout


def test_predict_a_4d_file_gives_what_its_channel_files_give(trained: dict) -> None:
    root = trained["root"]
    folder = root / "test" / "imagesTr"
    channels = [read_image(folder / f"chan_000_{k:04d}.nii.gz") for k in range(2)]
    four_d = root / "four_d" / "chan_000.nii.gz"
    write_image(sitk.JoinSeries(channels), four_d)
    res = run_cli("predict", "--run", trained["run"], "--images", four_d, "--out", root / "pred4d")
    assert res.returncode == 0, res.stderr
    res2 = run_cli("predict", "--run", trained["run"], "--images", folder, "--out", root / "pred_files")
    assert res2.returncode == 0, res2.stderr
    a = sitk.GetArrayFromImage(read_image(root / "pred4d" / "chan_000.nii.gz"))
    b = sitk.GetArrayFromImage(read_image(root / "pred_files" / "chan_000.nii.gz"))
    np.testing.assert_array_equal(a, b)


def test_a_scan_with_one_channel_is_refused_by_a_two_channel_model(trained: dict) -> None:
    root = trained["root"]
    scan = root / "test" / "imagesTr" / "chan_000_0000.nii.gz"
    res = run_cli("predict", "--run", trained["run"], "--images", scan, "--out", root / "pred1")
    assert res.returncode == 1
    assert "case chan_000 has 1 channel(s), but the model and the other cases have 2 (T2, ADC)" in res.stderr


def test_a_case_missing_a_channel_is_refused_by_name(trained: dict, tmp_path: Path) -> None:
    root = trained["root"]
    unl = tmp_path / "unl"
    write_channel_phantom_cohort(tmp_path, 2, seed=4, shape_zyx=(24, 24, 24), prefix="more")
    (tmp_path / "imagesTr").rename(unl)
    (unl / "more_001_0001.nii.gz").unlink()
    res = run_cli(
        "train",
        *("--images", root / "train" / "imagesTr", "--labels", root / "train" / "labelsTr"),
        *("--unlabeled", unl, "--out", tmp_path / "run"),
        *TINY,
    )
    assert res.returncode == 1
    assert "case more_001 lacks channel 0001 (more_001_0001.<ext>)" in res.stderr


def test_unlabelled_cases_with_other_channels_are_refused(trained: dict, tmp_path: Path) -> None:
    root = trained["root"]
    single = tmp_path / "single"
    single.mkdir()
    os.symlink(root / "unl" / "imagesTr" / "unl_000_0000.nii.gz", single / "lone.nii.gz")
    res = run_cli(
        "train",
        *("--images", root / "train" / "imagesTr", "--labels", root / "train" / "labelsTr"),
        *("--unlabeled", single, "--out", tmp_path / "run"),
        *TINY,
    )
    assert res.returncode == 1
    assert "these have another number: lone (1)" in res.stderr
