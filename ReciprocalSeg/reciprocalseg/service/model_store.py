"""Model rounds of a workspace: listing, choosing the current one, zip bundles out and in.

A bundle is ``teacher.pt``, ``student.pt`` and ``meta.json`` in a zip (``GET /models/export``).
Imported model files are read with ``torch.load(weights_only=True)`` (never unpickled code), must
hold finite weights, and are identified by their sha256: importing the same bundle twice gives
the round it made the first time instead of a second copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

import reciprocalseg
from reciprocalseg.common.errors import ReciprocalSegError

from . import schemas as S
from .errors import Conflict, Invalid, NotFound, TooLarge, UnsupportedType
from .workspace import Workspace, file_suffix, now_iso

BUNDLE_FORMAT = "reciprocalseg-models"
BUNDLE_MEMBERS = ("teacher.pt", "student.pt", "meta.json")
MODEL_MEMBERS = ("teacher.pt", "student.pt")


class ModelStore:
    """The model registry of one workspace, as the API shows it."""

    def __init__(self, ws: Workspace, max_upload_bytes: int) -> None:
        self.ws = ws
        self.max_upload_bytes = max_upload_bytes

    def round_info(self, entry: dict[str, Any], current: int | None) -> S.ModelRound:
        fields = {k: entry.get(k) for k in S.ModelRound.model_fields if k in entry}
        fewer = entry.get("n_classes") is not None and int(entry["n_classes"]) < self.ws.n_classes
        return S.ModelRound(**fields, current=entry["round"] == current, fewer_classes=fewer)

    def list(self) -> S.ModelList:
        reg = self.ws.registry()
        current = reg.get("current")
        return S.ModelList(current=current, rounds=[self.round_info(r, current) for r in reg["rounds"]])

    def set_current(self, round_id: int) -> S.ModelList:
        with self.ws.lock:
            reg = self.ws.registry()
            entry = next((r for r in reg["rounds"] if r["round"] == round_id), None)
            if entry is None:
                raise NotFound(f"no model round {round_id}")
            for path in self.ws.model_paths(entry):  # rounds registered before the finite-weights check
                try:
                    check_model_file(path, f"round {round_id}: {path.name}")
                except Invalid as exc:
                    raise Conflict(f"{exc.message}; it cannot be made current") from None
            reg["current"] = round_id
            self.ws.write_registry(reg)
        return self.list()

    # ------------------------------------------------------------------ export
    def export_bundle(self, round_id: int | None) -> tuple[Path, str]:
        """Write a round's bundle to a temporary file; returns it with the download name."""
        entry = self.ws.round_entry(round_id)
        teacher, student = self.ws.model_paths(entry)
        for p in (teacher, student):
            if not p.exists():
                raise Conflict(f"model file {p.name} of round {entry['round']} is missing from the workspace")
        meta = {
            "format": BUNDLE_FORMAT,
            "format_version": 2,  # 2: n_classes counts the background too
            "reciprocalseg_version": reciprocalseg.__version__,
            "exported": now_iso(),
            **{k: v for k, v in entry.items() if k not in ("teacher", "student", "dir")},
            "teacher_sha256": sha256_file(teacher),
            "student_sha256": sha256_file(student),
        }
        tmp = self.ws.new_tmp_path(".zip")
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.write(teacher, "teacher.pt")
                zf.write(student, "student.pt")
                zf.writestr("meta.json", json.dumps(meta, indent=2))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, f"reciprocalseg-round{entry['round']}.zip"

    # ------------------------------------------------------------------ import
    def import_bundle(self, tmp: Path, filename: str, make_current: bool) -> S.ModelRound:
        """Check an uploaded bundle and add it as a new round (or return the round it already is)."""
        if file_suffix(filename) != ".zip":
            raise UnsupportedType(
                f"{filename!r}: a model bundle must be a .zip exported by GET /models/export"
            )
        if not zipfile.is_zipfile(tmp):
            raise Invalid(f"{filename}: not a zip file (corrupt or truncated?)")
        staging = self.ws.models_dir / f".incoming-{uuid.uuid4().hex}"
        try:
            meta = self._unpack(tmp, filename, staging)
            for m in MODEL_MEMBERS:
                data = check_model_file(staging / m, f"{filename}:{m}")
                classes = (data.get("meta") or {}).get("n_classes")
                if classes is not None and classes != self.ws.n_classes:
                    raise Invalid(
                        f"{filename}:{m} segments {classes} classes (background included) but this "
                        f"workspace has {self.ws.n_classes}"
                    )
            hashes = {m: sha256_file(staging / m) for m in MODEL_MEMBERS}
            same = self._round_with(hashes["teacher.pt"], hashes["student.pt"])
            if same is not None:
                if make_current:
                    self.set_current(same["round"])
                return self.round_info(same, self.ws.registry().get("current"))
            for m in MODEL_MEMBERS:
                with open(staging / m, "rb") as f:
                    os.fsync(f.fileno())
            entry = self.ws.add_round(
                lambda number: self._place(staging, number, meta, filename, hashes), make_current=make_current
            )
        finally:
            _rm(staging)
        return self.round_info(entry, self.ws.registry().get("current"))

    def _unpack(self, tmp: Path, filename: str, staging: Path) -> dict[str, Any]:
        """Check the zip's members and meta.json; copy the model files into ``staging``."""
        try:
            with zipfile.ZipFile(tmp) as zf:
                names = set(zf.namelist())
                missing = [m for m in BUNDLE_MEMBERS if m not in names]
                if missing:
                    raise Invalid(f"{filename}: not a model bundle; missing {', '.join(missing)}")
                total = sum(zf.getinfo(m).file_size for m in BUNDLE_MEMBERS)
                if total > 4 * self.max_upload_bytes + (64 << 20):
                    raise TooLarge(f"{filename}: the bundle unpacks to {total} bytes, more than allowed")
                try:
                    meta = json.loads(zf.read("meta.json"))
                except ValueError as exc:
                    raise Invalid(f"{filename}: meta.json is not valid JSON ({exc})") from None
                if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
                    raise Invalid(f"{filename}: meta.json does not describe a {BUNDLE_FORMAT} bundle")
                n_classes = bundle_n_classes(meta)
                if n_classes is not None and n_classes != self.ws.n_classes:
                    raise Invalid(
                        f"{filename}: the models segment {n_classes} classes but this workspace has "
                        f"{self.ws.n_classes}"
                    )
                staging.mkdir()
                for m in MODEL_MEMBERS:
                    with zf.open(m) as src, open(staging / m, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as exc:
            raise Invalid(f"{filename}: corrupt zip file ({exc})") from None
        return meta

    def _round_with(self, teacher_sha: str, student_sha: str) -> dict[str, Any] | None:
        for r in self.ws.registry()["rounds"]:
            if r.get("teacher_sha256") == teacher_sha and r.get("student_sha256") == student_sha:
                return r
        return None

    def _place(
        self, staging: Path, number: int, meta: dict[str, Any], filename: str, hashes: dict[str, str]
    ) -> dict[str, Any]:
        final = self.ws.models_dir / f"r{number:04d}"
        if final.exists():
            _rm(final)
        os.rename(staging, final)
        rel = final.relative_to(self.ws.root).as_posix()
        return {
            "run_id": None,
            "source": "imported",
            "created": now_iso(),
            "dir": rel,
            "teacher": f"{rel}/teacher.pt",
            "student": f"{rel}/student.pt",
            "preset": meta.get("preset"),
            "n_classes": self.ws.n_classes,
            "n_labeled": meta.get("n_labeled"),
            "n_unlabeled": meta.get("n_unlabeled"),
            "imported_from": filename,
            "teacher_sha256": hashes["teacher.pt"],
            "student_sha256": hashes["student.pt"],
        }


def bundle_n_classes(meta: dict[str, Any]) -> int | None:
    """A bundle's class count, background included (format 1 bundles counted foreground only)."""
    n = meta.get("n_classes")
    if not isinstance(n, int):
        return None
    return n if int(meta.get("format_version", 1)) >= 2 else n + 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_model_file(path: Path, source: str) -> dict[str, Any]:
    """Raise :class:`Invalid` unless ``path`` is a ReciprocalSeg model file with finite weights.

    Read with ``torch.load(weights_only=True)``: never unpickled code.
    """
    from reciprocalseg.training.checkpoint import check_finite_model

    try:
        return check_finite_model(path)
    except ReciprocalSegError as exc:
        raise Invalid(f"{source}: {str(exc).replace(str(path), 'the file')[:300]}") from None


def _rm(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
