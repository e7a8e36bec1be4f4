"""Model rounds from training runs: registering a finished run, flagging a round that learned nothing.

A training run that finished (its worker wrote ``done.json`` after both model files) becomes a
model round in ``models/registry.json`` (see ``Workspace.add_round``), once: a run already
registered keeps its round. Imported rounds are registered by ``model_store.py``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from .model_store import sha256_file
from .workspace import Workspace, now_iso

log = logging.getLogger(__name__)

MODEL_NAMES = ("teacher", "student")


def round_of_run(ws: Workspace, run_id: str) -> dict[str, Any] | None:
    """The registry entry of the round that ``run_id`` became, or None."""
    return next((r for r in ws.registry()["rounds"] if r.get("run_id") == run_id), None)


def teacher_only_run(run_dir: Path, job: dict[str, Any]) -> bool:
    """Whether a finished run trained its teacher only: no reciprocal (or fine-tune) iteration, so
    its student is the untrained network it started as (a supervised-only round, ``iterations=0``).

    Read from what the run did (``done.json``'s iterations per phase), else from what it was asked.
    """
    try:
        done = json.loads((run_dir / "done.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        done = {}
    iterations = done.get("iterations") if isinstance(done, dict) else None
    if isinstance(iterations, dict) and iterations:
        return not iterations.get("reciprocal") and not iterations.get("finetune")
    return job.get("iterations") == 0


def unusable_models(run_dir: Path, teacher_only: bool = False) -> str | None:
    """Why a finished run's models must not become a round (missing, unreadable, non-finite), or None."""
    from reciprocalseg.common.errors import ReciprocalSegError
    from reciprocalseg.training.checkpoint import check_finite_model

    for name in MODEL_NAMES[:1] if teacher_only else MODEL_NAMES:
        try:
            check_finite_model(run_dir / f"{name}.pt")
        except ReciprocalSegError as exc:
            return f"the {name}: {str(exc).replace(str(run_dir) + '/', '')}"
    return None


def register_run(ws: Workspace, job: dict[str, Any], n_classes: int) -> dict[str, Any]:
    """Add the finished run of ``job`` (its models checked by :func:`unusable_models`) as the
    current round; return its registry entry.

    A supervised-only run registers its teacher only (``teacher_only``, no ``student``): its
    student never trained, and made current it would predict noise that disagreement, next-case
    and the panel compare against.
    """
    run_dir = ws.runs_dir / job["run_id"]
    rel = run_dir.relative_to(ws.root).as_posix()
    only_teacher = teacher_only_run(run_dir, job)
    names = MODEL_NAMES[:1] if only_teacher else MODEL_NAMES
    hashes = {name: sha256_file(run_dir / f"{name}.pt") for name in names}

    def make(number: int) -> dict[str, Any]:
        return {
            "run_id": job["run_id"],
            "source": "trained",
            "created": now_iso(),
            "dir": rel,
            "teacher": f"{rel}/teacher.pt",
            "student": None if only_teacher else f"{rel}/student.pt",
            "teacher_only": only_teacher,
            "preset": job["preset"],
            "n_classes": n_classes,
            "n_labeled": job["n_labeled"],
            "n_unlabeled": job["n_unlabeled"],
            "warm_start_round": job.get("warm_start_round"),
            "teacher_sha256": hashes["teacher"],
            "student_sha256": hashes.get("student"),
        }

    return ws.add_round(make)


def record_background_only(ws: Workspace, entry: dict[str, Any], networks: list[str]) -> None:
    """Flag a round whose networks predict background everywhere: in the registry, and as a
    ``warning`` event of its run (the status shows it)."""
    who = " and ".join(networks)
    message = (
        f"round {entry['round']}: the {who} predicts background everywhere on the labelled scans; "
        "it has not learned the structure (more labels or iterations, or check the labels)"
    )
    log.warning(message)
    with ws.lock:
        reg = ws.registry()
        for r in reg["rounds"]:
            if r["round"] == entry["round"]:
                r["background_only"] = networks
        ws.write_registry(reg)
    if entry.get("run_id"):
        event = {"event": "warning", "kind": "background_only", "round": entry["round"]}
        event.update(networks=networks, message=message, time=round(time.time(), 3))
        with open(ws.runs_dir / entry["run_id"] / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
