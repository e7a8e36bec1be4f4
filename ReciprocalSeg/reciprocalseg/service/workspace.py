"""The service's workspace on disk: cases, label versions, predictions, runs and the model registry.

Layout (all paths relative to the workspace root)::

    workspace.json                    settings: format version, n_classes (background included) and
                                      whether it is fixed or follows the labels, creation time
    cases/<ID>/case.json              one small manifest per case (image geometry, label
                                      versions, predictions); replaced atomically on every change
    cases/<ID>/image.nrrd             the scan, converted to NRRD when it was added
    cases/<ID>/labels/v0001.nrrd      label versions (drafts and submitted ones), never overwritten
    cases/<ID>/predictions/r0001/     teacher.nrrd, student.nrrd, disagreement.nrrd of a model round
    cases/<ID>/predictions/live/      the same, made by the latest checkpoint of a round in training
    runs/<RUN_ID>/                    a training run directory (see docs/DESIGN.md) plus job.json
    models/registry.json              model rounds and which one is current
    models/r0001/                     teacher.pt, student.pt, meta.json of an imported round
    tmp/                              uploads in flight; emptied at start-up
    .service/                         url, token, lock and log of the running service

Consistency rules:

* Every file is written to a temporary name, fsynced and renamed over its final name, so a
  reader (or a restarted service) sees either the old or the new content, never a mix.
* A case is created by building ``cases/.incoming-<uuid>/`` completely and renaming it to
  ``cases/<ID>``; it is deleted by renaming it to ``cases/.trash-...`` first.  Leftovers of an
  interrupted create or delete are removed at start-up.
* A label file is written before the case manifest that refers to it; a crash in between leaves an
  unreferenced file that the next upload of that case overwrites.  What a successful response
  reported is always in the manifest.
* All manifest updates go through one process-wide lock; the service takes an exclusive lock on
  ``.service/lock`` so a second service cannot open the same workspace.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reciprocalseg.common.atomic import atomic_write_json
from reciprocalseg.common.display import excerpt
from reciprocalseg.common.errors import DataError
from reciprocalseg.common.file_formats import UPLOAD_SUFFIXES

from .errors import Conflict, Invalid, NotFound, UnsupportedType

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: n_classes counts the background too (1 counted foreground classes)
CASE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# fullmatch, not match: Python's "$" also matches before a final newline, so "abc\n" would pass
# (a case every route then refuses: pydantic's pattern has no such exception).
_CASE_ID_RE = re.compile(CASE_ID_PATTERN.removeprefix("^").removesuffix("$"))
CASE_ID_RULES = (
    "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
    "(no spaces or control characters)"
)
_WINDOWS_RESERVED = re.compile(r"^(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\.|$)", re.IGNORECASE)


#: Classes a workspace may have, background included: label value 255 means "not annotated", so
#: classes are 0..254.
MAX_CLASSES = 255
LABEL_KINDS = ("submitted", "draft")
#: Largest image the service accepts by default, in voxels (512 x 512 x 610; ~0.6 GB as float32);
#: ``serve --max-voxels`` changes it.
DEFAULT_MAX_VOXELS = 160_000_000


def now_iso() -> str:
    """Current UTC time as an ISO 8601 string with seconds precision."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def check_case_id(case_id: str) -> str:
    """Return ``case_id`` if it matches the safe pattern (no separators, no leading dot); else Invalid."""
    if not isinstance(case_id, str) or not _CASE_ID_RE.fullmatch(case_id):
        raise Invalid(f"invalid case ID {excerpt(case_id)}: {CASE_ID_RULES}")
    return case_id


def check_new_case_id(case_id: str) -> str:
    """:func:`check_case_id`, and safe as a folder name everywhere, for a case being created.

    Also refused: a trailing dot and names Windows reserves for devices (``CON``, ``NUL``,
    ``COM1``, ``LPT1.txt``...), which cannot be folders there, so a workspace copied to Windows
    would break. (Existing cases keep their IDs readable.)
    """
    check_case_id(case_id)
    if case_id.endswith("."):
        raise Invalid(f"invalid case ID {case_id!r}: it may not end with a dot (Windows drops it)")
    if _WINDOWS_RESERVED.match(case_id):
        raise Invalid(
            f"invalid case ID {case_id!r}: {case_id.split('.')[0]!r} is a device name reserved on "
            "Windows; choose another ID (e.g. add a prefix)"
        )
    return case_id


