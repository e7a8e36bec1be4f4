"""A time budget with torch.distributed: every rank runs rank 0's iteration counts (else they hang)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reciprocalseg.cli import main as cli
from reciprocalseg.data.phantom import write_phantom_cohort
from reciprocalseg.training.events import read_events


def test_two_cpu_ranks_agree_on_the_budgeted_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = write_phantom_cohort(tmp_path / "cohort", 4, seed=1, shape_zyx=(20, 20, 20))
    manifest = tmp_path / "cases.json"
    manifest.write_text(
        json.dumps(
            {
                "labeled": [
                    {"id": c.case_id, "image": str(c.image), "label": str(c.label)} for c in cases[:2]
                ],
                "unlabeled": [{"id": c.case_id, "image": str(c.image)} for c in cases[2:]],
            }
        )
    )
    out = tmp_path / "run"
    args = ["train", "--manifest", str(manifest), "--out", str(out), "--preset", "demo", "--n-classes", "2"]
    args += ["--patch-size", "16", "16", "16", "--n-filters", "4", "--normalization", "groupnorm"]
    args += ["--num-workers", "0", "--json", "--minutes", "0.1", "--gpus", "2", "--device", "cpu"]
    assert cli.main(args) == 0, capsys.readouterr().err
    events = read_events(out / "events.jsonl")
    budget = {e["phase"]: e["iterations"] for e in events if e["event"] == "budget"}
    assert set(budget) == {"supervised", "reciprocal"}
    done = json.loads((out / "done.json").read_text())
    assert done["iterations"]["supervised"] == budget["supervised"]
    assert done["iterations"]["reciprocal"] == budget["reciprocal"]
