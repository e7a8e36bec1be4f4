"""The service object: everything behind the HTTP layer (workspace, training, models, prediction).

Routes (``routes/``) translate HTTP to calls on one :class:`Service`; the methods here raise
:class:`~reciprocalseg.service.errors.ApiError` subclasses that become 4xx answers.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import reciprocalseg
from reciprocalseg.common.display import excerpt
from reciprocalseg.common.errors import DataError, ReciprocalSegError

from . import schemas as S
from .auto_retrain import AutoRetrain
from .errors import ApiError, Conflict, Forbidden, Invalid, NotFound, TooLarge, UnsupportedType
from .fingerprints import CaseFingerprints
from .jobs import TrainingManager
from .live import LiveCheckpoint, LiveModel
from .middleware import LOOPBACK_HOSTS
from .model_store import ModelStore
from .quality import StructureChecks, n_flags
from .refinement import Refinements
from .rounds import record_background_only
from .uploads import looks_like_dicom_folder, read_upload
from .workspace import DEFAULT_MAX_VOXELS, Workspace, check_new_case_id, label_max

if TYPE_CHECKING:
    from reciprocalseg.inference.sliding_window import TeacherStudentPredictor

log = logging.getLogger(__name__)

PredictionModel = Literal["current", "live"]
PATH_CHARS = 300  # of a path quoted in an answer (a request may send 4096)
Ranking = Literal["disagreement", "qa"]


@dataclass
class ServiceConfig:
    """How a service instance runs (from the ``serve`` command line)."""

    workspace: Path
    n_classes: int | None = None
    max_upload_mb: float = 2048.0
    token: str | None = None
    device: str = "auto"
    train_command: list[str] | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    allowed_origins: tuple[str, ...] = ()
    register_roots: tuple[Path, ...] = ()
    max_voxels: int = DEFAULT_MAX_VOXELS
    extra: dict[str, Any] = field(default_factory=dict)


class Service:
    """Everything behind the HTTP layer: the workspace, the training manager and cached models."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.ws = Workspace(config.workspace, n_classes=config.n_classes)
        self.fingerprints = CaseFingerprints(self.ws)
        self.jobs = TrainingManager(
            self.ws,
            fingerprints=self.fingerprints,
            train_command=config.train_command,
            default_device=config.device,
            on_round=self._new_round,
        )
        self.models = ModelStore(self.ws, self.max_upload_bytes)
        self.auto_retrain = AutoRetrain(self.ws, self.jobs)
        self.refinements = Refinements(
            self.ws,
            self.fingerprints,
            self.auto_retrain,
            default_device=config.device,
            max_voxels=config.max_voxels,
            stopping=lambda: self.closed,
        )
        self._predictor: Any = None
        self._predictor_key: tuple[int, str, str] | None = None
        self._predict_lock = threading.Lock()
        self.live = LiveModel(config.device)
        self.checks = StructureChecks(self.ws)
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
        self.auto_retrain.start()

    def close(self) -> None:
        """Stop a running training worker (with a checkpoint); it resumes at the next start-up."""
        if not self.closed:
            self.closed = True
            self.auto_retrain.close()
            self.jobs.shutdown()

    def _new_round(self, entry: dict[str, Any]) -> None:
        log.info("model round %s is now current", entry["round"])
        if entry.get("source") == "trained" and not self.closed:
            # Off the training watcher's thread: it predicts, which takes a while on big scans.
            threading.Thread(target=self._check_round, args=(entry,), daemon=True, name="round-check").start()

    def _check_round(self, entry: dict[str, Any]) -> None:
        try:
            networks = self.background_only_networks(entry)
        except Exception as exc:  # a check, not a reason to disturb the service
            log.warning("could not check round %s for background-only predictions: %s", entry["round"], exc)
            return
        if networks:
            record_background_only(self.ws, entry, networks)

    def background_only_networks(self, entry: dict[str, Any], max_cases: int = 2) -> list[str]:
        """The networks of a round that predict background everywhere on labelled scans with foreground.

        A few labelled cases are enough to catch a round that has learned nothing (the student
        stuck in the all-background optimum); where a network finds anything, it is not flagged.
        """
        from reciprocalseg.data.io import read_image
        from reciprocalseg.inference.sliding_window import TeacherStudentPredictor

        cases = []
        for rec in self.ws.all_cases():
            cur = self.ws.current_label(rec)
            if cur is not None and label_max(self.ws.case_dir(rec["id"]), cur) > 0:
                cases.append(rec["id"])
        if not cases:
            return []
        teacher, student = self.ws.model_paths(entry)
        predictor = TeacherStudentPredictor(teacher, student, device=self.config.device)
        empty = {"teacher": True, **({} if predictor.teacher_only else {"student": True})}
        for case_id in cases[:max_cases]:
            result = predictor.predict(read_image(self.ws.image_path(case_id)))
            empty["teacher"] &= _all_background(result.teacher)
            if result.student is not None:
                empty["student"] &= _all_background(result.student)
        return [name for name, is_empty in empty.items() if is_empty]

    # ------------------------------------------------------------------ cases
    def case_info(self, rec: dict[str, Any], current_round: int | None) -> S.CaseInfo:
        cur = self.ws.current_label(rec)
        preds = rec.get("predictions") or {}
        latest = max(preds.values(), key=lambda p: p["round"]) if preds else None
        chosen = preds.get(str(current_round)) if current_round is not None else None
        chosen = chosen or latest
        status = "labelled" if cur is not None else ("predicted" if preds else "unlabelled")
        annotation, fraction = self.ws.annotation(rec)
        return S.CaseInfo(
            id=rec["id"],
            status=status,
            added=rec["added"],
            source=rec.get("source"),
            geometry=S.Geometry(**rec["geometry"]),
            label_version=cur["version"] if cur else None,
            n_label_versions=len(rec["labels"]),
            annotation=annotation,
            annotated_fraction=fraction,
            score=chosen["score"] if chosen else None,
            score_round=chosen["round"] if chosen else None,
            score_current=bool(chosen and chosen["round"] == current_round),
            qa_flags=n_flags(self.checks.rows(rec["id"], chosen)[0]) if chosen and chosen.get("qa") else None,
            metadata=rec.get("metadata") or {},
        )

    def add_uploaded_case(self, tmp: Path, filename: str, case_id: str | None) -> S.CaseInfo:
        from reciprocalseg.data.io import case_id_from_path

        if case_id is None:
            case_id = case_id_from_path(filename)
            try:
                check_new_case_id(case_id)
            except Invalid as exc:
                raise Invalid(
                    f"{exc.message} (derived from the file name {filename!r}); pass case_id"
                ) from None
        check_new_case_id(case_id)
        self.ws.refuse_taken_id(case_id)
        image = read_upload(tmp, filename, self.config.max_voxels)
        rec = self.ws.add_case(image, case_id, source=f"upload:{filename}")
        self.fingerprints.record(case_id, image)
        return self.case_info(rec, self.ws.registry().get("current"))

    def register_case(self, req: S.RegisterCase) -> S.CaseInfo:
        from reciprocalseg.data.io import case_id_from_path, image_suffix, read_image

        path = self.registrable_path(req.path)
        if path.is_dir() and not looks_like_dicom_folder(path):
            raise Invalid(f"{path}: a folder must hold a DICOM series (files with the DICM marker)")
        if not path.is_dir() and not path.is_file():
            raise Invalid(f"{path}: not a regular file or folder")
        if path.is_file() and image_suffix(path) is None:
            raise UnsupportedType(
                f"{path}: unsupported file type; use NRRD, NIfTI, MetaImage or a DICOM folder"
            )
        case_id = req.case_id if req.case_id is not None else case_id_from_path(path)
        check_new_case_id(case_id)
        self.ws.refuse_taken_id(case_id)
        try:
            image = read_image(path, max_voxels=self.config.max_voxels)
        except DataError as exc:
            raise _image_error(exc) from None
        rec = self.ws.add_case(image, case_id, source=f"path:{path}")
        self.fingerprints.record(case_id, image)
        return self.case_info(rec, self.ws.registry().get("current"))

    def registrable_path(self, given: str) -> Path:
        """The resolved ``given`` if it lies in a ``--register-root`` folder and exists.

        A path outside those folders gets the same 404 as a missing one, so the answer never
        tells whether some other file exists on the server.
        """
        roots = self.config.register_roots
        if not roots:
            raise Forbidden(
                "registering files from the server's disk is off; start the service with "
                "--register-root FOLDER (or upload the file)"
            )
        path = Path(given).expanduser()
        if "\x00" in given or not path.is_absolute():
            raise Invalid(f"path {excerpt(given, PATH_CHARS)} must be an absolute path on the server")
        given = given if len(given) <= PATH_CHARS else excerpt(given, PATH_CHARS)  # quoted, not echoed
        shown = ", ".join(str(r) for r in roots)
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            resolved = None
        if resolved is None or not any(resolved.is_relative_to(r) for r in roots):
            raise NotFound(f"{given}: no such file or folder in the registrable folders ({shown})")
        if resolved.is_dir() and _links_outside(resolved, roots):
            raise Invalid(
                f"{given}: the folder holds links to files outside the registrable folders ({shown})"
            )
        return resolved

    # ------------------------------------------------------------------ labels
    def put_label(
        self, case_id: str, tmp: Path, filename: str, author: str | None, kind: str, note: str | None
    ) -> S.LabelVersion:
        import SimpleITK as sitk

        from reciprocalseg.data.io import read_image
        from reciprocalseg.data.validation import check_label, largest_class

        image_path = self.ws.image_path(case_id)
        label = read_upload(tmp, filename, self.config.max_voxels)
        image = read_image(image_path)
        fixed = self.ws.n_classes_fixed
        try:
            # check_label takes the largest allowed value; unfixed counts grow with the labels.
            arr = check_label(
                label, image, source=filename, n_classes=self.ws.n_classes - 1 if fixed else None
            )
        except DataError as exc:
            raise Invalid(_fixed_classes_hint(str(exc).replace(str(tmp), filename), fixed)) from None
        max_value = largest_class(arr)  # 255 marks unannotated voxels (a partial label), no class
        if not fixed:
            _refuse_class_gaps(arr, max_value, self.ws.n_classes, filename)
        stored = sitk.GetImageFromArray(arr)
        stored.CopyInformation(image)
        entry = self.ws.add_label(
            case_id,
            stored,
            kind=kind,
            author=author,
            source=f"upload:{filename}",
            note=note,
            max_value=max_value,
        )
        if kind == "submitted":
            self.ws.grow_n_classes(max_value + 1)
            self.fingerprints.record(case_id, image, arr, entry["version"])
            self.auto_retrain.notify()
        return S.LabelVersion(**entry, warning=_all_background_warning(case_id, arr, kind))

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
        from reciprocalseg.inference.sliding_window import TeacherStudentPredictor

        entry = self.ws.round_entry(None)
        teacher, student = self.ws.model_paths(entry)
        key = (entry["round"], str(teacher), str(student))
        if self._predictor_key != key or self._predictor is None:
            # Forget the old key with the old model: a failed load must not leave the key of a model
            # that is no longer held (the next request for that round would find None: a 500 until
            # a restart).
            self._predictor, self._predictor_key = None, None
            try:
                self._predictor = TeacherStudentPredictor(teacher, student, device=self.config.device)
            except (OSError, ReciprocalSegError, RuntimeError, ValueError, KeyError) as exc:
                raise Conflict(
                    f"cannot load the models of round {entry['round']}: {exc}. Make another round current "
                    "(PUT /models/current), or train or import a new one"
                ) from None
            self._predictor_key = key
        return entry["round"], self._predictor

    def predict(self, case_id: str, model: PredictionModel = "current") -> S.PredictionInfo:
        """Predict a case with the current round, or (``model="live"``) with the latest checkpoint of
        the round in training; when no round is training that is the current round too."""
        from reciprocalseg.data.io import read_image

        self.ws.get_case(case_id)
        image = read_image(self.ws.image_path(case_id))
        with self._predict_lock:
            live = self.live_predictor() if model == "live" else None
            if live is not None:
                checkpoint, predictor = live
                round_id = self._training_round_number()
                provenance = _live_provenance(checkpoint)
            else:
                round_id, predictor = self.predictor()
                provenance = {"live": False, "run_id": self.ws.round_entry(round_id).get("run_id")}
            try:
                result = predictor.predict(image)
            except DataError as exc:  # e.g. a constant scan stored before uploads were checked for it
                raise Invalid(f"case {case_id}: {exc}; replace its scan or delete the case") from None
        extra = {
            "teacher_empty": _all_background(result.teacher),
            "student_empty": None if result.student is None else _all_background(result.student),
            "teacher_only": result.student is None,
            **provenance,
            **self.checks.measure(case_id, result.teacher, result.student, predictor.teacher.n_classes),
        }
        entry = self.ws.store_prediction(
            case_id,
            round_id,
            result.teacher,
            result.student,
            result.disagreement,
            result.score,
            extra,
            live=provenance["live"],
        )
        if extra["teacher_empty"] or extra["student_empty"]:
            log.warning("case %s, round %s: %s", case_id, round_id, background_warning(entry))
        return self.prediction_info(case_id, entry)

    def live_predictor(self) -> tuple[LiveCheckpoint, TeacherStudentPredictor] | None:
        """The latest checkpoint of the round in training; None when no round is training.

        Before the round's first checkpoint the current round answers; without one either, 409.
        """
        run_id = self.jobs.active_run
        if run_id is None:
            return None
        live = self.live.get(self.ws.runs_dir / run_id)
        if live is None and self.ws.registry().get("current") is None:
            raise Conflict(
                f"the round in training (run {run_id}) has not written its first checkpoint yet and there "
                "is no finished round; try again after its next checkpoint (training events show them)"
            )
        return live

    def _training_round_number(self) -> int:
        """The number the round in training gets when it finishes (unless a round is imported first)."""
        return max((r["round"] for r in self.ws.registry()["rounds"]), default=0) + 1

    def prediction_info(self, case_id: str, entry: dict[str, Any]) -> S.PredictionInfo:
        fields = {k: v for k, v in entry.items() if k in S.PredictionInfo.model_fields and k != "qa"}
        note = teacher_only_note(entry["round"]) if entry.get("teacher_only") else None
        info = S.PredictionInfo(case_id=case_id, **fields, warning=background_warning(entry), note=note)
        if entry.get("qa") is not None:
            rows, _ = self.checks.rows(case_id, entry)
            info.qa = [S.StructureQA(**_qa_fields(r.to_dict())) for r in rows]
            info.qa_flags = n_flags(rows)
        return info

    def prediction_entry(self, case_id: str, round_id: int | None, live: bool = False) -> dict[str, Any]:
        rec = self.ws.get_case(case_id)
        if live:
            entry = rec.get("live_prediction")
            if entry is None:
                raise NotFound(
                    f"case {case_id!r} has no live prediction; POST /cases/{case_id}/predict?model=live "
                    "while a round trains"
                )
            return entry
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

    def case_qa(self, case_id: str, round_id: int | None, live: bool = False) -> S.CaseQA:
        """Per-structure QA of a stored prediction, flagged against the labelled cases now."""
        entry = self.prediction_entry(case_id, round_id, live)
        rows, ranges = self.checks.rows(case_id, entry)
        return S.CaseQA(
            case_id=case_id,
            round=entry["round"],
            live=bool(entry.get("live")),
            run_id=entry.get("run_id"),
            iteration=entry.get("iteration"),
            structures=[S.StructureQA(**_qa_fields(r.to_dict())) for r in rows],
            n_flags=n_flags(rows),
            reference=S.QAReference(**ranges.to_dict()),
        )

    def next_case(self, by: Ranking = "disagreement") -> S.NextCase:
        """The unlabelled case to label next (predicting those the current round has not scored).

        ``by="disagreement"``: the largest teacher/student disagreement (a case where both see
        nothing first). ``by="qa"``: the most QA flags over both networks' structures, ties broken
        by the disagreement ranking. A teacher-only current round (supervised only) has no
        disagreement: its cases are ranked by the teacher's QA flags, and the answer says so.
        """
        candidates = [c for c in self.ws.all_cases() if self.ws.current_label(c) is None]
        if not candidates:
            return S.NextCase(case_id=None, n_candidates=0, by=by)
        current = self.ws.registry().get("current")
        if current is None:
            raise Conflict("no model yet: train a round (POST /training) or import models first")
        n_new = 0
        preds: dict[str, dict[str, Any]] = {}
        for c in candidates:
            pred = (c.get("predictions") or {}).get(str(current))
            if pred is None:
                try:
                    self.predict(c["id"])
                    pred = self.ws.get_case(c["id"])["predictions"][str(current)]
                except (NotFound, KeyError):
                    continue  # deleted meanwhile, or the current round changed
                n_new += 1
            preds[c["id"]] = pred
        teacher_only = bool(self.ws.round_entry(current).get("teacher_only"))
        note = None
        if teacher_only:
            by = "qa"
            note = (
                f"{teacher_only_note(current)}: ranked by the teacher's QA flags (a case where it finds "
                "nothing first), not by disagreement"
            )
        if not preds:
            return S.NextCase(case_id=None, n_candidates=0, by=by, teacher_only=teacher_only, note=note)
        flags = {k: n_flags(self.checks.rows(k, p)[0]) for k, p in preds.items()} if by == "qa" else {}
        best = max(preds, key=lambda k: (flags.get(k, 0), *uncertainty_rank(k, preds[k])))
        return S.NextCase(
            case_id=best,
            score=preds[best]["score"],
            both_empty=both_empty(preds[best]),
            round=current,
            n_candidates=len(preds),
            n_predicted_now=n_new,
            by=by,
            qa_flags=flags.get(best),
            teacher_only=teacher_only,
            note=note,
        )

    # ------------------------------------------------------------------ plan
    def plan(self) -> dict[str, Any]:
        """The ``auto`` plan the next round would run (warm-started from the current round) on the
        service's device, from the cases' stored fingerprint records."""
        return self.jobs.plan().to_dict()

    # ------------------------------------------------------------------ settings
    def settings(self) -> S.Settings:
        return S.Settings(
            n_classes=self.ws.n_classes,
            n_classes_fixed=self.ws.n_classes_fixed,
            retrain_after=self.auto_retrain.after,
            retrain_minutes=self.auto_retrain.minutes,
            corrections=self.auto_retrain.corrections(),
            retrain_message=self.auto_retrain.message,
        )

    def update_settings(self, req: S.SettingsUpdate) -> S.Settings:
        given = req.model_fields_set  # an absent field stays as it is; n_classes null means "follow"
        if "n_classes" in given:
            self.ws.set_n_classes(req.n_classes)
        if {"retrain_after", "retrain_minutes"} & given:
            after = req.retrain_after if "retrain_after" in given else self.auto_retrain.after
            self.auto_retrain.configure(after, req.retrain_minutes)
        return self.settings()

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
            n_classes_fixed=self.ws.n_classes_fixed,
            current_round=reg.get("current"),
            training_state=self.jobs.status()["state"],
            max_upload_mb=self.config.max_upload_mb,
            auth=bool(self.config.token),
        )


