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


def format_training_status(status: Any) -> str:
    """One line for the panel: state, phase, iteration/total, ETA and the last losses."""
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
