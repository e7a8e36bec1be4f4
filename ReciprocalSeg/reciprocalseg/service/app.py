"""The FastAPI application: cases, labels, training, prediction, next case, models, info.

Endpoints are plain ``def`` functions, so FastAPI runs them in its thread pool: slow work (reading
images, predicting) never blocks the event loop, and the workspace lock keeps manifests
consistent.  Every error is answered as ``{"detail": "<message>"}`` with a 4xx status, and
nothing is stored unless the whole request succeeded.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import json
import logging
import os
import platform
import shutil
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import reciprocalseg
from reciprocalseg.errors import DataError, ReciprocalSegError

from . import schemas as S
from .jobs import TrainingManager
from .workspace import (
    CASE_ID_PATTERN,
    ApiError,
    BadRequest,
    Conflict,
    Invalid,
    NotFound,
    TooLarge,
    UnsupportedType,
    Workspace,
    check_case_id,
    check_scan,
    check_upload_suffix,
    file_suffix,
    now_iso,
)

log = logging.getLogger(__name__)

CaseId = Annotated[str, PathParam(pattern=CASE_ID_PATTERN, max_length=64, description="case ID")]
PUBLIC_PATHS = ("/health",)
BUNDLE_FORMAT = "reciprocalseg-models"
BUNDLE_MEMBERS = ("teacher.pt", "student.pt", "meta.json")


@dataclass
class ServiceConfig:
    """How a service instance runs (from the ``serve`` command line)."""

    workspace: Path
    n_classes: int | None = None
    max_upload_mb: float = 2048.0
    token: str | None = None
    device: str = "auto"
    train_command: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Service:
    """Everything behind the HTTP layer: the workspace, the training manager and cached models."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.ws = Workspace(config.workspace, n_classes=config.n_classes)
        self.jobs = TrainingManager(
            self.ws,
            train_command=config.train_command,
            default_device=config.device,
            on_round=self._new_round,
        )
        self._predictor: Any = None
        self._predictor_key: tuple[int, str, str] | None = None
        self._predict_lock = threading.Lock()
        self._device_info: dict[str, Any] | None = None
        self.closed = False

    @property
    def max_upload_bytes(self) -> int:
        return int(self.config.max_upload_mb * 1024 * 1024)

    def start(self) -> None:
        """Start-up work: register finished runs and resume interrupted ones."""
        resumed = self.jobs.recover()
        if resumed:
            log.warning("resumed training run(s) %s", ", ".join(resumed))

    def close(self) -> None:
        """Stop a running training worker (with a checkpoint); it resumes at the next start-up."""
        if not self.closed:
            self.closed = True
            self.jobs.shutdown()

    def _new_round(self, entry: dict[str, Any]) -> None:
        log.info("model round %s is now current", entry["round"])

    # ------------------------------------------------------------------ cases
    def case_info(self, rec: dict[str, Any], current_round: int | None) -> S.CaseInfo:
        cur = self.ws.current_label(rec)
        preds = rec.get("predictions") or {}
        latest = max(preds.values(), key=lambda p: p["round"]) if preds else None
        chosen = preds.get(str(current_round)) if current_round is not None else None
        chosen = chosen or latest
        status = "labelled" if cur is not None else ("predicted" if preds else "unlabelled")
        return S.CaseInfo(
            id=rec["id"],
            status=status,
            added=rec["added"],
            source=rec.get("source"),
            geometry=S.Geometry(**rec["geometry"]),
            label_version=cur["version"] if cur else None,
            n_label_versions=len(rec["labels"]),
            score=chosen["score"] if chosen else None,
            score_round=chosen["round"] if chosen else None,
            score_current=bool(chosen and chosen["round"] == current_round),
            metadata=rec.get("metadata") or {},
        )

    def add_uploaded_case(self, tmp: Path, filename: str, case_id: str | None) -> S.CaseInfo:
        from reciprocalseg.data.io import case_id_from_path

        if case_id is None:
            case_id = case_id_from_path(filename)
            try:
                check_case_id(case_id)
            except Invalid as exc:
                raise Invalid(
                    f"{exc.message} (derived from the file name {filename!r}); pass case_id"
                ) from None
        check_case_id(case_id)
        if self.ws.has_case(case_id):
            raise Conflict(f"case {case_id!r} already exists; delete it first or choose another ID")
        image = read_upload(tmp, filename)
        rec = self.ws.add_case(image, case_id, source=f"upload:{filename}")
        return self.case_info(rec, self.ws.registry().get("current"))

    def register_case(self, req: S.RegisterCase) -> S.CaseInfo:
        from reciprocalseg.data.io import case_id_from_path, image_suffix, read_image

        path = Path(req.path).expanduser()
        if "\x00" in req.path or not path.is_absolute():
            raise Invalid(f"path {req.path!r} must be an absolute path on the server")
        if not path.exists():
            raise NotFound(f"{path}: no such file or folder on the server")
        if any(str(path).startswith(p) for p in ("/proc", "/sys", "/dev")):
            raise Invalid(f"{path}: not an image location")
        if path.is_dir() and not looks_like_dicom_folder(path):
            raise Invalid(f"{path}: a folder must hold a DICOM series (files with the DICM marker)")
        if not path.is_dir() and not path.is_file():
            raise Invalid(f"{path}: not a regular file or folder")
        if path.is_file() and image_suffix(path) is None:
            raise UnsupportedType(
                f"{path}: unsupported file type; use NRRD, NIfTI, MetaImage or a DICOM folder"
            )
        case_id = req.case_id or case_id_from_path(path)
        check_case_id(case_id)
        if self.ws.has_case(case_id):
            raise Conflict(f"case {case_id!r} already exists; delete it first or choose another ID")
        try:
            image = read_image(path)
        except DataError as exc:
            raise Invalid(str(exc)) from None
        rec = self.ws.add_case(image, case_id, source=f"path:{path}")
        return self.case_info(rec, self.ws.registry().get("current"))

    # ------------------------------------------------------------------ labels
    def put_label(
        self, case_id: str, tmp: Path, filename: str, author: str | None, kind: str, note: str | None
    ) -> S.LabelVersion:
        import SimpleITK as sitk

        from reciprocalseg.data.io import read_image
        from reciprocalseg.data.validation import check_label

        image_path = self.ws.image_path(case_id)
        label = read_upload(tmp, filename)
        image = read_image(image_path)
        try:
            arr = check_label(label, image, source=filename, n_classes=self.ws.n_classes)
        except DataError as exc:
            raise Invalid(str(exc).replace(str(tmp), filename)) from None
        stored = sitk.GetImageFromArray(arr)
        stored.CopyInformation(image)
        entry = self.ws.add_label(
            case_id, stored, kind=kind, author=author, source=f"upload:{filename}", note=note
        )
        return S.LabelVersion(**entry)

    def draft_from_prediction(self, case_id: str, author: str | None) -> S.LabelVersion:
        from reciprocalseg.data.io import read_image

        pred = self.prediction_entry(case_id, None)
        teacher = read_image(self.ws.case_dir(case_id) / pred["files"]["teacher"])
        entry = self.ws.add_label(
            case_id, teacher, kind="draft", author=author, source=f"prediction:round {pred['round']} teacher"
        )
        return S.LabelVersion(**entry)

    # ------------------------------------------------------------------ prediction
    def predictor(self) -> tuple[int, Any]:
        """The current round's predictor, loaded once and replaced when the round changes."""
        from reciprocalseg.inference import TeacherStudentPredictor

        entry = self.ws.round_entry(None)
        teacher, student = self.ws.model_paths(entry)
        key = (entry["round"], str(teacher), str(student))
        if self._predictor_key != key:
            self._predictor = None
            try:
                self._predictor = TeacherStudentPredictor(teacher, student, device=self.config.device)
            except (OSError, ReciprocalSegError, RuntimeError, ValueError, KeyError) as exc:
                raise Conflict(f"cannot load the models of round {entry['round']}: {exc}") from None
            self._predictor_key = key
        return entry["round"], self._predictor

    def predict(self, case_id: str) -> S.PredictionInfo:
        from reciprocalseg.data.io import read_image

        self.ws.get_case(case_id)
        image = read_image(self.ws.image_path(case_id))
        with self._predict_lock:
            round_id, predictor = self.predictor()
            result = predictor.predict(image)
        entry = self.ws.store_prediction(
            case_id, round_id, result.teacher, result.student, result.disagreement, float(result.score)
        )
        return S.PredictionInfo(case_id=case_id, **entry)

    def prediction_entry(self, case_id: str, round_id: int | None) -> dict[str, Any]:
        rec = self.ws.get_case(case_id)
        preds = rec.get("predictions") or {}
        if not preds:
            raise NotFound(f"case {case_id!r} has no prediction yet; POST /cases/{case_id}/predict")
        if round_id is None:
            current = self.ws.registry().get("current")
            entry = preds.get(str(current)) or max(preds.values(), key=lambda p: p["round"])
        else:
            entry = preds.get(str(round_id))
            if entry is None:
                raise NotFound(f"case {case_id!r} has no prediction of round {round_id}")
        return entry

    def next_case(self) -> S.NextCase:
        reg = self.ws.registry()
        candidates = [c for c in self.ws.all_cases() if self.ws.current_label(c) is None]
        if not candidates:
            return S.NextCase(case_id=None, n_candidates=0)
        current = reg.get("current")
        if current is None:
            raise Conflict("no model yet: train a round (POST /training) or import models first")
        n_new = 0
        scores: dict[str, float] = {}
        for c in candidates:
            pred = (c.get("predictions") or {}).get(str(current))
            if pred is None:
                try:
                    scores[c["id"]] = self.predict(c["id"]).score
                except NotFound:
                    continue  # deleted meanwhile
                n_new += 1
            else:
                scores[c["id"]] = pred["score"]
        if not scores:
            return S.NextCase(case_id=None, n_candidates=0)
        best = max(scores, key=lambda k: (scores[k], k))
        return S.NextCase(
            case_id=best, score=scores[best], round=current, n_candidates=len(scores), n_predicted_now=n_new
        )

    # ------------------------------------------------------------------ models
    def model_list(self) -> S.ModelList:
        reg = self.ws.registry()
        rounds = []
        for r in reg["rounds"]:
            fields = {k: r.get(k) for k in S.ModelRound.model_fields if k in r}
            rounds.append(S.ModelRound(**fields, current=r["round"] == reg.get("current")))
        return S.ModelList(current=reg.get("current"), rounds=rounds)

    def set_current(self, round_id: int) -> S.ModelList:
        with self.ws.lock:
            reg = self.ws.registry()
            if not any(r["round"] == round_id for r in reg["rounds"]):
                raise NotFound(f"no model round {round_id}")
            reg["current"] = round_id
            self.ws.write_registry(reg)
        return self.model_list()

    def export_bundle(self, round_id: int | None) -> tuple[Path, str]:
        entry = self.ws.round_entry(round_id)
        teacher, student = self.ws.model_paths(entry)
        for p in (teacher, student):
            if not p.exists():
                raise Conflict(f"model file {p.name} of round {entry['round']} is missing from the workspace")
        meta = {
            "format": BUNDLE_FORMAT,
            "format_version": 1,
            "reciprocalseg_version": reciprocalseg.__version__,
            "exported": now_iso(),
            **{k: v for k, v in entry.items() if k not in ("teacher", "student", "dir")},
            "teacher_sha256": sha256_file(teacher),
            "student_sha256": sha256_file(student),
        }
        tmp = self.ws.new_tmp_path(".zip")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.write(teacher, "teacher.pt")
            zf.write(student, "student.pt")
            zf.writestr("meta.json", json.dumps(meta, indent=2))
        return tmp, f"reciprocalseg-round{entry['round']}.zip"

    def import_bundle(self, tmp: Path, filename: str, make_current: bool) -> S.ModelRound:
        if file_suffix(filename) != ".zip":
            raise UnsupportedType(
                f"{filename!r}: a model bundle must be a .zip exported by GET /models/export"
            )
        if not zipfile.is_zipfile(tmp):
            raise Invalid(f"{filename}: not a zip file (corrupt or truncated?)")
        staging = self.ws.models_dir / f".incoming-{uuid.uuid4().hex}"
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
                except (ValueError, zipfile.BadZipFile) as exc:
                    raise Invalid(f"{filename}: meta.json is not valid JSON ({exc})") from None
                if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
                    raise Invalid(f"{filename}: meta.json does not describe a {BUNDLE_FORMAT} bundle")
                n_classes = meta.get("n_classes")
                if n_classes is not None and n_classes != self.ws.n_classes:
                    raise Invalid(
                        f"{filename}: the models segment {n_classes} classes but this workspace has "
                        f"{self.ws.n_classes}"
                    )
                staging.mkdir()
                for m in ("teacher.pt", "student.pt"):
                    with zf.open(m) as src, open(staging / m, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as exc:
            _rm(staging)
            raise Invalid(f"{filename}: corrupt zip file ({exc})") from None
        except BaseException:
            _rm(staging)
            raise
        try:
            for m in ("teacher.pt", "student.pt"):
                check_model_file(staging / m, f"{filename}:{m}")
            for m in ("teacher.pt", "student.pt"):
                with open(staging / m, "rb") as f:
                    os.fsync(f.fileno())

            def make(number: int) -> dict[str, Any]:
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
                    "teacher_sha256": sha256_file(final / "teacher.pt"),
                    "student_sha256": sha256_file(final / "student.pt"),
                }

            entry = self.ws.add_round(make, make_current=make_current)
        finally:
            _rm(staging)
        reg = self.ws.registry()
        fields = {k: entry.get(k) for k in S.ModelRound.model_fields if k in entry}
        return S.ModelRound(**fields, current=entry["round"] == reg.get("current"))

    # ------------------------------------------------------------------ info
    def device_info(self) -> S.DeviceInfo:
        if self._device_info is None:
            info: dict[str, Any] = {
                "type": "cpu",
                "name": platform.processor() or platform.machine() or "CPU",
                "cpu_count": os.cpu_count(),
            }
            try:
                import psutil

                info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 2)
            except Exception:  # pragma: no cover - psutil is a dependency
                pass
            if self.config.device != "cpu":
                try:
                    import torch

                    if torch.cuda.is_available():
                        props = torch.cuda.get_device_properties(0)
                        info = {
                            "type": "cuda",
                            "name": props.name,
                            "memory_gb": round(props.total_memory / 2**30, 2),
                            "cpu_count": os.cpu_count(),
                        }
                except Exception as exc:  # a broken CUDA set-up must not break /info
                    log.warning("CUDA query failed: %s", exc)
            self._device_info = info
        return S.DeviceInfo(**self._device_info)

    def info(self) -> S.ServiceInfo:
        reg = self.ws.registry()
        return S.ServiceInfo(
            version=reciprocalseg.__version__,
            workspace=str(self.ws.root),
            device=self.device_info(),
            counts=S.Counts(**self.ws.counts()),
            n_classes=self.ws.n_classes,
            current_round=reg.get("current"),
            training_state=self.jobs.status()["state"],
            max_upload_mb=self.config.max_upload_mb,
            auth=bool(self.config.token),
        )


