"""Mean teacher (Tarvainen & Valpola 2017), the classic semi-supervised baseline, UA-MT style.

One iteration, given labelled crops (x_l, y_l) and unlabelled crops x_u (batch 2 + 2):

1. The student sees all crops; its labelled term is UA-MT's 0.5 CE + 0.5 soft Dice.
2. The EMA teacher sees the same crops plus Gaussian noise (std 0.1, clipped to +-0.2).
3. Consistency = mean squared difference of the two softmax maps, on the unlabelled crops
   (and, by default, the labelled ones too, as in the original mean teacher).
4. Loss = supervised + w(t) * consistency, w(t) = 0.1 * exp(-5 (1 - t)^2) ramping up over
   `rampup_fraction` of the iterations (UA-MT's sigmoid ramp-up; UA-MT's own code ramps
   over 40 "epochs" of 150 iterations, i.e. its whole 6000-iteration run).
5. SGD step of the student, then EMA update of the teacher's parameters with
   alpha = min(1 - 1/(step + 1), 0.99) (UA-MT's `update_ema_variables`); the teacher's
   batch-norm statistics come from its own forward passes (it stays in train mode).

Training starts from scratch (UA-MT's MT baseline) or, optionally, from a model file
(e.g. the supervised-only teacher `RUN/supervised.pt`). The data streams and the
preprocessing cache are the runner's (`data/sampling.py`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reciprocalseg.common.atomic import atomic_write_json
from reciprocalseg.common.device import describe_device, resolve_device
from reciprocalseg.common.errors import TrainingError
from reciprocalseg.config import TrainConfig
from reciprocalseg.data.io import Case, write_case_list
from reciprocalseg.data.preprocess import Preprocessing
from reciprocalseg.data.sampling import (
    CropStream,
    batch_iterator,
    cache_cases,
    default_num_workers,
    partially_labeled,
)
from reciprocalseg.model.vnet import build_model
from reciprocalseg.training.checkpoint import load_model_file, save_model
from reciprocalseg.training.events import EventLog, Listener, Pace
from reciprocalseg.training.losses import at_least_fp32, supervised_loss
from reciprocalseg.training.runner import CancelToken, amp_dtype_for, lr_at


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class MeanTeacherSettings:
    """Knobs of the mean-teacher baseline (defaults: UA-MT's MT baseline)."""

    alpha: float = 0.99  # EMA decay of the teacher
    consistency: float = 0.1  # final consistency weight
    rampup_fraction: float = 0.4  # ramp-up length as a fraction of the iterations
    noise_std: float = 0.1  # Gaussian noise on the teacher's input ...
    noise_clip: float = 0.2  # ... clipped to +-noise_clip
    consistency_on_labeled: bool = True  # also apply the consistency loss to the labelled crops


@dataclass
class MeanTeacherResult:
    run_dir: Path
    student: Path
    teacher: Path
    iterations: int
    planned: int
    cut: bool
    device: str
    seconds: float


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = current / length clipped to [0, 1]; 1 when length is 0."""
    if length <= 0:
        return 1.0
    t = min(max(current / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def consistency_weight(iteration: int, total: int, settings: MeanTeacherSettings) -> float:
    """The consistency weight at `iteration` of `total` (UA-MT's sigmoid ramp-up)."""
    return settings.consistency * sigmoid_rampup(iteration, settings.rampup_fraction * total)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, alpha: float, step: int) -> float:
    """ema = a * ema + (1 - a) * model over parameters, a = min(1 - 1/(step + 1), alpha); returns a.

    At step 0 the EMA becomes a copy of the model (a = 0), as in UA-MT. Buffers (batch-norm
    running statistics) are not averaged: the teacher keeps its own.
    """
    a = min(1.0 - 1.0 / (step + 1), alpha)
    for ema_p, p in zip(ema.parameters(), model.parameters(), strict=True):
        ema_p.mul_(a).add_(p.detach(), alpha=1.0 - a)
    return a


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of (softmax(student) - softmax(teacher))^2 (teacher detached)."""
    p = torch.softmax(at_least_fp32(student_logits), dim=1)
    q = torch.softmax(at_least_fp32(teacher_logits), dim=1).detach()
    return F.mse_loss(p, q)


class MeanTeacherStep:
    """One mean-teacher iteration on a student / EMA-teacher pair."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: MeanTeacherSettings | None = None,
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        self.student, self.teacher, self.optimizer = student, teacher, optimizer
        self.settings = settings or MeanTeacherSettings()
        self.amp_dtype = amp_dtype
        self.step_count = 0

    def __call__(
        self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, weight: float
    ) -> dict[str, float]:
        s = self.settings
        self.student.train()
        self.teacher.train()
        n_l = x_l.shape[0]
        x = torch.cat([x_l, x_u])
        with _autocast(x.device, self.amp_dtype):
            logits = self.student(x)
        noise = torch.clamp(torch.randn_like(x) * s.noise_std, -s.noise_clip, s.noise_clip)
        teacher_in = x + noise if s.consistency_on_labeled else x_u + noise[n_l:]
        with torch.no_grad(), _autocast(x.device, self.amp_dtype):
            teacher_logits = self.teacher(teacher_in)
        student_c = logits if s.consistency_on_labeled else logits[n_l:]
        loss_sup = supervised_loss(logits[:n_l], y_l)
        loss_con = softmax_mse(student_c, teacher_logits)
        loss = loss_sup + weight * loss_con
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        alpha = update_ema(self.teacher, self.student, s.alpha, self.step_count)
        self.step_count += 1
        return {
            "supervised": float(loss_sup.detach()),
            "consistency": float(loss_con.detach()),
            "weight": weight,
            "alpha": alpha,
        }


def train_mean_teacher(
    config: TrainConfig,
    labeled: Sequence[Case],
    unlabeled: Sequence[Case],
    run_dir: Path,
    listeners: list[Listener] | None = None,
    cancel: CancelToken | None = None,
    cache_dir: Path | None = None,
    init: Path | None = None,
    settings: MeanTeacherSettings | None = None,
    iterations: int | None = None,
) -> MeanTeacherResult:
    """Train the mean-teacher baseline; writes RUN/student.pt and RUN/teacher.pt (the EMA).

    `iterations` defaults to `config.reciprocal_iterations` (the same count as the reciprocal
    phase); the learning rate follows the same step schedule, batches are 2 + 2 crops
    (`batch_labeled` + `batch_unlabeled`). `init` starts both networks from a model file.
    A cancel (signal, another thread, a time budget) stops after the current iteration and
    still writes both models; the result says how far it got.
    """
    config.validate()
    settings = settings or MeanTeacherSettings()
    if not labeled or not unlabeled:
        raise TrainingError("mean teacher needs labelled and unlabelled cases")
    total = config.reciprocal_iterations if iterations is None else iterations
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cancel = cancel or CancelToken(run_dir / "CANCEL")
    device = resolve_device(config.device)
    device_name = describe_device(device)
    amp_dtype = amp_dtype_for(config, device)
    atomic_write_json(
        run_dir / "config.json",
        {"config": config.to_dict(), "mean_teacher": vars(settings), "iterations": total, "init": str(init)},
    )
    write_case_list(run_dir / "cases.json", labeled, unlabeled)
    events = EventLog(run_dir / "events.jsonl", listeners)
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    student = build_model(
        config.n_classes, config.n_filters, config.normalization, config.dropout, config.strides_zyx
    )
    if init is not None:
        data = load_model_file(Path(init))
        student.load_state_dict(data["state_dict"])
        events.emit("warm_start", source=str(init))
    student.to(device)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.SGD(
        student.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    step = MeanTeacherStep(student, teacher, optimizer, settings, amp_dtype)

    prep = Preprocessing.from_config(config)
    cache = cache_dir or run_dir / "cache"
    events.emit("phase", phase="preprocess", total=len(labeled) + len(unlabeled))
    labeled_cached = cache_cases(labeled, prep, cache, config.n_classes)
    # Partially labelled cases are unlabelled scans too (as in the reciprocal runner).
    unlabeled_cached = cache_cases(unlabeled, prep, cache) + partially_labeled(labeled_cached)
    pin = device.type == "cuda"
    workers = config.num_workers
    if workers < 0:  # automatic, as the runner: workers only on CUDA, shared by the two streams
        workers = max(1, default_num_workers() // 2) if pin and default_num_workers() else 0
    seed = config.seed + 7919  # a stream of its own, reproducible
    lab = batch_iterator(
        CropStream(labeled_cached, config.patch_zyx, seed, config.augment),
        config.batch_labeled,
        workers,
        pin,
    )
    unl = batch_iterator(
        CropStream(unlabeled_cached, config.patch_zyx, seed + 1, config.augment, with_labels=False),
        config.batch_unlabeled,
        workers,
        pin,
    )
    events.emit("phase", phase="mean_teacher", iteration=0, total=total, device=device_name)
    pace = Pace()
    done = 0
    try:
        for it in range(total):
            lr = lr_at(config, it)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x_l, y_l = next(lab)
            x_u, _ = next(unl)
            losses = step(
                x_l.to(device), y_l.to(device), x_u.to(device), consistency_weight(it, total, settings)
            )
            done = it + 1
            sec = pace.tick()
            events.emit(
                "progress",
                phase="mean_teacher",
                iteration=done,
                total=total,
                losses={k: round(v, 6) for k, v in losses.items()},
                lr=lr,
                sec_per_iter=None if sec is None else round(sec, 4),
                eta_s=pace.eta(total - done),
                device=device_name,
            )
            if cancel.requested and done < total:
                events.emit("cancelled", phase="mean_teacher", iteration=done)
                break
        seconds = time.perf_counter() - start
        save_model(student, config, run_dir / "student.pt", phase="mean_teacher", iteration=done)
        save_model(teacher, config, run_dir / "teacher.pt", phase="mean_teacher", iteration=done, ema=True)
        cut = done < total
        atomic_write_json(
            run_dir / "done.json",
            {"seconds": round(seconds, 2), "device": device_name, "iterations": done, "planned": total},
        )
        events.emit("done", seconds=round(seconds, 2), device=device_name, iterations=done, cut=cut)
    finally:
        events.close()
    return MeanTeacherResult(
        run_dir, run_dir / "student.pt", run_dir / "teacher.pt", done, total, cut, device_name, seconds
    )