def _image_error(exc: DataError) -> ApiError:
    """413 for an image over the voxel limit, 422 for any other problem with an image."""
    from reciprocalseg.data.io import TooManyVoxels

    return TooLarge(str(exc)) if isinstance(exc, TooManyVoxels) else Invalid(str(exc))


def _refuse_class_gaps(arr: Any, max_value: int, n_classes: int, filename: str) -> None:
    """Refuse a label that would grow a following class count past classes no label has.

    One such upload (a scan sent as a label, another tool's numbering such as 254) would otherwise
    raise the count for good (stored versions are never rewritten, and the count cannot go below
    what they use), and every round would train that many output channels.
    """
    from reciprocalseg.data.validation import present_values

    if max_value < n_classes:
        return
    missing = sorted(set(range(n_classes, max_value)) - {int(v) for v in present_values(arr)})
    if missing:
        shown = f"{missing[0]}..{missing[-1]}" if len(missing) > 3 else ", ".join(map(str, missing))
        raise Invalid(
            f"{filename}: the label holds class {max_value}, but no label has class {shown} "
            f"(the workspace has {n_classes} classes, 0..{n_classes - 1}): is it a scan, or another "
            "tool's class numbering? Remap the label to consecutive classes, or, if the classes are "
            f'meant, fix the count first: PUT /settings {{"n_classes": {max_value + 1}}} '
            f"(client.set_n_classes({max_value + 1}))."
        )


