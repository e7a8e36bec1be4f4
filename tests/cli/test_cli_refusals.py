"""Issue 23: the command line refuses bad arguments, unwritable paths and unusable models in one
line each, printed once, without a traceback (a real subprocess on real files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from reciprocalseg.common.errors import ReciprocalSegError
from reciprocalseg.config import make_config
from reciprocalseg.data.phantom import write_phantom_cohort
from reciprocalseg.model.vnet import build_model
from reciprocalseg.training.checkpoint import save_model

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "ReciprocalSeg")}


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reciprocalseg", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refusals")
    config = make_config("demo", n_filters=2)
    for name, poison in (("good", False), ("nan", True)):
        torch.manual_seed(0)
        module = build_model(config.n_classes, config.n_filters, config.normalization, config.dropout)
        if poison:
            with torch.no_grad():
                module.head.bias.fill_(float("nan"))
        save_model(module, config, root / f"{name}.pt")
    cases = write_phantom_cohort(root / "scans", 1, seed=0, shape_zyx=(16, 16, 16))
    blank_dir = root / "blank"
    blank_dir.mkdir()
    like = sitk.ReadImage(str(cases[0].image))
    blank = sitk.Image(like.GetSize(), sitk.sitkFloat32) + 5
    blank.CopyInformation(like)
    sitk.WriteImage(blank, str(blank_dir / "empty_image.nrrd"))
    sitk.WriteImage(sitk.ReadImage(str(cases[0].label)), str(blank_dir / "empty_label.nrrd"))
    (root / "a_file").write_text("not a folder")
    return {"root": root, "good": root / "good.pt", "nan": root / "nan.pt", "scans": root / "scans",
            "blank": blank_dir, "file": root / "a_file"}  # fmt: skip


def _one_line(res: subprocess.CompletedProcess, code: int) -> str:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--out", "{file}"], "is a file; give a folder"),
        (["--out", "/proc/no/such/folder"], "/proc/no: No such file or directory"),
        (["--out", "{root}/onnx1", "--opset", "1"], "opsets 9..20"),
        (["--out", "{root}/onnx99", "--opset", "99"], "opsets 9..20"),
    ],
)
def test_export_onnx_bad_arguments_are_one_line_exit_2(
    files: dict[str, Path], args: list[str], words: str
) -> None:
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    line = _one_line(run_cli("export-onnx", "--run", str(files["good"]), *args), 2)
    assert words in line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--out", "{file}"], "is a file; give a folder"),
        (["--out", "/proc/no/such/folder"], "/proc/no: No such file or directory"),
        (["--out", "{root}/p", "--overlap", "nan"], "--overlap nan"),
        (["--out", "{root}/p", "--overlap", "5"], "--overlap 5.0"),
    ],
)
def test_predict_bad_arguments_are_one_line_exit_2(
    files: dict[str, Path], args: list[str], words: str
) -> None:
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    res = run_cli("predict", "--run", str(files["good"]), "--images", str(files["scans"]), *args)
    assert words in _one_line(res, 2)


@pytest.mark.parametrize("minutes", ["inf", "nan", "0"])
def test_train_refuses_a_time_budget_that_is_not_a_finite_positive_number(
    files: dict[str, Path], minutes: str
) -> None:
    """``--minutes inf`` was taken as a budget (it failed later on something else, or ran without end)."""
    res = run_cli(
        "train", "--images", str(files["scans"]), "--out", str(files["root"] / "t"), "--minutes", minutes
    )
    assert f"--minutes {float(minutes)}: a time budget is a finite number" in _one_line(res, 2)
    assert not (files["root"] / "t").exists()


def test_a_configuration_refuses_an_infinite_budget() -> None:
    """The same rule for a request that does not come from the command line (a plan, a service round)."""
    with pytest.raises(ReciprocalSegError, match="minutes=inf: a time budget must be a finite number"):
        make_config("demo", minutes=float("inf"))


@pytest.mark.parametrize("command", ["predict", "export-onnx"])
def test_a_model_with_nan_weights_is_refused_saying_so(files: dict[str, Path], command: str) -> None:
    """predict answered exit 0 with all-background maps ("train longer"); export-onnx said "report this"."""
    out = files["root"] / f"out-{command}"
    extra = ["--images", str(files["scans"])] if command == "predict" else []
    line = _one_line(run_cli(command, "--run", str(files["nan"]), *extra, "--out", str(out)), 1)
    assert "NaN or infinite weights" in line and "head.bias" in line and "report this" not in line
    assert not any(out.glob("*.onnx")) and not any(out.glob("*.nrrd"))


def test_a_refusal_during_training_is_printed_once_naming_the_case(files: dict[str, Path]) -> None:
    res = run_cli(
        "train", "--images", str(files["blank"]), "--out", str(files["root"] / "run"), "--preset", "demo",
        "--patch-size", "16", "16", "16", "--n-filters", "2", "--iterations", "0",
        "--supervised-iterations", "1", "--device", "cpu",
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    assert "case empty" in errors[0] and "constant intensity" in errors[0]


def test_serve_refuses_a_class_count_past_255_in_one_line(files: dict[str, Path]) -> None:
    """255 marks unannotated voxels, so a workspace has at most 255 classes (0..254)."""
    res = run_cli("serve", "--workspace", str(files["root"] / "ws"), "--n-classes", "256")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("reciprocalseg serve: error: --n-classes 256"), res.stderr


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--iterations", "-3"], "--iterations -3: must be at least 0"),
        (["--n-classes", "1"], "--n-classes 1: must be at least 2"),
        (["--n-filters", "0"], "--n-filters 0: must be at least 1"),
        (["--checkpoint-every", "0"], "--checkpoint-every 0: must be at least 1"),
        (["--patch-size", "0", "16", "16"], "--patch-size 0 16 16: every size must be at least 1"),
    ],
)
def test_train_refuses_a_count_below_its_minimum_as_a_usage_error(
    files: dict[str, Path], option: list[str], words: str
) -> None:
    """A negative iteration count was the configuration's error: one line, but exit 1 after the
    cases were read. It is a bad argument: exit 2, before anything is read or written."""
    res = run_cli("train", "--images", str(files["scans"]), "--out", str(files["root"] / "t"), *option)
    assert words in _one_line(res, 2)
    assert not (files["root"] / "t").exists()
