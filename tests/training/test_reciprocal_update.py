"""The reciprocal update checked numerically against a by-hand computation on a tiny V-Net."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from reciprocalseg.common.file_formats import UNANNOTATED
from reciprocalseg.model.vnet import build_model
from reciprocalseg.training.perturb import IntensityPerturbation
from reciprocalseg.training.reciprocal import ReciprocalStep


@pytest.fixture(autouse=True)
def float64_by_default():
    """The by-hand comparison is exact up to round-off in float64; restored for other test files."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _pair(seed: int, norm: str = "groupnorm", dropout: bool = False):
    torch.manual_seed(seed)
    teacher = build_model(2, n_filters=4, normalization=norm, dropout=dropout)
    student = build_model(2, n_filters=4, normalization=norm, dropout=dropout)
    return teacher, student


def _data(seed: int, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    x_l = torch.randn(2, 1, size, size, size, generator=g)
    y_l = (x_l[:, 0] > 0.3).long()  # a learnable labelled target
    x_u = torch.randn(2, 1, size, size, size, generator=g)
    return x_l, y_l, x_u


def _grads(model, loss):
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def _sgd(model, lr, momentum=0.9, wd=1e-4):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_h_and_teacher_gradient_match_hand_computation(mode: str) -> None:
    lr, wd = 0.01, 1e-4
    teacher, student = _pair(0)
    x_l, y_l, x_u = _data(1)
    t0, s0 = copy.deepcopy(teacher), copy.deepcopy(student)

    step = ReciprocalStep(teacher, student, _sgd(teacher, lr), _sgd(student, lr), mode=mode)
    out = step(x_l, y_l, x_u, lr)

    # By hand, from the saved initial networks.
    t0.train(), s0.train()
    pseudo = t0(x_u).argmax(1)
    g_u = _grads(s0, F.cross_entropy(s0(x_u), pseudo))
    s1 = copy.deepcopy(s0)
    with torch.no_grad():  # first SGD step with momentum: buffer = g + wd * p
        for p, g in zip(s1.parameters(), g_u, strict=True):
            p -= lr * (g + wd * p)
    g_l = _grads(s1, F.cross_entropy(s1(x_l), y_l))
    h = lr * sum(torch.sum(a * b) for a, b in zip(g_u, g_l, strict=True))
    assert out.h == pytest.approx(float(h), rel=1e-9, abs=1e-15)
    assert abs(out.h) > 0

    # The student after its step equals the hand-stepped copy.
    for p, q in zip(student.parameters(), s1.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)

    # Teacher gradient = h * g_u(teacher) + g_l(teacher), then one SGD step.
    g_tu = _grads(t0, F.cross_entropy(t0(x_u), pseudo))
    g_tl = _grads(t0, F.cross_entropy(t0(x_l), y_l))
    for p_new, p_old, a, b in zip(teacher.parameters(), t0.parameters(), g_tu, g_tl, strict=True):
        expected_grad = h * a + b
        torch.testing.assert_close(p_new, p_old - lr * (expected_grad + wd * p_old), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(p_new.grad, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_student_view_changes_only_the_students_input(mode: str) -> None:
    """With a perturbed view, the teacher labels the crops as they are and the student learns
    those labels on its view: g_u, h and the teacher's gradient follow from that by hand."""
    lr, wd = 0.01, 1e-4
    teacher, student = _pair(2)
    x_l, y_l, x_u = _data(3)
    t0, s0 = copy.deepcopy(teacher), copy.deepcopy(student)
    view = IntensityPerturbation(1.0, seed=11)
    opts = _sgd(teacher, lr), _sgd(student, lr)
    step = ReciprocalStep(teacher, student, *opts, mode=mode, student_view=view)
    out = step(x_l, y_l, x_u, lr)

    t0.train(), s0.train()
    x_view = IntensityPerturbation(1.0, seed=11)(x_u)
    assert not torch.allclose(x_view, x_u, atol=0.05)
    pseudo = t0(x_u).argmax(1)  # from the unperturbed crops
    g_u = _grads(s0, F.cross_entropy(s0(x_view), pseudo))
    s1 = copy.deepcopy(s0)
    with torch.no_grad():
        for p, g in zip(s1.parameters(), g_u, strict=True):
            p -= lr * (g + wd * p)
    g_l = _grads(s1, F.cross_entropy(s1(x_l), y_l))
    h = lr * sum(torch.sum(a * b) for a, b in zip(g_u, g_l, strict=True))
    assert out.h == pytest.approx(float(h), rel=1e-9, abs=1e-15)
    for p, q in zip(student.parameters(), s1.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    g_tu = _grads(t0, F.cross_entropy(t0(x_u), pseudo))
    g_tl = _grads(t0, F.cross_entropy(t0(x_l), y_l))
    for p_new, a, b in zip(teacher.parameters(), g_tu, g_tl, strict=True):
        torch.testing.assert_close(p_new.grad, h * a + b, rtol=1e-9, atol=1e-12)


def test_sign_of_h_agrees_with_change_of_student_labelled_loss() -> None:
    """h > 0 means the pseudo-label step lowered the student's labelled loss (first order)."""
    lr = 1e-4
    signs = []
    for seed in range(4):
        teacher, student = _pair(10 + seed)
        x_l, y_l, x_u = _data(20 + seed)
        student.train()
        with torch.no_grad():
            before = float(F.cross_entropy(student(x_l), y_l))
        step = ReciprocalStep(teacher, student, _sgd(teacher, lr, 0, 0), _sgd(student, lr, 0, 0), mode="fast")
        out = step(x_l, y_l, x_u, lr)
        with torch.no_grad():
            after = float(F.cross_entropy(student(x_l), y_l))
        assert abs(out.h) > 1e-12
        # First order: L(after) - L(before) ~ -<g_l, g_u> * lr = -h.
        assert (out.h > 0) == (after < before), (seed, out.h, after - before)
        assert (after - before) == pytest.approx(-out.h, rel=0.1)
        signs.append(out.h > 0)
    assert any(signs) and not all(signs), "these seeds give both helpful and harmful pseudo-label steps"


def test_fast_and_reference_steps_agree_over_several_steps() -> None:
    """fp32 on the CPU: same parameters after several steps.

    Group norm without dropout: the pseudo labels are an argmax, and with batch norm over a batch
    of two this tiny untrained network sits so close to its decision boundary that fp32 round-off
    flips pseudo-label voxels after a couple of steps in either mode (a discontinuity of the
    method, not a difference between the modes). One step with batch norm and dropout, as
    published, is compared in the next test.
    """
    torch.set_default_dtype(torch.float32)
    try:
        teacher, student = _pair(3, norm="groupnorm", dropout=False)
        pairs = {m: (copy.deepcopy(teacher), copy.deepcopy(student)) for m in ("fast", "reference")}
        steps = {m: ReciprocalStep(t, s, _sgd(t, 0.01), _sgd(s, 0.01), mode=m) for m, (t, s) in pairs.items()}
        hs = {m: [] for m in steps}
        for i in range(3):
            x_l, y_l, x_u = (t.float() if t.is_floating_point() else t for t in _data(100 + i))
            for mode, step in steps.items():
                torch.manual_seed(1000 + i)  # the same dropout masks in both modes
                hs[mode].append(step(x_l, y_l, x_u, 0.01).h)
        for a, b in zip(hs["fast"], hs["reference"], strict=True):
            assert a == pytest.approx(b, rel=1e-3, abs=1e-9)
        for net in (0, 1):
            fast = torch.cat([p.flatten() for p in pairs["fast"][net].parameters()])
            ref = torch.cat([p.flatten() for p in pairs["reference"][net].parameters()])
            rel = float((fast - ref).norm() / ref.norm())
            assert rel < 1e-5, rel
    finally:
        torch.set_default_dtype(torch.float64)


def test_fast_and_reference_agree_for_one_step_with_dropout() -> None:
    torch.set_default_dtype(torch.float32)
    try:
        teacher, student = _pair(3, norm="batchnorm", dropout=True)
        x_l, y_l, x_u = (t.float() if t.is_floating_point() else t for t in _data(100))
        nets, hs = [], []
        for mode in ("fast", "reference"):
            t, s = copy.deepcopy(teacher), copy.deepcopy(student)
            torch.manual_seed(7)  # the same dropout masks in both modes
            hs.append(ReciprocalStep(t, s, _sgd(t, 0.01), _sgd(s, 0.01), mode=mode)(x_l, y_l, x_u, 0.01).h)
            nets.append(torch.cat([p.flatten() for p in (*t.parameters(), *s.parameters())]))
        assert hs[0] == pytest.approx(hs[1], rel=1e-4)
        assert float((nets[0] - nets[1]).norm() / nets[1].norm()) < 1e-6
    finally:
        torch.set_default_dtype(torch.float64)


def test_student_never_sees_labels() -> None:
    """Changing the labels changes the teacher's update but not the student's."""
    teacher, student = _pair(5)
    x_l, y_l, x_u = _data(6)
    results = []
    for labels in (y_l, 1 - y_l):
        t, s = copy.deepcopy(teacher), copy.deepcopy(student)
        ReciprocalStep(t, s, _sgd(t, 0.01), _sgd(s, 0.01))(x_l, labels, x_u, 0.01)
        results.append((t, s))
    (t_a, s_a), (t_b, s_b) = results
    for p, q in zip(s_a.parameters(), s_b.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert any(not torch.allclose(p, q) for p, q in zip(t_a.parameters(), t_b.parameters(), strict=True))


def _annotated_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE over the annotated voxels by hand: the rows of the annotated voxels, no ignore_index."""
    rows = logits.movedim(1, -1).reshape(-1, logits.shape[1])
    keep = labels.reshape(-1) != UNANNOTATED
    return F.cross_entropy(rows[keep], labels.reshape(-1)[keep])


def _annotated_dice(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    rows = torch.softmax(logits.movedim(1, -1).reshape(-1, logits.shape[1]), dim=1)
    keep = labels.reshape(-1) != UNANNOTATED
    p, y = rows[keep][:, 1], (labels.reshape(-1)[keep] == 1).to(rows.dtype)
    return 1 - (2 * (p * y).sum() + 1e-5) / (p.sum() + y.sum() + 1e-5)


@pytest.mark.parametrize("teacher_dice", [False, True])
@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_partial_labels_mask_both_labelled_losses(mode: str, teacher_dice: bool) -> None:
    """With unannotated voxels (255) in y_l, the student's labelled CE after its step (which makes h)
    and the teacher's labelled loss count the annotated voxels only; the rest follows by hand."""
    lr, wd = 0.01, 1e-4
    teacher, student = _pair(4)
    x_l, y_l, x_u = _data(5)
    g = torch.Generator().manual_seed(6)
    y_l[torch.rand(y_l.shape, generator=g) < 0.7] = UNANNOTATED  # 30% annotated, scattered
    t0, s0 = copy.deepcopy(teacher), copy.deepcopy(student)
    opts = _sgd(teacher, lr), _sgd(student, lr)
    out = ReciprocalStep(teacher, student, *opts, mode=mode, teacher_dice=teacher_dice)(x_l, y_l, x_u, lr)

    t0.train(), s0.train()
    pseudo = t0(x_u).argmax(1)
    g_u = _grads(s0, F.cross_entropy(s0(x_u), pseudo))
    s1 = copy.deepcopy(s0)
    with torch.no_grad():
        for p, grad in zip(s1.parameters(), g_u, strict=True):
            p -= lr * (grad + wd * p)
    loss_sl = _annotated_ce(s1(x_l), y_l)
    g_l = _grads(s1, loss_sl)
    h = lr * sum(torch.sum(a * b) for a, b in zip(g_u, g_l, strict=True))
    assert out.h == pytest.approx(float(h), rel=1e-9, abs=1e-15)
    assert out.student_labeled == pytest.approx(float(loss_sl), rel=1e-9)
    logits_tl = t0(x_l)
    loss_tl = _annotated_ce(logits_tl, y_l)
    if teacher_dice:
        loss_tl = 0.5 * loss_tl + 0.5 * _annotated_dice(logits_tl, y_l)
    assert out.teacher_labeled == pytest.approx(float(loss_tl), rel=1e-9)
    g_tu = _grads(t0, F.cross_entropy(t0(x_u), pseudo))
    g_tl = _grads(t0, loss_tl)
    for p_new, a, b in zip(teacher.parameters(), g_tu, g_tl, strict=True):
        torch.testing.assert_close(p_new.grad, h * a + b, rtol=1e-9, atol=1e-12)
