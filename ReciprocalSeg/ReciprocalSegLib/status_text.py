"""Text the panel shows for the service's answers (plain Python, tested without Slicer)."""

from __future__ import annotations

import math
from typing import Any

RUNNING_STATES = ("running",)
FINISHED_STATES = ("completed",)


def field(obj: Any, name: str, default: Any = None) -> Any:
    """``obj.name`` when it exists and is not None, else ``default`` (optional client fields)."""
    value = getattr(obj, name, None)
    return default if value is None else value


def format_duration(seconds: float | None) -> str:
    """``3725`` -> ``"1 h 02 min"``; ``65`` -> ``"1 min 05 s"``; ``None`` -> ``"?"``."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(float(seconds))))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def plan_values(plan: Any) -> dict:
    """The planned ``TrainConfig`` values from either form the service gives: the job status's
    ``plan`` (the values themselves) or ``Client.plan()`` (a dict with ``values``); {} if none."""
    if not isinstance(plan, dict):
        return {}
    values = plan.get("values", plan)
    return values if isinstance(values, dict) else {}


def _numbers(value: Any) -> list | None:
    """A list of finite numbers, else None (plan fields come from a file on another machine)."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return list(value)


def _times(value: Any, unit: str = "") -> str | None:
    numbers = _numbers(value)
    return None if numbers is None else " × ".join(f"{v:g}" for v in numbers) + unit


def _strides(levels: Any) -> str | None:
    """``[[2,2,2],[2,2,1]]`` -> ``"2×2×2, 2×2×1 (÷4×4×2)"``: per level, then in total per axis."""
    if not isinstance(levels, (list, tuple)) or not levels:
        return None
    rows = [_numbers(level) for level in levels]
    if any(row is None or len(row) != len(rows[0]) for row in rows):
        return None
    total = [math.prod(int(row[i]) for row in rows) for i in range(len(rows[0]))]
    return (
        ", ".join("×".join(f"{v:g}" for v in row) for row in rows) + " (÷" + "×".join(map(str, total)) + ")"
    )


def _batch(values: dict) -> str | None:
    labelled, unlabelled = values.get("batch_labeled"), values.get("batch_unlabeled")
    if labelled is None or unlabelled is None:
        return None
    text = f"{labelled} labelled + {unlabelled} unlabelled"
    supervised = values.get("supervised_batch")
    return text + (f" ({supervised} in the supervised phase)" if supervised is not None else "")


def _normalisation(values: dict) -> str | None:
    kind = values.get("intensity")
    if kind is None:
        return None
    if kind == "zscore":
        return "z-score per scan"
    if kind == "ct_dataset":
        clip, mean_std = _numbers(values.get("intensity_clip")), _numbers(values.get("intensity_mean_std"))
        text = "CT: dataset clip"
        text += f" {clip[0]:.4g} to {clip[1]:.4g}" if clip and len(clip) == 2 else ""
        text += (
            f", z-score (mean {mean_std[0]:.4g}, std {mean_std[1]:.4g})"
            if mean_std and len(mean_std) == 2
            else ", z-score"
        )
        return text
    return str(kind)


def _spacing(values: dict) -> str | None:
    if "target_spacing" not in values:
        return None
    spacing = values["target_spacing"]
    return "the scans' own (no resampling)" if spacing is None else _times(spacing, " mm")


# (label, TrainConfig field it comes from: its reason in the plan, formatter)
PLAN_FIELDS = (
    ("Spacing", "target_spacing", _spacing),
    ("Crop", "patch_size", lambda v: _times(v.get("patch_size"), " voxels")),
    ("Strides", "downsampling", lambda v: _strides(v.get("downsampling"))),
    ("Batch", "batch_labeled", _batch),
    ("Normalisation", "intensity", _normalisation),
    ("Width", "n_filters", lambda v: None if v.get("n_filters") is None else f"{v['n_filters']} filters"),
)


def plan_lines(plan: Any) -> list:
    """(label, text, reason or "") for each planned value present, in a fixed order."""
    values = plan_values(plan)
    reasons = plan.get("reasons", {}) if isinstance(plan, dict) else {}
    reasons = reasons if isinstance(reasons, dict) else {}
    lines = []
    for label, key, text_of in PLAN_FIELDS:
        text = text_of(values)
        if text:
            lines.append((label, text, str(reasons.get(key, ""))))
    return lines


STATUS_LINE_FIELDS = ("Spacing", "Crop")  # the rest is in the panel's plan box


