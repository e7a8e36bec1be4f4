"""The README's command-line pipeline on multi-class data, run as subprocesses on real files.

train -> predict --model both --disagreement -> evaluate, as the README writes them, on a
phantom cohort with two foreground classes (three with background); outputs in the input's
format; per-class means; readable progress; spacing without float noise; the warning for a
model that predicts only background; the per-structure QA files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from reciprocalseg.data.phantom import make_phantom, write_phantom_cohort
from reciprocalseg.training.checkpoint import load_model_file, save_torch

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "ReciprocalSeg"), "OMP_NUM_THREADS": "1"}
TINY = ["--preset", "demo", "--patch-size", "16", "16", "16", "--n-filters", "4", "--device", "cpu"]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reciprocalseg", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def _link(src: Path, folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    os.symlink(src.resolve(), folder / src.name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Three-class phantoms (imagesTr/labelsTr/imagesUnl/imagesTs/labelsTs, .nii.gz) and a tiny run."""
    root = tmp_path_factory.mktemp("pipeline")
    cases = write_phantom_cohort(root / "all", 6, seed=5, n_classes=2, shape_zyx=(24, 24, 24), layout="split")
    for i, c in enumerate(cases):
        if i < 2:
            _link(c.image, root / "imagesTr")
            _link(c.label, root / "labelsTr")
        elif i < 4:
            _link(c.image, root / "imagesUnl")
        else:
            _link(c.image, root / "imagesTs")
            _link(c.label, root / "labelsTs")
    res = run_cli(
        "train",
        "--images",
        root / "imagesTr",
        "--labels",
        root / "labelsTr",
        "--unlabeled",
        root / "imagesUnl",
        "--out",
        root / "runs" / "r1",
        "--iterations",
        "2",
        "--supervised-iterations",
        "2",
        *TINY,
    )
    assert res.returncode == 0, res.stderr
    return {"root": root, "run": root / "runs" / "r1", "train_stderr": res.stderr}  # type: ignore[dict-item]


def test_train_progress_is_readable_lines_not_json(trained: dict) -> None:
    err = trained["train_stderr"]
    assert "preprocessing 4 cases" in err
    assert "supervised phase: 2 iterations on cpu" in err
    assert "reciprocal phase: 2 iterations on cpu" in err
    assert "done in " in err
    assert "{" not in err, err  # no raw JSON after a phase name


