"""Training jobs: one child process per run, progress from the run's ``events.jsonl``.

A run lives in ``WORKSPACE/runs/<RUN_ID>/`` (the training run directory of docs/DESIGN.md) with a
``job.json`` written by the service: the request, the state and the worker's process id.  States::

    running -> completed | failed | cancelled | interrupted

* ``completed``: the child wrote ``done.json``; the run was registered as a new model round.
* ``cancelled``: stopped on request (the child wrote a checkpoint); ``POST /training/resume``
  continues it.
* ``interrupted``: the worker died from a signal it did not ask for (SIGKILL, the OOM killer) or the
  service went away while it ran.  Such a run is resumed from its last checkpoint automatically: at
  once when the worker dies under a running service (at most ``max_auto_resumes`` times), and at
  service start-up when the service itself was stopped or killed mid-run.
* ``failed``: the child exited with an error; the message is the last ``error`` event or the tail
  of its stderr.

Only one run is active at a time (one training job per device); a second start is refused with
409 and a message naming the active run.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reciprocalseg.common.errors import EXIT_CANCELLED
from reciprocalseg.common.processes import (
    child_env,
    create_time,
    find_process,
    start_process,
    terminate_child_tree,
    terminate_tree,
)
from reciprocalseg.data.io import Case, write_case_list
from reciprocalseg.training.request import TrainRequest

from .errors import Conflict, Invalid, NotFound
from .fingerprints import CaseFingerprints, workspace_plan
from .rounds import register_run, round_of_run, teacher_only_run, unusable_models
from .workspace import Workspace, now_iso

log = logging.getLogger(__name__)

ACTIVE_STATES = ("running",)
RESUMABLE_STATES = ("cancelled", "interrupted", "failed")
# What a model file's weights depend on: a warm start needs them equal (model/vnet.py).
NETWORK_FIELDS = ("n_filters", "normalization", "downsampling")


REQUEST_FILE = "request.json"


def default_train_command() -> list[str]:
    """The command that trains a request file (``--request FILE`` follows)."""
    return [sys.executable, "-m", "reciprocalseg.training.run_request"]


def train_settings(
    n_classes: int,
    device: str,
    iterations: int | None = None,
    supervised_iterations: int | None = None,
    checkpoint_every: int | None = None,
    minutes: float | None = None,
) -> dict[str, Any]:
    """The ``TrainConfig`` fields a round sets over its preset or plan (None: not set)."""
    return {
        "n_classes": n_classes,
        "device": device,
        "reciprocal_iterations": iterations,
        "supervised_iterations": supervised_iterations,
        "checkpoint_every": checkpoint_every,
        "minutes": minutes,
    }


class EventReader:
    """Incremental reader of a run's ``events.jsonl`` (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def refresh(self) -> list[dict[str, Any]]:
        """Read lines appended since the last call; return all events so far."""
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self.offset)
                    data = f.read()
            except FileNotFoundError:
                return self.events
            end = data.rfind(b"\n")
            if end < 0:
                return self.events
            for line in data[: end + 1].splitlines():
                line = line.strip()
                if not line:
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    ev = {"event": "unparsable", "raw": line.decode("utf-8", "replace")[:200]}
                if isinstance(ev, dict):
                    self.events.append(ev)
            self.offset += end + 1
            return self.events