# ---------------------------------------------------------------------- helpers
def safe_filename(name: str | None) -> str:
    """The last component of a client-supplied file name (never used as a path by itself)."""
    name = (name or "").replace("\\", "/")
    base = PurePosixPath(name).name
    return base[:255] or "upload"


def read_upload(tmp: Path, filename: str) -> Any:
    """Read an uploaded image, translating errors to 422 messages naming the client's file name."""
    from reciprocalseg.data.io import read_image

    if tmp.stat().st_size == 0:
        raise Invalid(f"{filename}: the uploaded file is empty")
    try:
        img = read_image(tmp)
        check_scan(img, filename)
    except DataError as exc:
        raise Invalid(str(exc).replace(str(tmp), filename)) from None
    return img


def looks_like_dicom_folder(folder: Path, max_files: int = 200) -> bool:
    """Whether a folder holds at least one DICOM Part 10 file (checks a few files' ``DICM`` marker)."""
    try:
        for i, f in enumerate(folder.iterdir()):
            if i >= max_files:
                break
            try:
                if f.is_file() and f.stat().st_size >= 132:
                    with open(f, "rb") as fh:
                        fh.seek(128)
                        if fh.read(4) == b"DICM":
                            return True
            except OSError:
                continue
    except OSError:
        return False
    return False


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_model_file(path: Path, source: str) -> None:
    """Raise :class:`Invalid` unless ``path`` is a ReciprocalSeg model file (read without unpickling code)."""
    from reciprocalseg.training.checkpoint import load_model_file

    try:
        load_model_file(path)
    except ReciprocalSegError as exc:
        raise Invalid(f"{source}: {str(exc).replace(str(path), 'the file')[:300]}") from None