def _all_background_warning(case_id: str, labels: Any, kind: str) -> str | None:
    """The warning of a submitted full label with no foreground voxel (every voxel class 0): a
    Slicer label nobody painted, or a mask saved empty; stored, as asked, but said. A partial
    label (255 = unannotated) with only background strokes is what scribbles may mean: no warning."""
    from reciprocalseg.common.file_formats import UNANNOTATED

    if kind != "submitted" or (labels == UNANNOTATED).any() or labels.any():
        return None
    return (
        f"The label of {case_id} has no voxel of any class: the case is labelled all background. "
        "Upload a corrected label if that was not meant."
    )


def _fixed_classes_hint(message: str, fixed: bool) -> str:
    if fixed and "configured number of classes" in message:
        return (
            message.split(" Set n_classes")[0]
            + " The class count is fixed (serve --n-classes or PUT /settings); raise it with PUT /settings "
            '{"n_classes": N} (background included), or remap the label values.'
        )
    return message


def _live_provenance(checkpoint: LiveCheckpoint) -> dict[str, Any]:
    return {
        "live": True,
        "run_id": checkpoint.run_id,
        "phase": checkpoint.phase,
        "iteration": checkpoint.iteration,
    }


def _qa_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k in S.StructureQA.model_fields}


def _all_background(labels: Any) -> bool:
    import numpy as np
    import SimpleITK as sitk

    return not np.any(sitk.GetArrayViewFromImage(labels))


