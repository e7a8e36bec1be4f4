"""A training request: what one run trains, as one object (and one JSON file, RUN/request.json),
and training it in this process.

``reciprocalseg train`` builds it in process from its options (``command.py``); the service
builds it when it starts a round, writes it beside the run and starts the training child with
``python -m reciprocalseg.training.run_request --request RUN/request.json`` (``run_request.py``),
which trains it. An ``auto`` request names the run's final plan (``planning/final_plan.py``),
which is trained as written.

The file (``format`` ``reciprocalseg-train-request-1``)::

    {"format": ..., "out": RUN, "cases": RUN/cases.json (a case list, data/io.py), "preset": "auto",
     "plan": RUN/plan.json or null, "config": {TrainConfig fields set over the preset or plan:
     n_classes, device, minutes, reciprocal_iterations, ...}, "warm_start": a run folder or null,
     "json_events": true, "gpus": 1, "sync_bn": false}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common.atomic import atomic_write_json
from ..common.errors import ReciprocalSegError

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..data.io import Case
    from .runner import RunResult

REQUEST_FORMAT = "reciprocalseg-train-request-1"


@dataclass
class TrainRequest:
    """One training run: its folder, cases, preset (or plan), settings and how to report."""

    out: Path
    labeled: list[Case]
    unlabeled: list[Case]
    preset: str = "auto"
    plan: Path | None = None  # auto: the run's final plan, trained as written
    config: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields set (None: not set)
    warm_start: Path | None = None  # a previous run folder (both networks) or a model file
    json_events: bool = False  # progress events as JSON lines on stdout
    gpus: int = 1
    sync_bn: bool = False
    cases_file: Path | None = None  # the case list the cases were read from (a saved request names it)
    # This session's start (time.perf_counter), which a time budget counts from (imports and
    # planning included); set by the process that trains, never saved.
    started: float | None = None

    def train_config(self) -> TrainConfig:
        """The run's configuration: the plan's values (auto) or the preset's, with ``config`` over them."""
        from ..config import make_config
        from ..planning.planner import Plan, planned_config

        if self.preset != "auto":
            return make_config(self.preset, **self.config)
        if self.plan is None:
            raise ReciprocalSegError("an auto training request needs its plan (plan.json)")
        return planned_config(Plan.load(self.plan), self.config)

    def to_dict(self) -> dict[str, Any]:
        if self.cases_file is None:
            raise ReciprocalSegError("a saved training request names its case list (cases_file)")
        return {
            "format": REQUEST_FORMAT,
            "out": str(self.out),
            "cases": str(self.cases_file),
            "preset": self.preset,
            "plan": None if self.plan is None else str(self.plan),
            "config": {k: v for k, v in self.config.items() if v is not None},
            "warm_start": None if self.warm_start is None else str(self.warm_start),
            "json_events": self.json_events,
            "gpus": self.gpus,
            "sync_bn": self.sync_bn,
        }

    def save(self, path: Path) -> None:
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path) -> TrainRequest:
        """Read a request file and its case list; ReciprocalSegError naming the file if unusable."""
        from ..data.io import load_case_list

        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("format") != REQUEST_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {REQUEST_FORMAT!r}")
            cases = Path(data["cases"])
            optional = {k: None if data.get(k) is None else Path(data[k]) for k in ("plan", "warm_start")}
            fields = dict(preset=str(data["preset"]), config=dict(data.get("config") or {}))
            fields.update(json_events=bool(data.get("json_events")), gpus=int(data.get("gpus", 1)))
            fields.update(sync_bn=bool(data.get("sync_bn")))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ReciprocalSegError(f"training request {path} is unusable ({exc})") from None
        labeled, unlabeled = load_case_list(cases)
        return cls(Path(data["out"]), labeled, unlabeled, **optional, **fields, cases_file=cases)


def train_in_process(request: TrainRequest, config: TrainConfig) -> RunResult:
    """Train in this process; SIGINT/SIGTERM or a CANCEL file in the run folder stop it cleanly."""
    from .runner import CancelToken, train

    cancel = CancelToken(request.out / "CANCEL")
    cancel.install_signal_handlers()
    from .progress import progress_listener

    listener = progress_listener(request.json_events)
    return train(
        config,
        request.labeled,
        request.unlabeled,
        request.out,
        [listener],
        cancel,
        request.warm_start,
        started=request.started,
    )


def print_result(request: TrainRequest, result: RunResult) -> None:
    """Where the models are (not with JSON events, whose stdout is events only)."""
    if not request.json_events:
        print(f"teacher: {result.teacher}\nstudent: {result.student}\ndevice: {result.device}")