def _rm(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _format_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "request"
        if loc.endswith(("case_id", "run_id")) and err.get("type") == "string_pattern_mismatch":
            parts.append(
                f"{loc}: invalid ID {err.get('input')!r}; use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
            continue
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


# ---------------------------------------------------------------------- ASGI middleware
class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Token check (``Authorization: Bearer``) and request body size limit, before any parsing."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int, upload_limit: int) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token and scope.get("path") not in PUBLIC_PATHS:
            auth = headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self.token.encode()
            ):
                msg = "missing token" if not auth else "wrong token"
                await _send_json(
                    send,
                    401,
                    {"detail": f"{msg}: send the header 'Authorization: Bearer <token>'"},
                    extra=[(b"www-authenticate", b"Bearer")],
                )
                return
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if too_big:
                await _send_json(send, 413, {"detail": _too_large_msg(self.upload_limit)})
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, {"detail": _too_large_msg(self.upload_limit)})


def _too_large_msg(limit: int) -> str:
    return f"request too large: the upload limit is {limit / 2**20:.1f} MiB (serve --max-upload-mb)"


async def _send_json(send: Send, status: int, body: dict[str, Any], extra: list | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": data})


# ---------------------------------------------------------------------- the app
NRRD = "application/octet-stream"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": S.ErrorResponse} for code in (400, 401, 404, 409, 413, 415, 422)
}


