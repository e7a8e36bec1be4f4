"""A time budget with torch.distributed: every rank stops where rank 0's clock says (else they hang)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from reciprocalseg.cli import main as cli
from reciprocalseg.config import TrainConfig, make_config
from reciprocalseg.data.io import Case
from reciprocalseg.data.phantom import write_phantom_cohort
from reciprocalseg.training.distributed import DistContext, DistributedTrainer, run_ranks
from reciprocalseg.training.events import read_events


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two ranks share this machine's cores
    yield
    torch.set_num_threads(threads)


class TickingClock:
    """A rank's own clock: it advances `step` seconds each time it is read, so each rank sees its
    own speed (as ranks on unequal GPUs or differently loaded hosts do), the same in every run."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _budget_worker(
    ctx: DistContext, config: TrainConfig, labeled: list[Case], unlabeled: list[Case], run_dir: Path
) -> dict[str, Any]:
    clock = TickingClock(0.05 if ctx.rank == 0 else 0.2)  # rank 1's clock runs 4x as fast
    trainer = DistributedTrainer(config, labeled, unlabeled, run_dir, ctx, clock=clock)
    trainer.run()
    assert trainer.budget is not None
    return {
        "iterations": {p: w.iterations for p, w in trainer.budget.windows.items()},
        "teacher": torch.cat([p.detach().flatten() for p in trainer.teacher.parameters()]),
    }


def test_ranks_with_clocks_at_different_speeds_stop_and_step_as_rank_0_says(tmp_path: Path) -> None:
    cases = write_phantom_cohort(tmp_path / "cohort", 4, seed=1, shape_zyx=(20, 20, 20))
    labeled, unlabeled = cases[:2], [Case(c.case_id, c.image, None) for c in cases[2:]]
    config = make_config(
        "demo",
        n_classes=2,
        patch_size=(16, 16, 16),
        n_filters=4,
        normalization="groupnorm",
        dropout=False,
        batch_labeled=1,
        batch_unlabeled=1,
        supervised_batch=1,
        num_workers=0,
        device="cpu",
        minutes=0.2,  # 12 s of rank 0's clock
    )
    run_dir = tmp_path / "run"
    ranks = run_ranks(_budget_worker, 2, "gloo", (config, labeled, unlabeled, run_dir), start_method="fork")
    # Rank 1 alone would have stopped each phase about 4x sooner and dropped its lr sooner.
    assert ranks[0]["iterations"] == ranks[1]["iterations"]
    assert torch.equal(ranks[0]["teacher"], ranks[1]["teacher"])  # the same lr at every step
    done = json.loads((run_dir / "done.json").read_text())
    assert done["iterations"] == {**ranks[0]["iterations"], "finetune": 0}
    assert abs(done["elapsed_s"] - 12) <= 1.0  # rank 0's clock: within one iteration of its budget
    lrs = {e["lr"] for e in read_events(run_dir / "events.jsonl") if e["event"] == "progress"}
    assert lrs == {0.01, 0.001}


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
    assert [e["phase"] for e in events if e["event"] == "budget"] == ["supervised", "reciprocal"]
    done = json.loads((out / "done.json").read_text())
    for phase in ("supervised", "reciprocal"):
        ran = [e["iteration"] for e in events if e["event"] == "progress" and e["phase"] == phase]
        assert done["iterations"][phase] == ran[-1] >= 1
