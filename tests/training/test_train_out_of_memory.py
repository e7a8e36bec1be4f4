"""A crop or width far beyond the machine's memory ends training with a message, not a traceback.

An edited plan (`--plan`) or `--patch-size` / `--n-filters` that cannot fit made `train` die with
numpy's or torch's allocation traceback on the CPU (only CUDA's out-of-memory had a message); the
service showed that traceback's tail as the failed round's message. Sizes here exceed any address
space, so the allocation fails at once on every machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reciprocalseg.data.phantom import write_phantom_cohort


@pytest.mark.parametrize(
    "options",
    [["--patch-size", "65536", "65536", "65536"], ["--n-filters", "100000"]],
    ids=["patch", "width"],
)
def test_train_reports_running_out_of_memory(tmp_path: Path, options: list[str]) -> None:
    write_phantom_cohort(tmp_path / "pairs", 1, shape_zyx=(16, 16, 16))
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "reciprocalseg",
            "train",
            "--images",
            str(tmp_path / "pairs"),
            "--out",
            str(run),
        ]
        + ["--preset", "lite", "--iterations", "0", "--supervised-iterations", "1", "--device", "cpu"]
        + options,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "out of memory" in result.stderr and "smaller" in result.stderr, result.stderr[-2000:]
    assert '"event": "error"' in (run / "events.jsonl").read_text()  # the service shows this message
