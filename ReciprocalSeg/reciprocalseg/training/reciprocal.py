"""The reciprocal learning update (Zeng et al., MICCAI 2021).

One iteration, given labelled crops (x_l, y_l) and unlabelled crops x_u:

1. The teacher labels x_u with its argmax (pseudo labels, teacher in train mode).
2. The student takes an SGD step on CE(student(x_u), pseudo); call that gradient g_u.
3. After its step, the student's gradient of its labelled CE is g_l.
4. h = lr * <g_l, g_u>: positive when learning from the pseudo labels helped on labelled data.
5. The teacher's gradient is h * grad CE(teacher(x_u), pseudo) + grad CE(teacher(x_l), y_l).

The student never sees labels. Two implementations give the same arithmetic:

- `reference`: the published code's way (XYZach/RLSSS RL_code/train_RL.py): fp32,
  one backward per loss, deep-copied gradient lists. Kept as the numerical oracle and
  the speed benchmark's baseline.
- `fast` (default): gradients through `torch.autograd.grad` (no copies), one teacher
  backward for both terms (h is a constant scale of the first), optional bf16 autocast
  with h and its dot product accumulated in fp32.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .collapse import class_counts
from .losses import cross_entropy, supervised_loss

# Averages gradient tensors over the ranks of a process group, in place (distributed.AllReduceMean).
GradSync = Callable[[Sequence[torch.Tensor]], None]


@dataclass
class StepLosses:
    """Scalars of one reciprocal iteration (Python floats, for events)."""

    student_unlabeled: float
    student_labeled: float
    teacher_unlabeled: float
    teacher_labeled: float
    h: float


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def like_param(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`grad` in `param`'s memory layout, copied only when the strides differ.

    `.backward()` guarantees this (AccumulateGrad's layout contract); `autograd.grad` does not,
    and the fused CUDA SGD refuses gradients whose strides differ from their parameters'. As in
    both of those, strides of size-1 dimensions do not count (a channels-last 1x1x1 conv's
    weight gradient may come back "contiguous", which is the same memory).
    """
    same = all(n == 1 or a == b for n, a, b in zip(grad.shape, grad.stride(), param.stride(), strict=True))
    return grad if same else torch.empty_like(param).copy_(grad)


def class_argmax(logits: torch.Tensor) -> torch.Tensor:
    """`logits.argmax(dim=1)`: the same labels (ties and NaN included), on the CPU taken channels-last.

    With one torch thread, PyTorch runs a 1x1x1 convolution such as the V-Net's head on its own
    kernel rather than oneDNN's, and its output is contiguous (N, C, D, H, W) even in a
    channels-last network. The CPU's argmax over C of that layout strides through memory and took
    6x as long as over the same logits with C innermost (112x112x14 crops, 4 classes: 266 against
    41 ms), twice per step; a channels-last copy first costs far less than the difference.
    """
    if (
        logits.device.type == "cpu"
        and logits.dim() == 5
        and not logits.is_contiguous(memory_format=torch.channels_last_3d)
    ):
        logits = logits.contiguous(memory_format=torch.channels_last_3d)
    return logits.argmax(dim=1)


def gradient_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """<a, b> over all parameters, accumulated in fp32 (or wider)."""
    dtype = torch.promote_types(a[0].dtype, torch.float32)
    # One dot product of the flattened lists: 3 kernels instead of ~3 per parameter tensor
    # (a V-Net has over a hundred), for a copy of the gradients that lives a few microseconds.
    flat_a = torch.cat([x.reshape(-1) for x in a]).to(dtype)
    flat_b = torch.cat([y.reshape(-1) for y in b]).to(dtype)
    return torch.dot(flat_a, flat_b)