def test_readme_predict_then_evaluate_works_as_written_on_three_classes(trained: dict) -> None:
    root, run = trained["root"], trained["run"]
    preds = root / "preds"
    res = run_cli(
        "predict", "--run", run, "--images", root / "imagesTs", "--out", preds, "--model", "both",
        "--disagreement", "--device", "cpu",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    images = sorted(p.name for p in preds.iterdir() if p.name.endswith(".nii.gz"))
    assert images == sorted(
        f"phantom_00{i}_{k}.nii.gz" for i in (4, 5) for k in ("teacher", "student", "disagreement")
    )
    res = run_cli("evaluate", "--pred", preds, "--labels", root / "labelsTs")
    assert res.returncode == 0, res.stderr
    assert "teacher: 2 case(s)" in res.stdout and "student: 2 case(s)" in res.stdout
    assert "mean over classes" in res.stdout

    rows = list(csv.DictReader(open(preds / "metrics.csv")))
    assert {(r["model"], r["case"], r["class"]) for r in rows} == {
        (m, f"phantom_00{i}", str(c)) for m in ("teacher", "student") for i in (4, 5) for c in (1, 2)
    }
    summary = {(r["model"], r["class"]): r for r in csv.DictReader(open(preds / "metrics_summary.csv"))}
    assert set(summary) == {(m, c) for m in ("teacher", "student") for c in ("1", "2", "mean over classes")}
    for model in ("teacher", "student"):
        for cls in ("1", "2"):
            dice = [float(r["dice"]) for r in rows if r["model"] == model and r["class"] == cls]
            assert float(summary[model, cls]["dice"]) == pytest.approx(sum(dice) / len(dice))
        per_class = [float(summary[model, c]["dice"]) for c in ("1", "2")]
        assert float(summary[model, "mean over classes"]["dice"]) == pytest.approx(sum(per_class) / 2)

    res = run_cli("evaluate", "--pred", preds, "--labels", root / "labelsTs", "--model", "teacher")
    assert res.returncode == 0, res.stderr
    assert {r["model"] for r in csv.DictReader(open(preds / "metrics.csv"))} == {"teacher"}
    res = run_cli("evaluate", "--pred", preds, "--labels", root / "labelsTs", "--model", "supervised")
    assert res.returncode == 1 and "no supervised prediction" in res.stderr


def test_predictions_keep_the_input_format_and_spacing_prints_without_float_noise(
    trained: dict, tmp_path: Path
) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    image, label = make_phantom(21, shape_zyx=(24, 24, 24), n_classes=2)
    image.SetSpacing((9.999999999999998, 1.0, 1.5))
    sitk.WriteImage(image, str(scans / "noisy.nrrd"))
    assert sitk.ReadImage(str(scans / "noisy.nrrd")).GetSpacing()[0] != 10.0  # the noise survives the file
    sitk.WriteImage(make_phantom(22, shape_zyx=(24, 24, 24))[0], str(scans / "other.mha"))
    out = tmp_path / "out"
    res = run_cli("predict", "--run", trained["run"], "--images", scans, "--out", out, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("qa.")) == [
        "noisy.nrrd",
        "other.mha",
    ]
    assert "spacing (10, 1, 1.5) mm" in res.stdout, res.stdout
    assert "9.99999" not in res.stdout
    res = run_cli(
        "predict", "--run", trained["run"], "--images", scans / "noisy.nrrd", "--out", out,
        "--format", ".nii.gz", "--device", "cpu",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (out / "noisy.nii.gz").exists()


def test_predict_writes_per_structure_qa_and_prints_it(trained: dict) -> None:
    root = trained["root"]
    out = root / "preds_qa"
    res = run_cli(
        "predict", "--run", trained["run"], "--images", root / "imagesTs", "--out", out, "--model", "both",
        "--device", "cpu",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "QA reference: 2 labelled cases" in res.stdout
    doc = json.loads((out / "qa.json").read_text())
    rows = doc["structures"]
    assert {(r["case_id"], r["model"], r["label"]) for r in rows} == {
        (f"phantom_00{i}", m, c) for i in (4, 5) for m in ("teacher", "student") for c in (1, 2)
    }
    assert doc["reference"]["cases"] == 2 and set(doc["reference"]["classes"]) == {"1", "2"}
    for r in rows:  # the volume is the written label map's voxel count x voxel volume
        pred = sitk.ReadImage(str(out / f"{r['case_id']}_{r['model']}.nii.gz"))
        voxels = int((sitk.GetArrayFromImage(pred) == r["label"]).sum())
        assert r["volume_ml"] == pytest.approx(voxels * math.prod(pred.GetSpacing()) / 1000)
        assert 0.0 <= r["disagreement"] <= 1.0
        assert f"{r['model']:<10} class {r['label']}:" in res.stdout
    assert len(list(csv.DictReader(open(out / "qa.csv")))) == len(rows)


def test_predict_warns_when_a_model_predicts_only_background(trained: dict, tmp_path: Path) -> None:
    data = load_model_file(trained["run"] / "student.pt")
    state = data["state_dict"]
    # The network's last 1x1x1 convolution: zero weights leave the logits = its bias, background first.
    state["head.weight"] = torch.zeros_like(state["head.weight"])
    state["head.bias"] = torch.tensor([10.0] + [0.0] * (state["head.bias"].numel() - 1))
    blind = tmp_path / "student.pt"
    save_torch(data, blind)
    root = trained["root"]
    res = run_cli(
        "predict", "--run", blind, "--images", root / "imagesTs", "--out", tmp_path / "p", "--device", "cpu"
    )
    assert res.returncode == 0, res.stderr
    assert "warning: the student predicts only background in all 2 cases" in res.stderr
    res = run_cli(
        "predict",
        "--run",
        trained["run"],
        "--images",
        root / "imagesTs",
        "--out",
        tmp_path / "q",
        "--device",
        "cpu",
    )
    assert res.returncode == 0 and "only background" not in res.stderr


def test_predict_without_readable_training_labels_still_predicts(trained: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("student.pt", "cases.json"):
        (run / name).write_bytes((trained["run"] / name).read_bytes())
    cases = json.loads((run / "cases.json").read_text())
    for entry in cases["labeled"]:
        entry["label"] = str(tmp_path / "moved" / Path(entry["label"]).name)
    (run / "cases.json").write_text(json.dumps(cases))
    root = trained["root"]
    res = run_cli(
        "predict", "--run", run, "--images", root / "imagesTs", "--out", tmp_path / "p", "--device", "cpu"
    )
    assert res.returncode == 0, res.stderr
    assert "QA reference: none, the run's labelled cases cannot be read" in res.stdout
    res = run_cli(
        "predict", "--run", run, "--images", root / "imagesTs", "--out", tmp_path / "q", "--device", "cpu",
        "--reference-labels", root / "labelsTs",
    )  # fmt: skip
    assert res.returncode == 0 and "QA reference: 2 labelled cases" in res.stdout


def test_every_event_the_bar_shows_is_a_readable_line() -> None:
    import io

    from reciprocalseg.training.progress import ProgressBar

    stream = io.StringIO()
    bar = ProgressBar(stream)
    for event in (
        {"event": "phase", "phase": "reciprocal", "iteration": 120, "total": 6000, "device": "cpu"},
        {"event": "resumed", "phase": "reciprocal", "iteration": 120},
        {"event": "warm_start", "source": "runs/r0"},
        {"event": "warning", "phase": "reciprocal", "iteration": 300, "message": "the student lost class 2"},
        {"event": "phase", "phase": "supervised", "iteration": 0, "total": None, "device": "cpu"},
        {"event": "budget", "phase": "supervised", "minutes": 10, "deadline_s": 240.0, "lr_drop_s": 202.0},
        {"event": "budget", "phase": "reciprocal", "minutes": 0.5, "deadline_s": 30.0, "lr_drop_s": 26.1}
        | {"iterations": 12, "sec_per_iter": 1.21},
        {"event": "cancelled", "phase": "reciprocal", "iteration": 301},
        {"event": "error", "message": "out of memory"},
        {"event": "done", "seconds": 185.2, "device": "cpu"},
    ):
        bar({**event, "time": 0.0})
    assert stream.getvalue().splitlines() == [
        "reciprocal phase: 6000 iterations from iteration 120 on cpu",
        "resumed from the checkpoint at reciprocal iteration 120",
        "warm start from runs/r0",
        "warning at reciprocal iteration 300: the student lost class 2",
        "supervised phase on cpu",
        "supervised phase runs to 4 min 00 s of the 10-minute budget (lr drop at 3 min 22 s)",
        "reciprocal phase runs to 30.0 s of the 0.5-minute budget (lr drop at 26.1 s), about 12 "
        "iterations at 1.2 s each",
        "cancelled at reciprocal iteration 301; a checkpoint was written, rerun the same command to resume",
        # no "error: ..." line: the command prints the error once, as it stops
        "done in 3 min 05 s on cpu",
    ]


def test_predict_never_writes_over_the_scans_it_reads(trained: dict, tmp_path: Path) -> None:
    """--out = the scans' folder with one model would name the prediction <ID>.<ext>, the scan's own
    name (outputs keep the input's format): refused before anything is written."""
    scans = tmp_path / "scans"
    scans.mkdir()
    source = next((trained["root"] / "imagesTs").iterdir()).resolve()
    scan = scans / source.name.replace("_image", "")  # <ID>.nii.gz
    scan.write_bytes(source.read_bytes())
    before = scan.read_bytes()
    res = run_cli("predict", "--run", trained["run"], "--images", scans, "--out", scans, "--model", "student")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "would overwrite the scan" in res.stderr and "--out" in res.stderr
    assert scan.read_bytes() == before
    assert sorted(p.name for p in scans.iterdir()) == [scan.name]  # no QA files either
    # With both models the names differ from the scans': the same folder is fine.
    res = run_cli("predict", "--run", trained["run"], "--images", scans, "--out", scans, "--model", "both")
    assert res.returncode == 0, res.stderr
    assert scan.read_bytes() == before


def test_disagreement_with_one_model_is_refused_not_silently_skipped(trained: dict, tmp_path: Path) -> None:
    out = tmp_path / "preds"
    res = run_cli(
        "predict",
        "--run",
        trained["run"],
        "--images",
        trained["root"] / "imagesTs",
        "--out",
        out,
        "--model",
        "student",
        "--disagreement",
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "--disagreement" in res.stderr and "--model both" in res.stderr
    assert not out.exists()  # refused before anything was written