def both_empty(pred: dict[str, Any]) -> bool:
    """Whether neither network found anything (their disagreement score is then 0 by definition)."""
    return bool(pred.get("teacher_empty") and pred.get("student_empty"))


def uncertainty_rank(case_id: str, pred: dict[str, Any]) -> tuple[bool, float, str]:
    """Sort key of next-case, largest first: a case where both networks see nothing is the most
    uncertain of all (score 0 only because there is nothing to compare), then the disagreement.
    A teacher-only prediction has no disagreement: a case where the teacher sees nothing first."""
    if pred.get("teacher_only"):
        return bool(pred.get("teacher_empty")), 0.0, case_id
    return both_empty(pred), float(pred["score"]), case_id


def teacher_only_note(round_id: int) -> str:
    """What a teacher-only round's answers say about it."""
    return (
        f"round {round_id} is supervised-only: a teacher, no student (its student never trained), so "
        "there is no student map and no disagreement"
    )


def background_warning(pred: dict[str, Any]) -> str | None:
    """The warning shown with a prediction in which a network predicts background everywhere."""
    empty = [name for name in ("teacher", "student") if pred.get(f"{name}_empty")]
    if not empty:
        return None
    who = " and ".join(empty)
    return (
        f"the {who} predicts background everywhere in this scan; if this happens on scans that "
        "show the structure, the round has not learned it (more labels or iterations, or check the labels)"
    )


def _links_outside(folder: Path, roots: tuple[Path, ...]) -> bool:
    """Whether a (DICOM) folder holds entries that resolve outside every root."""
    try:
        return any(not any(f.resolve().is_relative_to(r) for r in roots) for f in folder.iterdir())
    except OSError:
        return True
