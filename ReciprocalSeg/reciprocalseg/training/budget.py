"""Rounds that keep to the clock: each phase of a time-budgeted round runs to its deadline.

With `TrainConfig.minutes`, each phase gets a share of the budget (`budget_split`; a phase set to
0 iterations is skipped and its share goes to the others), counted from the start of the train
command (`Trainer(started=)`: imports, planning and preprocessing included, since the user asked
for the round to take that long). A phase's deadline is the end of its cumulative share, so a
phase that ran over leaves the next one less.

Why by time and not by an iteration count: a count fixed from the speed of a few probe iterations
moves the end whenever the load changes after the probe (a 20-minute round ended after 1083 s,
another ran to 1380 s). So the loop asks after every iteration whether to go on: it does when one
more iteration, at the speed of the last few (`StepTimes`), ends nearer the deadline than stopping
now does, so the phase ends within half an iteration of its deadline whatever the load does. The
work that closes a phase is counted in: its checkpoint and, after the last phase, the final model
files (as long as the model files inside the last checkpoint took).

The learning rate drops (x `lr_gamma`) once 5/6 of the phase's time has passed, as the `lite` and
`demo` presets drop it at 5/6 of their iterations. The clock is the run's elapsed seconds over
all its sessions; checkpoints carry it with each phase's start (`TimeBudget.state`), so a resumed
round goes on with the same deadlines and the same lr drop, not a fresh budget.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..config import TrainConfig

LR_DROP_AT = 5 / 6  # of a phase's time: the lr drop of lite (250 of 300) and demo (120 of 150)
MIN_ITERATIONS = 1  # every phase with a share runs, even past its deadline (a resume after it)
# Below this many iterations a phase is warned about (a `warning` event, kind `few_iterations`):
# a 3-minute round on a loaded CPU that trained 11 iterations learned one class of two. A warning,
# not a floor: a floor would break the clock the user asked for, and the user can give more time.
FEW_ITERATIONS = 50
WARN_AFTER = 5  # iterations measured before the projection is trusted for that warning
RECENT_STEPS = 3  # iterations whose mean predicts the next one (a load change shows within 3)


def phase_shares(config: TrainConfig, phases: tuple[str, ...]) -> dict[str, float]:
    """Each phase's share of the budget, normalised over the phases that run: a phase whose
    iteration count is 0 is skipped under a budget too (e.g. a supervised-only round)."""
    counts = (config.supervised_iterations, config.reciprocal_iterations, config.finetune_iterations)
    raw = {p: s if n > 0 else 0.0 for p, s, n in zip(phases, config.budget_split, counts, strict=True)}
    total = sum(raw.values())
    return {p: s / total if total > 0 else 0.0 for p, s in raw.items()}


class StepTimes:
    """The seconds of the last few iterations (checkpoints left out), to predict the next one."""

    def __init__(self, keep: int = RECENT_STEPS) -> None:
        self._recent: deque[float] = deque(maxlen=keep)

    def add(self, seconds: float) -> None:
        self._recent.append(max(0.0, seconds))

    def estimate(self) -> float | None:
        return sum(self._recent) / len(self._recent) if self._recent else None


@dataclass
class PhaseWindow:
    """Where a phase is on the run's clock: when it started, how far it got, whether it ended."""

    start_s: float
    iterations: int = 0
    finished: bool = False