def format_plan_values(plan: Any, labels: tuple = STATUS_LINE_FIELDS) -> str:
    """One line of some planned values: ``spacing 1 × 1 × 2.5 mm, crop 64 × 64 × 48 voxels``."""
    return ", ".join(f"{label.lower()} {text}" for label, text, _ in plan_lines(plan) if label in labels)


def format_plan_details(plan: Any, title: str) -> str:
    """The plan box: a title line, then one line per value with the planner's reason (sizes x × y × z)."""
    lines = plan_lines(plan)
    if not lines:
        return ""
    out = [title]
    for label, text, reason in lines:
        out.append(f"{label}: {text}" + (f" — {reason}" if reason else ""))
    return "\n".join(out)


def format_plan(status: Any, minutes: float | None = None) -> str:
    """The plan the round runs: its preset (``auto``: planned from the cases), time budget, and the
    planned values when the status carries them (its ``plan``; None for presets not planned).

    ``minutes`` is the budget this panel asked for (None or 0: the iterations decide).
    """
    preset = field(status, "preset")
    parts = [f"preset {preset}"] if preset else []
    if minutes:
        parts.append(f"budget {minutes:g} min")
    planned = format_plan_values(field(status, "plan"))
    if planned:
        parts.append(planned)
    return ", ".join(parts)


def format_training_status(status: Any, minutes: float | None = None) -> str:
    """One line for the panel: state, phase, iteration/total, ETA, the last losses and the plan."""
    state = field(status, "state", default="idle")
    parts = [str(state)]
    phase = field(status, "phase")
    if phase:
        parts.append(str(phase))
    iteration, total = field(status, "iteration"), field(status, "total")
    if iteration is not None:
        parts.append(f"iteration {iteration}/{total}" if total else f"iteration {iteration}")
    if state in RUNNING_STATES:
        parts.append("ETA " + format_duration(field(status, "eta_s")))
    losses = field(status, "losses", default={}) or {}
    numeric = [(k, v) for k, v in sorted(losses.items()) if isinstance(v, (int, float))]
    if numeric:
        parts.append(", ".join(f"{k} {v:.4g}" for k, v in numeric))
    device = field(status, "device")
    if device:
        parts.append(f"on {device}")
    plan = format_plan(status, minutes)
    if plan:
        parts.append(plan)
    message = field(status, "message")
    if message and state not in RUNNING_STATES:
        parts.append(str(message))
    return " · ".join(parts)


def round_end_message(status: Any) -> tuple[str, bool]:
    """(message, is_error) for a round that just stopped running."""
    state = field(status, "state", default="idle")
    if state in FINISHED_STATES:
        number = field(status, "round", field(status, "current_round", "?"))
        return f"Training round {number} finished. Predict a case to see the new teacher and student.", False
    detail = field(status, "message", default="")
    return f"Training {state}. {detail}".strip(), state == "failed"


def model_description(prediction: Any) -> str:
    """Which model made a prediction: ``round 3`` (``round 2, teacher only`` for a supervised-only
    round, which has no student), or ``live: round 4 iteration 120 (reciprocal)`` for the latest
    checkpoint of the round in training (the number it gets if it finishes)."""
    number = field(prediction, "round", "?")
    if not field(prediction, "live", False):
        return f"round {number}" + (", teacher only" if field(prediction, "teacher_only", False) else "")
    text = f"live: round {number}"
    iteration = field(prediction, "iteration")
    if iteration is not None:
        text += f" iteration {iteration}"
    phase = field(prediction, "phase")
    if phase:
        text += f" ({phase})"
    return text


NO_PLAN = (
    "No plan to show yet: the auto preset plans spacing, crop, strides, batch and normalisation "
    "from the labelled cases (label a case, or start an auto round)."
)


def format_plan_box(status: Any, next_plan: Any) -> str:
    """The panel's plan box: the plan of the round in training or of the last round (the job
    status's ``plan``; none for presets that are not planned) and the plan an ``auto`` round would
    run now (``Client.plan()``), each value with the planner's reason."""
    sections = []
    running = field(status, "state") in RUNNING_STATES
    title = "The round in training runs (auto plan):" if running else "The last round ran (auto plan):"
    for plan, heading in (
        (field(status, "plan"), title),
        (next_plan, "An auto round would now plan, from the current cases:"),
    ):
        text = format_plan_details(plan, heading)
        if text:
            sections.append(text)
    return "\n\n".join(sections) or NO_PLAN
