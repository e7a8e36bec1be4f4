"""How a refine adapts a copy of the model to a case's strokes: limits, optimiser, batch mix.

Defaults per device (`default_refine_settings`), chosen in docs/DESIGN.md ("Refine a case from
strokes"): a GPU answers in seconds and can afford more iterations and replay; on a CPU the
time limit is what a person waits for, and a step there costs about a second.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..common.device import resolve_device
from ..common.errors import DataError


@dataclass(frozen=True)
class RefineSettings:
    """The knobs of one refine. `max_seconds` counts everything: reading the strokes, the
    adaptation and the final prediction of the case."""

    max_seconds: float = 30.0
    # A cap on the adaptation steps whatever the time: past it a copy over-fits the few stroke
    # voxels (the time limit alone would give a fast GPU hundreds of steps).
    max_iterations: int = 100
    # At least this many steps even when the prediction alone would take the whole limit (a
    # refine that learns nothing would only repeat the prediction): 0 honours the limit strictly.
    min_iterations: int = 1
    # Adam on the tail's weights. 1e-2: on hippocampus tuning cases a round that never predicted
    # class 1 learned it from one stroke at 1e-2 (Dice 0.01 -> 0.74-0.85, class 2 kept), at 3e-3
    # only now and then, at 1e-3 and 3e-4 never within 30 s (docs/DESIGN.md, RESULTS.md).
    lr: float = 1e-2
    # Crops of the labelled cases (replay) per step, beside the boxes around every stroke.
    replay_batch: int = 2
    # The share of the loss that comes from the replay crops (the rest from the stroke crops);
    # both are means over their own annotated voxels, so a full replay label does not drown a
    # stroke of a few voxels. 0.8: on five hippocampus tuning cases on a quiet CPU (100 steps
    # per refine) 0.5 let a single stroke of one class cost the other class (mean Dice 0.785 ->
    # 0.759 after the first stroke, one case's class at 0.66); at 0.8 the first stroke cost
    # nothing (0.788) and 10 strokes gave 0.821 against 0.815 (RESULTS.md, issue 27 item 2).
    replay_weight: float = 0.8
    # At most this many of the labelled cases are read for replay (drawn at random), so that a
    # refine does not preprocess a whole cohort; a cache folder makes them free after the first.
    replay_cases: int = 2
    # Crops of them (the model's patch) put through the frozen body once; each step replays
    # `replay_batch` of these.
    replay_crops: int = 4
    # The final prediction's time is estimated from one timed batch of windows; this factor
    # covers what the estimate misses (the resampling back to the scan's grid, a busy machine).
    prediction_margin: float = 1.3
    # The strokes are the annotator's word: the refined mask keeps them where the adapted model
    # still disagrees (False: the adapted model's prediction alone).
    paste_strokes: bool = True
    # How far from the strokes (mm) the adapted copy may change the round's prediction; beyond,
    # the round's prediction stays (refine/reach.py says why). None: everywhere. 10 mm: on five
    # hippocampus tuning cases mean Dice after 1 / 10 strokes 0.802 / 0.831 (20 mm: 0.798 /
    # 0.822; everywhere: 0.788 / 0.821); on a left-atrium tuning case everywhere lost Dice with
    # every stroke (0.690 -> 0.668 after 5) and 10 mm kept it (RESULTS.md, issue 27 item 2).
    reach_mm: float | None = 10.0
    # A refine of the case refined last, with strokes only added, continues from that refine's
    # adapted copy instead of the round's model: its steps add up over the strokes. Without it a
    # hippocampus copy learnt a class or not depending on the 10-60 steps a loaded CPU gave it
    # (mean Dice 0.84 or 0.45 from one stroke to the next; RESULTS.md).
    continue_last: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Raise DataError naming the first unusable value."""
        checks = [
            (
                math.isfinite(self.max_seconds) and self.max_seconds > 0,
                "max_seconds must be a positive number",
            ),
            (self.max_iterations >= 1, "max_iterations must be at least 1"),
            (0 <= self.min_iterations <= self.max_iterations, "min_iterations must be in 0..max_iterations"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number"),
            (self.replay_batch >= 0, "replay_batch must be 0 or more"),
            (0.0 <= self.replay_weight < 1.0, "replay_weight must be in [0, 1)"),
            (self.replay_cases >= 0, "replay_cases must be 0 or more"),
            (
                math.isfinite(self.prediction_margin) and self.prediction_margin >= 1.0,
                "prediction_margin must be at least 1",
            ),
            (self.replay_crops >= self.replay_batch, "replay_crops must be at least replay_batch"),
            (
                self.reach_mm is None or (math.isfinite(self.reach_mm) and self.reach_mm > 0),
                "reach_mm must be a positive number of millimetres, or None",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise DataError(f"refine settings: {message}")

    def replace(self, **changes: object) -> RefineSettings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


# GPU: a step is milliseconds, so the cap on steps decides, and 10 s keeps the answer "at once";
# more replay per step costs nothing there. CPU: 30 s is the goal for a hippocampus-sized
# case; one replay crop per two stroke crops keeps a step near a second on 2 cores.
GPU_SETTINGS = RefineSettings(max_seconds=10.0, replay_batch=4, replay_cases=4, replay_crops=8)
CPU_SETTINGS = RefineSettings()


def default_refine_settings(device: str | torch.device = "auto") -> RefineSettings:
    """The defaults for `device` ("auto", "cpu", "cuda", or a torch.device)."""
    resolved = device if isinstance(device, torch.device) else resolve_device(device)
    return GPU_SETTINGS if resolved.type == "cuda" else CPU_SETTINGS
