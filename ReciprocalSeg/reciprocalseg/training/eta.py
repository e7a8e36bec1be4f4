"""The time left in a run, from a cost model per phase (issue 15: the ETA was 3.6-20x too low).

The old ETA multiplied the current phase's seconds per iteration by every iteration left, but a
reciprocal iteration costs about twice a supervised one and more: it runs a forward and backward
pass of both networks on the labelled and the unlabelled crops (teacher: x_u and x_l; student:
x_u, then x_l after its step), against one network on the supervised batch. Checkpoints, which
the old moving average left out, take real time too.

Here each phase has a cost in "crop passes" (one forward + backward of one network on one crop),
and the seconds per crop pass are measured: from the wall time of the running phase (its first
iteration, which pays for warm-up, left out; checkpoints included), and for a phase not yet
started, from the last measured phase through the cost ratio. Once a phase runs, its own rate
takes over gradually: weighted by its measured iterations against `PRIOR_WEIGHT` iterations of
the projection (one slow iteration on a shared machine must not double the ETA).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..config import TrainConfig

# What a reciprocal step does besides its passes (the gradient dot product, two optimiser steps,
# the argmax) against what a supervised step does besides its passes (its own optimiser step, and
# cropping twice the labelled crops). Measured ratios of a reciprocal to a supervised iteration on
# the CPU: 2.2 (lite, idle machine), 1.67 (a 4-filter plan on hippocampus, loaded machine); the
# passes alone give 2.0, and we take that.
RECIPROCAL_OVERHEAD = 1.0
PRIOR_WEIGHT = 3  # iterations' worth of trust in the projection from the previous phase


def crop_passes(config: TrainConfig, phase: str) -> float:
    """Forward + backward passes of one network on one crop, per iteration of `phase`."""
    if phase == "reciprocal":
        return 2 * (config.batch_labeled + config.batch_unlabeled) * RECIPROCAL_OVERHEAD
    return float(config.supervised_batch)


@dataclass
class _PhaseClock:
    start_iteration: int
    start_time: float
    last_iteration: int = 0
    last_time: float = 0.0
    prior: float | None = None  # seconds per iteration projected from the previous phase

    @property
    def measured(self) -> int:
        return self.last_iteration - self.start_iteration

    def rate(self) -> float | None:
        """Seconds per iteration since the phase's first iteration, shrunk towards the prior
        while few are measured (None before a second iteration, without a prior)."""
        n = self.measured
        own = (self.last_time - self.start_time) / n if n > 0 else None
        if self.prior is None or own is None:
            return own if own is not None else self.prior
        return (n * own + PRIOR_WEIGHT * self.prior) / (n + PRIOR_WEIGHT)


@dataclass
class EtaModel:
    """Seconds left in a run, from measured rates and the per-phase cost model."""

    config: TrainConfig
    clocks: dict[str, _PhaseClock] = field(default_factory=dict)
    seconds_per_pass: float | None = None

    def tick(self, phase: str, iteration: int, now: float | None = None) -> None:
        """Record that `phase` finished `iteration` (counted within the phase) at `now`."""
        now = time.perf_counter() if now is None else now
        clock = self.clocks.get(phase)
        if clock is None:  # the first iteration of this phase (or of a resume): warm-up, not measured
            prior = (
                None
                if self.seconds_per_pass is None
                else self.seconds_per_pass * crop_passes(self.config, phase)
            )
            self.clocks[phase] = _PhaseClock(iteration, now, iteration, now, prior)
            return
        clock.last_iteration, clock.last_time = iteration, now
        rate = clock.rate()
        if rate is not None:
            self.seconds_per_pass = rate / crop_passes(self.config, phase)

    def phase_rate(self, phase: str) -> float | None:
        clock = self.clocks.get(phase)
        own = clock.rate() if clock is not None else None
        if own is not None:
            return own
        if self.seconds_per_pass is None:
            return None
        return self.seconds_per_pass * crop_passes(self.config, phase)

    def remaining(self, remaining_iterations: dict[str, int]) -> float | None:
        """Seconds for `remaining_iterations` per phase; None until a rate has been measured."""
        total = 0.0
        for phase, count in remaining_iterations.items():
            if count <= 0:
                continue
            rate = self.phase_rate(phase)
            if rate is None:
                return None
            total += rate * count
        return round(total, 1)
