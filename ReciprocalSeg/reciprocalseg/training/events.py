"""Progress events: one JSON object per line in RUN/events.jsonl (and optionally elsewhere).

Every event carries `event`, `time` and, for progress, `phase`, `iteration`, `total`
(of that phase), `overall_iteration`/`overall_total` (all phases), `losses`, `h`, `lr`,
`sec_per_iter`, `eta_s` (seconds left in the whole run) and `fraction` (how far the run is, in
[0, 1]). Under a time budget (training/budget.py) `fraction` and `eta_s` are by time: the
progress events also carry `elapsed_s` (the run's clock over all its sessions) and `budget_s`,
`eta_s` is the time to the budget's end, and `total`/`overall_total` are projections at the
current speed that follow the load. Without a budget `fraction` is `overall_iteration` /
`overall_total`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Listener = Callable[[dict[str, Any]], None]


class EventLog:
    """Appends events to a JSON-lines file and forwards them to listeners."""

    def __init__(self, path: Path | None, listeners: list[Listener] | None = None) -> None:
        self.path = path
        self.listeners = list(listeners or [])
        self._file = open(path, "a", buffering=1, encoding="utf-8") if path is not None else None

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        if self._file is not None:
            # Line-buffered: a reader (the service) sees each event as soon as it is written.
            self._file.write(json.dumps(record) + "\n")
        for listener in self.listeners:
            listener(record)
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Pace:
    """Seconds per iteration as an exponential moving average, and the ETA it implies."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, smoothing: float = 0.1) -> None:
        self.clock = clock
        self.smoothing = smoothing
        self.sec_per_iter: float | None = None
        self._last: float | None = None

    def tick(self) -> float | None:
        now = self.clock()
        if self._last is not None:
            dt = now - self._last
            s = self.smoothing
            self.sec_per_iter = dt if self.sec_per_iter is None else (1 - s) * self.sec_per_iter + s * dt
        self._last = now
        return self.sec_per_iter

    def pause(self) -> None:
        """Forget the last tick (after a checkpoint or evaluation, which are not iterations)."""
        self._last = None

    def eta(self, remaining: int) -> float | None:
        return None if self.sec_per_iter is None else round(self.sec_per_iter * remaining, 1)


def read_events(path: Path, since: int = 0) -> list[dict[str, Any]]:
    """Events from line `since` on; a torn last line (the writer died mid-write) is skipped."""
    if not Path(path).exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < since:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out
