"""benchmarks/any_dataset.py end to end with a budget of seconds (the 30-minute run is not a test)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from benchmarks.any_dataset import main
from reciprocalseg.data.phantom import write_phantom_cohort
from reciprocalseg.training.events import read_events


def test_auto_fixed_and_supervised_side_by_side(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_phantom_cohort(data, 7, seed=5, shape_zyx=(24, 32, 32))
    out = tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--labeled", "2", "--unlabeled", "3", "--val", "2"]
    assert main([*argv, "--minutes", "0.05", "--fixed-preset", "demo"]) == 0
    result = json.loads((out / "result.json").read_text())
    models = ["auto/teacher", "auto/student", "fixed/teacher", "fixed/student", "supervised/teacher"]
    assert list(result["summary"]) == models
    classes = sorted({k for m in result["summary"].values() for k in m})
    assert classes and all(set(result["summary"][m]) == set(classes) for m in models)
    assert all(p[c]["cases"] == 2 for p in result["paired_vs_auto_student"].values() for c in p)
    with open(out / "per_case.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(models) * 2 * len(classes)
    split = json.loads((out / "split.json").read_text())
    assert not set(split["val"]) & (set(split["labeled"]) | set(split["unlabeled"]))
    assert result["machine"]["cores"] and result["machine"]["date"]
    # Equal time by construction: every run had the same budget; supervised-only had no reciprocal phase.
    for method in ("auto", "fixed", "supervised"):
        config = json.loads((out / "runs" / method / "config.json").read_text())
        assert config["minutes"] == 0.05
    phases = {e.get("phase") for e in read_events(out / "runs" / "supervised" / "events.jsonl")}
    assert "reciprocal" not in phases
    auto = json.loads((out / "runs" / "auto" / "config.json").read_text())
    assert auto["preset"] == "auto" and auto["class_crop_share"] > 0


def test_concurrent_methods_with_two_fixed_presets(tmp_path: Path) -> None:
    """--concurrent trains the methods at once (one process each); fixed:<preset> names presets."""
    data = tmp_path / "data"
    write_phantom_cohort(data, 5, seed=6, shape_zyx=(24, 32, 32))
    out = tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--labeled", "2", "--unlabeled", "1", "--val", "2"]
    methods = "fixed:demo,fixed:lite,supervised"
    assert main([*argv, "--minutes", "0.03", "--methods", methods, "--concurrent", "--threads", "1"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["concurrent"] and result["threads_per_method"] == 1
    assert list(result["summary"]) == [
        "fixed:demo/teacher",
        "fixed:demo/student",
        "fixed:lite/teacher",
        "fixed:lite/student",
        "supervised/teacher",
    ]
    for folder, preset in (("fixed-demo", "demo"), ("fixed-lite", "lite")):
        config = json.loads((out / "runs" / folder / "config.json").read_text())
        assert config["preset"] == preset and config["minutes"] == 0.03
    assert all(result["iterations"][m].get("supervised", 0) > 0 for m in methods.split(","))