def create_app(service: Service, manage_lifecycle: bool = True) -> FastAPI:
    """Build the FastAPI app around a :class:`Service` (which the caller has started)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        yield
        if manage_lifecycle:
            import anyio

            await anyio.to_thread.run_sync(service.close)

    app = FastAPI(
        title="ReciprocalSeg service",
        version=reciprocalseg.__version__,
        description="Cases, labels, reciprocal-learning training rounds, teacher/student predictions and "
        "models of one workspace. Send 'Authorization: Bearer <token>' when the service has a token.",
        lifespan=lifespan,
        responses=ERRORS,
    )
    app.state.service = service
    ws = service.ws
    max_body = service.max_upload_bytes + (1 << 20)  # room for the multipart envelope
    app.add_middleware(
        GuardMiddleware, token=service.config.token, max_body=max_body, upload_limit=service.max_upload_bytes
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = json.loads(json.dumps(exc.errors(), default=str))
        return JSONResponse({"detail": _format_validation(exc), "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return JSONResponse(
                {"detail": f"no space left for the workspace {ws.root}: free some disk space and retry"},
                status_code=507,
            )
        log.exception("I/O error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"I/O error in the workspace: {exc}"}, status_code=500)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    def save_upload(file: UploadFile, suffix: str) -> Path:
        tmp = ws.new_tmp_path(suffix)
        size = 0
        with open(tmp, "wb") as out:
            while chunk := file.file.read(1 << 20):
                size += len(chunk)
                if size > service.max_upload_bytes:
                    out.close()
                    tmp.unlink(missing_ok=True)
                    raise TooLarge(_too_large_msg(service.max_upload_bytes))
                out.write(chunk)
        return tmp

    def nrrd_response(path: Path, filename: str) -> FileResponse:
        if not path.exists():
            raise NotFound(f"{filename} is missing from the workspace")
        return FileResponse(path, media_type=NRRD, filename=filename)

    # ------------------------------------------------------------------ meta
    @app.get("/health", response_model=S.Message, tags=["info"], summary="Liveness (no token needed)")
    def health() -> S.Message:
        return S.Message(message="ok")

    @app.get("/info", response_model=S.ServiceInfo, tags=["info"], summary="Version, device and counts")
    def info() -> S.ServiceInfo:
        return service.info()

    # ------------------------------------------------------------------ cases
    @app.get("/cases", response_model=S.CaseList, tags=["cases"], summary="List cases with status and score")
    def list_cases() -> S.CaseList:
        current = ws.registry().get("current")
        return S.CaseList(cases=[service.case_info(c, current) for c in ws.all_cases()])

    @app.post("/cases", response_model=S.CaseInfo, status_code=201, tags=["cases"], summary="Upload a scan")
    def add_case(
        file: Annotated[UploadFile, File(description="NRRD, NIfTI (.nii/.nii.gz) or MetaImage (.mha)")],
        case_id: Annotated[str | None, Form(max_length=64)] = None,
    ) -> S.CaseInfo:
        filename = safe_filename(file.filename)
        suffix = check_upload_suffix(filename, "image")
        if case_id is not None:
            check_case_id(case_id)
        tmp = save_upload(file, suffix)
        try:
            return service.add_uploaded_case(tmp, filename, case_id)
        finally:
            tmp.unlink(missing_ok=True)

    @app.post(
        "/cases/register",
        response_model=S.CaseInfo,
        status_code=201,
        tags=["cases"],
        summary="Add a scan from a path on the server (file or DICOM folder); the workspace keeps a copy",
    )
    def register_case(req: S.RegisterCase) -> S.CaseInfo:
        return service.register_case(req)

    @app.get("/cases/{case_id}", response_model=S.CaseInfo, tags=["cases"], summary="One case")
    def get_case(case_id: CaseId) -> S.CaseInfo:
        return service.case_info(ws.get_case(case_id), ws.registry().get("current"))

    @app.get(
        "/cases/{case_id}/image",
        tags=["cases"],
        summary="The scan as NRRD",
        response_class=FileResponse,
        responses={200: {"content": {NRRD: {}}}},
    )
    def get_image(case_id: CaseId) -> FileResponse:
        return nrrd_response(ws.image_path(case_id), f"{case_id}_image.nrrd")

    @app.delete(
        "/cases/{case_id}",
        response_model=S.Message,
        tags=["cases"],
        summary="Delete a case with its labels and predictions",
    )
    def delete_case(case_id: CaseId) -> S.Message:
        ws.get_case(case_id)
        if service.jobs.uses_case(case_id):
            raise Conflict(
                f"case {case_id!r} is used by the running training run; stop it or wait, then delete"
            )
        ws.delete_case(case_id)
        return S.Message(message=f"case {case_id} deleted")

    # ------------------------------------------------------------------ labels
    @app.put(
        "/cases/{case_id}/label",
        response_model=S.LabelVersion,
        tags=["labels"],
        summary="Store a new label version (checked against the case's grid and class count)",
    )
    def put_label(
        case_id: CaseId,
        file: Annotated[UploadFile, File(description="label map on the image's grid, values 0..n_classes")],
        author: Annotated[str | None, Form(max_length=200)] = None,
        kind: Annotated[Literal["submitted", "draft"], Form()] = "submitted",
        note: Annotated[str | None, Form(max_length=2000)] = None,
    ) -> S.LabelVersion:
        ws.get_case(case_id)
        filename = safe_filename(file.filename)
        suffix = check_upload_suffix(filename, "label")
        tmp = save_upload(file, suffix)
        try:
            return service.put_label(case_id, tmp, filename, author, kind, note)
        finally:
            tmp.unlink(missing_ok=True)

    @app.get(
        "/cases/{case_id}/label",
        tags=["labels"],
        summary="A label version as NRRD (default: current)",
        response_class=FileResponse,
        responses={200: {"content": {NRRD: {}}}},
    )
    def get_label(case_id: CaseId, version: Annotated[int | None, Query(ge=1)] = None) -> FileResponse:
        entry, path = ws.label_entry(case_id, version)
        return nrrd_response(path, f"{case_id}_label_v{entry['version']}.nrrd")

    @app.get(
        "/cases/{case_id}/labels",
        response_model=S.LabelHistory,
        tags=["labels"],
        summary="Label history (every version, oldest first)",
    )
    def label_history(case_id: CaseId) -> S.LabelHistory:
        rec = ws.get_case(case_id)
        cur = ws.current_label(rec)
        return S.LabelHistory(
            case_id=case_id,
            current=cur["version"] if cur else None,
            versions=[S.LabelVersion(**v) for v in rec["labels"]],
        )

    @app.post(
        "/cases/{case_id}/label/from-prediction",
        response_model=S.LabelVersion,
        tags=["labels"],
        summary="Store the teacher's prediction as a draft label version to correct",
    )
    def draft_from_prediction(
        case_id: CaseId, author: Annotated[str | None, Query(max_length=200)] = None
    ) -> S.LabelVersion:
        return service.draft_from_prediction(case_id, author)

    # ------------------------------------------------------------------ prediction
    @app.post(
        "/cases/{case_id}/predict",
        response_model=S.PredictionInfo,
        tags=["prediction"],
        summary="Run the current round's teacher and student on a case",
    )
    def predict(case_id: CaseId) -> S.PredictionInfo:
        return service.predict(case_id)

    @app.get(
        "/cases/{case_id}/prediction",
        response_model=S.PredictionInfo,
        tags=["prediction"],
        summary="Stored prediction (default: the current round's, else the latest)",
    )
    def prediction(case_id: CaseId, round: Annotated[int | None, Query(ge=1)] = None) -> S.PredictionInfo:
        return S.PredictionInfo(case_id=case_id, **service.prediction_entry(case_id, round))

    @app.get(
        "/cases/{case_id}/prediction/{kind}",
        tags=["prediction"],
        summary="teacher / student label map or disagreement map as NRRD",
        response_class=FileResponse,
        responses={200: {"content": {NRRD: {}}}},
    )
    def prediction_file(
        case_id: CaseId,
        kind: Literal["teacher", "student", "disagreement"],
        round: Annotated[int | None, Query(ge=1)] = None,
    ) -> FileResponse:
        entry = service.prediction_entry(case_id, round)
        return nrrd_response(
            ws.case_dir(case_id) / entry["files"][kind], f"{case_id}_{kind}_r{entry['round']}.nrrd"
        )

    @app.get(
        "/next-case",
        response_model=S.NextCase,
        tags=["prediction"],
        summary="The unlabelled case where teacher and student disagree most (predicts unscored cases)",
    )
    def next_case() -> S.NextCase:
        return service.next_case()

    # ------------------------------------------------------------------ training
    @app.post(
        "/training",
        response_model=S.TrainingStatus,
        status_code=202,
        tags=["training"],
        summary="Start a training round on the submitted labels (409 while one runs)",
    )
    def start_training(req: S.TrainingRequest) -> S.TrainingStatus:
        job = service.jobs.start(
            preset=req.preset,
            iterations=req.iterations,
            supervised_iterations=req.supervised_iterations,
            device=req.device,
            warm_start=req.warm_start,
            checkpoint_every=req.checkpoint_every,
        )
        return S.TrainingStatus(**service.jobs.status(job["run_id"]))

    @app.get(
        "/training",
        response_model=S.TrainingStatus,
        tags=["training"],
        summary="State and progress of the active (or latest) run",
    )
    def training_status(
        run_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = None,
    ) -> S.TrainingStatus:
        return S.TrainingStatus(**service.jobs.status(run_id))

    @app.get(
        "/training/events",
        response_model=S.TrainingEvents,
        tags=["training"],
        summary="Progress events of a run from index `since`",
    )
    def training_events(
        since: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
        run_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = None,
    ) -> S.TrainingEvents:
        return S.TrainingEvents(**service.jobs.events(since=since, run_id=run_id, limit=limit))

    @app.post(
        "/training/stop",
        response_model=S.TrainingStatus,
        tags=["training"],
        summary="Stop the active run (it writes a checkpoint; resume continues it)",
    )
    def stop_training() -> S.TrainingStatus:
        job = service.jobs.stop()
        return S.TrainingStatus(**service.jobs.status(job["run_id"]))

    @app.post(
        "/training/resume",
        response_model=S.TrainingStatus,
        status_code=202,
        tags=["training"],
        summary="Resume a cancelled, interrupted or failed run from its last checkpoint",
    )
    def resume_training(req: S.ResumeRequest | None = None) -> S.TrainingStatus:
        job = service.jobs.resume(req.run_id if req else None)
        return S.TrainingStatus(**service.jobs.status(job["run_id"]))

    # ------------------------------------------------------------------ models
    @app.get(
        "/models", response_model=S.ModelList, tags=["models"], summary="Model rounds and the current one"
    )
    def list_models() -> S.ModelList:
        return service.model_list()

    @app.put(
        "/models/current",
        response_model=S.ModelList,
        tags=["models"],
        summary="Choose the round used for prediction and warm starts",
    )
    def set_current(req: S.SetCurrentModel) -> S.ModelList:
        return service.set_current(req.round)

    @app.get(
        "/models/export",
        tags=["models"],
        summary="A round's teacher+student as a zip bundle",
        response_class=FileResponse,
        responses={200: {"content": {"application/zip": {}}}},
    )
    def export_models(round: Annotated[int | None, Query(ge=1)] = None) -> FileResponse:
        path, name = service.export_bundle(round)
        return FileResponse(
            path,
            media_type="application/zip",
            filename=name,
            background=BackgroundTask(path.unlink, missing_ok=True),
        )

    @app.post(
        "/models/import",
        response_model=S.ModelRound,
        status_code=201,
        tags=["models"],
        summary="Import a bundle from GET /models/export as a new round",
    )
    def import_models(
        file: Annotated[UploadFile, File(description="zip bundle")],
        make_current: Annotated[bool, Form()] = True,
    ) -> S.ModelRound:
        filename = safe_filename(file.filename)
        if file_suffix(filename) != ".zip":
            raise UnsupportedType(
                f"{filename!r}: a model bundle must be a .zip exported by GET /models/export"
            )
        tmp = save_upload(file, ".zip")
        try:
            return service.import_bundle(tmp, filename, make_current)
        finally:
            tmp.unlink(missing_ok=True)

    _ = (io, BadRequest, Response)  # re-exported names used by callers/tests
    return app
