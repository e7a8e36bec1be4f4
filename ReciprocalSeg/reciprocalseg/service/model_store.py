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
import zlib
from pathlib import Path
from typing import Any

import reciprocalseg
from reciprocalseg.common.display import excerpt
from reciprocalseg.common.errors import ReciprocalSegError

from . import schemas as S
from .errors import Conflict, Invalid, NotFound, TooLarge, UnsupportedType
from .workspace import Workspace, file_suffix, now_iso

BUNDLE_FORMAT = "reciprocalseg-models"
BUNDLE_VERSIONS = (1, 2)  # 2: n_classes counts the background too
MODEL_MEMBERS = ("teacher.pt", "student.pt")
META_LIMIT = 64 * 1024  # meta.json is a few hundred bytes
#: A model file holds its weights plus a little: the torch zip's records and the description.
MODEL_FILE_SLACK = 1.05
MODEL_FILE_EXTRA = 1 << 20
#: The network of a bundle that does not name one (exported before bundles did): the widest a
#: service round trains (the paper's width, 16 filters, halving every axis; one input channel, as
#: every round had before several channels per case).
UNNAMED_NETWORK = {
    "in_channels": 1,
    "n_filters": 16,
    "normalization": "batchnorm",
    "dropout": True,
    "strides": None,
}


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
            for path in filter(None, self.ws.model_paths(entry)):  # rounds from before the checks
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
        for p in filter(None, (teacher, student)):
            if not p.exists():
                raise Conflict(f"model file {p.name} of round {entry['round']} is missing from the workspace")
        meta = {
            "format": BUNDLE_FORMAT,
            "format_version": 2,  # 2: n_classes counts the background too
            "reciprocalseg_version": reciprocalseg.__version__,
            "exported": now_iso(),
            **{k: v for k, v in entry.items() if k not in ("teacher", "student", "dir")},
            "teacher_sha256": sha256_file(teacher),
            "student_sha256": sha256_file(student) if student else None,
            "teacher_only": student is None,  # a supervised-only round: no student.pt in the bundle
            # What the importer builds and bounds the unpacked size by (before it unpacks anything).
            "network": _network_of(teacher, entry["round"]),
        }
        tmp = self.ws.new_tmp_path(".zip")
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.write(teacher, "teacher.pt")
                if student is not None:
                    zf.write(student, "student.pt")
                zf.writestr("meta.json", json.dumps(meta, indent=2))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, f"reciprocalseg-round{entry['round']}.zip"

    # ------------------------------------------------------------------ import
    def import_bundle(self, tmp: Path, filename: str, make_current: bool) -> S.ModelRound:
        """Check an uploaded bundle and add it as a new round (or return the round it already is).

        Nothing is stored until both networks were built from their own description, loaded
        exactly, found finite and run once on a tiny input (``inference.model_check``); the
        unpacked size is bounded by what the bundle's network needs before anything is unpacked.
        """
        if file_suffix(filename) != ".zip":
            raise UnsupportedType(
                f"{filename!r}: a model bundle must be a .zip exported by GET /models/export"
            )
        if not zipfile.is_zipfile(tmp):
            raise Invalid(f"{filename}: not a zip file (corrupt or truncated?)")
        staging = self.ws.models_dir / f".incoming-{uuid.uuid4().hex}"
        try:
            meta, network = self._unpack(tmp, filename, staging)
            members = model_members(meta)
            for m in members:
                self._check_member(staging / m, f"{filename}:{m}", network)
            hashes = {m: sha256_file(staging / m) for m in members}
            same = self._round_with(hashes["teacher.pt"], hashes.get("student.pt"))
            if same is not None:
                if make_current:
                    self.set_current(same["round"])
                return self.round_info(same, self.ws.registry().get("current"))
            for m in members:
                with open(staging / m, "rb") as f:
                    os.fsync(f.fileno())
            entry = self.ws.add_round(
                lambda number: self._place(staging, number, meta, filename, hashes), make_current=make_current
            )
        finally:
            _rm(staging)
        return self.round_info(entry, self.ws.registry().get("current"))

    def _check_member(self, path: Path, source: str, network: dict[str, Any] | None) -> None:
        """A model file of the bundle: usable (built, loaded, finite, one forward pass), of the
        workspace's class count and the network meta.json names."""
        from reciprocalseg.inference.model_check import checked_network, network_description
        from reciprocalseg.training.checkpoint import load_model_file

        try:
            data = load_model_file(path)
            checked_network(data, source)
            own = network_description(data["meta"], source)
        except ReciprocalSegError as exc:
            raise Invalid(str(exc).replace(str(path), source)[:500]) from None
        if own["n_classes"] != self.ws.n_classes:
            raise Invalid(
                f"{source} segments {own['n_classes']} classes (background included) but this "
                f"workspace has {self.ws.n_classes}"
            )
        if network is not None and own != network:
            raise Invalid(f"{source}: its network {own} is not the one meta.json names ({network})")

    def _unpack(
        self, tmp: Path, filename: str, staging: Path
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Check the zip's members and meta.json; copy the model files into ``staging``, each
        bounded by what the bundle's network needs (checked before anything is unpacked, and
        again while it is). Returns meta.json and the network it names (None: not named)."""
        try:
            with zipfile.ZipFile(tmp) as zf:
                names = set(zf.namelist())
                missing = [m for m in ("teacher.pt", "meta.json") if m not in names]
                meta = self._bundle_meta(zf, filename) if not missing else {}
                missing += [m for m in model_members(meta) if m not in names and m not in missing]
                if missing:
                    raise Invalid(f"{filename}: not a model bundle; missing {', '.join(missing)}")
                network = declared_network(meta, self.ws.n_classes, filename)
                limit = model_file_limit(network or {**UNNAMED_NETWORK, "n_classes": self.ws.n_classes})
                _refuse_large_total(zf, filename, len(model_members(meta)) * limit + META_LIMIT, network)
                for m in model_members(meta):
                    if zf.getinfo(m).file_size > limit:
                        raise TooLarge(_too_large(filename, m, zf.getinfo(m).file_size, limit, network))
                staging.mkdir()
                for m in model_members(meta):
                    with zf.open(m) as src, open(staging / m, "wb") as dst:
                        if not _bounded_copy(src, dst, limit):
                            raise TooLarge(_too_large(filename, m, None, limit, network))
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # zlib/EOF: a damaged compressed member
            raise Invalid(f"{filename}: corrupt zip file ({str(exc)[:200] or type(exc).__name__})") from None
        return meta, network

    def _bundle_meta(self, zf: zipfile.ZipFile, filename: str) -> dict[str, Any]:
        """meta.json, read only when small, and checked: format, version, class count."""
        if zf.getinfo("meta.json").file_size > META_LIMIT:
            raise Invalid(f"{filename}: meta.json is larger than {META_LIMIT // 1024} KiB; not a bundle's")
        with zf.open("meta.json") as f:
            raw = f.read(META_LIMIT + 1)
        try:
            meta = json.loads(raw[:META_LIMIT])
        except ValueError as exc:
            raise Invalid(f"{filename}: meta.json is not valid JSON ({str(exc)[:200]})") from None
        if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
            raise Invalid(f"{filename}: meta.json does not describe a {BUNDLE_FORMAT} bundle")
        version = meta.get("format_version", 1)
        if isinstance(version, bool) or version not in BUNDLE_VERSIONS:
            raise Invalid(
                f"{filename}: meta.json's format_version {excerpt(version)} is not one this service reads "
                f"({', '.join(map(str, BUNDLE_VERSIONS))}); export the bundle again with GET /models/export, "
                "or update ReciprocalSeg"
            )
        n_classes = bundle_n_classes(meta)
        if n_classes is not None and n_classes != self.ws.n_classes:
            raise Invalid(
                f"{filename}: the models segment {n_classes} classes but this workspace has "
                f"{self.ws.n_classes}"
            )
        return meta

    def _round_with(self, teacher_sha: str, student_sha: str | None) -> dict[str, Any] | None:
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
            "student": f"{rel}/student.pt" if "student.pt" in hashes else None,
            "teacher_only": "student.pt" not in hashes,
            "preset": meta.get("preset"),
            "n_classes": self.ws.n_classes,
            "n_labeled": meta.get("n_labeled"),
            "n_unlabeled": meta.get("n_unlabeled"),
            "imported_from": filename,
            "teacher_sha256": hashes["teacher.pt"],
            "student_sha256": hashes.get("student.pt"),
        }


def model_members(meta: dict[str, Any]) -> tuple[str, ...]:
    """The model files a bundle holds: teacher and student, or the teacher alone for a bundle of
    a supervised-only round (meta.json's ``teacher_only``)."""
    return MODEL_MEMBERS[:1] if meta.get("teacher_only") is True else MODEL_MEMBERS


def bundle_n_classes(meta: dict[str, Any]) -> int | None:
    """A bundle's class count, background included (format 1 bundles counted foreground only)."""
    n = meta.get("n_classes")
    if not isinstance(n, int) or isinstance(n, bool):
        return None
    return n if meta.get("format_version", 1) == 2 else n + 1


def declared_network(meta: dict[str, Any], n_classes: int, filename: str) -> dict[str, Any] | None:
    """The network meta.json names (``network``, checked and bounded), or None when it names none."""
    from reciprocalseg.inference.model_check import network_description

    declared = meta.get("network")
    if declared is None:
        return None
    try:
        network = network_description(declared, f"{filename}: meta.json's network")
    except ReciprocalSegError as exc:
        raise Invalid(str(exc)) from None
    if network["n_classes"] != n_classes:
        raise Invalid(
            f"{filename}: the models segment {network['n_classes']} classes but this workspace has "
            f"{n_classes}"
        )
    return network


def model_file_limit(network: dict[str, Any]) -> int:
    """The largest size a model file of ``network`` may unpack to: its weights and a little more."""
    from reciprocalseg.inference.model_check import weights_nbytes

    return int(weights_nbytes(network) * MODEL_FILE_SLACK) + MODEL_FILE_EXTRA


def _too_large(
    filename: str, member: str, size: int | None, limit: int, network: dict[str, Any] | None
) -> str:
    what = (
        f"its network (width {network['n_filters']}, {network['n_classes']} classes)"
        if network
        else "the widest network a round trains (meta.json names none)"
    )
    unpacks = f"unpacks to {size:,} bytes" if size is not None else "unpacks to more than it declares"
    return (
        f"{filename}: {member} {unpacks}, more than {what} needs ({limit:,} bytes); "
        "not a bundle exported by GET /models/export (nothing was stored)"
    )


def _refuse_large_total(
    zf: zipfile.ZipFile, filename: str, limit: int, network: dict[str, Any] | None
) -> None:
    """The sizes every member declares, summed (members not unpacked included: a bundle holds its
    model files and meta.json, nothing that could need more), against what the bundle's networks
    and meta.json need; before anything is unpacked."""
    total = sum(info.file_size for info in zf.infolist())
    if total > limit:
        what = (
            f"its networks (width {network['n_filters']}, {network['n_classes']} classes)"
            if network
            else "the widest networks a round trains (meta.json names none)"
        )
        raise TooLarge(
            f"{filename}: its {len(zf.infolist())} members unpack to {total:,} bytes in all, more than "
            f"{what} and meta.json need ({limit:,} bytes); not a bundle exported by GET /models/export "
            "(nothing was stored)"
        )


def _bounded_copy(src: Any, dst: Any, limit: int) -> bool:
    """Copy until the end or past ``limit`` bytes; False when the data went past it (the zip's
    declared size can lie: a bomb's real size shows only while it inflates)."""
    written = 0
    while chunk := src.read(1 << 20):
        written += len(chunk)
        if written > limit:
            return False
        dst.write(chunk)
    return True


def _network_of(model_file: Path, round_id: int) -> dict[str, Any] | None:
    """The network a round's model file describes (None for a file that cannot say)."""
    from reciprocalseg.inference.model_check import network_description
    from reciprocalseg.training.checkpoint import load_model_file

    try:
        return network_description(load_model_file(model_file).get("meta"), f"round {round_id}")
    except ReciprocalSegError:
        return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_model_file(path: Path, source: str) -> dict[str, Any]:
    """Raise :class:`Invalid` unless ``path`` is a ReciprocalSeg model file whose weights fit the
    network it describes and are finite.

    Read with ``torch.load(weights_only=True)``: never unpickled code.
    """
    from reciprocalseg.inference.model_check import build_network, check_inference_meta
    from reciprocalseg.training.checkpoint import check_finite_model

    try:
        data = check_finite_model(path)
        check_inference_meta(data.get("meta"), "the file")
        build_network(data["meta"], data.get("state_dict"), "the file")
    except ReciprocalSegError as exc:
        raise Invalid(f"{source}: {str(exc).replace(str(path), 'the file')[:300]}") from None
    return data


def _rm(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