def file_suffix(name: str) -> str:
    """The lower-case suffix of a file name, treating ``.nii.gz`` as one suffix."""
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(lower).suffix


def check_upload_suffix(name: str, what: str = "file") -> str:
    """Return the suffix of an uploaded file name, or raise :class:`UnsupportedType`."""
    suffix = file_suffix(name or "")
    if suffix not in UPLOAD_SUFFIXES:
        raise UnsupportedType(
            f"unsupported {what} type {suffix or '(no extension)'!r} for {name!r}: "
            f"upload one of {', '.join(UPLOAD_SUFFIXES)}"
        )
    return suffix


def geometry_of(img: Any) -> dict[str, Any]:
    """JSON-friendly geometry of a SimpleITK image (LPS, x/y/z order)."""
    return {
        "size": [int(v) for v in img.GetSize()],
        "spacing": [float(v) for v in img.GetSpacing()],
        "origin": [float(v) for v in img.GetOrigin()],
        "direction": [float(v) for v in img.GetDirection()],
        "pixel_type": img.GetPixelIDTypeAsString(),
    }


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class Workspace:
    """Cases, labels, predictions, runs and models of one annotation project on disk.

    Methods that change state hold :attr:`lock` while they update manifests; slow work (reading
    and validating images) happens before the lock is taken.
    """

    def __init__(self, root: str | Path, n_classes: int | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.lock = threading.RLock()
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("cases", "runs", "models", "tmp", ".service"):
            (self.root / sub).mkdir(exist_ok=True)
        self.settings = self._load_settings(n_classes)
        self._cases: dict[str, dict[str, Any]] = {}
        self.corrupt: list[str] = []
        # Bumped whenever the submitted labels may have changed (a label stored, a case deleted):
        # what is derived from all labels (QA reference ranges) is checked again only then.
        self.label_generation = 0
        self._cleanup()
        self._load_cases()

    # ------------------------------------------------------------------ paths
    @property
    def cases_dir(self) -> Path:
        return self.root / "cases"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def service_dir(self) -> Path:
        return self.root / ".service"

    @property
    def n_classes(self) -> int:
        """Classes, background included (as ``train --n-classes``): labels hold ``0..n_classes-1``."""
        return int(self.settings["n_classes"])

    def case_dir(self, case_id: str) -> Path:
        return self.cases_dir / check_case_id(case_id)

    def new_tmp_path(self, suffix: str = "") -> Path:
        """A fresh path in the workspace's tmp folder (same file system as the data)."""
        return self.tmp_dir / f"{uuid.uuid4().hex}{suffix}"

    # ------------------------------------------------------------------ start-up
    def _load_settings(self, n_classes: int | None) -> dict[str, Any]:
        """Read (or create) ``workspace.json``; ``n_classes`` (background included) fixes the count."""
        path = self.root / "workspace.json"
        if n_classes is not None and not 2 <= n_classes <= MAX_CLASSES:
            raise DataError(
                f"n_classes counts the background too, so it must be 2..{MAX_CLASSES} (255 marks "
                f"unannotated voxels), got {n_classes}"
            )
        if path.exists():
            try:
                settings = _read_json(path)
            except (OSError, ValueError) as exc:
                raise DataError(
                    f"workspace settings {path} are unreadable ({exc}); fix or remove them"
                ) from exc
            settings = self._upgrade(settings, path)
        else:
            settings = {
                "format": FORMAT_VERSION,
                "n_classes": 2,
                "n_classes_fixed": False,
                "created": now_iso(),
            }
        if n_classes is not None:
            needed = self._classes_needed_on_disk()
            if n_classes < needed:
                raise DataError(
                    f"workspace {self.root} holds labels with values up to {needed - 1}, so it needs "
                    "at least "
                    f"{needed} classes (background included); cannot use --n-classes {n_classes}"
                )
            settings.update(n_classes=n_classes, n_classes_fixed=True)
        atomic_write_json(path, settings)
        return settings

    def _upgrade(self, settings: dict[str, Any], path: Path) -> dict[str, Any]:
        """Format 1 counted foreground classes only; from format 2 ``n_classes`` counts background too."""
        if int(settings.get("format", 1)) >= 2:
            return settings
        reg_path = self.root / "models" / "registry.json"
        if reg_path.exists():
            reg = _read_json(reg_path)
            if int(reg.get("format", 1)) < 2:  # the registry is upgraded first, once
                for r in reg["rounds"]:
                    if r.get("n_classes") is not None:
                        r["n_classes"] = int(r["n_classes"]) + 1
                reg["format"] = 2
                atomic_write_json(reg_path, reg)
        foreground = int(settings.get("n_classes", 1))
        return {
            **settings,
            "format": FORMAT_VERSION,
            "n_classes": foreground + 1,
            "n_classes_fixed": foreground != 1,  # 1 was the default, not a choice
        }

    def _classes_needed_on_disk(self) -> int:
        """Classes (background included) that the stored label versions need; 2 at least."""
        needed = 2
        for manifest in (self.root / "cases").glob("*/case.json"):
            try:
                rec = _read_json(manifest)
                for v in rec.get("labels", []):
                    needed = max(needed, int(label_max(manifest.parent, v)) + 1)
            except (OSError, ValueError, KeyError):
                continue
        return needed

    @property
    def n_classes_fixed(self) -> bool:
        return bool(self.settings.get("n_classes_fixed"))

    def set_n_classes(self, n_classes: int | None) -> None:
        """Fix the class count (background included), or let it follow the labels (``None``)."""
        with self.lock:
            needed = self.classes_needed()
            if n_classes is None:
                settings = {**self.settings, "n_classes": needed, "n_classes_fixed": False}
            else:
                if n_classes < needed:
                    raise Conflict(
                        f"the stored labels use values up to {needed - 1}, so the workspace needs at least "
                        f"{needed} classes (background included); remap those labels first"
                    )
                settings = {**self.settings, "n_classes": n_classes, "n_classes_fixed": True}
            atomic_write_json(self.root / "workspace.json", settings)
            self.settings = settings

    def update_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Store other settings (``changes`` merged into ``workspace.json``, atomically); returns them."""
        with self.lock:
            settings = {**self.settings, **changes}
            atomic_write_json(self.root / "workspace.json", settings)
            self.settings = settings
            return dict(settings)

    def grow_n_classes(self, needed: int) -> bool:
        """Raise the class count to ``needed`` unless it is fixed; True when it grew."""
        with self.lock:
            if needed <= self.n_classes or self.n_classes_fixed:
                return False
            settings = {**self.settings, "n_classes": needed}
            atomic_write_json(self.root / "workspace.json", settings)
            self.settings = settings
            log.info("class count grew to %d (a label with a new class arrived)", needed)
            return True

    def classes_needed(self) -> int:
        """Classes (background included) the stored label versions need; 2 at least."""
        with self.lock:
            cases = list(self._cases.values())
        needed = 2
        for rec in cases:
            for v in rec["labels"]:
                needed = max(needed, label_max(self.case_dir(rec["id"]), v) + 1)
        return needed

    def _cleanup(self) -> None:
        """Remove leftovers of interrupted operations (uploads, case creation or deletion)."""
        for p in self.tmp_dir.iterdir():
            _remove(p)
        for p in self.cases_dir.glob(".*"):
            if p.name.startswith((".incoming-", ".trash-")):
                _remove(p)
        for p in self.models_dir.glob(".incoming-*"):
            _remove(p)

    def _load_cases(self) -> None:
        for d in sorted(self.cases_dir.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            if not _CASE_ID_RE.fullmatch(d.name):
                # Stored before the ID rules were enforced (e.g. "abc\n"): no route could reach it.
                log.error(
                    "case folder %s has a name that is not a valid case ID (%s); it is ignored: rename "
                    'the folder and the "id" in its case.json to a valid ID, then restart the service',
                    excerpt(d.name),
                    CASE_ID_RULES,
                )
                self.corrupt.append(d.name)
                continue
            try:
                rec = _read_json(d / "case.json")
                if rec.get("id") != d.name:
                    raise ValueError(f"id {rec.get('id')!r} does not match its folder")
            except (OSError, ValueError) as exc:
                log.error("case %s has an unreadable manifest (%s); it is ignored", d.name, exc)
                self.corrupt.append(d.name)
                continue
            self._cases[d.name] = rec

    # ------------------------------------------------------------------ cases
    def case_ids(self) -> list[str]:
        with self.lock:
            return sorted(self._cases)

    def has_case(self, case_id: str) -> bool:
        with self.lock:
            return case_id in self._cases

    def _same_but_case(self, case_id: str) -> str | None:
        """An existing ID that differs from ``case_id`` only in upper/lower case, or None."""
        folded = case_id.casefold()
        return next((k for k in self._cases if k.casefold() == folded and k != case_id), None)

    def refuse_taken_id(self, case_id: str) -> None:
        """:class:`Conflict` when ``case_id`` is taken, also by an ID that differs only in case:
        Windows and macOS keep ``CaseA`` and ``casea`` in one folder, so a workspace holding both
        could not be copied there."""
        with self.lock:
            if case_id in self._cases or (self.cases_dir / case_id).exists():
                raise Conflict(f"case {case_id!r} already exists; delete it first or choose another ID")
            other = self._same_but_case(case_id)
        if other is not None:
            raise Conflict(
                f"case {case_id!r} would clash with the existing case {other!r}: case IDs are unique "
                "regardless of upper/lower case (Windows and macOS see one folder); choose another ID"
            )

    def get_case(self, case_id: str) -> dict[str, Any]:
        """A copy of the case manifest; :class:`NotFound` if there is no such case."""
        check_case_id(case_id)
        with self.lock:
            rec = self._cases.get(case_id)
            if rec is None:
                other = self._same_but_case(case_id)
                hint = f" (IDs are case-sensitive: did you mean {other!r}?)" if other else ""
                raise NotFound(f"no case {case_id!r} in this workspace{hint}")
            return json.loads(json.dumps(rec))

    def all_cases(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(json.dumps(self._cases[k])) for k in sorted(self._cases)]

    def image_path(self, case_id: str) -> Path:
        rec = self.get_case(case_id)
        return self.case_dir(case_id) / rec["image"]

    def _write_case(self, rec: dict[str, Any]) -> None:
        atomic_write_json(self.case_dir(rec["id"]) / "case.json", rec)
        self._cases[rec["id"]] = rec

    @contextmanager
    def edit_case(self, case_id: str) -> Iterator[dict[str, Any]]:
        """Lock, yield a copy of the manifest for editing, and commit it atomically on success."""
        with self.lock:
            rec = self.get_case(case_id)
            yield rec
            self._write_case(rec)

    def add_case(self, image: Any, case_id: str, source: str, metadata: dict[str, Any] | None = None) -> dict:
        """Add a case from a SimpleITK image (already read and checked by the caller).

        The case folder is built under a temporary name and renamed into place, so a crash leaves
        either no case or a complete one.
        """
        from reciprocalseg.data.io import write_image

        check_new_case_id(case_id)
        check_scan(image, source)
        check_not_constant(image, source)
        with self.lock:
            self.refuse_taken_id(case_id)
            staging = self.cases_dir / f".incoming-{uuid.uuid4().hex}"
            staging.mkdir()
            try:
                write_image(image, staging / "image.nrrd")
                rec = {
                    "id": case_id,
                    "image": "image.nrrd",
                    "source": source,
                    "added": now_iso(),
                    "geometry": geometry_of(image),
                    "metadata": metadata or {},
                    "labels": [],
                    "predictions": {},
                }
                atomic_write_json(staging / "case.json", rec)
                _fsync_dir(staging)
                os.rename(staging, self.cases_dir / case_id)
                _fsync_dir(self.cases_dir)
            except BaseException:
                _remove(staging)
                raise
            self._cases[case_id] = rec
            return json.loads(json.dumps(rec))

    def delete_case(self, case_id: str) -> None:
        """Remove a case with all its labels and predictions."""
        check_case_id(case_id)
        with self.lock:
            if case_id not in self._cases:
                raise NotFound(f"no case {case_id!r} in this workspace")
            trash = self.cases_dir / f".trash-{case_id}-{uuid.uuid4().hex[:8]}"
            os.rename(self.cases_dir / case_id, trash)
            _fsync_dir(self.cases_dir)
            del self._cases[case_id]
            self.label_generation += 1
        _remove(trash)

    # ------------------------------------------------------------------ labels
    def add_label(
        self,
        case_id: str,
        label: Any,
        kind: str = "submitted",
        author: str | None = None,
        source: str | None = None,
        note: str | None = None,
        max_value: int | None = None,
    ) -> dict[str, Any]:
        """Store a new label version: a checked SimpleITK image on the case grid, values 0..max_value
        and 255 (unannotated, a partial label; its annotated fraction is recorded)."""
        import SimpleITK as sitk

        from reciprocalseg.data.annotation import annotated_fraction
        from reciprocalseg.data.io import write_image

        fraction = annotated_fraction(sitk.GetArrayViewFromImage(label))

        if kind not in LABEL_KINDS:
            raise Invalid(f"label kind must be one of {', '.join(LABEL_KINDS)}, got {kind!r}")
        with self.lock:
            rec = self.get_case(case_id)
            version = max((v["version"] for v in rec["labels"]), default=0) + 1
            rel = f"labels/v{version:04d}.nrrd"
            path = self.case_dir(case_id) / rel
            path.parent.mkdir(exist_ok=True)
            write_image(label, path)
            entry = {
                "version": version,
                "kind": kind,
                "author": author,
                "time": now_iso(),
                "file": rel,
                "source": source,
                "note": note,
                "max_value": max_value,
                "annotated_fraction": fraction,
            }
            rec["labels"].append(entry)
            self._write_case(rec)
            self.label_generation += 1
            return dict(entry)

    @staticmethod
    def current_label(rec: dict[str, Any]) -> dict[str, Any] | None:
        """The latest submitted label version of a case manifest, or ``None``."""
        submitted = [v for v in rec["labels"] if v["kind"] == "submitted"]
        return submitted[-1] if submitted else None

    def annotation(self, rec: dict[str, Any]) -> tuple[str, float]:
        """("full" | "partial" | "none", annotated fraction) of a case's current label.

        The fraction is recorded when a label is stored; for versions stored before that it is
        read from the file once and kept in memory."""
        entry = self.current_label(rec)
        if entry is None:
            return "none", 0.0
        fraction = entry.get("annotated_fraction")
        if fraction is None:
            import SimpleITK as sitk

            from reciprocalseg.data.annotation import annotated_fraction

            path = self.case_dir(rec["id"]) / entry["file"]
            fraction = entry["annotated_fraction"] = annotated_fraction(
                sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
            )
        fraction = float(fraction)
        return ("full" if fraction >= 1.0 else "partial" if fraction > 0 else "none"), fraction

    def label_entry(self, case_id: str, version: int | None = None) -> tuple[dict[str, Any], Path]:
        """A label version (the current submitted one by default) and its file path."""
        rec = self.get_case(case_id)
        if version is None:
            entry = self.current_label(rec)
            if entry is None:
                raise NotFound(f"case {case_id!r} has no submitted label yet")
        else:
            matches = [v for v in rec["labels"] if v["version"] == version]
            if not matches:
                raise NotFound(f"case {case_id!r} has no label version {version}")
            entry = matches[0]
        return entry, self.case_dir(case_id) / entry["file"]

    # ------------------------------------------------------------------ predictions
    def store_prediction(
        self,
        case_id: str,
        round_id: int,
        teacher: Any,
        student: Any,
        disagreement: Any,
        score: float | None,
        flags: dict[str, Any] | None = None,
        live: bool = False,
    ) -> dict[str, Any]:
        """Write a round's prediction files for a case and record them with the score (and ``flags``).

        ``live``: made by the checkpoint of a round still training; kept in the case's one live
        slot (``predictions/live/``, manifest key ``live_prediction``), replaced by the next live
        prediction, so the rounds' own predictions (scores, next-case) never mix with it.
        """
        from reciprocalseg.data.io import write_image

        folder_name = "live" if live else f"r{round_id:04d}"
        with self.lock:
            self.get_case(case_id)
            folder = self.case_dir(case_id) / "predictions" / folder_name
            folder.mkdir(parents=True, exist_ok=True)
            files = {}
            for name, img in (("teacher", teacher), ("student", student), ("disagreement", disagreement)):
                if img is None:  # a teacher-only round: no student, nothing to disagree with
                    (folder / f"{name}.nrrd").unlink(missing_ok=True)
                    continue
                write_image(img, folder / f"{name}.nrrd")
                files[name] = f"predictions/{folder_name}/{name}.nrrd"
            entry = {
                "round": round_id,
                "score": None if score is None else float(score),
                "time": now_iso(),
                "files": files,
                **(flags or {}),
            }
            with self.edit_case(case_id) as rec:
                if live:
                    rec["live_prediction"] = entry
                else:
                    rec["predictions"][str(round_id)] = entry
            return dict(entry)

    # ------------------------------------------------------------------ model registry
    @property
    def registry_path(self) -> Path:
        return self.models_dir / "registry.json"

    def registry(self) -> dict[str, Any]:
        """``{"current": round or None, "rounds": [...]}``; an absent file means no rounds."""
        with self.lock:
            if not self.registry_path.exists():
                return {"format": 2, "current": None, "rounds": []}
            return _read_json(self.registry_path)

    def write_registry(self, reg: dict[str, Any]) -> None:
        reg["format"] = 2  # round n_classes count the background too
        with self.lock:
            atomic_write_json(self.registry_path, reg)

    def round_entry(self, round_id: int | None = None) -> dict[str, Any]:
        """The registry entry of a round (the current one by default)."""
        reg = self.registry()
        if round_id is None:
            round_id = reg.get("current")
            if round_id is None:
                raise Conflict("no model yet: train a round (POST /training) or import models first")
        for r in reg["rounds"]:
            if r["round"] == round_id:
                return r
        raise NotFound(f"no model round {round_id}")

    def model_paths(self, entry: dict[str, Any]) -> tuple[Path, Path | None]:
        """A round's teacher and student files; the student is None for a teacher-only round."""
        student = entry.get("student")
        return self.root / entry["teacher"], (self.root / student if student else None)

    def add_round(self, make_entry: Callable[[int], dict[str, Any]], make_current: bool = True) -> dict:
        """Append a round built by ``make_entry(round_number)`` and make it current."""
        with self.lock:
            reg = self.registry()
            number = max((r["round"] for r in reg["rounds"]), default=0) + 1
            entry = make_entry(number)
            entry["round"] = number
            reg["rounds"].append(entry)
            if make_current:
                reg["current"] = number
            self.write_registry(reg)
            return entry

    # ------------------------------------------------------------------ runs
    def run_ids(self) -> list[str]:
        return sorted(p.name for p in self.runs_dir.iterdir() if (p / "job.json").exists())

    def read_job(self, run_id: str) -> dict[str, Any]:
        return _read_json(self.runs_dir / run_id / "job.json")

    def write_job(self, job: dict[str, Any]) -> None:
        with self.lock:
            atomic_write_json(self.runs_dir / job["run_id"] / "job.json", job)

    # ------------------------------------------------------------------ snapshot
    def counts(self) -> dict[str, int]:
        with self.lock:
            cases = list(self._cases.values())
        labelled = sum(1 for c in cases if self.current_label(c) is not None)
        predicted = sum(1 for c in cases if c["predictions"])
        return {
            "cases": len(cases),
            "labelled": labelled,
            "unlabelled": len(cases) - labelled,
            "predicted": predicted,
            "rounds": len(self.registry()["rounds"]),
            "corrupt": len(self.corrupt),
        }


def label_max(case_dir: Path, entry: dict[str, Any]) -> int:
    """The largest class value of a label version, 255 (unannotated) left out (recorded when
    stored; read from the file for older ones)."""
    if entry.get("max_value") is not None:
        return int(entry["max_value"])
    import SimpleITK as sitk

    from reciprocalseg.data.validation import largest_class

    return largest_class(sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / entry["file"]))))


