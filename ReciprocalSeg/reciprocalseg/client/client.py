"""Python client of the ReciprocalSeg service (usable from any Python console, Slicer's included).

>>> from reciprocalseg.client import Client
>>> c = Client(workspace="~/rs-workspace")       # URL and token from WORKSPACE/.service/
>>> c.add_cases_from_folder("scans/")
>>> c.put_label("case01", "case01_label.nrrd", author="me")
>>> c.plan()["values"]                          # what an auto round will train with, and why
>>> c.start_training(minutes=10); c.wait_for_training(callback=print)
>>> c.next_case()

Every method raises :class:`ServiceError` carrying the server's message (``status_code`` is 0 when
the service could not be reached at all). The answers are the dataclasses of ``responses.py``.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from reciprocalseg.common.file_formats import (
    IMAGE_SUFFIXES,
    LABEL_NAME_SUFFIXES,
    UPLOAD_SUFFIXES,
    case_id_from_path,
)
from reciprocalseg.common.service_files import SERVICE_DIR, TOKEN_FILE, URL_FILE, read_service_file

from .responses import (
    CaseInfo,
    CaseQA,
    DeviceInfo,
    FolderImport,
    LabelHistory,
    LabelVersion,
    ModelList,
    ModelRound,
    NextCase,
    PredictionResult,
    RefinedPrediction,
    ServiceInfo,
    StructureQA,
    TrainingEvents,
    TrainingStatus,
    build,
    prediction_from_json,
)


class ServiceError(Exception):
    """An error answer of the service (``status_code`` 4xx/5xx), or 0 when it cannot be reached."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status_code})" if status_code else message)
        self.status_code = status_code
        self.message = message


