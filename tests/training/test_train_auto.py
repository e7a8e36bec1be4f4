"""`reciprocalseg train` with nothing but the folders: the `auto` plan, shown, written, overridable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from reciprocalseg.data.phantom import write_phantom_cohort

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reciprocalseg", *args], capture_output=True, text=True, env=ENV, timeout=600
    )


def test_auto_is_the_default_and_the_plan_is_written_shown_and_overridable(tmp_path: Path) -> None:
    cases = write_phantom_cohort(tmp_path / "all", 4, seed=2, shape_zyx=(20, 24, 24))
    lab, unl = tmp_path / "lab", tmp_path / "unl"
    lab.mkdir(), unl.mkdir()
    for i, c in enumerate(cases):
        os.symlink(c.image, (lab if i < 2 else unl) / c.image.name)
        if i < 2:
            os.symlink(c.label, lab / c.label.name)
    run = tmp_path / "run"
    # Only the folders, a seconds budget and a smaller network (to keep the test short).
    res = _cli(
        "train",
        "--images",
        str(lab),
        "--unlabeled",
        str(unl),
        "--out",
        str(run),
        "--minutes",
        "0.05",
        "--n-filters",
        "4",
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    assert "plan (cpu):" in res.stderr and "n_filters = 4 (overridden)" in res.stderr
    plan = json.loads((run / "plan.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "auto" and config["minutes"] == 0.05
    assert plan["overrides"] == {"n_filters": 4} and plan["values"]["n_filters"] == 8
    for key in ("patch_size", "downsampling", "intensity", "class_crop_share", "batch_labeled"):
        assert _same(plan["values"][key], config[key]), key
    assert (run / "student.pt").exists() and "budget" in res.stderr
    # The paper preset is not planned: no plan.json.
    res = _cli(
        "train",
        "--images",
        str(lab),
        "--unlabeled",
        str(unl),
        "--out",
        str(tmp_path / "paper"),
        "--preset",
        "paper",
        "--iterations",
        "0",
        "--supervised-iterations",
        "0",
        "--device",
        "cpu",
        "--patch-size",
        "16",
        "16",
        "16",
        "--n-filters",
        "4",
    )
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "paper" / "plan.json").exists()
    assert json.loads((tmp_path / "paper" / "config.json").read_text())["class_crop_share"] == 0


def _same(a: object, b: object) -> bool:
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))
