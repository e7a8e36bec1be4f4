"""Python client of the ReciprocalSeg service (usable from any Python console, Slicer's included).

>>> from reciprocalseg.client import Client
>>> c = Client(workspace="~/rs-workspace")       # URL and token from WORKSPACE/.service/
>>> c.add_cases_from_folder("scans/")
>>> c.put_label("case01", "case01_label.nrrd", author="me")
>>> c.plan()["values"]                          # what an auto round will train with, and why
>>> c.start_training(minutes=10); c.wait_for_training(callback=print)
>>> c.next_case()

Every method raises :class:`ServiceError` carrying the server's message (``status_code`` is 0 when
the service could not be reached at all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests

from .common.file_formats import IMAGE_SUFFIXES, LABEL_NAME_SUFFIXES, UPLOAD_SUFFIXES

__all__ = [
    "CaseInfo",
    "CaseQA",
    "Client",
    "DeviceInfo",
    "FolderImport",
    "LabelHistory",
    "LabelVersion",
    "ModelList",
    "ModelRound",
    "NextCase",
    "PredictionResult",
    "RefinedPrediction",
    "ServiceError",
    "ServiceInfo",
    "StructureQA",
    "TrainingEvents",
    "TrainingStatus",
]

T = TypeVar("T")


class ServiceError(Exception):
    """An error answer of the service (``status_code`` 4xx/5xx), or 0 when it cannot be reached."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status_code})" if status_code else message)
        self.status_code = status_code
        self.message = message


def _build(cls: type[T], data: dict[str, Any]) -> T:
    """Instantiate a dataclass from a JSON object, ignoring keys it does not know."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class DeviceInfo:
    type: str
    name: str
    memory_gb: float | None = None
    cpu_count: int | None = None


@dataclass
class ServiceInfo:
    version: str
    workspace: str
    device: DeviceInfo
    counts: dict[str, int]
    n_classes: int
    current_round: int | None
    training_state: str
    max_upload_mb: float
    auth: bool
    n_classes_fixed: bool = False


@dataclass
class CaseInfo:
    id: str
    status: str
    added: str
    geometry: dict[str, Any]
    source: str | None = None
    label_version: int | None = None
    n_label_versions: int = 0
    annotation: str = "none"  # "full", "partial" (some voxels 255 = unannotated) or "none"
    annotated_fraction: float = 0.0
    score: float | None = None
    score_round: int | None = None
    score_current: bool = False
    qa_flags: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LabelVersion:
    version: int
    kind: str
    time: str
    author: str | None = None
    source: str | None = None
    note: str | None = None
    annotated_fraction: float | None = None  # < 1: a partial label (255 = unannotated)


@dataclass
class LabelHistory:
    case_id: str
    current: int | None
    versions: list[LabelVersion]


@dataclass
class TrainingStatus:
    state: str
    run_id: str | None = None
    round: int | None = None
    current_round: int | None = None
    rounds: int = 0
    preset: str | None = None
    phase: str | None = None
    iteration: int | None = None
    total: int | None = None
    overall_iteration: int | None = None
    overall_total: int | None = None
    losses: dict[str, Any] = field(default_factory=dict)
    h: float | None = None
    lr: float | None = None
    sec_per_iter: float | None = None
    eta_s: float | None = None
    device: str | None = None
    message: str | None = None
    started: str | None = None
    finished: str | None = None
    n_events: int = 0
    n_labeled: int | None = None
    n_unlabeled: int | None = None
    warm_start_round: int | None = None
    warning: str | None = None
    background_only: list[str] = field(default_factory=list)
    plan: dict[str, Any] | None = None  # an auto round's planned values (None for other presets)

    @property
    def active(self) -> bool:
        return self.state == "running"

    @property
    def fraction(self) -> float | None:
        """Progress in [0, 1] when known."""
        if self.overall_iteration is not None and self.overall_total:
            return min(1.0, self.overall_iteration / self.overall_total)
        if self.iteration is None or not self.total:
            return None
        return min(1.0, self.iteration / self.total)


@dataclass
class TrainingEvents:
    run_id: str | None
    events: list[dict[str, Any]]
    next: int
    total: int


@dataclass
class StructureQA:
    """QA of one class in one network's prediction (see docs/SERVICE.md, "Per-structure QA")."""

    model: str
    label: int
    volume_ml: float
    pieces: int
    disagreement: float | None = None
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class PredictionResult:
    """A prediction and the model that made it: ``round`` (for a live one, the number the round in
    training will get), ``live``, ``run_id``, ``phase`` and ``iteration`` of the checkpoint."""

    case_id: str
    round: int
    score: float
    time: str
    teacher: Path | None = None
    student: Path | None = None
    disagreement: Path | None = None
    teacher_empty: bool | None = None
    student_empty: bool | None = None
    warning: str | None = None
    live: bool = False
    run_id: str | None = None
    phase: str | None = None
    iteration: int | None = None
    qa: list[StructureQA] | None = None
    qa_flags: int | None = None

    @property
    def flagged(self) -> list[StructureQA]:
        """The structures with at least one QA flag."""
        return [r for r in self.qa or [] if r.flags]