class TrainingManager:
    """Starts, watches, stops and resumes training runs in child processes."""

    def __init__(
        self,
        ws: Workspace,
        train_command: list[str] | None = None,
        default_device: str = "auto",
        max_auto_resumes: int = 3,
        stop_timeout: float = 60.0,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        fingerprints: CaseFingerprints | None = None,
    ) -> None:
        self.ws = ws
        self.fingerprints = fingerprints or CaseFingerprints(ws)
        self.train_command = train_command or default_train_command()
        self.default_device = default_device
        self.max_auto_resumes = max_auto_resumes
        self.stop_timeout = stop_timeout
        self.on_round = on_round
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._active: str | None = None
        self._stopping = False
        self._readers: dict[str, EventReader] = {}
        self._closed = False

    # ------------------------------------------------------------------ helpers
    def _reader(self, run_id: str) -> EventReader:
        r = self._readers.get(run_id)
        if r is None:
            r = self._readers[run_id] = EventReader(self.ws.runs_dir / run_id / "events.jsonl")
        return r

    def _network_change(self, warm_from: dict[str, Any], old: str | None, preset: str) -> list[str]:
        """The network fields (weights' shapes) a ``preset`` round would change from ``warm_from``.

        Read from the round's own run config when it has one: an ``auto`` round's network comes
        from its plan, not its preset. A new ``auto`` round keeps the previous network
        (``planning.final_plan.keep_architecture``), so it never differs.
        """
        from reciprocalseg.config import PRESETS, make_config

        if not old or old == preset or preset == "auto" or old not in PRESETS:
            return []
        try:
            previous = json.loads(
                (self.ws.root / warm_from["dir"] / "config.json").read_text(encoding="utf-8")
            )
        except (OSError, ValueError, KeyError, TypeError):
            previous = make_config(old).to_dict()
        new = make_config(preset).to_dict()
        as_json = json.dumps  # tuples and lists compare alike
        return [k for k in NETWORK_FIELDS if as_json(previous.get(k)) != as_json(new.get(k))]

    def _new_run_id(self) -> str:
        base = time.strftime("run-%Y%m%d-%H%M%S", time.gmtime())
        run_id, n = base, 1
        while (self.ws.runs_dir / run_id).exists():
            n += 1
            run_id = f"{base}-{n}"
        return run_id

    def latest_run_id(self) -> str | None:
        ids = self.ws.run_ids()
        if not ids:
            return None
        return max(ids, key=lambda r: (self.ws.read_job(r).get("created", ""), r))

    @property
    def active_run(self) -> str | None:
        with self._lock:
            return self._active

    # ------------------------------------------------------------------ start
    def start(
        self,
        preset: str = "auto",
        iterations: int | None = None,
        supervised_iterations: int | None = None,
        device: str | None = None,
        warm_start: bool = True,
        checkpoint_every: int | None = None,
        minutes: float | None = None,
    ) -> dict[str, Any]:
        """Start a new round on the current labels; 409 while another run is active.

        An ``auto`` round's plan is made and finished here, from the cases' fingerprint records
        (what ``GET /plan`` shows), and written to ``RUN/plan.json``; the round's training request
        (``RUN/request.json``, ``training/request.py``) names it, and the child trains it as written.
        """
        from reciprocalseg.config import PRESETS

        if preset not in PRESETS:
            raise Invalid(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
        device = device or self.default_device
        with self._lock:
            self._refuse_if_active()
            labeled, unlabeled, label_versions = [], [], {}
            n_partial = 0
            for rec in self.ws.all_cases():
                cdir = self.ws.case_dir(rec["id"])
                cur = self.ws.current_label(rec)
                if cur is not None:
                    labeled.append(Case(rec["id"], cdir / rec["image"], cdir / cur["file"]))
                    label_versions[rec["id"]] = cur["version"]
                    n_partial += self.ws.annotation(rec)[0] == "partial"
                else:
                    unlabeled.append(Case(rec["id"], cdir / rec["image"], None))
            check_trainable(labeled, unlabeled, preset, iterations, device, n_partial)
            warm_from, note = self._warm_start_round() if warm_start else (None, None)
            if warm_from is not None:
                old = warm_from.get("preset")
                differs = self._network_change(warm_from, old, preset)
                if differs:
                    raise Conflict(
                        f"cannot warm-start a {preset!r} round from round {warm_from['round']} "
                        f"(preset {old!r}): the networks differ in {', '.join(differs)}; "
                        f"use preset {old!r} (or auto, which keeps the network) or warm_start=false"
                    )
            settings = train_settings(
                self.ws.n_classes, device, iterations, supervised_iterations, checkpoint_every, minutes
            )
            plan = self.plan(device, warm_from, settings) if preset == "auto" else None
            run_id = self._new_run_id()
            run_dir = self.ws.runs_dir / run_id
            run_dir.mkdir(parents=True)
            write_case_list(run_dir / "cases.json", labeled, unlabeled)
            if plan is not None:
                plan.save(run_dir / "plan.json")
            warm_path = self.ws.root / warm_start_source(warm_from) if warm_from else None
            self._write_request(run_dir, preset, settings, warm_path)
            job = {
                "run_id": run_id,
                "state": "running",
                "preset": preset,
                "iterations": iterations,
                "supervised_iterations": supervised_iterations,
                "minutes": minutes,
                "checkpoint_every": checkpoint_every,
                "device": device,
                "warm_start": warm_start,
                "warm_start_round": warm_from["round"] if warm_from else None,
                "warm_start_dir": warm_start_source(warm_from) if warm_from else None,
                "n_classes": self.ws.n_classes,
                "classes_include_background": True,
                "n_labeled": len(labeled),
                # The student's scans: the unlabelled cases and the partially labelled ones.
                "n_unlabeled": len(unlabeled) + n_partial,
                "n_partial": n_partial,
                "label_versions": label_versions,
                "created": now_iso(),
                "started": None,
                "finished": None,
                "pid": None,
                "pid_create_time": None,
                "exit_code": None,
                "message": None,
                "launches": 0,
                "auto_resumes": 0,
                "round": None,
                "note": note,
            }
            self._launch(job)
            return job

    def _warm_start_round(self) -> tuple[dict[str, Any] | None, str | None]:
        """The round a warm-started round continues (the current one), or None with a note why not."""
        reg = self.ws.registry()
        if reg.get("current") is None:
            return None, None
        warm_from = self.ws.round_entry(reg["current"])
        if warm_from.get("n_classes") not in (None, self.ws.n_classes):
            return None, (
                f"started from scratch: round {warm_from['round']} segments "
                f"{warm_from['n_classes']} classes, the workspace now has {self.ws.n_classes}"
            )
        return warm_from, None

    def plan(
        self,
        device: str | None = None,
        warm_from: dict[str, Any] | None | bool = True,
        settings: dict[str, Any] | None = None,
    ) -> Any:
        """The ``auto`` plan of a round on ``device`` (default: the service's) from the cases'
        fingerprint records; ``warm_from=True``: warm-started as a new round would be;
        ``settings``: what the round sets over the plan (recorded in it)."""
        if warm_from is True:
            warm_from = self._warm_start_round()[0]
        folder = self.ws.root / warm_from["dir"] if warm_from and warm_from.get("dir") else None
        return workspace_plan(self.ws, self.fingerprints, device or self.default_device, folder, settings)

    def _refuse_if_active(self) -> None:
        if self._active is not None:
            raise Conflict(
                f"training run {self._active} is still running; stop it (POST /training/stop) or wait for it "
                "to finish before starting another (one training job at a time)"
            )

    def _write_request(
        self, run_dir: Path, preset: str, settings: dict[str, Any], warm_start: Path | None
    ) -> None:
        """Write the run's training request (the child's only input besides the files it names)."""
        plan = run_dir / "plan.json"
        TrainRequest(
            out=run_dir,
            labeled=[],  # named by cases_file: the request file refers to the case list
            unlabeled=[],
            preset=preset,
            plan=plan if plan.is_file() else None,
            config=settings,
            warm_start=warm_start,
            json_events=True,
            cases_file=run_dir / "cases.json",
        ).save(run_dir / REQUEST_FILE)

    def _write_request_of_older_run(self, job: dict[str, Any]) -> None:
        """A run started by a service that passed a command line instead (its job.json holds the
        settings) gets its request; an ``auto`` one from before the service planned, its plan."""
        run_dir = self.ws.runs_dir / job["run_id"]
        settings = train_settings(
            job_n_classes(job),
            job["device"],
            job.get("iterations"),
            job.get("supervised_iterations"),
            job.get("checkpoint_every"),
            job.get("minutes"),
        )
        warm = self.ws.root / job["warm_start_dir"] if job.get("warm_start_dir") else None
        if job["preset"] == "auto" and not (run_dir / "plan.json").is_file():
            plan_older_run(run_dir, job["device"], settings, warm)
        self._write_request(run_dir, job["preset"], settings, warm)

    def _command(self, run_dir: Path) -> list[str]:
        return [*self.train_command, "--request", str(run_dir / REQUEST_FILE)]

    def _launch(self, job: dict[str, Any]) -> None:
        """Start (or restart, resuming) the child of ``job``; caller holds ``self._lock``."""
        run_dir = self.ws.runs_dir / job["run_id"]
        (run_dir / "CANCEL").unlink(missing_ok=True)  # a stale cancel flag would stop the resumed run at once
        if not (run_dir / REQUEST_FILE).is_file():
            self._write_request_of_older_run(job)
        cmd = self._command(run_dir)
        stdout = open(run_dir / "stdout.log", "ab")
        stderr = open(run_dir / "stderr.log", "ab")
        try:
            proc = start_process(cmd, stdout, stderr, child_env(), cwd=run_dir)
        finally:
            stdout.close()
            stderr.close()
        job.update(
            state="running",
            pid=proc.pid,
            pid_create_time=create_time(proc.pid),
            started=job.get("started") or now_iso(),
            finished=None,
            exit_code=None,
            message=None,
            launches=int(job.get("launches", 0)) + 1,
            command=cmd,
        )
        self.ws.write_job(job)
        self._proc = proc
        self._active = job["run_id"]
        self._stopping = False
        threading.Thread(
            target=self._watch, args=(proc, job["run_id"]), daemon=True, name="train-watch"
        ).start()

    # ------------------------------------------------------------------ watch
    def _watch(self, proc: subprocess.Popen, run_id: str) -> None:
        code = proc.wait()
        with self._lock:
            if self._proc is not proc:
                return
            self._proc = None
            self._active = None
            if self._closed:
                return  # shutdown() records the state
            job = self.ws.read_job(run_id)
            self._finish(job, code, stopping=self._stopping)

    def _finish(self, job: dict[str, Any], code: int | None, stopping: bool) -> None:
        """Record how a child ended; register a completed run; auto-resume a killed one."""
        run_dir = self.ws.runs_dir / job["run_id"]
        job["exit_code"] = code
        job["pid"] = None
        job["finished"] = now_iso()
        # done.json is the worker's last write, after both model files: the run is complete even
        # when a stop's SIGTERM reached the worker while it was exiting (code -15).
        if (run_dir / "done.json").exists():
            self._complete(job)
            return
        if code == EXIT_CANCELLED or (stopping and (code is None or code < 0 or code == EXIT_CANCELLED)):
            job["state"] = "cancelled"
            job["message"] = "stopped on request; POST /training/resume continues from the last checkpoint"
            self.ws.write_job(job)
            return
        if code is not None and code < 0:
            signame = _signal_name(-code)
            job["state"] = "interrupted"
            job["message"] = f"the training worker was killed by {signame}"
            if job.get("auto_resumes", 0) < self.max_auto_resumes:
                job["auto_resumes"] = int(job.get("auto_resumes", 0)) + 1
                log.warning(
                    "run %s: worker killed by %s; resuming from its last checkpoint", job["run_id"], signame
                )
                self._launch(job)
                return
            job["message"] += f" {job['auto_resumes']} times; POST /training/resume to try again"
            self.ws.write_job(job)
            return
        job["state"] = "failed"
        job["message"] = self._failure_message(job["run_id"], code)
        self.ws.write_job(job)

    def _failure_message(self, run_id: str, code: int | None) -> str:
        for ev in reversed(self._reader(run_id).refresh()):
            if ev.get("event") == "error":
                return str(ev.get("message") or ev.get("error") or ev)
        try:
            tail = (self.ws.runs_dir / run_id / "stderr.log").read_bytes()[-2000:].decode("utf-8", "replace")
        except OSError:
            tail = ""
        tail = tail.strip().splitlines()
        return f"training exited with code {code}: " + (tail[-1] if tail else "no error output")

    def _complete(self, job: dict[str, Any]) -> None:
        entry = round_of_run(self.ws, job["run_id"])
        if entry is None:
            run_dir = self.ws.runs_dir / job["run_id"]
            problem = unusable_models(run_dir, teacher_only_run(run_dir, job))
            if problem is not None:
                job["state"] = "failed"
                job["message"] = f"training finished but its models were not registered: {problem}"
                log.error("run %s: %s", job["run_id"], job["message"])
                self.ws.write_job(job)
                return
            entry = register_run(self.ws, job, job_n_classes(job))
        job["state"] = "completed"
        job["round"] = entry["round"]
        job["message"] = f"completed; model round {entry['round']} is now current" + (
            " (supervised-only: a teacher, no student)" if entry.get("teacher_only") else ""
        )
        self.ws.write_job(job)
        if self.on_round is not None:
            self.on_round(entry)

    # ------------------------------------------------------------------ recover / resume / stop
    def recover(self) -> list[str]:
        """At start-up: register finished runs and resume runs the last service left running.

        A worker that survived the previous service (it runs in its own session) is stopped
        gracefully first, so the resumed run has a single writer.  Returns the resumed run ids.
        """
        resumed: list[str] = []
        with self._lock:
            for run_id in self.ws.run_ids():
                try:
                    job = self.ws.read_job(run_id)
                except (OSError, ValueError) as exc:
                    log.error("run %s has an unreadable job.json (%s); ignored", run_id, exc)
                    continue
                run_dir = self.ws.runs_dir / run_id
                if job.get("state") == "completed":
                    if round_of_run(self.ws, run_id) is None:
                        self._complete(job)
                    continue
                if job.get("state") not in ACTIVE_STATES:
                    continue
                proc = find_process(job.get("pid"), job.get("pid_create_time"), str(run_dir))
                if proc is not None:
                    log.warning(
                        "run %s: stopping the worker left by the previous service (pid %s)", run_id, proc.pid
                    )
                    terminate_tree(proc, timeout=self.stop_timeout)
                if (run_dir / "done.json").exists():
                    self._complete(job)
                    continue
                if self._active is None:
                    job["message"] = "the service stopped while this run was training; resumed at start-up"
                    self._launch(job)
                    resumed.append(run_id)
                else:
                    job["state"] = "interrupted"
                    job["message"] = "the service stopped while this run was training; POST /training/resume"
                    self.ws.write_job(job)
        return resumed

    def resume(self, run_id: str | None = None) -> dict[str, Any]:
        """Continue a cancelled, interrupted or failed run from its last checkpoint."""
        with self._lock:
            self._refuse_if_active()
            if run_id is None:
                run_id = self.latest_run_id()
                if run_id is None:
                    raise NotFound("no training run to resume; start one with POST /training")
            elif run_id not in self.ws.run_ids():
                raise NotFound(f"no training run {run_id!r}")
            job = self.ws.read_job(run_id)
            if job["state"] not in RESUMABLE_STATES:
                raise Conflict(
                    f"run {run_id} is {job['state']}; only cancelled, interrupted or failed runs resume"
                )
            job["auto_resumes"] = 0
            self._launch(job)
            return job

    def stop(self, wait: bool = True) -> dict[str, Any]:
        """Ask the active worker to stop (it checkpoints and exits); kill it after the timeout."""
        with self._lock:
            proc, run_id = self._proc, self._active
            if proc is None or run_id is None:
                raise Conflict("no training run is active")
            self._stopping = True
        try:
            (self.ws.runs_dir / run_id / "CANCEL").touch()  # also understood where signals are not (Windows)
        except OSError:
            pass
        terminate_child_tree(proc, timeout=self.stop_timeout)
        if wait:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.active_run == run_id:
                time.sleep(0.05)
        return self.ws.read_job(run_id)

    def shutdown(self, timeout: float | None = None) -> None:
        """Service shutdown: stop the worker with a checkpoint; it is resumed at the next start-up."""
        with self._lock:
            self._closed = True
            proc, run_id = self._proc, self._active
        if proc is None or run_id is None:
            return
        terminate_child_tree(proc, timeout=timeout or self.stop_timeout)
        proc.wait()
        with self._lock:
            job = self.ws.read_job(run_id)
            if (self.ws.runs_dir / run_id / "done.json").exists():  # finished before the stop reached it
                self._proc = None
                self._active = None
                self._complete(job)
                return
            # Left "running" on purpose: recover() resumes it when the service starts again.
            job["pid"] = None
            job["message"] = "the service was stopped; the run resumes when the service starts again"
            self.ws.write_job(job)
            self._proc = None
            self._active = None

    # ------------------------------------------------------------------ status / events
    def events(self, since: int = 0, run_id: str | None = None, limit: int = 1000) -> dict[str, Any]:
        """Events ``since`` (0-based index) of a run (the latest by default)."""
        run_id = self._pick_run(run_id)
        if run_id is None:
            return {"run_id": None, "events": [], "next": 0, "total": 0}
        evs = self._reader(run_id).refresh()
        chunk = evs[since : since + limit]
        return {"run_id": run_id, "events": chunk, "next": since + len(chunk), "total": len(evs)}

    def _pick_run(self, run_id: str | None) -> str | None:
        if run_id is None:
            return self.active_run or self.latest_run_id()
        if run_id not in self.ws.run_ids():
            raise NotFound(f"no training run {run_id!r}")
        return run_id

    def status(self, run_id: str | None = None) -> dict[str, Any]:
        """State of a run (the active or latest one) with its latest progress event."""
        run_id = self._pick_run(run_id)
        reg = self.ws.registry()
        base: dict[str, Any] = {
            "state": "idle",
            "run_id": None,
            "current_round": reg.get("current"),
            "rounds": len(reg["rounds"]),
        }
        if run_id is None:
            return base
        job = self.ws.read_job(run_id)
        evs = self._reader(run_id).refresh()
        warning = next((ev for ev in reversed(evs) if ev.get("event") == "warning"), {})
        last: dict[str, Any] = {}  # the latest progress event: losses, h, lr, pace, ETA
        pos: dict[str, Any] = {}  # the latest event that says where the run is
        total = None
        device = None
        for ev in reversed(evs):
            kind = ev.get("event")
            if not last and kind == "progress":
                last = ev
            if not pos and kind in ("progress", "phase", "checkpoint", "resumed") and "iteration" in ev:
                pos = ev
            if pos and total is None and ev.get("phase") == pos.get("phase") and "total" in ev:
                total = ev["total"]
            if device is None and ev.get("device"):
                device = ev["device"]
            if last and pos and total is not None and device:
                break
        base.update(
            state=job["state"],
            run_id=run_id,
            round=job.get("round"),
            preset=job.get("preset"),
            phase=pos.get("phase"),
            iteration=pos.get("iteration"),
            total=total,
            overall_iteration=last.get("overall_iteration"),
            overall_total=last.get("overall_total"),
            losses=last.get("losses") or {},
            h=last.get("h"),
            lr=last.get("lr"),
            sec_per_iter=last.get("sec_per_iter"),
            eta_s=last.get("eta_s"),
            device=device or job.get("device"),
            message="; ".join(m for m in (job.get("message"), job.get("note")) if m) or None,
            started=job.get("started"),
            finished=job.get("finished"),
            n_events=len(evs),
            n_labeled=job.get("n_labeled"),
            n_unlabeled=job.get("n_unlabeled"),
            warm_start_round=job.get("warm_start_round"),
            warning=warning.get("message"),
            background_only=warning.get("networks") or [],
            plan=self._run_plan(run_id) if job.get("preset") == "auto" else None,
            fraction=progress_fraction(job, last),
        )
        return base

    def _run_plan(self, run_id: str) -> dict[str, Any] | None:
        """The values a run's ``plan.json`` trains with (its overrides applied); None without one."""
        from reciprocalseg.common.errors import ReciprocalSegError
        from reciprocalseg.planning.planner import Plan

        path = self.ws.runs_dir / run_id / "plan.json"
        if not path.is_file():
            return None
        try:
            plan = Plan.load(path)
        except ReciprocalSegError as exc:
            log.warning("run %s: %s", run_id, exc)
            return None
        return {**plan.values, **plan.overrides}

    def uses_case(self, case_id: str) -> bool:
        """Whether the active run trains on ``case_id`` (such a case cannot be deleted now)."""
        run_id = self.active_run
        if run_id is None:
            return False
        try:
            data = json.loads((self.ws.runs_dir / run_id / "cases.json").read_text())
        except (OSError, ValueError):
            return True
        ids = [c.get("id") for c in data.get("labeled", []) + data.get("unlabeled", [])]
        return case_id in ids


def check_trainable(
    labeled: list[Case],
    unlabeled: list[Case],
    preset: str,
    iterations: int | None,
    device: str,
    n_partial: int = 0,
) -> None:
    """Refuse, before anything starts, a round that would fail in the worker a few seconds later.

    Partially labelled cases (`n_partial` of `labeled`) also serve the student as unlabelled
    scans, so they alone are enough for a reciprocal round."""
    from reciprocalseg.config import make_config

    if not labeled:
        raise Conflict(
            "no labelled case yet: submit at least one label (PUT /cases/{id}/label) before training"
        )
    reciprocal = iterations if iterations is not None else make_config(preset).reciprocal_iterations
    if reciprocal > 0 and not unlabeled and not n_partial:
        raise Conflict(
            "no unlabelled case: reciprocal learning trains the student on scans without labels; add some "
            "(POST /cases), submit a partial label (255 = unannotated), or ask for a supervised-only "
            "round with iterations=0"
        )
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise Invalid(
                "device 'cuda' asked for, but this service sees no CUDA device; use device 'auto' or 'cpu'"
            )


def plan_older_run(run_dir: Path, device: str, settings: dict[str, Any], warm: Path | None) -> None:
    """The plan of an ``auto`` run started before the service planned rounds (its child planned
    from the run's cases then): made the same way now and written to ``RUN/plan.json``. Where it
    cannot be made, the child reports why (an ``auto`` request needs its plan)."""
    from reciprocalseg.common.device import resolve_device
    from reciprocalseg.common.errors import ReciprocalSegError
    from reciprocalseg.data.io import load_case_list
    from reciprocalseg.planning.final_plan import finish_plan
    from reciprocalseg.planning.planner import plan_for_run

    try:
        labeled, unlabeled = load_case_list(run_dir / "cases.json")
        plan = plan_for_run(run_dir, labeled, unlabeled, resolve_device(device))
        finish_plan(plan, settings, labeled, warm)
        plan.save(run_dir / "plan.json")
    except (ReciprocalSegError, OSError) as exc:
        log.warning("run %s: cannot plan it (%s)", run_dir.name, exc)


def progress_fraction(job: dict[str, Any], last: dict[str, Any]) -> float | None:
    """How far a run is, in [0, 1]: 1 once completed; under a time budget the share of the budget's
    time spent (the progress event's ``fraction``, else the budget less its ETA), never the share
    of an iteration count that is only an estimate there; else the share of iterations done."""
    if job.get("state") == "completed":
        return 1.0
    if not last:
        return None
    if last.get("fraction") is not None:
        value = float(last["fraction"])
    elif job.get("minutes") and last.get("eta_s") is not None:
        value = 1.0 - float(last["eta_s"]) / (float(job["minutes"]) * 60)
    elif last.get("overall_total"):
        value = float(last.get("overall_iteration") or 0) / float(last["overall_total"])
    else:
        return None
    return round(min(1.0, max(0.0, value)), 4)


def warm_start_source(round_entry: dict[str, Any]) -> str:
    """What a round warm-starts from (relative to the workspace): the round's folder (teacher and
    student), or for a teacher-only round its teacher file alone, so the new student starts as the
    preset says (a copy of the teacher) instead of from a student that never trained."""
    return round_entry["teacher"] if round_entry.get("teacher_only") else round_entry["dir"]


def job_n_classes(job: dict[str, Any]) -> int:
    """A job's class count including background (jobs written before that meaning stored foreground)."""
    n = int(job["n_classes"])
    return n if job.get("classes_include_background") else n + 1


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"
