"""The `reciprocalseg` command line, run as a real subprocess on phantom files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from reciprocalseg.data.phantom import write_phantom_cohort

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "ReciprocalSeg")}
TINY = ["--preset", "demo", "--patch-size", "16", "16", "16", "--n-filters", "4", "--device", "cpu"]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reciprocalseg", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    cases = write_phantom_cohort(root / "all", 6, seed=11, shape_zyx=(24, 24, 24), layout="split")
    layout = {
        "images": root / "images",
        "labels": root / "labels",
        "unlabeled": root / "unlabeled",
        "test": root / "test",
        "test_labels": root / "test_labels",
    }
    for p in layout.values():
        p.mkdir()
    for i, c in enumerate(cases):
        if i < 2:
            os.symlink(c.image, layout["images"] / c.image.name)
            os.symlink(c.label, layout["labels"] / c.label.name)
        elif i < 4:
            os.symlink(c.image, layout["unlabeled"] / c.image.name)
        else:
            os.symlink(c.image, layout["test"] / c.image.name)
            os.symlink(c.label, layout["test_labels"] / c.label.name)
    return {**layout, "root": root}


def test_train_predict_evaluate(folders: dict[str, Path]) -> None:
    run = folders["root"] / "run"
    res = run_cli(
        "train",
        "--images",
        str(folders["images"]),
        "--labels",
        str(folders["labels"]),
        "--unlabeled",
        str(folders["unlabeled"]),
        "--out",
        str(run),
        "--iterations",
        "2",
        "--supervised-iterations",
        "2",
        "--json",
        *TINY,
    )
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert events[-1]["event"] == "done"
    assert sum(e["event"] == "progress" for e in events) == 4
    assert json.loads((run / "cases.json").read_text())["unlabeled"][0]["id"] == "phantom_002"

    out = folders["root"] / "pred"
    res = run_cli(
        "predict",
        "--run",
        str(run),
        "--images",
        str(folders["test"]),
        "--out",
        str(out),
        "--model",
        "both",
        "--disagreement",
        "--device",
        "cpu",
        "--format",
        ".nrrd",
    )
    assert res.returncode == 0, res.stderr
    names = sorted(p.name for p in out.iterdir() if p.name not in ("qa.csv", "qa.json"))
    assert (out / "qa.csv").exists()
    assert names == sorted(
        f"phantom_00{i}_{k}.nrrd" for i in (4, 5) for k in ("teacher", "student", "disagreement")
    )
    pred = sitk.ReadImage(str(out / "phantom_004_student.nrrd"))
    src = sitk.ReadImage(str(next(folders["test"].glob("phantom_004*"))))
    assert pred.GetSize() == src.GetSize() and pred.GetOrigin() == src.GetOrigin()

    student_only = folders["root"] / "pred_student"
    assert (
        run_cli(
            "predict",
            "--run",
            str(run),
            "--images",
            str(folders["test"]),
            "--out",
            str(student_only),
            "--device",
            "cpu",
        ).returncode
        == 0
    )
    res = run_cli("evaluate", "--pred", str(student_only), "--labels", str(folders["test_labels"]))
    assert res.returncode == 0, res.stderr
    assert "mean" in res.stdout
    rows = list(csv.DictReader(open(student_only / "metrics.csv")))
    assert {r["case"] for r in rows} == {"phantom_004", "phantom_005"}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)


def test_clear_errors_and_exit_codes(folders: dict[str, Path], tmp_path: Path) -> None:
    res = run_cli("train", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *TINY)
    assert res.returncode == 1 and "error:" in res.stderr and "nope" in res.stderr
    res = run_cli("train", "--images", str(folders["unlabeled"]), "--out", str(tmp_path / "r"), *TINY)
    assert res.returncode == 1 and "label" in res.stderr.lower()
    res = run_cli(
        "predict", "--run", str(tmp_path), "--images", str(folders["test"]), "--out", str(tmp_path / "p")
    )
    assert res.returncode == 1 and "finished" in res.stderr
    res = run_cli(
        "train",
        "--out",
        str(tmp_path / "r"),
        "--preset",
        "nosuch",
        "--images",
        str(folders["images"]),
        "--labels",
        str(folders["labels"]),
    )
    assert res.returncode == 1 and "Unknown preset" in res.stderr
    assert run_cli("--version").stdout.startswith("reciprocalseg ")


def test_evaluate_accepts_a_folder_of_label_maps_alone(tmp_path: Path) -> None:
    from reciprocalseg.evaluation.evaluate import label_files as _label_files

    cases = write_phantom_cohort(tmp_path / "pairs", 2, seed=1, shape_zyx=(16, 16, 16))
    only = tmp_path / "only_labels"
    only.mkdir()
    for c in cases:
        os.symlink(c.label, only / c.label.name)
    assert _label_files(only) == {c.case_id: only / c.label.name for c in cases}
    assert _label_files(tmp_path / "pairs") == {c.case_id: c.label for c in cases}
    cases[1].label.unlink()  # an image whose label is missing is not a label
    assert _label_files(tmp_path / "pairs") == {cases[0].case_id: cases[0].label}


def test_the_torchrun_entry_without_torchrun_trains_as_the_cli(folders: dict[str, Path]) -> None:
    """`python -m reciprocalseg.training.distributed train ...` (no WORLD_SIZE): the train options."""
    run = folders["root"] / "run_distributed_entry"
    env = {k: v for k, v in ENV.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    res = subprocess.run(
        [sys.executable, "-m", "reciprocalseg.training.distributed", "train"]
        + ["--images", str(folders["images"]), "--labels", str(folders["labels"])]
        + ["--unlabeled", str(folders["unlabeled"]), "--out", str(run)]
        + ["--iterations", "1", "--supervised-iterations", "1", *TINY],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert f"student: {run / 'student.pt'}" in res.stdout
    assert (run / "done.json").exists()
    res = subprocess.run(
        [sys.executable, "-m", "reciprocalseg.training.distributed", "train", "--out", str(run), *TINY],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 1 and "give --images" in res.stderr