@dataclass
class RefinedPrediction:
    """A refine's result: ``name`` (``refined from round N, K strokes``), the ``round`` and ``model``
    it adapted, the strokes it learnt from, the partial ``label_version`` that stores them and,
    when downloaded, the refined label map in ``labels``."""

    case_id: str
    name: str
    round: int
    model: str
    strokes: int
    iterations: int
    seconds: float
    annotated_voxels: int
    label_version: int
    time: str
    file: str
    time_limit_s: float | None = None
    device: str | None = None
    merged_with: int | None = None
    accepted_version: int | None = None
    stopped_by: str | None = None  # "time" (the limit) or "iterations" (the cap on steps)
    stroke_agreement: float | None = None
    labels: Path | None = None


@dataclass
class CaseQA:
    case_id: str
    round: int
    structures: list[StructureQA]
    n_flags: int
    reference: dict[str, Any]
    live: bool = False
    run_id: str | None = None
    iteration: int | None = None


@dataclass
class NextCase:
    case_id: str | None
    score: float | None = None
    round: int | None = None
    n_candidates: int = 0
    n_predicted_now: int = 0
    both_empty: bool = False
    by: str = "disagreement"
    qa_flags: int | None = None


@dataclass
class ModelRound:
    round: int
    source: str
    created: str
    run_id: str | None = None
    preset: str | None = None
    n_classes: int | None = None
    fewer_classes: bool = False
    n_labeled: int | None = None
    n_unlabeled: int | None = None
    warm_start_round: int | None = None
    current: bool = False
    background_only: list[str] | None = None
    teacher_sha256: str | None = None
    student_sha256: str | None = None


@dataclass
class ModelList:
    current: int | None
    rounds: list[ModelRound]

    def __len__(self) -> int:
        return len(self.rounds)


