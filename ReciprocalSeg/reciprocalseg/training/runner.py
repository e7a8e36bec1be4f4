"""A training run: supervised teacher start, then reciprocal learning (then an optional fine-tune).

The run directory is the single source of truth (see docs/DESIGN.md): a rerun with the same
directory resumes from `checkpoints/latest.pt`; a completed run (done.json) is not redone.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..common.atomic import atomic_write_json
from ..common.device import describe_device, resolve_device
from ..common.errors import CancelledError, ReciprocalSegError, TrainingError
from ..config import TrainConfig
from ..data.annotation import any_partial_label
from ..data.gpu_sampler import HeldCases
from ..data.io import Case, write_case_list
from ..data.preprocess import Preprocessing
from ..data.sampling import (
    CropStream,
    batch_iterator,
    cache_cases,
    default_num_workers,
    labeled_case_weights,
    partially_labeled,
)
from ..model.vnet import build_model
from .budget import FEW_ITERATIONS, WARN_AFTER, StepTimes, TimeBudget
from .checkpoint import load_checkpoint, load_model_file, rng_state, save_model, save_torch, set_rng_state
from .collapse import CollapseMonitor, labeled_fractions
from .eta import EtaModel
from .events import EventLog, Listener, Pace
from .perturb import IntensityPerturbation
from .reciprocal import GradSync, ReciprocalStep, supervised_step

PHASES = ("supervised", "reciprocal", "finetune")
_NO_UNLABELED = (
    "reciprocal learning needs unlabelled cases (or partially labelled ones); add some or set "
    "reciprocal iterations to 0"
)


class CancelToken:
    """Set by a signal handler, another thread, or a CANCEL file in the run directory."""

    def __init__(self, flag_file: Path | None = None) -> None:
        # A plain flag, not a threading.Event: the signal handler runs in the main thread between
        # any two bytecodes, also inside Event.set() called from `requested` (the service touches
        # CANCEL and sends SIGTERM together), and Event.set() takes a non-reentrant lock, which
        # would deadlock the worker there. Assigning an attribute takes no lock.
        self._requested = False
        self.flag_file = flag_file

    def cancel(self) -> None:
        self._requested = True

    @property
    def requested(self) -> bool:
        if not self._requested and self.flag_file is not None and self.flag_file.exists():
            self._requested = True
        return self._requested

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM request a cancel; the loop stops after the current iteration."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.cancel())


@dataclass
class RunResult:
    run_dir: Path
    teacher: Path
    student: Path
    supervised: Path | None
    device: str
    seconds: float


def amp_dtype_for(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA GPUs that have it, in the fast step mode only."""
    if config.amp == "off" or config.step_mode == "reference" or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else None


def lr_at(config: TrainConfig, iteration: int, lr_step: int | None = None) -> float:
    """The paper's step schedule: lr x gamma every `lr_step` iterations (counted per phase);
    `lr_step` None: the config's (a time budget sets one per phase)."""
    return config.lr * config.lr_gamma ** (iteration // (lr_step or config.lr_step))


def _sgd(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.SGD:
    fused = device.type == "cuda" and config.step_mode == "fast"
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        fused=fused or None,
    )


def _supervised_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device, sgd: torch.optim.Optimizer
) -> torch.optim.Optimizer:
    """Phase 1's optimizer for the teacher: its SGD (the paper) or a separate Adam."""
    if config.supervised_optimizer == "sgd":
        return sgd
    fused = device.type == "cuda" and config.step_mode == "fast"
    return torch.optim.Adam(
        model.parameters(),
        lr=config.supervised_adam_lr,
        weight_decay=config.weight_decay,
        fused=fused or None,
    )


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class _Batches:
    """Labelled and unlabelled batch streams on the training device."""

    def __init__(self, streams: dict[str, Iterator], device: torch.device, channels_last: bool) -> None:
        self.streams, self.device, self.channels_last = streams, device, channels_last

    def next(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.streams[name])
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x, y.to(self.device, non_blocking=True)


