"""Each case's fingerprint record, kept beside the case, and the workspace's plan made from them.

``cases/<ID>/fingerprint.json`` holds the case's :class:`CaseFingerprint` (spacing, size,
intensity summary; classes and the intensities inside the label for a labelled case), written
atomically when the case is added and when a submitted label arrives, from the images already
in memory then. Planning therefore reads a small file per case and no image; a deleted case
takes its record with its folder.

A record names what it was computed from (the case's ``added`` time and the label version), so
a record that is missing or stale (a service stopped between storing a label and its record, a
workspace from before records existed) is computed again from the stored files when a plan
needs it, and kept.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from reciprocalseg.common.atomic import atomic_write_json
from reciprocalseg.common.errors import DataError

from .errors import Invalid, NotFound
from .workspace import Workspace

log = logging.getLogger(__name__)

RECORD_FILE = "fingerprint.json"


class CaseFingerprints:
    """The fingerprint records of a workspace's cases."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def record(self, case_id: str, image: Any, label: Any = None, label_version: int | None = None) -> None:
        """Compute and store a case's record from its scan (and its current label map, a z, y, x
        array) in memory. A failure is logged, not raised: the record is then computed when a
        plan needs it."""
        from reciprocalseg.planning.fingerprint import case_fingerprint

        try:
            added = self.ws.get_case(case_id)["added"]
            self._store(case_id, added, case_fingerprint(image, label, label_version).to_dict())
        except (DataError, OSError, ValueError, NotFound) as exc:
            log.warning("case %s: fingerprint not stored (%s); computed when a plan needs it", case_id, exc)

    def _store(self, case_id: str, added: str, record: dict[str, Any]) -> None:
        """Write a record unless the case was deleted (or replaced) since it was computed."""
        with self.ws.lock:
            try:
                current = self.ws.get_case(case_id)
            except NotFound:
                return
            if current["added"] != added:
                return
            atomic_write_json(self.ws.case_dir(case_id) / RECORD_FILE, {"case_added": added, **record})

    def load(self, rec: dict[str, Any]) -> Any:
        """The up-to-date record of a case manifest ``rec``: the stored one, or computed now."""
        from reciprocalseg.planning.fingerprint import CaseFingerprint

        current = self.ws.current_label(rec)
        version = current["version"] if current else None
        path = self.ws.case_dir(rec["id"]) / RECORD_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            record = CaseFingerprint.from_dict(data)
            stored_version = record.label.version if record.label else None
            if data.get("case_added") == rec["added"] and stored_version == version:
                return record
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, DataError) as exc:
            log.warning("case %s: unreadable fingerprint record (%s); computing it again", rec["id"], exc)
        return self._compute(rec, current)

    def _compute(self, rec: dict[str, Any], current: dict[str, Any] | None) -> Any:
        import SimpleITK as sitk

        from reciprocalseg.data.io import read_image
        from reciprocalseg.planning.fingerprint import case_fingerprint

        case_dir = self.ws.case_dir(rec["id"])
        try:
            image = read_image(case_dir / rec["image"])
            label = sitk.GetArrayFromImage(read_image(case_dir / current["file"])) if current else None
            record = case_fingerprint(image, label, current["version"] if current else None)
        except (DataError, OSError) as exc:
            raise Invalid(f"case {rec['id']!r}: cannot compute its fingerprint ({exc})") from None
        try:
            self._store(rec["id"], rec["added"], record.to_dict())
        except OSError as exc:  # the plan can still be made; the record is computed again next time
            log.warning("case %s: fingerprint not stored (%s)", rec["id"], exc)
        return record

    def cohort(self) -> Any:
        """The workspace's fingerprint from the records of its cases (labelled = a submitted label)."""
        from reciprocalseg.planning.fingerprint import combine

        labeled, unlabeled = [], []
        for rec in self.ws.all_cases():
            try:
                record = self.load(rec)
            except Invalid:
                if not self.ws.has_case(rec["id"]):
                    continue  # deleted while the plan was made
                raise
            (labeled if self.ws.current_label(rec) is not None else unlabeled).append(record)
        if not labeled:
            raise NotFound(
                "no labelled case yet: the plan needs the classes of at least one labelled case; "
                "submit a label (PUT /cases/{id}/label) first"
            )
        return combine(labeled, unlabeled)


def workspace_plan(
    ws: Workspace,
    fingerprints: CaseFingerprints,
    device: str,
    warm_start_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """The ``auto`` plan of the next round on ``device``: from the cases' records, finished once
    (``planning/final_plan.py``: the network kept from the run a warm start continues, the
    workspace's class count and ``overrides`` recorded); the training child trains it as written."""
    from reciprocalseg.common.device import resolve_device
    from reciprocalseg.common.errors import ReciprocalSegError
    from reciprocalseg.planning.final_plan import finish_plan
    from reciprocalseg.planning.planner import plan_from_fingerprint

    fp = fingerprints.cohort()
    try:
        plan = plan_from_fingerprint(fp, resolve_device(device))
        finish_plan(plan, {"n_classes": ws.n_classes, **(overrides or {})}, warm_start=warm_start_dir)
    except ReciprocalSegError as exc:
        raise Invalid(f"cannot plan a round from the cases: {exc}") from None
    return plan
