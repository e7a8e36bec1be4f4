"""Text the panel shows for the service's answers (plain Python, tested without Slicer)."""

from __future__ import annotations

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


def format_plan(status: Any, minutes: float | None = None) -> str:
    """The plan the round runs: its preset (``auto``: planned from the cases) and time budget.

    The service reports the preset of a run but not the planned values themselves (they are in
    the run folder's ``out/plan.json`` on the service's machine); ``minutes`` is the budget this
    panel asked for (None or 0: the iterations decide).
    """
    preset = field(status, "preset")
    parts = [f"preset {preset}"] if preset else []
    if minutes:
        parts.append(f"budget {minutes:g} min")
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
    """Which model made a prediction: ``round 3``, or ``live: round 4 iteration 120 (reciprocal)``
    for the latest checkpoint of the round in training (the number it gets if it finishes)."""
    number = field(prediction, "round", "?")
    if not field(prediction, "live", False):
        return f"round {number}"
    text = f"live: round {number}"
    iteration = field(prediction, "iteration")
    if iteration is not None:
        text += f" iteration {iteration}"
    phase = field(prediction, "phase")
    if phase:
        text += f" ({phase})"
    return text