class ReciprocalStep:
    """Callable that performs one reciprocal iteration on a teacher/student pair."""

    # Labels from logits (pseudo labels, and the student's predictions for the collapse guard).
    # benchmarks/speed.py swaps in the plain `argmax(dim=1)` to time the step as it was before.
    argmax: Callable[[torch.Tensor], torch.Tensor] = staticmethod(class_argmax)

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        teacher_opt: torch.optim.Optimizer,
        student_opt: torch.optim.Optimizer,
        mode: str = "fast",
        amp_dtype: torch.dtype | None = None,
        teacher_dice: bool = False,
        h_baseline: float = 0.0,
        grad_sync: GradSync | None = None,
        student_view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if mode not in ("fast", "reference"):
            raise ValueError(f"unknown step mode {mode!r}")
        if mode == "reference" and amp_dtype is not None:
            raise ValueError("the reference step is fp32 only, as published")
        self.teacher, self.student = teacher, student
        self.teacher_opt, self.student_opt = teacher_opt, student_opt
        self.mode, self.amp_dtype = mode, amp_dtype
        # The paper's teacher term on labelled data is CE; CE + Dice is an opt-in improvement.
        self.teacher_labeled_loss: Callable = supervised_loss if teacher_dice else cross_entropy
        self.h_momentum = h_baseline
        self.h_average = 0.0
        # torch.distributed: g_u, g_l and the teacher's gradient are averaged over the ranks, so h
        # is the same on every rank and N ranks x batch b step as one process with batch N x b.
        self.grad_sync = grad_sync
        # The student's input for the unlabelled crops (perturb.IntensityPerturbation, opt-in); the
        # teacher labels the crops as they are. None: the same crops, as in the paper.
        self.student_view = student_view
        # The last iteration's pseudo labels and the student's predictions on x_u, as per-class
        # voxel counts on the device (collapse.py reads them; no synchronisation here).
        self.last_counts: tuple[torch.Tensor, torch.Tensor] | None = None

    def _count(self, pseudo: torch.Tensor, student_logits: torch.Tensor) -> None:
        n = student_logits.shape[1]
        predicted = self.argmax(student_logits.detach())
        self.last_counts = (class_counts(pseudo, n), class_counts(predicted, n))

    def _sync(self, grads: Sequence[torch.Tensor | None]) -> None:
        if self.grad_sync is not None:
            self.grad_sync([g for g in grads if g is not None])

    def __call__(self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, lr: float) -> StepLosses:
        self.teacher.train()
        self.student.train()
        x_u_student = x_u if self.student_view is None else self.student_view(x_u)
        if self.mode == "reference":
            return self._reference(x_l, y_l, x_u, x_u_student, lr)
        return self._fast(x_l, y_l, x_u, x_u_student, lr)

    def _baseline(self, h: torch.Tensor) -> torch.Tensor:
        """Optionally subtract a moving average of h (a variance-reducing baseline)."""
        if self.h_momentum <= 0:
            return h
        value = float(h)
        centred = h - self.h_average
        self.h_average = self.h_momentum * self.h_average + (1 - self.h_momentum) * value
        return centred

    def _fast(
        self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, x_u_student: torch.Tensor, lr: float
    ) -> StepLosses:
        device = x_l.device
        student_params = [p for p in self.student.parameters() if p.requires_grad]
        # Forward order matches the reference (student, teacher on x_u) so dropout draws match.
        with _autocast(device, self.amp_dtype):
            student_u = self.student(x_u_student)
            teacher_u = self.teacher(x_u)
        pseudo = self.argmax(teacher_u.detach())
        self._count(pseudo, student_u)

        loss_su = cross_entropy(student_u, pseudo)
        grad_u = torch.autograd.grad(loss_su, student_params)
        self._sync(grad_u)
        for p, g in zip(student_params, grad_u, strict=True):
            p.grad = like_param(g, p)
        self.student_opt.step()
        self.student_opt.zero_grad(set_to_none=True)

        with _autocast(device, self.amp_dtype):
            student_l = self.student(x_l)
        loss_sl = cross_entropy(student_l, y_l)
        grad_l = torch.autograd.grad(loss_sl, student_params)
        self._sync(grad_l)
        h = self._baseline(lr * gradient_dot(grad_l, grad_u))
        del grad_u, grad_l

        with _autocast(device, self.amp_dtype):
            teacher_l = self.teacher(x_l)
        loss_tu = cross_entropy(teacher_u, pseudo)
        loss_tl = self.teacher_labeled_loss(teacher_l, y_l)
        self.teacher_opt.zero_grad(set_to_none=True)
        # One backward for both terms: h is a constant, so grad(h*L_u + L_l) = h*g_u + g_l.
        (h.detach() * loss_tu + loss_tl).backward()
        self._sync([p.grad for p in self.teacher.parameters()])
        self.teacher_opt.step()
        # One device-to-host transfer for the five scalars (one synchronisation, not five).
        values = torch.stack([v.detach().double() for v in (loss_su, loss_sl, loss_tu, loss_tl, h)])
        return StepLosses(*values.tolist())

    def _reference(
        self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, x_u_student: torch.Tensor, lr: float
    ) -> StepLosses:
        student, teacher = self.student, self.teacher
        pred_u_student = student(x_u_student)
        pred_u_teacher = teacher(x_u)

        self.student_opt.zero_grad()
        pseudo = torch.argmax(pred_u_teacher, dim=1)
        self._count(pseudo, pred_u_student)
        loss_su = cross_entropy(pred_u_student, pseudo)
        loss_su.backward()
        self._sync([p.grad for p in student.parameters()])
        grad_u = copy.deepcopy([p.grad for p in student.parameters()])
        self.student_opt.step()

        self.student_opt.zero_grad()
        pred_l_student = student(x_l)
        loss_sl = cross_entropy(pred_l_student, y_l)
        loss_sl.backward()
        self._sync([p.grad for p in student.parameters()])
        grad_l = copy.deepcopy([p.grad for p in student.parameters()])

        dot = 0
        for g_u, g_l in zip(grad_u, grad_l, strict=True):
            dot += torch.sum(torch.mul(g_u, g_l))
        h = self._baseline(lr * dot)

        loss_tu = cross_entropy(pred_u_teacher, pseudo)
        self.teacher_opt.zero_grad()
        loss_tu.backward()
        grad_tu = copy.deepcopy([h * p.grad for p in teacher.parameters()])

        self.teacher_opt.zero_grad()
        pred_l_teacher = teacher(x_l)
        loss_tl = self.teacher_labeled_loss(pred_l_teacher, y_l)
        loss_tl.backward()
        grad_tl = copy.deepcopy([p.grad for p in teacher.parameters()])

        for p, g_tu, g_tl in zip(teacher.parameters(), grad_tu, grad_tl, strict=True):
            p.grad = g_tu + g_tl
        self._sync([p.grad for p in teacher.parameters()])
        self.teacher_opt.step()
        return StepLosses(*(float(v.detach()) for v in (loss_su, loss_sl, loss_tu, loss_tl, h)))


def supervised_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    amp_dtype: torch.dtype | None = None,
    grad_sync: GradSync | None = None,
) -> float:
    """One step of the UA-MT supervised recipe (0.5 CE + 0.5 Dice); returns the loss.

    ``grad_sync`` (torch.distributed) averages the gradients over the ranks before the step.
    """
    model.train()
    with _autocast(x.device, amp_dtype):
        logits = model(x)
    loss = supervised_loss(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_sync is not None:
        grad_sync([p.grad for p in model.parameters() if p.grad is not None])
    optimizer.step()
    return float(loss.detach())
