"""A label or scribbles on their way to the service: made on the main thread, sent by a task.

``ReciprocalSegLoop.prepare_submission`` exports what the user painted (main thread) into a
``Submission``; ``upload_submission`` sends it (any thread). The panel asks ``confirm`` first when
it is set (a full label with nothing painted would make every voxel background) and shows
``done_message`` after.
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
    path: Path
    summary: Any = None
    confirm: str | None = None
    warning: str | None = None

    @property
    def what(self) -> str:
        return "scribbles" if self.scribbles else "label"

    @property
    def task_name(self) -> str:
        return f"Submitting the {self.what} of {self.case_id}"

    def done_message(self) -> str:
        if self.scribbles:
            text = f"Scribbles of {self.case_id} submitted: {self.summary.text()}."
        else:
            text = f"Label of {self.case_id} submitted."
        return text + (f" {self.warning}" if self.warning else "")
