"""A label or scribbles on their way to the service: made on the main thread, sent by a task.

``ReciprocalSegLoop.prepare_submission`` exports what the user painted (main thread) into a
``Submission``; ``upload_submission`` sends it (any thread). The panel asks ``confirm`` first when
it is set (a full label with nothing painted would make every voxel background), then
``finish_submission`` shows the service's answer in the scene and gives ``done_message``.

``action``: ``upload`` stores the label or scribbles; ``refine`` sends the scribbles to refine a
copy of the round's student (they are stored too) and shows the refined map; ``accept`` (no file)
makes the case's refined map its full label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Submission:
    """case_id; scribbles: a partial label (painted voxels only) instead of a full one; path: the
    label map file to upload; summary: what the scribbles annotate; confirm: a question to ask
    before uploading (None: none); warning: said with the result (console and status bar)."""

    case_id: str
    scribbles: bool
    path: Path | None
    summary: Any = None
    confirm: str | None = None
    warning: str | None = None
    action: str = "upload"  # upload, refine or accept
    result: Any = None  # the service's answer, once finished (refine: its RefinedPrediction)

    @property
    def what(self) -> str:
        return {"refine": "refine", "accept": "refined map"}.get(self.action) or (
            "scribbles" if self.scribbles else "label"
        )

    @property
    def task_name(self) -> str:
        if self.action == "refine":
            return f"Refining {self.case_id} from its scribbles"
        if self.action == "accept":
            return f"Accepting the refined {self.case_id}"
        return f"Submitting the {self.what} of {self.case_id}"

    def done_message(self) -> str:
        if self.action == "refine":
            return refined_message(self.case_id, self.result)
        if self.action == "accept":
            version = getattr(self.result, "version", "?")
            return f"{self.case_id}: the refined map is its label now (version {version})."
        if self.scribbles:
            text = f"Scribbles of {self.case_id} submitted: {self.summary.text()}."
        else:
            text = f"Label of {self.case_id} submitted."
        return text + (f" {self.warning}" if self.warning else "")


def refined_message(case_id: str, result: Any) -> str:
    """``phantom_003 refined from round 2, 3 strokes (40 steps, 18.2 s): Accept makes it the label, ...``"""
    name = getattr(result, "name", None) or "refined"
    steps, seconds = getattr(result, "iterations", "?"), getattr(result, "seconds", None)
    took = f"{steps} steps, {seconds:.1f} s" if seconds is not None else f"{steps} steps"
    return f"{case_id} {name} ({took}): Accept makes it the label, or paint more strokes and refine again."
