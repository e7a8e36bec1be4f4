"""Training progress on a terminal: a one-line bar, or the raw events as JSON lines.

Shared by every command that trains (the CLI's `train`, the demo, the torchrun entry), so
none of them takes it from another.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .events import Listener


class ProgressBar:
    """A one-line terminal progress bar with phase, iteration, losses and ETA."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "progress":
            done, total = event["overall_iteration"], event["overall_total"]
            width = 30
            fraction = event.get("fraction")  # by time under a budget
            filled = int(width * (fraction if fraction is not None else done / max(total, 1)))
            eta = event.get("eta_s")
            eta_text = f"ETA {int(eta) // 60}:{int(eta) % 60:02d}" if eta is not None else "ETA --:--"
            losses = " ".join(f"{k}={v:.3f}" for k, v in event["losses"].items())
            h = f" h={event['h']:+.2e}" if event.get("h") is not None else ""
            line = (
                f"[{'#' * filled}{'.' * (width - filled)}] {event['phase']} {event['iteration']}/"
                f"{event['total']} {eta_text} {losses}{h}"
            )
            if self.tty:
                self.stream.write("\r" + line[:160].ljust(160))
            elif done % 50 == 0 or done == total:
                self.stream.write(line + "\n")
        else:
            text = describe_event(event)
            if text is not None:
                self.stream.write(("\n" if self.tty else "") + text + "\n")
        self.stream.flush()


def _at(event: dict[str, Any]) -> str:
    return f"{event.get('phase', '?')} iteration {event.get('iteration', '?')}"


def describe_event(event: dict[str, Any]) -> str | None:
    """One readable line for a phase change, the end, a resume...; None for events not shown."""
    kind = event["event"]
    if kind == "phase" and event.get("phase") == "preprocess":
        return f"preprocessing {event.get('total', '?')} cases"
    if kind == "phase":
        start = event.get("iteration") or 0
        where = f" from iteration {start}" if start else ""
        device = f" on {event['device']}" if event.get("device") else ""
        if event.get("total") is None:  # a budgeted round: the phase runs to a time (a budget event)
            return f"{event['phase']} phase{where}{device}"
        return f"{event['phase']} phase: {event['total']} iterations{where}{device}"
    if kind == "done":
        return f"done in {format_duration(event.get('seconds', 0))} on {event.get('device', '?')}"
    if kind == "cancelled":
        return f"cancelled at {_at(event)}; a checkpoint was written, rerun the same command to resume"
    if kind == "error":
        return None  # the command prints the error once, as it stops (an "error: ..." line here doubled it)
    if kind == "resumed":
        return f"resumed from the checkpoint at {_at(event)}"
    if kind == "warm_start":
        return f"warm start from {event.get('source', '?')}"
    if kind == "warning":
        return f"warning at {_at(event)}: {event.get('message', '')}"
    if kind == "budget":
        return describe_budget(event)
    return None


def describe_budget(event: dict[str, Any]) -> str:
    """A phase's place on a budgeted round's clock: ``reciprocal phase runs to 10 min 00 s of the
    10-minute budget (lr drop at 9 min 04 s), about 400 iterations at 0.9 s each``."""
    text = (
        f"{event.get('phase', '?')} phase runs to {format_duration(event.get('deadline_s', 0))} of the "
        f"{event.get('minutes', 0):g}-minute budget (lr drop at {format_duration(event.get('lr_drop_s', 0))})"
    )
    if event.get("iterations") and event.get("sec_per_iter"):
        text += f", about {event['iterations']} iterations at {event['sec_per_iter']:.2g} s each"
    return text


def format_duration(seconds: float) -> str:
    """``42.1 s``, ``3 min 05 s``, ``2 h 03 min``."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def print_json_event(event: dict[str, Any]) -> None:
    """One event as a JSON line on stdout (`--json`: for programs that read the progress)."""
    print(json.dumps(event), flush=True)


def progress_listener(json_lines: bool) -> Listener:
    """The listener a command passes to training: JSON lines on stdout, or the bar on stderr."""
    return print_json_event if json_lines else ProgressBar()
