"""Training progress on a terminal: a one-line bar, or the raw events as JSON lines.

Shared by every command that trains (the CLI's `train`, the demo, the torchrun entry), so
none of them takes it from another.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .training.events import Listener


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
            filled = int(width * done / max(total, 1))
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
        elif kind in ("phase", "done", "cancelled", "error", "resumed", "warm_start", "warning", "budget"):
            detail = {k: v for k, v in event.items() if k not in ("event", "time")}
            self.stream.write(("\n" if self.tty else "") + f"{kind}: {json.dumps(detail)}\n")
        self.stream.flush()


def print_json_event(event: dict[str, Any]) -> None:
    """One event as a JSON line on stdout (`--json`: for programs that read the progress)."""
    print(json.dumps(event), flush=True)


def progress_listener(json_lines: bool) -> Listener:
    """The listener a command passes to training: JSON lines on stdout, or the bar on stderr."""
    return print_json_event if json_lines else ProgressBar()