class Trainer:
    """Owns the two networks, their optimisers, the data streams and the run directory."""

    def __init__(
        self,
        config: TrainConfig,
        labeled: Sequence[Case],
        unlabeled: Sequence[Case],
        run_dir: Path,
        listeners: list[Listener] | None = None,
        cancel: CancelToken | None = None,
        warm_start: Path | None = None,
        cache_dir: Path | None = None,
        clock: Callable[[], float] | None = None,
        started: float | None = None,
    ) -> None:
        config.validate()
        if not labeled:
            raise TrainingError("training needs at least one labelled case")
        if config.reciprocal_iterations > 0 and not unlabeled and not any_partial_label(labeled):
            raise TrainingError(_NO_UNLABELED)
        self.config, self.run_dir = config, Path(run_dir)
        self.labeled, self.unlabeled = list(labeled), list(unlabeled)
        self.cancel = cancel or CancelToken(self.run_dir / "CANCEL")
        self.warm_start = warm_start
        # A run folder with a student.pt warm-starts the student too (then `student_init` does not
        # apply); a single model file (e.g. a supervised.pt) only the teacher. Decided here, not on
        # loading, so that a resumed run makes the same choice.
        self.student_warm_started = warm_start is not None and (Path(warm_start) / "student.pt").is_file()
        self.cache_dir = cache_dir or self.run_dir / "cache"
        self.labeled_weights: list[float] | None = None  # set with the data (_prepare_data)
        self.device = resolve_device(config.device)
        self.device_name = describe_device(self.device)
        self.amp_dtype = amp_dtype_for(config, self.device)
        # Channels-last activations: cuDNN's bf16 tensor-core kernels want them, and oneDNN's CPU
        # convolutions run a V-Net step about 20% faster with them too. The reference stays as published.
        self.channels_last = config.step_mode == "fast"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_run_files()
        self.events = EventLog(self.run_dir / "events.jsonl", listeners)
        # Seconds, monotonic; tests inject a clock whose speed they change (budget.py). `started`:
        # the clock's reading when this session began (the command's start: a budget counts its
        # imports and planning too); None: when run() is called.
        self.clock = clock or time.perf_counter
        self.started = started
        self.pace = Pace(self.clock)
        self.eta = EtaModel(config)
        # A time budget (config.minutes): each phase runs to its deadline (budget.py).
        self.budget = TimeBudget(config, PHASES) if config.minutes else None
        self.step_times = StepTimes()
        self._projected: dict[str, int] = {}  # under a budget: a running phase's projected length
        self._clock_start = self.clock()
        # torch.distributed (distributed.DistributedTrainer sets them): this process's rank, which
        # seeds its crop streams, and the all-reduce that averages gradients over the ranks.
        self.rank = 0
        self.grad_sync: GradSync | None = None

    # -- run directory -------------------------------------------------------------------
    def _write_run_files(self) -> None:
        config_path = self.run_dir / "config.json"
        if config_path.exists():
            previous = TrainConfig.completed(json.loads(config_path.read_text()))
            changed = {k for k, v in self.config.to_dict().items() if _jsonable(previous[k]) != _jsonable(v)}
            # Iteration counts and the device may change on resume; the recipe may not.
            changed -= {
                "device",
                "supervised_iterations",
                "reciprocal_iterations",
                "finetune_iterations",
                "checkpoint_every",
                "num_workers",
                "data_on_gpu",
                "compile",
                "compile_mode",
                "minutes",
            }
            if changed:
                raise TrainingError(
                    f"{self.run_dir} holds a run with a different configuration ({sorted(changed)}); "
                    "use a new output folder or the same settings to resume"
                )
        atomic_write_json(config_path, self.config.to_dict())
        write_case_list(self.run_dir / "cases.json", self.labeled, self.unlabeled)

    # -- models --------------------------------------------------------------------------
    def _new_model(self) -> nn.Module:
        c = self.config
        model = build_model(c.n_classes, c.n_filters, c.normalization, c.dropout, c.strides_zyx)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        if c.compile:
            # In place (nn.Module.compile): state_dict keys stay those of the plain model. Static
            # shapes: each phase has fixed crop and batch sizes, so a second shape gets its own graph
            # instead of a slower dynamic-shape one.
            model.compile(dynamic=False, mode=c.compile_mode)
        return model

    def _load_weights(self, model: nn.Module, path: Path) -> None:
        data = load_model_file(path)
        meta = data["meta"]
        meta = {**meta, "strides": meta.get("strides") or [[2, 2, 2]] * 4}  # files from before plans
        c = self.config
        ours = {"n_classes": c.n_classes, "n_filters": c.n_filters, "normalization": c.normalization}
        ours["strides"] = [list(s) for s in c.strides_zyx]
        for key, value in ours.items():
            if meta[key] != value:
                raise TrainingError(
                    f"warm start from {path}: its {key}={meta[key]!r} differs from this run's "
                    f"{value!r}; train from scratch or use the same preset"
                )
        if not all(
            bool(torch.isfinite(t).all()) for t in data["state_dict"].values() if t.is_floating_point()
        ):
            raise TrainingError(f"warm start from {path}: the model has NaN or infinite weights; use another")
        model.load_state_dict(data["state_dict"])

    # -- main ----------------------------------------------------------------------------
    def run(self) -> RunResult:
        start = self._clock_start = self.clock() if self.started is None else self.started
        done = self.run_dir / "done.json"
        if done.exists():
            return self._result(self.clock() - start)
        torch.manual_seed(self.config.seed)
        if self.device.type == "cuda" and self.config.step_mode == "fast":
            torch.backends.cudnn.benchmark = True  # fixed crop shapes: autotuning pays off
        try:
            self.teacher, self.student = self._new_model(), self._new_model()
            self.teacher_opt = _sgd(self.teacher, self.config, self.device)
            self.student_opt = _sgd(self.student, self.config, self.device)
            self.supervised_opt = _supervised_optimizer(
                self.teacher, self.config, self.device, self.teacher_opt
            )
            self.student_ema = self._make_ema()
            self.h_average = 0.0
            phase, iteration = self._restore()
            self._prepare_data()
            for name in PHASES[PHASES.index(phase) :]:
                self._run_phase(name, iteration if name == phase else 0)
            return self._finish(self.clock() - start)
        except torch.OutOfMemoryError as exc:
            c = self.config
            message = (
                f"CUDA out of memory: patch {c.patch_size} batch {c.batch_labeled}+{c.batch_unlabeled} "
                f"on {self.device_name}: use a smaller patch (e.g. --patch-size 96 96 64), a smaller batch, "
                "close other GPU programs, or --device cpu"
            )
            self.events.emit("error", message=message)
            raise TrainingError(message) from exc
        except CancelledError:
            raise
        except ReciprocalSegError as exc:
            self.events.emit("error", message=str(exc))
            raise
        except (MemoryError, RuntimeError) as exc:
            if not isinstance(exc, MemoryError) and "can't allocate memory" not in str(exc):
                raise
            # The CPU's allocators (numpy, torch) fail at once on a request beyond what can be had.
            c = self.config
            message = (
                f"out of memory on {self.device_name}: patch {c.patch_size}, batch {c.batch_labeled}+"
                f"{c.batch_unlabeled}, width {c.n_filters} need more than this machine has: use a smaller "
                "patch, batch or width (--patch-size, --n-filters, or the plan's values)"
            )
            self.events.emit("error", message=message)
            raise TrainingError(message) from exc
        finally:
            self.events.close()

    def _make_ema(self) -> torch.optim.swa_utils.AveragedModel | None:
        if self.config.student_ema <= 0:
            return None
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        return AveragedModel(
            self.student, multi_avg_fn=get_ema_multi_avg_fn(self.config.student_ema), use_buffers=True
        )

    def _restore(self) -> tuple[str, int]:
        checkpoint = load_checkpoint(self.run_dir / "checkpoints" / "latest.pt")
        if checkpoint is None:
            if self.warm_start is not None:
                source = Path(self.warm_start)
                self._load_weights(self.teacher, source if source.is_file() else source / "teacher.pt")
                if self.student_warm_started:
                    self._load_weights(self.student, source / "student.pt")
                self.events.emit("warm_start", source=str(self.warm_start))
            return PHASES[0], 0
        self.teacher.load_state_dict(checkpoint["teacher"])
        self.student.load_state_dict(checkpoint["student"])
        self.teacher_opt.load_state_dict(checkpoint["teacher_opt"])
        self.student_opt.load_state_dict(checkpoint["student_opt"])
        if self.supervised_opt is not self.teacher_opt and checkpoint.get("supervised_opt") is not None:
            self.supervised_opt.load_state_dict(checkpoint["supervised_opt"])
        if self.student_ema is not None and checkpoint.get("student_ema") is not None:
            self.student_ema.load_state_dict(checkpoint["student_ema"])
        self.h_average = checkpoint.get("h_average", 0.0)
        if self.budget is not None:
            self.budget.restore(checkpoint)
        set_rng_state(checkpoint["rng"])
        self.events.emit("resumed", phase=checkpoint["phase"], iteration=checkpoint["iteration"])
        return checkpoint["phase"], checkpoint["iteration"]

    def _prepare_data(self) -> None:
        prep = Preprocessing.from_config(self.config)
        t0 = time.perf_counter()
        self.events.emit("phase", phase="preprocess", total=len(self.labeled) + len(self.unlabeled))
        self.labeled_cached = cache_cases(self.labeled, prep, self.cache_dir, self.config.n_classes)
        # Partially labelled cases are unlabelled scans for the student too (after the others, so a
        # cohort of full labels draws exactly the crops it drew before).
        partial = partially_labeled(self.labeled_cached)
        self.labeled_weights = labeled_case_weights(
            self.labeled_cached, {p.case_id for p in partial}, self.config.partial_crop_share
        )
        self.unlabeled_cached = cache_cases(self.unlabeled, prep, self.cache_dir) + partial
        extra = {"partial": len(partial)} if partial else {}
        self.events.emit("preprocessed", seconds=round(time.perf_counter() - t0, 2), **extra)
        if self.config.reciprocal_iterations > 0 and not self.unlabeled_cached:
            raise TrainingError(_NO_UNLABELED)

    def _held_cases(self) -> HeldCases | None:
        """The cases held on the training device (loaded once, on first use), or None: stream from disk."""
        if not hasattr(self, "_device_cases"):
            c = self.config
            self._device_cases = HeldCases.load_if_fits(
                self.labeled_cached,
                self.unlabeled_cached,
                self.device,
                c.data_on_gpu,
                c.class_crop_share,
                self.labeled_weights,
            )
        return self._device_cases

    def _seed_parts(self, phase: str, start: int) -> list[int]:
        # Seeded by phase and start iteration: a resumed run draws a fresh, reproducible stream.
        return [self.config.seed, PHASES.index(phase), start, *([self.rank] if self.rank else [])]

    def _streams(self, phase: str, start: int) -> _Batches:
        c = self.config
        seed = self._seed_parts(phase, start)
        labeled_bs = c.supervised_batch if phase != "reciprocal" else c.batch_labeled
        held = self._held_cases()
        if held is not None:  # crops cut on the device: no host copies, no workers
            unlabeled_bs = c.batch_unlabeled if phase == "reciprocal" else None
            seeds = (_seed(seed, 0), _seed(seed, 1))
            streams = held.streams(c.patch_zyx, labeled_bs, unlabeled_bs, seeds, c.augment)
            return _Batches(streams, self.device, self.channels_last)
        pin = self.device.type == "cuda"
        workers = c.num_workers
        if workers < 0:  # automatic: workers keep a GPU fed; on CPU they only compete with training
            workers = default_num_workers() if pin else 0
            if phase == "reciprocal" and workers:
                workers = max(1, workers // 2)  # two streams share the machine's cores
        streams = {
            "labeled": batch_iterator(
                CropStream(
                    self.labeled_cached,
                    c.patch_zyx,
                    _seed(seed, 0),
                    c.augment,
                    class_share=c.class_crop_share,
                    case_weights=self.labeled_weights,
                ),
                labeled_bs,
                workers,
                pin,
            )
        }
        if phase == "reciprocal":
            stream = CropStream(
                self.unlabeled_cached, c.patch_zyx, _seed(seed, 1), c.augment, with_labels=False
            )
            streams["unlabeled"] = batch_iterator(stream, c.batch_unlabeled, workers, pin)
        return _Batches(streams, self.device, self.channels_last)

    def _elapsed(self) -> float:
        """Seconds this run has trained, over all its sessions (a time budget counts them)."""
        before = self.budget.elapsed_before if self.budget is not None else 0.0
        return before + self.clock() - self._clock_start

    def _phase_total(self, phase: str) -> int:
        """The phase's iteration count; under a time budget, the count a finished phase ran, or
        the running phase's projected one, or for a later phase an estimate from the measured
        speed."""
        c = self.config
        if self.budget is not None:
            window = self.budget.windows.get(phase)
            if not self.budget.active(phase):
                return 0
            if window is not None and window.finished:
                return window.iterations
            if phase in self._projected:
                return self._projected[phase]
            rate = self.eta.phase_rate(phase)
            return max(1, math.floor(self.budget.share_seconds(phase) / rate)) if rate else 1
        return {
            "supervised": c.supervised_iterations,
            "reciprocal": c.reciprocal_iterations,
            "finetune": c.finetune_iterations,
        }[phase]

    def _phase_runs(self, phase: str, start: int) -> bool:
        """Whether `phase` has iterations left (under a budget: it has a share and has not ended)."""
        if self.budget is None:
            return start < self._phase_total(phase)
        return self.budget.active(phase) and not self.budget.finished(phase)

    def _open_window(self, phase: str) -> None:
        """Put the phase on the run's clock and say when it ends and when its lr drops."""
        window = self.budget.open(phase, self._elapsed())
        rate = self.eta.phase_rate(phase)
        if rate is not None:
            self._projected[phase] = window.iterations + max(
                1, self.budget.more_iterations(phase, self._elapsed(), rate)
            )
        self.events.emit(
            "budget",
            phase=phase,
            minutes=self.config.minutes,
            start_s=round(window.start_s, 1),
            deadline_s=round(self.budget.deadline(phase), 1),
            lr_drop_s=round(self.budget.lr_drop_s(phase), 1),
            iterations=self._projected.get(phase),
            sec_per_iter=None if rate is None else round(rate, 4),
        )

    def _agreed(self, *values: int) -> tuple[int, ...]:
        """Under torch.distributed, rank 0's values on every rank: each rank reads its own clock,
        and ranks that stopped at different iterations (or stepped at different learning rates)
        would wait for each other forever (or drift apart)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return values
        tensor = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return tuple(int(v) for v in tensor.tolist())

    def _lr(self, phase: str, iteration: int) -> float:
        """The lr of `iteration`: by its count, or under a budget by the clock (rank 0's)."""
        if self.budget is None:
            return lr_at(self.config, iteration)
        (drops,) = self._agreed(self.budget.lr_drops(phase, self._elapsed()))
        return self.config.lr * self.config.lr_gamma**drops

    def _by_clock(self, phase: str, done: int, began: float, start: int) -> tuple[bool, int, float]:
        """Under a budget, after iteration `done`: whether another one fits before the phase's
        deadline, the phase's projected length, and the next iteration's lr (rank 0's decisions)."""
        budget = self.budget
        now = self.clock()
        self.step_times.add(now - began)
        elapsed, step_s = self._elapsed(), self.step_times.estimate()
        budget.windows[phase].iterations = done
        due = done % self.config.checkpoint_every == 0
        go_on, drops = self._agreed(
            int(budget.go_on(phase, done, elapsed, step_s, due)), budget.lr_drops(phase, elapsed)
        )
        total = done + (max(1, budget.more_iterations(phase, elapsed, step_s)) if go_on else 0)
        self._projected[phase] = total
        if not go_on:
            budget.close(phase, done)
        if done - start == WARN_AFTER or (not go_on and done - start < WARN_AFTER):
            self._warn_few(phase, done, total, step_s)
        return bool(go_on), total, self.config.lr * self.config.lr_gamma**drops

    def _warn_few(self, phase: str, done: int, total: int, step_s: float | None) -> None:
        """A warning when the phase's time buys too few iterations to learn from (the clock is
        kept: the user decides whether to give the round more time)."""
        if total >= FEW_ITERATIONS:
            return
        each = f" at {step_s:.1f} s each" if step_s else ""
        self.events.emit(
            "warning",
            kind="few_iterations",
            phase=phase,
            iteration=done,
            iterations=total,
            sec_per_iter=None if step_s is None else round(step_s, 4),
            message=(
                f"the {phase} phase gets about {total} iterations{each} in its "
                f"{self.budget.share_seconds(phase):.0f} s of the {self.config.minutes:g}-minute budget, "
                f"fewer than {FEW_ITERATIONS}: the models may not learn every class (a 3-minute round "
                "of 11 iterations learned one class of two); give the round more minutes, or run it "
                "when the machine is less loaded"
            ),
        )

    def _overall_offset(self, phase: str) -> int:
        return sum(self._phase_total(p) for p in PHASES[: PHASES.index(phase)])

    def _run_phase(self, phase: str, start: int) -> None:
        if not self._phase_runs(phase, start):
            if phase == "supervised":
                self._save_supervised()
            return
        if phase == "reciprocal" and start == 0:
            self._save_supervised()
        if self.budget is not None:
            self._open_window(phase)
        total = self._phase_total(phase)
        shown = total if self.budget is None else None  # under a budget the phase runs to a time
        self.events.emit("phase", phase=phase, iteration=start, total=shown, device=self.device_name)
        batches = self._streams(phase, start)
        step = self._make_step(start) if phase == "reciprocal" else None
        if (
            phase == "reciprocal"
            and start == 0
            and not self.student_warm_started
            and self.config.student_init == "teacher"
        ):
            self.student.load_state_dict(self.teacher.state_dict())
        if phase == "finetune" and start == 0 and self.student_ema is not None:
            self.student.load_state_dict(self.student_ema.module.state_dict())
        model, opt = {
            "supervised": (self.teacher, self.supervised_opt),
            "reciprocal": (self.teacher, self.teacher_opt),
            "finetune": (self.student, self.student_opt),
        }[phase]
        self.pace.pause()
        it, go_on = start, True
        lr = self._lr(phase, it)
        while go_on:
            began = self.clock()
            _set_lr(self.teacher_opt, lr)
            _set_lr(self.student_opt, lr)
            if opt is not self.teacher_opt and opt is not self.student_opt:  # phase 1's Adam: same schedule
                _set_lr(opt, lr * self.config.supervised_adam_lr / self.config.lr)
            if phase == "reciprocal":
                x_l, y_l = batches.next("labeled")
                x_u, _ = batches.next("unlabeled")
                result = step(x_l, y_l, x_u, lr)
                self.h_average = step.h_average
                self._watch_collapse(phase, it + 1, step)
                losses = {k: round(v, 6) for k, v in vars(result).items() if k != "h"}
                h = result.h
                if self.student_ema is not None:
                    self.student_ema.update_parameters(self.student)
            else:
                x, y = batches.next("labeled")
                loss = supervised_step(model, opt, x, y, self.amp_dtype, self.grad_sync)
                losses, h = {"supervised": round(loss, 6)}, None
            self._require_finite(phase, it + 1, losses, h)
            self.eta.tick(phase, it + 1, self.clock())
            self._progress(phase, it + 1, total, losses, h, lr)
            if self.budget is None:
                go_on, next_lr = it + 1 < total, lr_at(self.config, it + 1)
            else:  # after the progress event: the time it took is this iteration's too
                go_on, total, next_lr = self._by_clock(phase, it + 1, began, start)
            if self.cancel.requested:
                self._checkpoint(phase, it + 1)
                self.events.emit("cancelled", phase=phase, iteration=it + 1)
                raise CancelledError(f"training cancelled at {phase} iteration {it + 1}; checkpoint written")
            if (it + 1) % self.config.checkpoint_every == 0 or not go_on:
                self._checkpoint(phase, it + 1)
            it, lr = it + 1, next_lr
        if phase == "supervised":
            self._save_supervised()

    def _make_step(self, start: int) -> ReciprocalStep:
        c = self.config
        view = None
        if c.unlabeled_student_aug > 0:  # seeded like the crop streams: resumes perturb reproducibly
            view = IntensityPerturbation(
                c.unlabeled_student_aug, _seed(self._seed_parts("reciprocal", start), 2)
            )
        step = ReciprocalStep(
            self.teacher,
            self.student,
            self.teacher_opt,
            self.student_opt,
            c.step_mode,
            self.amp_dtype,
            c.teacher_dice,
            c.h_baseline,
            self.grad_sync,
            view,
        )
        step.h_average = self.h_average
        return step

    def _progress(
        self, phase: str, iteration: int, total: int, losses: dict, h: float | None, lr: float
    ) -> None:
        sec = self.pace.tick()
        offset = self._overall_offset(phase)
        overall_total = sum(self._phase_total(p) for p in PHASES)
        self.events.emit(
            "progress",
            phase=phase,
            iteration=iteration,
            total=total,
            overall_iteration=offset + iteration,
            overall_total=overall_total,
            losses=losses,
            h=h,
            lr=self._lr_in_use(phase, lr),
            sec_per_iter=None if sec is None else round(sec, 4),
            eta_s=self._eta(phase, iteration, total),
            device=self.device_name,
            **self._progress_clock(offset + iteration, overall_total),
        )

    def _progress_clock(self, overall_iteration: int, overall_total: int) -> dict[str, Any]:
        """How far the run is: under a budget by time (`fraction` of `budget_s`, `elapsed_s` over
        all sessions), else by iterations."""
        if self.budget is None:
            return {"fraction": round(min(1.0, overall_iteration / max(1, overall_total)), 4)}
        elapsed, seconds = self._elapsed(), self.budget.seconds
        return {
            "fraction": round(min(1.0, elapsed / seconds), 4),
            "elapsed_s": round(elapsed, 2),
            "budget_s": round(seconds, 1),
        }

    def _eta(self, phase: str, iteration: int, total: int) -> float | None:
        """Seconds left: the cost model over the phases left (eta.py); under a time budget, the
        budget's end (every phase runs to its deadline)."""
        if self.budget is not None:
            return round(self.budget.remaining_seconds(self._elapsed()), 1)
        later = PHASES[PHASES.index(phase) + 1 :]
        remaining = {phase: total - iteration, **{p: self._phase_total(p) for p in later}}
        return self.eta.remaining(remaining)

    def _collapse_monitor(self) -> CollapseMonitor:
        if not hasattr(self, "_monitor"):
            labels = [case.load()[1] for case in self.labeled_cached]
            self._monitor = CollapseMonitor(labeled_fractions(labels, self.config.n_classes))
        return self._monitor

    def _watch_collapse(self, phase: str, iteration: int, step: ReciprocalStep) -> None:
        """A warning event when a model's output loses a class the labelled cases have."""
        if step.last_counts is None:
            return
        for warning in self._collapse_monitor().add(*step.last_counts):
            self.events.emit("warning", phase=phase, iteration=iteration, **warning)

    def _require_finite(self, phase: str, iteration: int, losses: dict, h: float | None) -> None:
        """Stop at once on a NaN or infinite loss, before anything of this iteration is saved."""
        bad = {k: v for k, v in {**losses, "h": h}.items() if v is not None and not math.isfinite(v)}
        if not bad:
            return
        kept = self.run_dir / "checkpoints" / "latest.pt"
        where = (
            f"the last good checkpoint {kept} is kept" if kept.exists() else "no checkpoint was written yet"
        )
        names = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise TrainingError(
            f"non-finite loss in the {phase} phase at iteration {iteration} ({names}); training stopped and "
            f"{where}. Check the scans for NaN/infinite or extreme values, or lower the learning rate"
        )

    def _checkpoint(self, phase: str, iteration: int) -> None:
        began = self.clock()
        self._require_finite_weights(phase, iteration)
        state: dict[str, Any] = {
            "phase": phase,
            "iteration": iteration,
            "teacher": self.teacher.state_dict(),
            "student": self.student.state_dict(),
            "teacher_opt": self.teacher_opt.state_dict(),
            "student_opt": self.student_opt.state_dict(),
            "supervised_opt": (
                self.supervised_opt.state_dict() if self.supervised_opt is not self.teacher_opt else None
            ),
            "student_ema": self.student_ema.state_dict() if self.student_ema is not None else None,
            "h_average": self.h_average,
            "budget_clock": self.budget.state(self._elapsed()) if self.budget is not None else None,
            "elapsed_s": self._elapsed(),
            "rng": rng_state(),
            "config": self.config.to_dict(),
        }
        path = self.run_dir / "checkpoints" / "latest.pt"
        save_torch(state, path)
        state_written = self.clock()
        # Also usable on their own: the models so far, for prediction while training goes on.
        save_model(
            self.teacher,
            self.config,
            self.run_dir / "checkpoints" / "teacher.pt",
            phase=phase,
            iteration=iteration,
        )
        save_model(
            self.student,
            self.config,
            self.run_dir / "checkpoints" / "student.pt",
            phase=phase,
            iteration=iteration,
        )
        models_written = self.clock()
        self.events.emit("checkpoint", phase=phase, iteration=iteration, path=str(path))
        if self.budget is not None:  # what closing a phase, and the round, will cost (budget.py)
            self.budget.checkpoint_s = self.clock() - began
            self.budget.model_files_s = models_written - state_written
        self.pace.pause()

    def _require_finite_weights(self, phase: str, iteration: int) -> None:
        """Never write a model with NaN or infinite weights (a finite loss does not rule them out)."""
        for name, model in (("teacher", self.teacher), ("student", self.student)):
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                raise TrainingError(
                    f"the {name}'s weights became non-finite in the {phase} phase by iteration {iteration}; "
                    "training stopped and the last good checkpoint is kept. Check the scans for extreme "
                    "values, or lower the learning rate"
                )

    def _save_supervised(self) -> None:
        path = self.run_dir / "supervised.pt"
        if not path.exists():
            save_model(self.teacher, self.config, path, phase="supervised")

    def _finish(self, seconds: float) -> RunResult:
        began = self.clock()  # the final files count in the round's time (a budget reserves it)
        # The EMA is the evaluated student, unless a fine-tune (which starts from it) came after.
        use_ema = self.student_ema is not None and self.config.finetune_iterations == 0
        student = self.student_ema.module if use_ema else self.student
        self._require_finite_weights("final", self._phase_total(PHASES[-1]))
        save_model(self.teacher, self.config, self.run_dir / "teacher.pt", phase="final")
        save_model(student, self.config, self.run_dir / "student.pt", phase="final", ema=use_ema)
        reciprocal = self._phase_total("reciprocal") > 0 and self.unlabeled_cached
        collapse = self._collapse_monitor().summary() if reciprocal else None
        clock = {}
        if self.budget is not None:  # the run's clock over all sessions, against its budget
            clock = {"elapsed_s": round(self._elapsed(), 2), "budget_s": round(self.budget.seconds, 1)}
        seconds += self.clock() - began
        summary = {"seconds": round(seconds, 2), "device": self.device_name, "time": time.time(), **clock}
        summary["iterations"] = {p: self._phase_total(p) for p in PHASES}
        if collapse is not None:  # which classes each model lost by the end
            summary.update(collapse)
        atomic_write_json(self.run_dir / "done.json", summary)
        self.events.emit(
            "done", seconds=round(seconds, 2), device=self.device_name, **clock, **(collapse or {})
        )
        return self._result(seconds)

    def _lr_in_use(self, phase: str, lr: float) -> float:
        """The learning rate the phase's optimizer runs at: phase 1's Adam follows the schedule
        scaled to its own lr (`supervised_adam_lr`, 0.003 where the SGD schedule says 0.01)."""
        if phase == "supervised" and self.supervised_opt is not self.teacher_opt:
            return lr * self.config.supervised_adam_lr / self.config.lr
        return lr

    def _result(self, seconds: float) -> RunResult:
        sup = self.run_dir / "supervised.pt"
        return RunResult(
            self.run_dir,
            self.run_dir / "teacher.pt",
            self.run_dir / "student.pt",
            sup if sup.exists() else None,
            self.device_name,
            seconds,
        )


def _seed(parts: list[int], stream: int) -> int:
    return hash((*parts, stream)) & 0x7FFFFFFF


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def train(
    config: TrainConfig,
    labeled: Sequence[Case],
    unlabeled: Sequence[Case],
    run_dir: Path,
    listeners: list[Listener] | None = None,
    cancel: CancelToken | None = None,
    warm_start: Path | None = None,
    cache_dir: Path | None = None,
    clock: Callable[[], float] | None = None,
    started: float | None = None,
) -> RunResult:
    """Run (or resume) a training run; see `Trainer`."""
    return Trainer(
        config, labeled, unlabeled, run_dir, listeners, cancel, warm_start, cache_dir, clock, started
    ).run()
