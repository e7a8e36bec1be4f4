"""A label or scribbles sent to the service: what the panel asks before and says after.

``ReciprocalSegLoop.submit`` runs as a task: the GUI thread copies what was painted, the worker
maps it to the case's stored grid, writes and uploads it. A full label with no painted voxel
would make every voxel background: the panel's ``confirm`` is asked first (the console gets the
warning in the result and in the log).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EMPTY_LABEL_QUESTION = (
    "Nothing is painted in the label of {case}. Submit it as all background (every voxel class 0)?"
)
EMPTY_LABEL_WARNING = "The label of {case} has no painted voxel: it was submitted as all background."


def task_name(case_id: str, scribbles: bool) -> str:
    return f"Submitting the {'scribbles' if scribbles else 'label'} of {case_id}"


@dataclass
class SubmitResult:
    """case_id; scribbles: a partial label (painted voxels only); version: the service's new label
    version (None when declined); summary: what the scribbles annotate; warning: said with the
    result (empty label); declined: the user said no to ``EMPTY_LABEL_QUESTION``."""

    case_id: str
    scribbles: bool
    version: Any = None
    summary: Any = None
    warning: str | None = None
    declined: bool = False

    def done_message(self) -> str:
        if self.declined:
            return f"The label of {self.case_id} was not submitted."
        if self.scribbles:
            text = f"Scribbles of {self.case_id} submitted: {self.summary.text()}."
        else:
            text = f"Label of {self.case_id} submitted."
        return text + (f" {self.warning}" if self.warning else "")
