"""Per-structure QA of the service's predictions, against the workspace's labelled cases.

The measurements and flags are :mod:`reciprocalseg.evaluation.qa`'s (volume in mL, connected pieces,
teacher/student disagreement per class; flags outside the labelled cases' ranges). Here:

* the reference ranges come from the current submitted label of every labelled case, computed
  once per *label state* (which cases are labelled with which version, and the class count) and
  kept until a label is added, replaced or deleted;
* a prediction's rows are measured once, when it is made, and stored in its manifest entry with
  the label state they were flagged against; read back later, they are flagged anew when the
  labels changed since (the measured values do not depend on the labels, the flags do).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reciprocalseg.common.errors import DataError

from .errors import Conflict
from .workspace import Workspace

if TYPE_CHECKING:  # numpy and scipy are imported on the first QA, not when the service starts
    from reciprocalseg.evaluation.qa import ReferenceRanges, StructureQA

NETWORKS = ("teacher", "student")


class StructureChecks:
    """Reference ranges of one workspace (cached per label state) and the QA rows of predictions."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._lock = threading.Lock()
        # Per class count: (label generation checked, label state, its ranges).
        self._cache: dict[int, tuple[int, str, ReferenceRanges]] = {}
        self.computed = 0  # how many times the ranges were computed from the label files

    def label_state(self, n_classes: int) -> tuple[str, list[Path]]:
        """An ID of the current labels (cases, versions, class count) and their label files."""
        labelled = []
        for rec in self.ws.all_cases():
            cur = self.ws.current_label(rec)
            if cur is not None:
                labelled.append((rec["id"], cur["version"], cur["file"]))
        state = json.dumps([n_classes, labelled])
        paths = [self.ws.case_dir(case_id) / file for case_id, _, file in labelled]
        return hashlib.sha256(state.encode()).hexdigest()[:16], paths

    def ranges(self, n_classes: int) -> tuple[str, ReferenceRanges]:
        """The reference ranges of the labelled cases now, and the label state they belong to."""
        with self._lock:
            generation = self.ws.label_generation
            cached = self._cache.get(n_classes)
            if cached is not None and cached[0] == generation:
                return cached[1], cached[2]  # nothing stored since: no need to look at every case
            state, paths = self.label_state(n_classes)
            from reciprocalseg.evaluation.qa import reference_ranges_from_files

            if cached is not None and cached[1] == state:  # e.g. only a draft was stored
                ranges = cached[2]
            else:
                try:
                    ranges = reference_ranges_from_files(paths, n_classes)
                except (OSError, DataError) as exc:  # a case deleted or relabelled while reading
                    raise Conflict(
                        f"the labels changed while their QA ranges were computed ({exc}); try again"
                    ) from None
                self.computed += 1
            self._cache[n_classes] = (generation, state, ranges)
            return state, ranges

    def measure(self, case_id: str, teacher: Any, student: Any | None, n_classes: int) -> dict[str, Any]:
        """The QA fields to store with a new prediction (SimpleITK label maps of one scan; no
        ``student`` for a teacher-only round)."""
        import SimpleITK as sitk

        from reciprocalseg.evaluation.qa import structure_qa

        state, ranges = self.ranges(n_classes)
        images = {"teacher": teacher, **({"student": student} if student is not None else {})}
        arrays = {n: sitk.GetArrayViewFromImage(img) for n, img in images.items()}
        rows = structure_qa(case_id, arrays, teacher.GetSpacing(), n_classes, ranges)
        return {"qa": [r.to_dict() for r in rows], "qa_state": state, "qa_n_classes": n_classes}

    def rows(self, case_id: str, entry: dict[str, Any]) -> tuple[list[StructureQA], ReferenceRanges]:
        """A stored prediction's rows, flagged against the current labels.

        Predictions stored before QA existed are measured from their files (not stored back: a
        read does not write the manifest).
        """
        from reciprocalseg.evaluation.qa import StructureQA, reflag

        n_classes = int(entry.get("qa_n_classes") or self.ws.n_classes)
        state, ranges = self.ranges(n_classes)
        if entry.get("qa") is None:
            return self._from_files(case_id, entry, n_classes, ranges), ranges
        rows = [
            StructureQA(**{**r, "flags": list(r["flags"]), "notes": list(r["notes"])}) for r in entry["qa"]
        ]
        if entry.get("qa_state") != state:
            reflag(rows, ranges)
        return rows, ranges

    def _from_files(
        self, case_id: str, entry: dict[str, Any], n_classes: int, ranges: ReferenceRanges
    ) -> list[StructureQA]:
        import SimpleITK as sitk

        from reciprocalseg.data.io import read_image
        from reciprocalseg.evaluation.qa import structure_qa

        images = {n: read_image(self.ws.case_dir(case_id) / entry["files"][n]) for n in NETWORKS}
        arrays = {n: sitk.GetArrayViewFromImage(img) for n, img in images.items()}
        return structure_qa(case_id, arrays, images["teacher"].GetSpacing(), n_classes, ranges)


def n_flags(rows: list[StructureQA]) -> int:
    """Flags over every structure of both networks: the number the QA ranking sorts by."""
    return sum(len(r.flags) for r in rows)