def check_scan(image: Any, source: str) -> None:
    """Raise :class:`Invalid` unless ``image`` is a 3D single-component image."""
    if image.GetDimension() != 3:
        raise Invalid(f"{source}: expected a 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise Invalid(
            f"{source}: expected one value per voxel, "
            f"got {image.GetNumberOfComponentsPerPixel()} (colour/vector)"
        )
    if min(image.GetSize()) < 2:
        raise Invalid(f"{source}: image size {image.GetSize()} is degenerate (a side shorter than 2 voxels)")


def check_not_constant(image: Any, source: str) -> None:
    """Raise :class:`Invalid` for a scan with one value in every voxel (a blank or failed export).

    Such a scan has nothing to segment, and its intensity normalisation divides by a zero spread:
    kept, it would make every later round fail.
    """
    import SimpleITK as sitk

    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    if stats.GetMinimum() == stats.GetMaximum():
        raise Invalid(
            f"{source}: every voxel of the scan has the same value ({stats.GetMinimum():g}): a blank image "
            "or a failed export, with nothing to segment; check the file (export it again) and upload it"
        )


def _remove(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError as exc:  # pragma: no cover - best effort clean-up
        log.warning("could not remove %s: %s", p, exc)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` seconds pass; return its last value."""
    end = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)
