"""What the panel tells the user after an action (plain Python, tested without Slicer).

Texts about the service's answers (training status, plan box, case table) are in status_text.py
and case_table.py; these are the panel's replies to a button: a status-bar line, a question, or
the text of an error box.
"""

from __future__ import annotations

from typing import Any

from .status_text import field


def task_failed(task: str, error: BaseException) -> str:
    return f"{task} failed: {error}"


def task_cancelled(task: str) -> str:
    return f"{task} cancelled."


def backend_state(connected: bool, local: bool, url: str | None, info: Any = None) -> str:
    """``local service http://127.0.0.1:8765 · device: cuda (NVIDIA H100) · version 0.4.0``."""
    if not connected:
        return "Not connected."
    text = f"{'local' if local else 'remote'} service {url}"
    device = field(info, "device")
    if device is not None:
        text += f" · device: {device.type} ({device.name}) · version {field(info, 'version', '?')}"
    return text


def class_count_set(count: int, fixed: bool) -> str:
    return f"{count} foreground classes, {'fixed' if fixed else 'following the labels'}."


NO_LOSSES = "No losses yet: start a training round."


def service_not_answering(error: BaseException) -> str:
    return f"Service not answering: {error}"


def prediction_line(model: str | None, score: float | None) -> str:
    """The line under the Predict buttons: which model, and the teacher/student disagreement."""
    return f"Model: {model} · teacher/student disagreement: {'?' if score is None else f'{score:.4f}'}"


def predicted(case_id: str, model: str | None) -> str:
    return f"{case_id} predicted by {model}."


EVERY_CASE_LABELLED = "Every case is labelled."


def next_case(case_id: str, score: float | None, qa_flags: int | None, by: str) -> str | None:
    """The status line after *Next to annotate* (None: nothing to add beyond selecting the case)."""
    if by == "qa":
        return f"Next: {case_id} ({'?' if qa_flags is None else qa_flags} QA flags)"
    if score is not None:
        return f"Next: {case_id} (disagreement {score:.4f})"
    return None


def confirm_remove(case_id: str) -> str:
    return f"Remove case {case_id} and its labels from the workspace?"


def auto_retrain(
    after: int | None, minutes: float | None, corrections: int | None, message: str | None = None
) -> str:
    """The line beside *Retrain after*: how many corrections wait, and what retraining did last."""
    if after is None:
        return f"off ({corrections or 0} corrections since the last round)"
    text = f"{corrections or 0} of {after} since the last round; rounds of {minutes or 10:g} min"
    return f"{text}. Last: {message}" if message else text


def refined(case_id: str, result: Any) -> str:
    """``c3 refined from round 2, 3 strokes (40 steps, 18.2 s): Accept makes it the label, ...``"""
    name = field(result, "name", "refined")
    steps, seconds = field(result, "iterations", "?"), field(result, "seconds")
    took = f"{steps} steps, {seconds:.1f} s" if seconds is not None else f"{steps} steps"
    return f"{case_id} {name} ({took}): Accept makes it the label, or paint more strokes and refine again."


def accepted(case_id: str, version: Any) -> str:
    return f"{case_id}: the refined map is its label now (version {field(version, 'version', '?')})."
