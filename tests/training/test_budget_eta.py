"""Rounds sized in minutes, the per-phase ETA model, and the non-finite loss stop."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from reciprocalseg.common.errors import CancelledError, TrainingError
from reciprocalseg.config import make_config
from reciprocalseg.data.preprocess import Preprocessing
from reciprocalseg.data.sampling import cache_case
from reciprocalseg.training.budget import FEW_ITERATIONS, TimeBudget
from reciprocalseg.training.checkpoint import load_checkpoint, load_model_file
from reciprocalseg.training.eta import EtaModel, crop_passes
from reciprocalseg.training.events import read_events
from reciprocalseg.training.runner import PHASES, CancelToken, train


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine two threads spin against other processes
    (a tiny run took 20x the time); the injected clocks make the speed irrelevant to the checks."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# -- the time budget: rounds keep to the clock ------------------------------------------------
def test_budget_deadlines_lr_drop_and_the_stop_rule() -> None:
    config = make_config("demo", minutes=10, budget_split=(0.4, 0.6, 0.0))
    budget = TimeBudget(config, PHASES)
    assert budget.deadline("supervised") == pytest.approx(240)
    assert budget.deadline("reciprocal") == pytest.approx(600)
    assert not budget.active("finetune") and budget.is_last("reciprocal")
    budget.open("supervised", 12.0)  # after 12 s of preprocessing
    # The lr drops once 5/6 of the phase's own time (12 s .. 240 s) has passed: at 202 s.
    assert budget.lr_drop_s("supervised") == pytest.approx(202)
    assert budget.lr_drops("supervised", 201.9) == 0 and budget.lr_drops("supervised", 202.0) == 1
    # Go on while one more 2-s iteration ends nearer the deadline than stopping now.
    assert budget.go_on("supervised", 10, 238.9, 2.0, checkpoint_now=False)
    assert not budget.go_on("supervised", 10, 239.1, 2.0, checkpoint_now=False)
    # The closing checkpoint is reserved (once measured); the last phase also reserves the
    # final model files.
    budget.checkpoint_s, budget.model_files_s = 3.0, 1.0
    assert not budget.go_on("supervised", 10, 236.1, 2.0, checkpoint_now=False)
    assert budget.closing_s("supervised") == 3.0 and budget.closing_s("reciprocal") == 4.0
    # A phase past its deadline still runs its first iteration (a resume after the deadline).
    budget.open("reciprocal", 700.0)
    assert budget.go_on("reciprocal", 0, 700.0, None, checkpoint_now=False)
    assert not budget.go_on("reciprocal", 1, 701.0, 2.0, checkpoint_now=False)
    assert budget.more_iterations("supervised", 200.0, 2.0) == 18  # (240 - 3 - 200) / 2 = 18.5


class LoadedClock:
    """The run's clock in a test: an iteration ends `cost(phase, t)` seconds after it starts (the
    load changes with t, seconds since the run began), a checkpoint takes `checkpoint_s`,
    preprocessing `preprocess_s`. Driven by the run's own events, so time passes only where the
    work would take it, and every run is the same: no timing, nothing left to the machine."""

    def __init__(self, cost, checkpoint_s: float = 2.0, preprocess_s: float = 3.0, origin: float = 1000.0):  # type: ignore[no-untyped-def]
        self.cost, self.checkpoint_s, self.preprocess_s = cost, checkpoint_s, preprocess_s
        self.origin = self.now = origin
        self.ended: dict[tuple[str, int], float] = {}  # (phase, iteration) -> run time it ended
        self.opened: dict[str, float] = {}  # phase -> run time its budget event came
        self.cancel_after: float | None = None
        self.cancel = CancelToken()

    def __call__(self) -> float:
        return self.now

    def listen(self, event: dict) -> None:  # type: ignore[type-arg]
        kind = event["event"]
        if kind == "progress":
            self.now += self.cost(event["phase"], self.now - self.origin)
            self.ended[(event["phase"], event["iteration"])] = self.now - self.origin
            if self.cancel_after is not None and self.now - self.origin >= self.cancel_after:
                self.cancel.cancel()
        elif kind == "checkpoint":
            self.now += self.checkpoint_s
        elif kind == "preprocessed":
            self.now += self.preprocess_s
        elif kind == "budget":
            self.opened[event["phase"]] = self.now - self.origin


def load_mid_phase(phase: str, t: float) -> float:
    """A reciprocal iteration costs 2 s, a supervised one 1 s; a load from 30 s to 100 s of the
    run (mid supervised phase to mid reciprocal phase) makes them 3x slower."""
    base = 2.0 if phase == "reciprocal" else 1.0
    return base * (3.0 if 30.0 <= t < 100.0 else 1.0)


def budgeted_run(  # type: ignore[no-untyped-def]
    cohort, tiny_config, run: Path, clock: LoadedClock, started: float | None = None, **changes
) -> list[dict]:
    labeled, unlabeled = cohort
    config = tiny_config(minutes=2, checkpoint_every=10, **changes)  # 120 s: supervised to 48 s
    with contextlib.suppress(CancelledError):
        train(config, labeled, unlabeled, run, [clock.listen], clock.cancel, clock=clock, started=started)
    return read_events(run / "events.jsonl")


def test_a_budgeted_round_ends_on_its_clock_when_the_load_changes_mid_phase(
    tiny_config, cohort, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    clock = LoadedClock(load_mid_phase)
    events = budgeted_run(cohort, tiny_config, tmp_path / "run", clock)
    done = next(e for e in events if e["event"] == "done")
    # The round ends within half an iteration (1 s) of its 120 s, whatever the load did after
    # it started (an iteration count fixed from the speed before the load misses it).
    assert done["budget_s"] == 120 and abs(done["elapsed_s"] - 120) <= 1.0
    # Each phase ran to its deadline: the supervised one ended (its closing 2-s checkpoint
    # included) within half a loaded iteration (1.5 s) of 48 s.
    sup_last = max(i for p, i in clock.ended if p == "supervised")
    assert abs(clock.ended[("supervised", sup_last)] + clock.checkpoint_s - 48) <= 1.5
    assert clock.opened["reciprocal"] == pytest.approx(clock.ended[("supervised", sup_last)] + 2)
    # The lr drops at 5/6 of each phase's time: an iteration starting after that runs at 0.1x.
    budgets = {e["phase"]: e for e in events if e["event"] == "budget"}
    assert set(budgets) == {"supervised", "reciprocal"}
    for e in (e for e in events if e["event"] == "progress"):
        phase, i = e["phase"], e["iteration"]
        started = clock.ended.get((phase, i - 1), clock.opened[phase])
        drop_at = clock.opened[phase] + 5 / 6 * (budgets[phase]["deadline_s"] - clock.opened[phase])
        assert e["lr"] == pytest.approx(0.001 if started >= drop_at - 1e-9 else 0.01), (phase, i)
        # The ETA is the budget's end; the fraction is the time's.
        assert e["eta_s"] == pytest.approx(120 - e["elapsed_s"], abs=0.06)
        assert e["fraction"] == pytest.approx(e["elapsed_s"] / 120, abs=1e-4)
    assert {e["lr"] for e in events if e["event"] == "progress"} == {0.01, 0.001}
    # The done file and the last checkpoint have the counts the phases ran.
    ran = {p: max(i for q, i in clock.ended if q == p) for p in ("supervised", "reciprocal")}
    assert json.loads((tmp_path / "run" / "done.json").read_text())["iterations"] == {**ran, "finetune": 0}
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert checkpoint is not None
    windows = checkpoint["budget_clock"]["windows"]
    assert {p: (w["iterations"], w["finished"]) for p, w in windows.items()} == {
        p: (n, True) for p, n in ran.items()
    }


def test_a_resumed_round_continues_on_the_same_clock(tiny_config, cohort, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Cancelled mid reciprocal phase under the load; resumed later: another origin, since the
    # wait between the sessions does not count, and the load as it was at the checkpoint.
    first = LoadedClock(load_mid_phase)
    first.cancel_after = 70.0
    events = budgeted_run(cohort, tiny_config, tmp_path / "run", first)
    assert events[-1]["event"] == "cancelled" and events[-1]["phase"] == "reciprocal"
    stopped_at = events[-1]["iteration"]
    checkpoint_s = first.ended[("reciprocal", stopped_at)]  # the clock the checkpoint carries
    later = LoadedClock(lambda phase, t: load_mid_phase(phase, t + checkpoint_s), origin=50_000.0)
    events = budgeted_run(cohort, tiny_config, tmp_path / "run", later)
    session = events[[e["event"] for e in events].index("resumed") :]
    before, after = [e for e in events if e["event"] == "budget" and e["phase"] == "reciprocal"]
    # The same window: its start, deadline and lr drop as first set, not a fresh budget.
    assert (after["start_s"], after["deadline_s"], after["lr_drop_s"]) == (
        before["start_s"],
        before["deadline_s"],
        before["lr_drop_s"],
    )
    progress = [e for e in session if e["event"] == "progress"]
    assert progress[0]["iteration"] == stopped_at + 1
    assert progress[0]["elapsed_s"] == pytest.approx(checkpoint_s + later.preprocess_s, abs=0.01)
    done = session[-1]
    assert done["event"] == "done" and abs(done["elapsed_s"] - 120) <= 1.0
    # The session after the resume took only what was left of the budget.
    assert later.now - later.origin == pytest.approx(done["elapsed_s"] - checkpoint_s, abs=0.01)


def test_a_supervised_only_round_gives_its_phase_the_whole_budget(
    tiny_config, cohort, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    clock = LoadedClock(load_mid_phase)
    # The command started 10 s before training did (imports, planning): the budget counts them.
    events = budgeted_run(
        cohort, tiny_config, tmp_path / "run", clock, started=clock.origin - 10, reciprocal_iterations=0
    )
    budgets = [e for e in events if e["event"] == "budget"]
    assert [(e["phase"], e["start_s"], e["deadline_s"]) for e in budgets] == [("supervised", 13.0, 120.0)]
    done = events[-1]
    # Within half of what one more iteration would have cost: 1 s, and at iteration 110 the
    # periodic checkpoint due with it (2 s).
    assert done["event"] == "done" and abs(done["elapsed_s"] - 120) <= 1.5
    assert json.loads((tmp_path / "run" / "done.json").read_text())["iterations"]["reciprocal"] == 0
    # Its phase ran more than FEW_ITERATIONS: no warning about too few.
    assert not [e for e in events if e["event"] == "warning" and e.get("kind") == "few_iterations"]


def test_too_few_iterations_for_the_budget_is_a_warning_and_the_clock_holds(
    tiny_config, cohort, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    clock = LoadedClock(lambda phase, t: 6.0)  # a loaded machine: 6 s an iteration, 8 in 48 s
    events = budgeted_run(cohort, tiny_config, tmp_path / "run", clock)
    warnings = [e for e in events if e["event"] == "warning" and e.get("kind") == "few_iterations"]
    assert [e["phase"] for e in warnings] == ["supervised", "reciprocal"]
    assert warnings[0]["iterations"] < FEW_ITERATIONS and "more minutes" in warnings[0]["message"]
    assert abs(events[-1]["elapsed_s"] - 120) <= 3.0  # half of a 6-s iteration


def test_a_real_budgeted_run_reports_its_clock(tiny_config, cohort, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    labeled, unlabeled = cohort
    config = tiny_config(minutes=0.1, checkpoint_every=1000)  # 6 seconds of this machine
    train(config, labeled, unlabeled, tmp_path / "run")
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert [e["phase"] for e in events if e["event"] == "budget"] == ["supervised", "reciprocal"]
    progress = [e for e in events if e["event"] == "progress"]
    assert all(e["eta_s"] is not None and 0 <= e["fraction"] <= 1 and e["budget_s"] == 6 for e in progress)
    done = json.loads((tmp_path / "run" / "done.json").read_text())
    assert done["budget_s"] == 6 and done["iterations"]["reciprocal"] >= 1


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
