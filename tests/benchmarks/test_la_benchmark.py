"""`python -m benchmarks.la` end to end on a few downsampled real left-atrium cases.

Checks the outputs (CSV, markdown, JSON with the agreed keys), the split logic (no overlap
between labelled / unlabelled / evaluation cases, clear errors otherwise, `--test-dir`
overlap refused) and the time budget (an honest cut). Tiny networks and iteration counts:
this tests the harness, not the accuracy (see benchmarks/RESULTS.md for that).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from benchmarks import la
from reciprocalseg.training.events import read_events

pytestmark = pytest.mark.realdata

TINY = [
    "--set",
    "patch_size=[32,32,16]",
    "--set",
    "n_filters=4",
    "--set",
    "target_spacing=null",
    "--set",
    "supervised_batch=2",
    "--set",
    "lr_step=1000",
    "--threads",
    "1",  # a small shared CPU: more threads than free cores only slows these tiny runs down
]


def downsample_cases(src: Path, dst: Path, ids: list[str], spacing: float = 2.5) -> None:
    """Copies of real cases on a coarse grid (image linear, label nearest) + train.list."""
    dst.mkdir(parents=True, exist_ok=True)
    for case_id in ids:
        for kind, interp in (("image", sitk.sitkLinear), ("label", sitk.sitkNearestNeighbor)):
            img = sitk.ReadImage(str(src / f"{case_id}_{kind}.nrrd"))
            size = [
                max(1, round(n * s / spacing)) for n, s in zip(img.GetSize(), img.GetSpacing(), strict=True)
            ]
            out = sitk.Resample(
                img, size, sitk.Transform(), interp, img.GetOrigin(), (spacing,) * 3, img.GetDirection(), 0
            )
            sitk.WriteImage(out, str(dst / f"{case_id}_{kind}.nrrd"), True)
    (dst / "train.list").write_text("\n".join(ids) + "\n")


@pytest.fixture(scope="module")
def small_la(la_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ids = [
        line.strip()
        for line in (la_dir / "train.list").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    dst = tmp_path_factory.mktemp("la_small")
    downsample_cases(la_dir, dst, ids[:3] + ids[-1:])
    return dst


def _ids(path: Path) -> list[str]:
    return [
        line.strip()
        for line in (path / "train.list").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def test_default_split_is_disjoint_and_ordered(small_la: Path) -> None:
    ids = _ids(small_la)
    split = la.make_split(small_la, 2, n_eval=1)
    assert [c.case_id for c in split.labeled] == ids[:2]
    assert [c.case_id for c in split.unlabeled] == ids[2:3]
    assert [c.case_id for c in split.evaluation] == ids[3:]
    assert "first 2 of train.list" in split.description and "last 1" in split.description


def test_scribbled_cases_move_from_unlabelled_to_partially_labelled(small_la: Path, tmp_path: Path) -> None:
    ids = _ids(small_la)
    split = la.add_scribbled(la.make_split(small_la, 1, n_eval=1), 1, 3, tmp_path / "scribbles")
    assert [c.case_id for c in split.labeled] == ids[:2]
    assert [c.case_id for c in split.unlabeled] == ids[2:3]
    partial = split.labeled[1]
    assert partial.label == tmp_path / "scribbles" / f"{ids[1]}_label.nrrd"
    assert partial.image == small_la / f"{ids[1]}_image.nrrd"
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(partial.label)))
    assert {int(v) for v in set(values.ravel().tolist())} == {0, 1, 255}
    record = split.to_dict()
    assert record["scribbled"] == [ids[1]] and 0 < record["annotated_fraction"][ids[1]] < 0.05
    assert "scribbled" in split.description
    with pytest.raises(la.BenchmarkError, match="--scribbled 5"):
        la.add_scribbled(la.make_split(small_la, 1, n_eval=1), 5, 3, tmp_path / "s2")


def test_split_errors(small_la: Path, tmp_path: Path) -> None:
    ids = _ids(small_la)
    with pytest.raises(la.BenchmarkError, match="overlap"):
        la.make_split(small_la, 2, unlabeled_ids=[ids[0], ids[2]], n_eval=1)
    with pytest.raises(la.BenchmarkError, match="overlap"):
        la.make_split(small_la, 2, eval_ids=[ids[1]])
    with pytest.raises(la.BenchmarkError, match="unknown"):
        la.make_split(small_la, 2, eval_ids=["NOPE"])
    with pytest.raises(la.BenchmarkError, match="--labeled"):
        la.make_split(small_la, 4)
    # A test folder holding a training case is refused ...
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    for kind in ("image", "label"):
        shutil.copy(small_la / f"{ids[2]}_{kind}.nrrd", test_dir)
    with pytest.raises(la.BenchmarkError, match="overlaps the training cases"):
        la.make_split(small_la, 2, test_dir=test_dir)
    # ... and accepted when that case is not used for training.
    split = la.make_split(small_la, 2, unlabeled_ids=[ids[3]], test_dir=test_dir)
    assert [c.case_id for c in split.evaluation] == [ids[2]]
    assert split.source == str(test_dir)


def test_option_errors_name_the_option(small_la: Path, tmp_path: Path) -> None:
    base = ["--data", str(small_la), "--out", str(tmp_path / "out")]
    with pytest.raises(la.BenchmarkError, match="--methods"):
        la.main([*base, "--methods", "supervised_magic"])
    with pytest.raises(la.BenchmarkError, match="--mt-consistency"):
        la.main([*base, "--methods", "mean_teacher", "--mt-consistency", "-1"])
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_improved_fine_tune_keeps_its_share_of_the_reciprocal_phase() -> None:
    paper = la.build_config(la.PROTOCOLS["paper"], "improved")
    assert (paper.reciprocal_iterations, paper.finetune_iterations) == (6000, 500)
    lite = la.build_config(la.PROTOCOLS["lite"], "improved")
    assert (lite.reciprocal_iterations, lite.finetune_iterations, lite.preset) == (300, 25, "lite+improved")
    assert la.build_config(la.PROTOCOLS["lite"], "improved", iterations=1200).finetune_iterations == 100
    # An explicit --set wins, and presets without a fine-tune get none.
    assert (
        la.build_config(la.PROTOCOLS["lite"], "improved", sets=["finetune_iterations=7"]).finetune_iterations
        == 7
    )
    assert la.build_config(la.PROTOCOLS["lite"]).finetune_iterations == 0


def test_harness_end_to_end(small_la: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["--protocol", "lite", "--data", str(small_la), "--labeled", "2", "--n-eval", "1"]
    argv += ["--supervised-iterations", "2", "--iterations", "2"]
    argv += ["--methods", "reciprocal,mean_teacher,control"]
    argv += ["--out", str(out), *TINY]
    record = la.main(argv)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    headline = json.loads(last)
    for key in ("method", "protocol", "student_dice", "teacher_dice", "supervised_dice", "n_test"):
        assert key in headline
    assert headline["method"] == "reciprocal+mean_teacher+control" and headline["protocol"] == "lite"
    assert headline["n_test"] == 1 and headline["cut"] is False
    assert headline["split"].startswith("labelled = the first 2 of train.list")
    assert 0 <= headline["student_dice"] <= 1 and headline["mean_teacher_dice"] is not None
    assert record["summary"]["student"]["dice"]["n"] == 1
    # The control: phase 1's model trained 2 more supervised iterations on the labelled cases only.
    assert headline["control_dice"] is not None
    control_events = read_events(out / "runs" / "control" / "events.jsonl")
    supervised_pt = out / "runs" / "reciprocal" / "supervised.pt"
    assert any(e["event"] == "warm_start" and e["source"] == str(supervised_pt) for e in control_events)
    steps = [(e["phase"], e["iteration"]) for e in control_events if e["event"] == "progress"]
    assert steps == [("supervised", 1), ("supervised", 2)]
    control_cases = json.loads((out / "runs" / "control" / "cases.json").read_text(encoding="utf-8"))
    assert control_cases["unlabeled"] == []

    models = {"supervised", "teacher", "student", "mean_teacher_student", "mean_teacher_ema", "control"}
    with open(out / "per_case.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == models
    assert set(rows[0]) == {"model", "case", *la.METRICS}
    with open(out / "summary.csv", encoding="utf-8") as f:
        summary = list(csv.DictReader(f))
    assert {r["model"] for r in summary} == models and "hd95_vox_mean" in summary[0]
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "| model | n | Dice %" in md and "labelled = the first 2" in md
    split = json.loads((out / "split.json").read_text(encoding="utf-8"))
    assert not set(split["labeled"]) & set(split["unlabeled"])
    assert not (set(split["labeled"]) | set(split["unlabeled"])) & set(split["evaluation"])
    assert (out / "runs" / "reciprocal" / "supervised.pt").exists()
    assert (out / "runs" / "reciprocal" / "checkpoints" / la.SUPERVISED_CHECKPOINT).exists()

    # The improved preset reuses phase 1 of that run and is labelled as such, also when the run
    # was written by an earlier version whose configuration lacked a field added since.
    phase1 = out / "runs" / "reciprocal" / "checkpoints" / la.SUPERVISED_CHECKPOINT
    checkpoint = torch.load(phase1, weights_only=False)
    del checkpoint["config"]["compile_mode"]
    torch.save(checkpoint, phase1)
    out2 = tmp_path / "improved"
    argv2 = ["--protocol", "lite", "--data", str(small_la), "--labeled", "2", "--n-eval", "1"]
    argv2 += ["--supervised-iterations", "2", "--iterations", "2", "--preset", "improved"]
    argv2 += ["--set", "finetune_iterations=1", "--from-supervised", str(out / "runs" / "reciprocal")]
    argv2 += ["--out", str(out2), *TINY]
    record2 = la.main(argv2)
    assert record2["preset"] == "lite+improved"
    assert "shared with" in record2["runs"]["reciprocal"]["phase1"]
    events = (out2 / "runs" / "reciprocal" / "events.jsonl").read_text(encoding="utf-8")
    assert '"phase": "supervised", "iteration": 1' not in events  # phase 1 was not retrained


def test_time_budget_cuts_the_reciprocal_phase_honestly(small_la: Path, tmp_path: Path) -> None:
    out = tmp_path / "cut"
    argv = ["--protocol", "lite8", "--data", str(small_la), "--labeled", "2", "--n-eval", "1"]
    argv += ["--supervised-iterations", "2", "--iterations", "50", "--time-budget-min", "0"]
    argv += ["--out", str(out), *TINY]
    record = la.main(argv)
    run = record["runs"]["reciprocal"]
    assert record["cut"] is True and run["cut"] is True
    assert run["reached"]["phase"] == "reciprocal" and run["reached"]["iteration"] < 50
    assert record["student_dice"] is not None and record["supervised_dice"] is not None
    assert "CUT" in (out / "results.md").read_text(encoding="utf-8")

    # The control then reuses that run's phase 1 and leaves the cut reciprocal run unfinished.
    argv[argv.index("--iterations") + 1] = "3"
    record = la.main([*argv, "--methods", "control", "--skip-eval", "supervised"])
    assert record["runs"]["reciprocal"]["reused"] == "phase 1"
    assert not (out / "runs" / "reciprocal" / "done.json").exists()
    assert record["control_dice"] is not None and record["runs"]["control"]["cut"] is True
