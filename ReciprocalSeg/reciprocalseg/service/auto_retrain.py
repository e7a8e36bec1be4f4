"""Retrain by itself (opt-in): a warm-started round once K corrections have arrived.

A **correction** is a submitted label version stored after the latest training run started:
a label upload, submitted scribbles, the strokes a refine stores, or an accepted refine. The
count is derived from what is stored (each run's ``job.json`` keeps the label version of every
case it trained on, ``label_versions``), so it survives restarts and never counts one correction
twice; a run that starts, manual or automatic, sets it back to zero, and corrections that arrive
while a round trains count towards the next one.

With ``retrain_after`` = K set (``PUT /settings``), the service starts a warm-started round of
``retrain_minutes`` minutes (the current round's preset) as soon as K corrections are there, a
current round exists to warm-start from, and no round is training. The current round keeps
serving predictions and refines until the new one finishes. A start the service refuses (no
unlabelled case, say) is reported in ``GET /settings`` (``retrain_message``) and tried again
only when the count or the settings change, so the log is not flooded.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .errors import ApiError
from .jobs import TrainingManager
from .workspace import Workspace, now_iso

log = logging.getLogger(__name__)

DEFAULT_RETRAIN_MINUTES = 10.0
CHECK_INTERVAL_S = 2.0  # also checked at once when a correction arrives


class AutoRetrain:
    """Watches the corrections and starts warm-started rounds when the setting asks for it."""

    def __init__(self, ws: Workspace, jobs: TrainingManager, interval: float = CHECK_INTERVAL_S) -> None:
        self.ws = ws
        self.jobs = jobs
        self.interval = interval
        self.message: str | None = None  # what happened last (a start, or why none)
        self._refused_at: tuple[int, Any, Any] | None = None  # (count, after, minutes) of a refusal
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._check_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ settings
    @property
    def after(self) -> int | None:
        value = self.ws.settings.get("retrain_after")
        return int(value) if value is not None else None

    @property
    def minutes(self) -> float:
        return float(self.ws.settings.get("retrain_minutes") or DEFAULT_RETRAIN_MINUTES)

    def configure(self, after: int | None, minutes: float | None) -> None:
        """Set K (None: off) and M (None: unchanged); checked again at once."""
        changes: dict[str, Any] = {"retrain_after": after}
        if minutes is not None:
            changes["retrain_minutes"] = float(minutes)
        self.ws.update_settings(changes)
        self.notify()

    # ------------------------------------------------------------------ the count
    def corrections(self) -> int:
        """Submitted label versions stored since the latest training run started."""
        run_id = self.jobs.latest_run_id()
        seen: dict[str, int] = {}
        if run_id is not None:
            try:
                seen = dict(self.ws.read_job(run_id).get("label_versions") or {})
            except (OSError, ValueError):
                seen = {}
        count = 0
        for rec in self.ws.all_cases():
            known = int(seen.get(rec["id"], 0))
            count += sum(1 for v in rec["labels"] if v["kind"] == "submitted" and v["version"] > known)
        return count

    # ------------------------------------------------------------------ the watcher
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="auto-retrain")
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    def notify(self) -> None:
        """A correction arrived or the settings changed: check now, not at the next interval."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check()
            except Exception:  # the watcher must outlive any surprise; the log keeps it
                log.exception("auto-retrain check failed")

    def check(self) -> str | None:
        """Start a round if the setting asks for one now; returns its run ID (None: none started)."""
        with self._check_lock:
            after = self.after
            if after is None or self.jobs.active_run is not None:
                return None
            current = self.ws.registry().get("current")
            count = self.corrections()
            if count < after:
                return None
            if current is None:
                self.message = (
                    f"{count} corrections are waiting, but there is no round to warm-start from yet: "
                    "train the first round yourself"
                )
                return None
            state = (count, after, self.minutes)
            if self._refused_at == state:
                return None  # refused with these very corrections and settings: wait for a change
            preset = self._preset(current)
            try:
                job = self.jobs.start(preset=preset, minutes=self.minutes, warm_start=True)
            except ApiError as exc:
                self._refused_at = state
                self.message = (
                    f"{now_iso()}: could not start a round after {_corrections(count)}: {exc.message}"
                )
                log.warning("auto-retrain: %s", self.message)
                return None
            self._refused_at = None
            self.message = (
                f"{now_iso()}: started run {job['run_id']} ({preset}, {self.minutes:g} min, warm-started "
                f"from round {current}) after {_corrections(count)}"
            )
            log.info("auto-retrain: %s", self.message)
            return str(job["run_id"])

    def _preset(self, current: int) -> str:
        """The current round's preset (what the user chose last), ``auto`` when it is unknown."""
        from reciprocalseg.config import PRESETS

        preset = self.ws.round_entry(current).get("preset")
        return preset if preset in PRESETS else "auto"


def _corrections(count: int) -> str:
    return f"{count} correction" if count == 1 else f"{count} corrections"