class Client:
    """Talks to one ReciprocalSeg service.

    Args:
        url: the service URL (``http://127.0.0.1:PORT``); read from ``WORKSPACE/.service/url`` when
            ``workspace`` is given instead.
        token: the bearer token; read from ``WORKSPACE/.service/token`` when ``workspace`` is given
            and ``token`` is not.
        timeout: seconds to wait for an answer (uploads and predictions get ``long_timeout``).
        workspace: the service's workspace folder.
    """

    long_timeout: float = 3600.0

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        workspace: str | Path | None = None,
    ) -> None:
        self.workspace = Path(workspace).expanduser() if workspace is not None else None
        self._follow_workspace = self.workspace is not None and url is None
        if self.workspace is not None:
            if url is None:
                url = self._workspace_url()
            if token is None:
                token = self._workspace_token()
        if not url:
            raise ValueError("give the service url, or the workspace of a running service")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    # ------------------------------------------------------------------ workspace discovery
    @property
    def _service_dir(self) -> Path:
        assert self.workspace is not None
        return self.workspace / SERVICE_DIR

    def _workspace_url(self) -> str:
        """The URL the workspace's running service wrote; ServiceError(0) when none is running."""
        url = read_service_file(self._service_dir, URL_FILE)
        if not url:
            raise ServiceError(
                0,
                f"no running service found for workspace {self.workspace} "
                f"(no {self._service_dir / URL_FILE}); "
                f"start one with `reciprocalseg serve --workspace {self.workspace}`",
            )
        return url

    def _workspace_token(self) -> str | None:
        return read_service_file(self._service_dir, TOKEN_FILE)

    def _rediscover(self) -> bool:
        """After a failed connection: follow a restarted service (new URL/token); True if it moved."""
        url = self._workspace_url().rstrip("/")
        token = self._workspace_token()
        if url == self.url and token == self.token:
            return False
        self.url, self.token = url, token
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        else:
            self.session.headers.pop("Authorization", None)
        return True

    def _unreachable(self, method: str, path: str, exc: Exception) -> ServiceError:
        where = f" for workspace {self.workspace}" if self.workspace is not None else ""
        hint = (
            f"; it was stopped or killed: start it again (reciprocalseg serve --workspace {self.workspace})"
            if self._follow_workspace
            else ": is it running?"
        )
        return ServiceError(
            0, f"cannot reach the ReciprocalSeg service{where} at {self.url}{hint} ({type(exc).__name__})"
        )

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport
    def _request(
        self, method: str, path: str, *, timeout: float | None = None, stream: bool = False, **kwargs: Any
    ) -> requests.Response:
        try:
            r = self._send(method, path, timeout, stream, **kwargs)
        except requests.ConnectionError as exc:
            # A service restarted on the same workspace listens on a new port (and may have a new
            # token): re-read its files and try once more. Uploads are not resent (their file
            # objects have been read); the caller gets the clear error instead.
            if not (self._follow_workspace and "files" not in kwargs and self._rediscover()):
                raise self._unreachable(method, path, exc) from None
            try:
                r = self._send(method, path, timeout, stream, **kwargs)
            except requests.ConnectionError as exc2:
                raise self._unreachable(method, path, exc2) from None
        if r.status_code >= 400:
            try:
                body = r.json()
                message = body.get("detail") if isinstance(body, dict) else None
                message = message if isinstance(message, str) else str(body)
            except ValueError:
                message = r.text[:500] or r.reason
            r.close()
            raise ServiceError(r.status_code, message)
        return r

    def _send(
        self, method: str, path: str, timeout: float | None, stream: bool, **kwargs: Any
    ) -> requests.Response:
        try:
            return self.session.request(
                method, self.url + path, timeout=timeout or self.timeout, stream=stream, **kwargs
            )
        except requests.Timeout:
            raise ServiceError(
                0,
                f"the service at {self.url} did not answer {method} {path} within "
                f"{timeout or self.timeout:.0f} s",
            ) from None

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _download(self, path: str, out_path: str | Path, params: dict[str, Any] | None = None) -> Path:
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        r = self._request("GET", path, params=params, stream=True, timeout=self.long_timeout)
        tmp = out.with_name(f".{out.name}.part")
        try:
            with open(tmp, "wb") as f:
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
            r.close()
        return out

    # ------------------------------------------------------------------ info
    def health(self) -> bool:
        """Whether the service answers; a client made with ``workspace=`` follows a restarted service.

        A client made with ``workspace=`` raises :class:`ServiceError` (status 0) with what to do
        when no service answers for that workspace (none started, or the one there was stopped or
        killed and left a stale URL file) instead of returning False: a False would read as "busy,
        wait", and there is nothing to wait for until a service is started.
        """
        try:
            return self._request("GET", "/health", timeout=5).status_code == 200
        except ServiceError as exc:
            if self._follow_workspace and exc.status_code == 0:
                raise
            return False

    def info(self) -> ServiceInfo:
        d = self._json("GET", "/info")
        d["device"] = build(DeviceInfo, d["device"])
        return build(ServiceInfo, d)

    def settings(self) -> dict[str, Any]:
        """``{"n_classes": N, "n_classes_fixed": bool}``; N counts the background (as train does)."""
        return self._json("GET", "/settings")

    def set_n_classes(self, n_classes: int | None) -> dict[str, Any]:
        """Fix the class count, background included (``None``: let it follow the labels)."""
        return self._json("PUT", "/settings", json={"n_classes": n_classes})

    def set_auto_retrain(self, after: int | None, minutes: float | None = None) -> dict[str, Any]:
        """Retrain by itself: a warm-started round of ``minutes`` (default: as set, 10 at first)
        once ``after`` corrections arrived (labels, scribbles, refines, accepts); None: off."""
        body: dict[str, Any] = {"retrain_after": after}
        if minutes is not None:
            body["retrain_minutes"] = minutes
        return self._json("PUT", "/settings", json=body)

    # ------------------------------------------------------------------ cases
    def list_cases(self) -> list[CaseInfo]:
        return [build(CaseInfo, c) for c in self._json("GET", "/cases")["cases"]]

    def get_case(self, case_id: str) -> CaseInfo:
        return build(CaseInfo, self._json("GET", f"/cases/{_seg(case_id)}"))

    def add_case(self, image_path: str | Path, case_id: str | None = None, upload: bool = True) -> CaseInfo:
        """Add a scan: upload the file (default), or register a path the server can read itself."""
        p = Path(image_path).expanduser()
        if not upload:
            body: dict[str, Any] = {"path": str(p.resolve())}
            if case_id is not None:
                body["case_id"] = case_id
            return build(
                CaseInfo, self._json("POST", "/cases/register", json=body, timeout=self.long_timeout)
            )
        data = {"case_id": case_id} if case_id is not None else {}
        with open(p, "rb") as f:
            d = self._json(
                "POST",
                "/cases",
                files={"file": (p.name, f, "application/octet-stream")},
                data=data,
                timeout=self.long_timeout,
            )
        return build(CaseInfo, d)

    def add_cases_from_folder(self, folder: str | Path, upload: bool = True) -> FolderImport:
        """Add every scan file of a folder (label files ``*_label.*``/``*_seg.*`` are skipped).

        Idempotent: scans whose case ID the workspace already has are skipped, not an error, so a
        rerun after an interrupted import adds the rest. Returns the added cases (a list) with
        ``.skipped``, the IDs that were there already.
        """
        folder = Path(folder).expanduser()
        existing = {c.id for c in self.list_cases()}
        result = FolderImport()
        allowed = UPLOAD_SUFFIXES if upload else IMAGE_SUFFIXES
        for p in sorted(folder.iterdir()):
            name = p.name.lower()
            if not p.is_file() or name.startswith("."):
                continue
            suffix = ".nii.gz" if name.endswith(".nii.gz") else p.suffix.lower()
            stem = name[: -len(suffix)] if suffix else name
            if suffix not in allowed or stem.endswith(LABEL_NAME_SUFFIXES):
                continue
            case_id = case_id_from_path(p)
            if case_id in existing:
                result.skipped.append(case_id)
                continue
            try:
                result.append(self.add_case(p, upload=upload))
            except ServiceError as exc:
                if exc.status_code != 409 or "already exists" not in exc.message:
                    raise
                result.skipped.append(case_id)  # added meanwhile by someone else
        return result

    def get_image(self, case_id: str, out_path: str | Path) -> Path:
        return self._download(f"/cases/{_seg(case_id)}/image", out_path)

    def delete_case(self, case_id: str) -> None:
        self._json("DELETE", f"/cases/{_seg(case_id)}")

    # ------------------------------------------------------------------ labels
    def put_label(
        self,
        case_id: str,
        label_path: str | Path,
        author: str | None = None,
        kind: str = "submitted",
        note: str | None = None,
    ) -> LabelVersion:
        p = Path(label_path).expanduser()
        data = {"kind": kind}
        if author is not None:
            data["author"] = author
        if note is not None:
            data["note"] = note
        with open(p, "rb") as f:
            d = self._json(
                "PUT",
                f"/cases/{_seg(case_id)}/label",
                files={"file": (p.name, f, "application/octet-stream")},
                data=data,
                timeout=self.long_timeout,
            )
        version = build(LabelVersion, d)
        if version.warning:  # shown in a console or script, and kept in the answer
            warnings.warn(version.warning, UserWarning, stacklevel=2)
        return version

    def get_label(self, case_id: str, out_path: str | Path, version: int | None = None) -> Path:
        params = {"version": version} if version is not None else None
        return self._download(f"/cases/{_seg(case_id)}/label", out_path, params=params)

    def label_history(self, case_id: str) -> LabelHistory:
        d = self._json("GET", f"/cases/{_seg(case_id)}/labels")
        return LabelHistory(d["case_id"], d["current"], [build(LabelVersion, v) for v in d["versions"]])

    def draft_from_prediction(self, case_id: str, author: str | None = None) -> LabelVersion:
        """Store the current teacher prediction as a draft label version."""
        params = {"author": author} if author else None
        return build(
            LabelVersion, self._json("POST", f"/cases/{_seg(case_id)}/label/from-prediction", params=params)
        )

    # ------------------------------------------------------------------ training
    def plan(self) -> dict[str, Any]:
        """The ``auto`` plan the next round would train with (``values``, ``reasons``,
        ``fingerprint``, ``device``, ``overrides``, ``format``); 404 before the first label."""
        return self._json("GET", "/plan")

    def start_training(
        self,
        preset: str = "auto",
        iterations: int | None = None,
        supervised_iterations: int | None = None,
        device: str = "auto",
        warm_start: bool = True,
        checkpoint_every: int | None = None,
        minutes: float | None = None,
    ) -> TrainingStatus:
        body = {
            "checkpoint_every": checkpoint_every,
            "minutes": minutes,
            "preset": preset,
            "iterations": iterations,
            "supervised_iterations": supervised_iterations,
            "device": device,
            "warm_start": warm_start,
        }
        return build(TrainingStatus, self._json("POST", "/training", json=body))

    def training_status(self, run_id: str | None = None) -> TrainingStatus:
        params = {"run_id": run_id} if run_id else None
        return build(TrainingStatus, self._json("GET", "/training", params=params))

    def training_events(self, since: int = 0, run_id: str | None = None) -> TrainingEvents:
        params: dict[str, Any] = {"since": since}
        if run_id:
            params["run_id"] = run_id
        return build(TrainingEvents, self._json("GET", "/training/events", params=params))

    def stop_training(self) -> TrainingStatus:
        return build(TrainingStatus, self._json("POST", "/training/stop", timeout=max(self.timeout, 120)))

    def resume_training(self, run_id: str | None = None) -> TrainingStatus:
        return build(TrainingStatus, self._json("POST", "/training/resume", json={"run_id": run_id}))

    def wait_for_training(
        self,
        poll: float = 1.0,
        timeout: float | None = None,
        callback: Callable[[TrainingStatus], Any] | None = None,
    ) -> TrainingStatus:
        """Poll until the active run ends; return its final status (``callback`` sees each poll).

        Raises :class:`ServiceError` (status 0) if ``timeout`` seconds pass first; the run goes on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.training_status()
            if callback is not None:
                callback(st)
            if st.state != "running":
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise ServiceError(0, f"training run {st.run_id} still running after {timeout:.0f} s")
            time.sleep(poll)

    # ------------------------------------------------------------------ prediction
    def predict(
        self, case_id: str, out_dir: str | Path | None = None, live: bool = False
    ) -> PredictionResult:
        """Predict a case with the current round; with ``out_dir``, download the three NRRD files.

        ``live=True``: with the latest checkpoint of the round in training (``res.live``,
        ``res.iteration`` say so), or the current round when none is training.
        """
        params = {"model": "live"} if live else None
        d = self._json("POST", f"/cases/{_seg(case_id)}/predict", params=params, timeout=self.long_timeout)
        res = prediction_from_json(d)
        if out_dir is not None:
            self._download_prediction(res, Path(out_dir))
        return res

    def get_prediction(
        self, case_id: str, out_dir: str | Path | None = None, round: int | None = None, live: bool = False
    ) -> PredictionResult:
        """The stored prediction of a case (current round by default; ``live``: its live one)."""
        params: dict[str, Any] = {"round": round} if round is not None else {}
        if live:
            params["model"] = "live"
        d = self._json("GET", f"/cases/{_seg(case_id)}/prediction", params=params or None)
        res = prediction_from_json(d)
        if out_dir is not None:
            self._download_prediction(res, Path(out_dir))
        return res

    def _download_prediction(self, res: PredictionResult, out_dir: Path) -> None:
        params: dict[str, Any] = {"model": "live"} if res.live else {"round": res.round}
        kinds = ("teacher",) if res.teacher_only else ("teacher", "student", "disagreement")
        for kind in kinds:  # a teacher-only round's prediction has no student and no disagreement
            path = self._download(
                f"/cases/{_seg(res.case_id)}/prediction/{kind}",
                out_dir / f"{res.case_id}_{kind}.nrrd",
                params=params,
            )
            setattr(res, kind, path)

    # ------------------------------------------------------------------ refine
    def refine(
        self,
        case_id: str,
        strokes: str | Path | Any,
        model: str = "student",
        seconds: float | None = None,
        device: str | None = None,
        out_dir: str | Path | None = None,
        author: str | None = None,
    ) -> RefinedPrediction:
        """Adapt a copy of the current round's ``model`` (student or teacher) to the case's strokes
        and predict the case with it; the strokes are stored (accumulated with the case's earlier
        ones) as a new partial label version. The round's models are not changed.

        ``strokes``: a label-map file on the case's grid, or a (z, y, x) integer array (sent on the
        case's grid): 255 unannotated, 0 background, k class k. ``seconds``: the time limit (None:
        the service's default for its device). With ``out_dir``, the refined map is downloaded
        (``.labels``).
        """
        data: dict[str, Any] = {"model": model}
        for key, value in (("seconds", seconds), ("device", device), ("author", author)):
            if value is not None:
                data[key] = str(value)
        with tempfile.TemporaryDirectory(prefix="reciprocalseg-strokes-") as folder:
            path = self._strokes_path(case_id, strokes, Path(folder))
            with open(path, "rb") as f:
                d = self._json(
                    "POST",
                    f"/cases/{_seg(case_id)}/refine",
                    files={"file": (path.name, f, "application/octet-stream")},
                    data=data,
                    timeout=self.long_timeout,
                )
        res = build(RefinedPrediction, d)
        if out_dir is not None:
            self._download_refined(res, Path(out_dir))
        return res

    def _strokes_path(self, case_id: str, strokes: Any, folder: Path) -> Path:
        """The strokes as a file: the path given, or an array written on the case's grid."""
        if isinstance(strokes, str | Path):
            return Path(strokes).expanduser()
        from .strokes_file import write_strokes

        return write_strokes(strokes, self.get_case(case_id).geometry, folder / f"{case_id}_strokes.nrrd")

    def get_refined(self, case_id: str, out_dir: str | Path | None = None) -> RefinedPrediction:
        """The case's latest refine (404 without one); with ``out_dir``, its map downloaded."""
        res = build(RefinedPrediction, self._json("GET", f"/cases/{_seg(case_id)}/refined"))
        if out_dir is not None:
            self._download_refined(res, Path(out_dir))
        return res

    def _download_refined(self, res: RefinedPrediction, out_dir: Path) -> None:
        res.labels = self._download(
            f"/cases/{_seg(res.case_id)}/refined/labels", out_dir / f"{res.case_id}_refined.nrrd"
        )

    def accept_refined(self, case_id: str, author: str | None = None) -> LabelVersion:
        """Store the case's refined map as its new full label version (again: that same version)."""
        params = {"author": author} if author else None
        d = self._json(
            "POST", f"/cases/{_seg(case_id)}/refined/accept", params=params, timeout=self.long_timeout
        )
        return build(LabelVersion, d)

    def refine_status(self) -> dict[str, Any]:
        """The refine in progress: ``{"running": bool, "case_id", "elapsed_s", "time_limit_s", ...}``."""
        return self._json("GET", "/refine")

    def qa(self, case_id: str, round: int | None = None, live: bool = False) -> CaseQA:
        """Per-structure QA of a case's stored prediction, flagged against the labelled cases now."""
        params: dict[str, Any] = {"round": round} if round is not None else {}
        if live:
            params["model"] = "live"
        d = self._json("GET", f"/cases/{_seg(case_id)}/qa", params=params or None, timeout=self.long_timeout)
        d["structures"] = [build(StructureQA, r) for r in d["structures"]]
        return build(CaseQA, d)

    def next_case(self, by: str = "disagreement") -> NextCase:
        """The unlabelled case to label next; ``by="qa"``: the one with the most QA flags."""
        params = {"by": by} if by != "disagreement" else None
        return build(NextCase, self._json("GET", "/next-case", params=params, timeout=self.long_timeout))

    # ------------------------------------------------------------------ models
    def list_models(self) -> ModelList:
        d = self._json("GET", "/models")
        return ModelList(d["current"], [build(ModelRound, r) for r in d["rounds"]])

    def set_current_model(self, round: int) -> ModelList:
        d = self._json("PUT", "/models/current", json={"round": round})
        return ModelList(d["current"], [build(ModelRound, r) for r in d["rounds"]])

    def export_models(self, out_path: str | Path, round: int | None = None) -> Path:
        params = {"round": round} if round is not None else None
        return self._download("/models/export", out_path, params=params)

    def import_models(self, path: str | Path, make_current: bool = True) -> ModelRound:
        p = Path(path).expanduser()
        with open(p, "rb") as f:
            d = self._json(
                "POST",
                "/models/import",
                files={"file": (p.name, f, "application/zip")},
                data={"make_current": str(make_current).lower()},
                timeout=self.long_timeout,
            )
        return build(ModelRound, d)


def _seg(case_id: str) -> str:
    """Quote a case ID for use as one URL path segment."""
    from urllib.parse import quote

    return quote(str(case_id), safe="")
