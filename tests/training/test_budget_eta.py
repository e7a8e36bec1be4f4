"""Rounds sized in minutes, the per-phase ETA model, and the non-finite loss stop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reciprocalseg.common.errors import TrainingError
from reciprocalseg.config import make_config
from reciprocalseg.data.preprocess import Preprocessing
from reciprocalseg.data.sampling import cache_case
from reciprocalseg.training.budget import PROBE_ITERATIONS, TimeBudget
from reciprocalseg.training.checkpoint import load_checkpoint, load_model_file
from reciprocalseg.training.eta import EtaModel, crop_passes
from reciprocalseg.training.events import read_events
from reciprocalseg.training.runner import PHASES, train


# -- the ETA model -------------------------------------------------------------------------
def test_reciprocal_iterations_cost_more_than_supervised_ones() -> None:
    config = make_config("paper")
    # 2 + 2 crops through two networks, forward and backward, against one network on 4 crops.
    assert crop_passes(config, "reciprocal") / crop_passes(config, "supervised") == pytest.approx(2.0)


def test_eta_projects_later_phases_through_the_cost_model() -> None:
    config = make_config("paper", supervised_iterations=100, reciprocal_iterations=100)
    eta = EtaModel(config)
    assert eta.remaining({"supervised": 90}) is None  # nothing measured yet
    for i in range(1, 11):  # 1 s per supervised iteration, the first one not measured
        eta.tick("supervised", i, now=float(i))
    left = eta.remaining({"supervised": 90, "reciprocal": 100})
    # 90 s more supervised, then 100 reciprocal iterations at 2x the cost.
    assert left == pytest.approx(90 + 100 * 2.0)
    # Once the reciprocal phase runs, its own rate (here 3 s, not 2 s) takes over, weighted by
    # the iterations measured against 3 of the projection: after 4, (4 x 3 + 3 x 2) / 7 s each.
    for i in range(1, 6):
        eta.tick("reciprocal", i, now=100.0 + 3 * i)
    assert eta.remaining({"reciprocal": 10}) == pytest.approx(10 * (4 * 3 + 3 * 2) / 7, abs=0.1)
    for i in range(6, 200):
        eta.tick("reciprocal", i, now=100.0 + 3 * i)
    assert eta.remaining({"reciprocal": 10}) == pytest.approx(30, abs=0.5)


# -- the time budget -----------------------------------------------------------------------
def test_budget_deadlines_and_lr_drop() -> None:
    config = make_config("demo", minutes=10, budget_split=(0.4, 0.6, 0.0))
    budget = TimeBudget(config, PHASES)
    assert budget.deadline("supervised") == pytest.approx(240)
    assert budget.deadline("reciprocal") == pytest.approx(600)
    assert not budget.active("finetune")
    # 5 iterations done in 10 s; 230 s left at 2 s each: 115 more.
    assert budget.choose_total("supervised", 5, 10.0, 2.0) == 120
    assert budget.lr_step("supervised") == 100  # the last sixth at the lower lr
    # A phase already past its deadline stops after the probe.
    assert budget.choose_total("reciprocal", PROBE_ITERATIONS, 700.0, 2.0) == PROBE_ITERATIONS


def test_a_run_with_minutes_sizes_its_phases_from_measured_speed(tiny_config, cohort, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    labeled, unlabeled = cohort
    config = tiny_config(minutes=0.15, checkpoint_every=1000)  # 9 seconds
    train(config, labeled, unlabeled, tmp_path / "run")
    events = read_events(tmp_path / "run" / "events.jsonl")
    budget = {e["phase"]: e for e in events if e["event"] == "budget"}
    assert set(budget) == {"supervised", "reciprocal"}
    progress = [e for e in events if e["event"] == "progress"]
    for phase in ("supervised", "reciprocal"):
        done = [e["iteration"] for e in progress if e["phase"] == phase]
        assert done[-1] == budget[phase]["iterations"] >= PROBE_ITERATIONS
        # The iteration count came from the measured speed: it fills the time up to the phase's
        # deadline, the end of its cumulative share (time the supervised phase left unused goes
        # to the reciprocal one, training/budget.py), so at most 0.4 and 1.0 of the 9 seconds.
        share = 0.4 if phase == "supervised" else 1.0
        assert budget[phase]["iterations"] * budget[phase]["sec_per_iter"] <= share * 9 + 1e-6 + (
            PROBE_ITERATIONS * budget[phase]["sec_per_iter"]
        )
    # The lr dropped for the last sixth of each phase.
    lrs = [e["lr"] for e in progress if e["phase"] == "reciprocal"]
    assert lrs[0] == pytest.approx(0.01)
    if budget["reciprocal"]["iterations"] > PROBE_ITERATIONS + 1:
        assert lrs[-1] == pytest.approx(0.001)
    # Every progress event after the probe has an ETA; the budget's counts are in the checkpoint.
    assert all(e["eta_s"] is not None for e in progress[PROBE_ITERATIONS:])
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert checkpoint is not None
    assert checkpoint["budget_totals"] == {p: budget[p]["iterations"] for p in budget}


# -- a non-finite loss stops training --------------------------------------------------------
def test_nan_input_stops_training_and_keeps_the_last_good_checkpoint(
    tiny_config, cohort, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    labeled, unlabeled = cohort
    run = tmp_path / "run"
    cache = tmp_path / "cache"
    # A first session ends after the supervised phase, with a good checkpoint.
    config = tiny_config(supervised_iterations=2, reciprocal_iterations=4, checkpoint_every=2)
    first = config.replace(reciprocal_iterations=0)
    train(first, labeled, unlabeled, run, cache_dir=cache)
    (run / "done.json").unlink()  # continue this run with its reciprocal phase
    good = (run / "checkpoints" / "latest.pt").read_bytes()
    # NaN voxels in every labelled case's preprocessed image: the real sampler feeds them to the loss.
    prep = Preprocessing.from_config(config)
    for case in labeled:
        cached = cache_case(case, prep, cache, config.n_classes)
        image = np.load(cached.image)
        image[:] = np.nan
        np.save(cached.image, image)
    with pytest.raises(TrainingError, match=r"non-finite loss in the reciprocal phase at iteration 1 \("):
        train(config, labeled, unlabeled, run, cache_dir=cache)
    assert (run / "checkpoints" / "latest.pt").read_bytes() == good
    assert not (run / "done.json").exists()
    saved = load_model_file(run / "checkpoints" / "teacher.pt")["state_dict"]
    assert all(torch.isfinite(t).all() for t in saved.values() if t.is_floating_point())
    errors = [e for e in read_events(run / "events.jsonl") if e["event"] == "error"]
    assert errors and "student_labeled=nan" in errors[-1]["message"]
    assert json.loads((run / "config.json").read_text())["reciprocal_iterations"] == 4
