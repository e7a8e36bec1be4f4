"""Refine a case from strokes, beside the cohort model: ``POST /cases/{id}/refine`` and *Accept*.

A refine takes a strokes map (the partial-label convention: 255 unannotated, 0 background, k
class k) painted over the case's shown prediction, and:

1. **checks** it before any work: the case exists, a current round exists, the map is a 3D
   single-component image on the case's voxel grid, it has at least one stroke, its classes are
   ones the workspace has and the round segments; the case's current label is not a full one
   (a full label is never replaced by strokes: edit it instead). Each refusal is a 4xx naming
   the problem, and nothing stored changes;
2. **accumulates** the strokes: when the case's current label is partial (earlier refines or
   submitted scribbles), the new map is painted over it: a voxel the new map annotates takes the
   new value (the latest stroke is the latest intent), every other voxel keeps its earlier
   annotation. Taking a stroke back means painting over it with another class (or Background);
3. **adapts a copy** of the current round's student (or teacher) with the refine engine
   (``reciprocalseg.refine.refine_case``: the losses on the annotated voxels, crops centred on the
   strokes, replay of the other labelled cases, within the time limit) and predicts the case with
   it. The round's model files are never written;
4. **stores**, only when the engine succeeded: the accumulated strokes as a new submitted
   (partial) label version, so the next round learns from them too, and the refined map in the
   case's one refined slot (``predictions/refined/``, manifest key ``refined``), named
   ``refined from round N, K strokes``.

*Accept* (``POST /cases/{id}/refined/accept``) stores the refined map as the case's new full
label version, if the case's label is still the one that refine stored.

**Where it runs.** In the service process, on the request's worker thread, one refine at a time
(a second one is answered 409 while the first runs; ``GET /refine`` says which case). Other
requests go on meanwhile (FastAPI's thread pool; the engine's torch work releases the GIL). It
runs beside a training round: the round's child keeps its own process and memory; on a CPU both
share the cores (the round's clock-based phases then do fewer iterations). On a GPU the refine
needs room beside the round: a CUDA out-of-memory is answered 409 with the advice to refine on
the CPU (``device=cpu``) or after the round, its cached memory released, and nothing stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from reciprocalseg.common.errors import CancelledError, DataError, TrainingError
from reciprocalseg.common.file_formats import UNANNOTATED

from . import schemas as S
from .auto_retrain import AutoRetrain
from .errors import Conflict, Invalid, NotFound
from .fingerprints import CaseFingerprints
from .uploads import read_upload
from .workspace import Workspace, now_iso

log = logging.getLogger(__name__)

MAX_REFINE_SECONDS = 600.0  # the longest time limit a request may ask for
REFINED_FOLDER = "predictions/refined"
MODELS = ("student", "teacher")


def accumulate_strokes(earlier: np.ndarray | None, new: np.ndarray) -> np.ndarray:
    """The strokes of ``new`` painted over ``earlier`` (a partial label): new annotations win,
    voxels ``new`` leaves unannotated (255) keep their earlier value."""
    if earlier is None:
        return new.astype(np.uint8, copy=True)
    return np.where(new != UNANNOTATED, new, earlier).astype(np.uint8)


def refined_name(round_number: int, strokes: int) -> str:
    """What a refined prediction is called: ``refined from round 3, 2 strokes``."""
    return f"refined from round {round_number}, {strokes} stroke{'s' if strokes != 1 else ''}"


@dataclass(frozen=True)
class RefineOptions:
    """What a refine request asks for besides the strokes."""

    model: str = "student"
    seconds: float | None = None  # time limit; None: the engine's default for the device
    device: str | None = None  # None: the service's device
    author: str | None = None


@dataclass
class _Running:
    case_id: str
    model: str
    started: float
    started_iso: str
    time_limit_s: float | None


class Refinements:
    """Refines and accepts of one workspace (see the module's docstring)."""

    def __init__(
        self,
        ws: Workspace,
        fingerprints: CaseFingerprints,
        auto_retrain: AutoRetrain,
        default_device: str = "auto",
        max_voxels: int | None = None,
        stopping: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ws = ws
        self.fingerprints = fingerprints
        self.auto_retrain = auto_retrain
        self.default_device = default_device
        self.max_voxels = max_voxels
        self.stopping = stopping
        self.clock = clock
        self._lock = threading.Lock()
        self._running: _Running | None = None

    # ------------------------------------------------------------------ refine
    def refine(self, case_id: str, tmp: Path, filename: str, options: RefineOptions) -> S.RefineInfo:
        """Check, accumulate, adapt and store (see the module's docstring); ``tmp``: the upload."""

        if options.model not in MODELS:
            raise Invalid(f"model must be one of {', '.join(MODELS)}, got {options.model!r}")
        seconds = options.seconds
        if seconds is not None and not 0 < seconds <= MAX_REFINE_SECONDS:
            raise Invalid(f"seconds must be in (0, {MAX_REFINE_SECONDS:g}], got {seconds}")
        options = replace(options, device=_check_device(options.device or self.default_device))
        rec = self.ws.get_case(case_id)
        round_entry = self.ws.round_entry(None)  # 409 "no model yet"
        if round_entry.get("teacher_only") and options.model == "student":
            # A supervised-only round has no student (it never trained): its teacher is the model.
            options = replace(options, model="teacher")
        image = self.ws.read_scan(case_id)  # every channel of a case with several images
        uploaded = read_upload(tmp, filename, self.max_voxels)
        strokes = self._check_strokes(uploaded, image, filename, round_entry)
        earlier, base = self._earlier_strokes(rec)
        accumulated = accumulate_strokes(earlier, strokes)
        result = self._run_engine(case_id, options, image, accumulated, round_entry)
        return self._store(case_id, base, image, accumulated, result, round_entry, options)

    def _check_strokes(
        self, strokes: Any, image: Any, filename: str, round_entry: dict[str, Any]
    ) -> np.ndarray:
        """The strokes as a (z, y, x) uint8 array; Invalid/Conflict naming what is wrong."""
        import SimpleITK as sitk

        from reciprocalseg.data.validation import check_label, check_same_grid, present_values
        from reciprocalseg.refine.strokes import full_map_refusal

        diffs = check_same_grid(strokes, image, names=("strokes", "case image"))
        if diffs:
            raise Invalid(
                f"{filename}: the strokes are not on the case's voxel grid: " + "; ".join(diffs) + ". "
                "Paint them on the case's own scan (GET /cases/{id}/image) and send them on its grid."
            )
        raw = sitk.GetArrayViewFromImage(strokes)
        if raw.size and np.all(raw == UNANNOTATED):
            raise Invalid(
                f"{filename}: no stroke: every voxel is {UNANNOTATED} (unannotated). Paint at least one "
                "stroke (0 = background, k = class k) over the prediction, then refine."
            )
        try:
            arr = check_label(strokes, image, source=filename)
        except DataError as exc:
            raise Invalid(str(exc).replace("the label", "the strokes map")) from None
        if not np.any(arr == UNANNOTATED):
            raise Invalid(full_map_refusal(filename))
        classes = [int(v) for v in present_values(arr) if v != UNANNOTATED]
        unknown = [k for k in classes if k >= self.ws.n_classes]
        if unknown:
            raise Invalid(
                f"{filename}: the strokes hold class {', '.join(map(str, unknown))}, which the workspace "
                f"does not have (classes 0..{self.ws.n_classes - 1}, background included). Paint with "
                "the workspace's classes; a new class comes with a submitted label (or PUT /settings)."
            )
        model_classes = int(round_entry.get("n_classes") or self.ws.n_classes)
        beyond = [k for k in classes if k >= model_classes]
        if beyond:
            raise Conflict(
                f"round {round_entry['round']} segments classes 0..{model_classes - 1} only; the strokes "
                f"hold class {', '.join(map(str, beyond))}. Train a round that knows it first."
            )
        return arr

    def _earlier_strokes(self, rec: dict[str, Any]) -> tuple[np.ndarray | None, int | None]:
        """(the current partial label's voxels, its version), or (None, None) without a label.
        Conflict when the current label is full: strokes never replace a full label."""
        import SimpleITK as sitk

        current = self.ws.current_label(rec)
        if current is None:
            return None, None
        kind, _ = self.ws.annotation(rec)
        if kind == "full":
            raise Conflict(
                f"case {rec['id']!r} has a full label (version {current['version']}); strokes never replace "
                "it. Edit the label instead (GET /cases/{id}/label, PUT /cases/{id}/label)."
            )
        path = self.ws.case_dir(rec["id"]) / current["file"]
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path))), int(current["version"])

    def _run_engine(
        self,
        case_id: str,
        options: RefineOptions,
        image: Any,
        strokes: np.ndarray,
        round_entry: dict[str, Any],
    ) -> Any:
        import SimpleITK as sitk

        from reciprocalseg.refine.adapt import refine_case

        strokes_image = sitk.GetImageFromArray(strokes)
        strokes_image.CopyInformation(image)
        # model_paths is (teacher, student), not in MODELS' order (indexing it by MODELS swapped them).
        model_file = dict(zip(("teacher", "student"), self.ws.model_paths(round_entry), strict=True))[
            options.model
        ]
        settings = self._settings(str(options.device), options.seconds)
        if not self._lock.acquire(blocking=False):
            running = self._running
            who = f"case {running.case_id!r}" if running else "another case"
            raise Conflict(f"a refine of {who} is running; try again when it ends (GET /refine shows it)")
        try:
            self._running = _Running(case_id, options.model, self.clock(), now_iso(), _time_limit(settings))
            return refine_case(
                model_file,
                image,
                strokes_image,
                replay=self._replay(case_id),
                settings=settings,
                device=str(options.device),
                cancel=self.stopping,
                cache_dir=self._cache_dir(round_entry),
            )
        except DataError as exc:
            raise Invalid(str(exc)) from None
        except CancelledError:
            raise Conflict("the service is stopping: the refine was cancelled; nothing was stored") from None
        except TrainingError as exc:
            raise Conflict(f"{exc}; nothing was stored") from None
        except MemoryError:
            raise Conflict(
                "not enough memory for a refine now (beside a training round?): refine after the round, "
                "or free memory; nothing was stored"
            ) from None
        except RuntimeError as exc:
            if not _is_cuda_oom(exc):
                raise
            _release_cuda_cache()
            raise Conflict(
                "the GPU has no room for a refine beside what runs on it (a training round?): refine with "
                "device=cpu, or after the round; nothing was stored"
            ) from None
        finally:
            self._running = None
            self._lock.release()

    @staticmethod
    def _settings(device: str, seconds: float | None) -> Any:
        from reciprocalseg.refine.settings import default_refine_settings

        settings = default_refine_settings(device)
        if seconds is None:
            return settings
        return replace(settings, **{_TIME_LIMIT_FIELD: float(seconds)})

    def _cache_dir(self, round_entry: dict[str, Any]) -> Path:
        """Where replay cases are kept preprocessed: a trained round's own run ``cache/`` (training
        filled it with the same keys), else a folder of ``tmp/`` (emptied at start-up)."""
        folder = self.ws.root / str(round_entry.get("dir") or "")
        if round_entry.get("run_id") and folder.parent == self.ws.runs_dir:
            return folder / "cache"
        return self.ws.tmp_dir / "refine-cache"

    def _replay(self, case_id: str) -> list[Any]:
        """The other labelled cases (their current labels), which the adapted copy keeps seeing so
        that it does not forget what the round learnt."""
        cases = []
        for rec in self.ws.all_cases():
            current = self.ws.current_label(rec)
            if current is None or rec["id"] == case_id:
                continue
            label = self.ws.case_dir(rec["id"]) / current["file"]
            cases.append(self.ws.training_case(rec, label))  # with every channel of the case
        return cases

    def _store(
        self,
        case_id: str,
        base: int | None,
        image: Any,
        accumulated: np.ndarray,
        result: Any,
        round_entry: dict[str, Any],
        options: RefineOptions,
    ) -> S.RefineInfo:
        """The strokes as a new partial label version and the refined map in the refined slot."""
        import SimpleITK as sitk

        from reciprocalseg.data.io import write_image
        from reciprocalseg.data.validation import largest_class

        name = refined_name(round_entry["round"], int(result.strokes))
        stored = sitk.GetImageFromArray(accumulated)
        stored.CopyInformation(image)
        with self.ws.lock:
            current = self.ws.current_label(self.ws.get_case(case_id))
            if (current["version"] if current else None) != base:
                raise Conflict(
                    f"the label of case {case_id!r} changed while it was refined; refine again "
                    "(nothing stored)"
                )
            label = self.ws.add_label(
                case_id,
                stored,
                kind="submitted",
                author=options.author,
                source=f"refine: strokes ({name}, {options.model})",
                max_value=largest_class(accumulated),
            )
            rel = f"{REFINED_FOLDER}/v{label['version']:04d}.nrrd"
            (self.ws.case_dir(case_id) / REFINED_FOLDER).mkdir(parents=True, exist_ok=True)
            write_image(result.labels, self.ws.case_dir(case_id) / rel)
            entry = {
                "name": name,
                "round": round_entry["round"],
                "model": options.model,
                "strokes": int(result.strokes),
                "iterations": int(result.iterations),
                "seconds": float(result.seconds),
                "annotated_voxels": int(result.annotated_voxels),
                "stopped_by": getattr(result, "stopped_by", None),
                "stroke_agreement": getattr(result, "stroke_agreement", None),
                "time_limit_s": options.seconds,
                "device": options.device,
                "label_version": label["version"],
                "merged_with": base,
                "time": now_iso(),
                "file": rel,
                "accepted_version": None,
            }
            with self.ws.edit_case(case_id) as rec:
                previous = rec.get("refined")
                rec["refined"] = entry
        if previous and previous.get("file") != rel:
            (self.ws.case_dir(case_id) / previous["file"]).unlink(missing_ok=True)
        self.fingerprints.record(case_id, image, accumulated, label["version"])
        self.auto_retrain.notify()
        log.info("case %s: %s (%d iterations, %.1f s)", case_id, name, entry["iterations"], entry["seconds"])
        return S.RefineInfo(case_id=case_id, **entry)

    # ------------------------------------------------------------------ the refined slot
    def refined_entry(self, case_id: str) -> dict[str, Any]:
        entry = self.ws.get_case(case_id).get("refined")
        if entry is None:
            raise NotFound(f"case {case_id!r} has no refined prediction; POST /cases/{case_id}/refine first")
        return entry

    def refined_info(self, case_id: str) -> S.RefineInfo:
        return S.RefineInfo(case_id=case_id, **self.refined_entry(case_id))

    def refined_path(self, case_id: str) -> tuple[dict[str, Any], Path]:
        entry = self.refined_entry(case_id)
        return entry, self.ws.case_dir(case_id) / entry["file"]

    def status(self) -> S.RefineStatus:
        running = self._running
        if running is None:
            return S.RefineStatus(running=False)
        return S.RefineStatus(
            running=True,
            case_id=running.case_id,
            model=running.model,
            started=running.started_iso,
            elapsed_s=round(max(0.0, self.clock() - running.started), 3),
            time_limit_s=running.time_limit_s,
        )

    # ------------------------------------------------------------------ accept
    def accept(self, case_id: str, author: str | None = None) -> S.LabelVersion:
        """The refined map stored as the case's new full label version (once; again: that version)."""
        import SimpleITK as sitk

        from reciprocalseg.data.validation import largest_class

        entry = self._acceptable(case_id)
        if entry is None:
            return self._accepted_version(case_id)
        # Read outside the workspace lock (a scan can take seconds); checked again under it.
        refined = sitk.ReadImage(str(self.ws.case_dir(case_id) / entry["file"]))
        arr = sitk.GetArrayFromImage(refined).astype(np.uint8)
        stored = sitk.GetImageFromArray(arr)
        stored.CopyInformation(refined)  # written on the case's grid by the refine
        with self.ws.lock:
            again = self._acceptable(case_id)
            if again is None:  # accepted meanwhile (a second click)
                return self._accepted_version(case_id)
            if again != entry:
                raise Conflict(f"case {case_id!r} was refined again meanwhile; accept the new refined map")
            label = self.ws.add_label(
                case_id,
                stored,
                kind="submitted",
                author=author,
                source=f"refine accepted: {entry['name']} ({entry['model']})",
                max_value=largest_class(arr),
            )
            with self.ws.edit_case(case_id) as rec:
                rec["refined"]["accepted_version"] = label["version"]
        self.ws.grow_n_classes(largest_class(arr) + 1)
        self.fingerprints.record(case_id, self.ws.read_scan(case_id), arr, label["version"])
        self.auto_retrain.notify()
        return S.LabelVersion(**label)

    def _accepted_version(self, case_id: str) -> S.LabelVersion:
        accepted = self.refined_entry(case_id)["accepted_version"]
        return S.LabelVersion(**self.ws.label_entry(case_id, accepted)[0])

    def _acceptable(self, case_id: str) -> dict[str, Any] | None:
        """The refined entry to accept; None when it was accepted already (its version still
        exists); Conflict when the case's label changed since the refine stored its strokes."""
        rec = self.ws.get_case(case_id)
        entry = self.refined_entry(case_id)
        if any(v["version"] == entry.get("accepted_version") for v in rec["labels"]):
            return None
        current = self.ws.current_label(rec)
        if current is None or current["version"] != entry["label_version"]:
            now = f"version {current['version']}" if current else "no label"
            raise Conflict(
                f"the label of case {case_id!r} changed since it was refined (now {now}; the refine "
                f"stored version {entry['label_version']}): refine again, or submit the label"
            )
        return entry


# The RefineSettings field that holds the time limit in seconds (reciprocalseg.refine).
_TIME_LIMIT_FIELD = "max_seconds"


def _time_limit(settings: Any) -> float | None:
    value = getattr(settings, _TIME_LIMIT_FIELD, None)
    return float(value) if value is not None else None


def _check_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise Invalid(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise Invalid(
                "device 'cuda' asked for, but this service sees no CUDA device; use 'auto' or 'cpu'"
            )
    return device


def _is_cuda_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover - torch without the CUDA error type
        pass
    return "CUDA out of memory" in str(exc)


def _release_cuda_cache() -> None:
    """Free what a refine keeps on the GPU: the engine's cached window features of the last case
    and replay set (kept for the next refine of that case), then torch's cached blocks."""
    try:
        import torch

        from reciprocalseg.refine import adapt

        adapt.CASE_FEATURES.clear()
        adapt.REPLAY_FEATURES.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort: the answer is the 409 either way
        pass
