"""Rounds sized in minutes: iteration counts (and the lr drop) set from the measured speed.

With `TrainConfig.minutes`, each phase gets a share of the budget (`budget_split`; a phase set to
0 iterations is skipped and its share goes to the others), counted from
the start of the run (preprocessing included: the user asked for the round to take that long).
A phase's deadline is the end of its cumulative share, so a phase that ran over leaves the next
one less. When a phase starts, it runs `PROBE_ITERATIONS` iterations at the full learning rate,
measures their wall time, and sets its iteration count to what fits before its deadline; the
learning rate then drops (x `lr_gamma`) for the last sixth of the phase, as the `lite` and `demo`
presets do. Counts, once set, are kept in the checkpoint, so a resumed run keeps its schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import TrainConfig

PROBE_ITERATIONS = 5  # enough to measure past the first (warm-up) iteration; real training steps
LR_DROP_AT = 5 / 6  # of a phase: the lr drop of lite (250 of 300) and demo (120 of 150)


def phase_shares(config: TrainConfig, phases: tuple[str, ...]) -> dict[str, float]:
    """Each phase's share of the budget, normalised over the phases that run: a phase whose
    iteration count is 0 is skipped under a budget too (e.g. a supervised-only round)."""
    counts = (config.supervised_iterations, config.reciprocal_iterations, config.finetune_iterations)
    raw = {p: s if n > 0 else 0.0 for p, s, n in zip(phases, config.budget_split, counts, strict=True)}
    total = sum(raw.values())
    return {p: s / total if total > 0 else 0.0 for p, s in raw.items()}


@dataclass
class TimeBudget:
    """The deadlines of a budgeted run and the iteration counts chosen so far."""

    config: TrainConfig
    phases: tuple[str, ...]
    elapsed_before: float = 0.0  # seconds spent in earlier sessions of this run (resume)
    totals: dict[str, int] = field(default_factory=dict)  # phase -> iterations, once chosen

    @property
    def seconds(self) -> float:
        return float(self.config.minutes or 0) * 60

    def deadline(self, phase: str) -> float:
        """Seconds into the run (all sessions) by which `phase` should end."""
        shares = phase_shares(self.config, self.phases)
        cumulative = sum(shares[p] for p in self.phases[: self.phases.index(phase) + 1])
        return self.seconds * cumulative

    def active(self, phase: str) -> bool:
        return phase_shares(self.config, self.phases)[phase] > 0

    def choose_total(self, phase: str, done: int, elapsed: float, seconds_per_iteration: float) -> int:
        """Iterations for `phase` (at least `done`) so that it ends by its deadline."""
        left = self.deadline(phase) - elapsed
        more = math.floor(max(0.0, left) / max(seconds_per_iteration, 1e-9))
        self.totals[phase] = max(done, done + more)
        return self.totals[phase]

    def lr_step(self, phase: str) -> int:
        """The lr drop for `phase`: at 5/6 of its iterations (never before the probe ends)."""
        total = self.totals.get(phase)
        if total is None:
            return 1 << 30  # the probe runs at the full learning rate
        return max(PROBE_ITERATIONS, math.ceil(total * LR_DROP_AT))

    def remaining_seconds(self, elapsed: float) -> float:
        return max(0.0, self.seconds - elapsed)
