"""The live model of a round whose plan halves some axis fewer times than the paper's V-Net.

`auto` (the default preset) plans the V-Net's downsampling per axis; the live model must build
the checkpoint's network with those strides, as `inference.load_model` does for a finished round.
It built the paper's network instead, so every live prediction of such a round was a 500.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from reciprocalseg.data.io import read_image
from reciprocalseg.data.phantom import write_phantom_cohort
from reciprocalseg.service.live import LiveModel


def test_live_model_of_an_auto_round_with_planned_strides(tmp_path: Path) -> None:
    cases = write_phantom_cohort(tmp_path / "pairs", 2, seed=3, shape_zyx=(16, 32, 32))
    run = tmp_path / "run"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "reciprocalseg",
            "train",
            "--images",
            str(tmp_path / "pairs"),
            "--out",
            str(run),
            "--iterations",
            "0",
            "--supervised-iterations",
            "2",
            "--checkpoint-every",
            "1",
            "--device",
            "cpu",
        ],
        check=True,
        capture_output=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    downsampling = json.loads((run / "plan.json").read_text())["values"]["downsampling"]
    assert any(s != 2 for level in downsampling for s in level), downsampling  # not the paper's V-Net
    checkpoint, predictor = LiveModel("cpu").get(run)
    assert checkpoint.run_id == "run"
    result = predictor.predict(read_image(cases[0].image))
    assert result.teacher.GetSize() == read_image(cases[0].image).GetSize()