class FolderImport(list):
    """The cases :meth:`Client.add_cases_from_folder` added (it is a list of them), and ``skipped``:
    the case IDs the workspace had already."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[str] = []


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
        return self.workspace / ".service"

    def _workspace_url(self) -> str:
        """The URL the workspace's running service wrote; ServiceError(0) when none is running."""
        try:
            url = (self._service_dir / "url").read_text(encoding="utf-8").strip()
        except OSError:
            url = ""
        if not url:
            raise ServiceError(
                0,
                f"no running service found for workspace {self.workspace} (no {self._service_dir / 'url'}); "
                f"start one with `reciprocalseg serve --workspace {self.workspace}`",
            )
        return url

    def _workspace_token(self) -> str | None:
        try:
            return (self._service_dir / "token").read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

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
        d["device"] = _build(DeviceInfo, d["device"])
        return _build(ServiceInfo, d)

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
        return [_build(CaseInfo, c) for c in self._json("GET", "/cases")["cases"]]

    def get_case(self, case_id: str) -> CaseInfo:
        return _build(CaseInfo, self._json("GET", f"/cases/{_seg(case_id)}"))

    def add_case(self, image_path: str | Path, case_id: str | None = None, upload: bool = True) -> CaseInfo:
        """Add a scan: upload the file (default), or register a path the server can read itself."""
        p = Path(image_path).expanduser()
        if not upload:
            body: dict[str, Any] = {"path": str(p.resolve())}
            if case_id is not None:
                body["case_id"] = case_id
            return _build(
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
        return _build(CaseInfo, d)

    def add_cases_from_folder(self, folder: str | Path, upload: bool = True) -> FolderImport:
        """Add every scan file of a folder (label files ``*_label.*``/``*_seg.*`` are skipped).

        Idempotent: scans whose case ID the workspace already has are skipped, not an error, so a
        rerun after an interrupted import adds the rest. Returns the added cases (a list) with
        ``.skipped``, the IDs that were there already.
        """
        from reciprocalseg.data.io import case_id_from_path

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
        return _build(LabelVersion, d)

    def get_label(self, case_id: str, out_path: str | Path, version: int | None = None) -> Path:
        params = {"version": version} if version is not None else None
        return self._download(f"/cases/{_seg(case_id)}/label", out_path, params=params)

    def label_history(self, case_id: str) -> LabelHistory:
        d = self._json("GET", f"/cases/{_seg(case_id)}/labels")
        return LabelHistory(d["case_id"], d["current"], [_build(LabelVersion, v) for v in d["versions"]])

    def draft_from_prediction(self, case_id: str, author: str | None = None) -> LabelVersion:
        """Store the current teacher prediction as a draft label version."""
        params = {"author": author} if author else None
        return _build(
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
        return _build(TrainingStatus, self._json("POST", "/training", json=body))

    def training_status(self, run_id: str | None = None) -> TrainingStatus:
        params = {"run_id": run_id} if run_id else None
        return _build(TrainingStatus, self._json("GET", "/training", params=params))

    def training_events(self, since: int = 0, run_id: str | None = None) -> TrainingEvents:
        params: dict[str, Any] = {"since": since}
        if run_id:
            params["run_id"] = run_id
        return _build(TrainingEvents, self._json("GET", "/training/events", params=params))

    def stop_training(self) -> TrainingStatus:
        return _build(TrainingStatus, self._json("POST", "/training/stop", timeout=max(self.timeout, 120)))

    def resume_training(self, run_id: str | None = None) -> TrainingStatus:
        return _build(TrainingStatus, self._json("POST", "/training/resume", json={"run_id": run_id}))

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
        res = _prediction(d)
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
        res = _prediction(d)
        if out_dir is not None:
            self._download_prediction(res, Path(out_dir))
        return res

    def _download_prediction(self, res: PredictionResult, out_dir: Path) -> None:
        params: dict[str, Any] = {"model": "live"} if res.live else {"round": res.round}
        for kind in ("teacher", "student", "disagreement"):
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
        with _strokes_file(self, case_id, strokes) as path, open(path, "rb") as f:
            d = self._json(
                "POST",
                f"/cases/{_seg(case_id)}/refine",
                files={"file": (path.name, f, "application/octet-stream")},
                data=data,
                timeout=self.long_timeout,
            )
        res = _build(RefinedPrediction, d)
        if out_dir is not None:
            self._download_refined(res, Path(out_dir))
        return res

    def get_refined(self, case_id: str, out_dir: str | Path | None = None) -> RefinedPrediction:
        """The case's latest refine (404 without one); with ``out_dir``, its map downloaded."""
        res = _build(RefinedPrediction, self._json("GET", f"/cases/{_seg(case_id)}/refined"))
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
        return _build(LabelVersion, d)

    def refine_status(self) -> dict[str, Any]:
        """The refine in progress: ``{"running": bool, "case_id", "elapsed_s", "time_limit_s", ...}``."""
        return self._json("GET", "/refine")

    def qa(self, case_id: str, round: int | None = None, live: bool = False) -> CaseQA:
        """Per-structure QA of a case's stored prediction, flagged against the labelled cases now."""
        params: dict[str, Any] = {"round": round} if round is not None else {}
        if live:
            params["model"] = "live"
        d = self._json("GET", f"/cases/{_seg(case_id)}/qa", params=params or None, timeout=self.long_timeout)
        d["structures"] = [_build(StructureQA, r) for r in d["structures"]]
        return _build(CaseQA, d)

    def next_case(self, by: str = "disagreement") -> NextCase:
        """The unlabelled case to label next; ``by="qa"``: the one with the most QA flags."""
        params = {"by": by} if by != "disagreement" else None
        return _build(NextCase, self._json("GET", "/next-case", params=params, timeout=self.long_timeout))

    # ------------------------------------------------------------------ models
    def list_models(self) -> ModelList:
        d = self._json("GET", "/models")
        return ModelList(d["current"], [_build(ModelRound, r) for r in d["rounds"]])

    def set_current_model(self, round: int) -> ModelList:
        d = self._json("PUT", "/models/current", json={"round": round})
        return ModelList(d["current"], [_build(ModelRound, r) for r in d["rounds"]])

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
        return _build(ModelRound, d)


def _prediction(d: dict[str, Any]) -> PredictionResult:
    if d.get("qa") is not None:
        d = {**d, "qa": [_build(StructureQA, r) for r in d["qa"]]}
    return _build(PredictionResult, d)


@contextlib.contextmanager
def _strokes_file(client: Client, case_id: str, strokes: Any) -> Iterator[Path]:
    """The strokes as a file: the path given, or an array written on the case's grid (temporary)."""
    if isinstance(strokes, str | Path):
        yield Path(strokes).expanduser()
        return
    import tempfile

    import numpy as np
    import SimpleITK as sitk

    geometry = client.get_case(case_id).geometry
    image = sitk.GetImageFromArray(np.asarray(strokes).astype(np.uint8))
    if list(image.GetSize()) != list(geometry["size"]):
        raise ValueError(
            f"the strokes array has shape {np.shape(strokes)} (z, y, x); case {case_id} is "
            f"{tuple(reversed(geometry['size']))} (z, y, x)"
        )
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    with tempfile.TemporaryDirectory(prefix="reciprocalseg-strokes-") as folder:
        path = Path(folder) / f"{case_id}_strokes.nrrd"
        sitk.WriteImage(image, str(path), True)
        yield path


def _seg(case_id: str) -> str:
    """Quote a case ID for use as one URL path segment."""
    from urllib.parse import quote

    return quote(str(case_id), safe="")