@dataclass
class TimeBudget:
    """The deadlines of a budgeted run and the decisions taken by the clock."""

    config: TrainConfig
    phases: tuple[str, ...]
    elapsed_before: float = 0.0  # seconds spent in earlier sessions of this run (resume)
    windows: dict[str, PhaseWindow] = field(default_factory=dict)
    checkpoint_s: float = 0.0  # the wall time of the last checkpoint written (0 before the first)
    model_files_s: float = 0.0  # of which its teacher.pt and student.pt: what the round's end writes

    @property
    def seconds(self) -> float:
        return float(self.config.minutes or 0) * 60

    def deadline(self, phase: str) -> float:
        """Seconds into the run (all sessions) by which `phase` should end."""
        shares = phase_shares(self.config, self.phases)
        cumulative = sum(shares[p] for p in self.phases[: self.phases.index(phase) + 1])
        return self.seconds * cumulative

    def share_seconds(self, phase: str) -> float:
        return self.seconds * phase_shares(self.config, self.phases)[phase]

    def active(self, phase: str) -> bool:
        return phase_shares(self.config, self.phases)[phase] > 0

    def is_last(self, phase: str) -> bool:
        """No later phase has a share: the end of this one is the end of the round."""
        return not any(self.active(p) for p in self.phases[self.phases.index(phase) + 1 :])

    def finished(self, phase: str) -> bool:
        window = self.windows.get(phase)
        return window is not None and window.finished

    # -- a phase on the clock ---------------------------------------------------------------
    def open(self, phase: str, elapsed: float) -> PhaseWindow:
        """The phase's window: kept from a checkpoint on resume (the same clock), else new."""
        if phase not in self.windows:
            self.windows[phase] = PhaseWindow(start_s=elapsed)
        return self.windows[phase]

    def lr_drops(self, phase: str, elapsed: float) -> int:
        """How many times the lr has dropped at `elapsed`: once 5/6 of the phase's time is past."""
        start = self.windows[phase].start_s
        return int(elapsed - start >= LR_DROP_AT * (self.deadline(phase) - start))

    def lr_drop_s(self, phase: str) -> float:
        """The run's second at which the phase's lr drops."""
        start = self.windows[phase].start_s
        return start + LR_DROP_AT * (self.deadline(phase) - start)

    def closing_s(self, phase: str) -> float:
        """The time the phase's end costs: its last checkpoint, and after the last phase the
        final model files."""
        return self.checkpoint_s + (self.model_files_s if self.is_last(phase) else 0.0)

    def go_on(
        self, phase: str, done: int, elapsed: float, step_s: float | None, checkpoint_now: bool
    ) -> bool:
        """After `done` iterations at `elapsed`: run another one? Yes when it ends nearer the
        deadline than stopping now (the end lands within half an iteration of the deadline).
        `checkpoint_now`: a periodic checkpoint is due now (spent only if the phase goes on, since
        stopping writes the closing one instead)."""
        if done < MIN_ITERATIONS:
            return True
        slack = self.deadline(phase) - elapsed - self.closing_s(phase)
        more = (step_s or 0.0) + (self.checkpoint_s if checkpoint_now else 0.0)
        return slack > more / 2

    def more_iterations(self, phase: str, elapsed: float, step_s: float | None) -> int:
        """Iterations still to come at this speed, by the rule of `go_on` (periodic checkpoints,
        a small share of the time, left out): the phase's projected length for the progress."""
        if step_s is None or step_s <= 0:
            return 0
        ratio = (self.deadline(phase) - elapsed - self.closing_s(phase)) / step_s
        return max(0, math.ceil(ratio - 0.5))

    def close(self, phase: str, done: int) -> None:
        self.windows[phase].iterations = done
        self.windows[phase].finished = True

    def remaining_seconds(self, elapsed: float) -> float:
        """The ETA under a budget: the budget's end."""
        return max(0.0, self.seconds - elapsed)

    # -- checkpoints --------------------------------------------------------------------------
    def state(self, elapsed: float) -> dict[str, Any]:
        """The clock for a checkpoint: the run's elapsed seconds and each phase's window."""
        windows = {p: vars(w).copy() for p, w in self.windows.items()}
        costs = {"checkpoint_s": self.checkpoint_s, "model_files_s": self.model_files_s}
        return {"elapsed_s": elapsed, "windows": windows, **costs}

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Go on with a checkpoint's clock. A checkpoint from before the clock (it kept the
        iteration counts chosen from a probe, `budget_totals`) gives its phase a window from its
        elapsed time, finished where the chosen count was reached."""
        clock = checkpoint.get("budget_clock")
        if clock is not None:
            self.elapsed_before = float(clock["elapsed_s"])
            self.windows = {p: PhaseWindow(**w) for p, w in clock["windows"].items()}
            self.checkpoint_s = float(clock.get("checkpoint_s", 0.0))
            self.model_files_s = float(clock.get("model_files_s", 0.0))
            return
        self.elapsed_before = float(checkpoint.get("elapsed_s", 0.0))
        phase, iteration = checkpoint["phase"], int(checkpoint["iteration"])
        totals = checkpoint.get("budget_totals") or {}
        for p in self.phases[: self.phases.index(phase)]:
            self.windows[p] = PhaseWindow(self.elapsed_before, int(totals.get(p, 0)), finished=True)
        done = phase in totals and iteration >= totals[phase]
        self.windows[phase] = PhaseWindow(self.elapsed_before, iteration, finished=done)
