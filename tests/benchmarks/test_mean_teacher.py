"""Mean-teacher baseline: EMA update arithmetic, the consistency ramp-up, one training step."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from benchmarks.mean_teacher import (
    MeanTeacherSettings,
    MeanTeacherStep,
    consistency_weight,
    sigmoid_rampup,
    softmax_mse,
    update_ema,
)
from reciprocalseg.model.vnet import build_model


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(2, n_filters=4, normalization="batchnorm", dropout=False)


def test_ema_first_step_copies_then_averages_with_alpha() -> None:
    student, ema = _net(0), _net(1)
    a0 = update_ema(ema, student, alpha=0.99, step=0)
    assert a0 == 0.0  # UA-MT: alpha = min(1 - 1/(step+1), alpha) -> a copy at step 0
    for e, s in zip(ema.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(e, s)

    before = [p.detach().clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    a1 = update_ema(ema, student, alpha=0.99, step=1)
    assert a1 == pytest.approx(0.5)  # min(1 - 1/2, 0.99)
    for e, b, s in zip(ema.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(e, 0.5 * b + 0.5 * s)

    before = [p.detach().clone() for p in ema.parameters()]
    a = update_ema(ema, student, alpha=0.99, step=1000)
    assert a == pytest.approx(0.99)  # the cap
    for e, b, s in zip(ema.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(e, 0.99 * b + 0.01 * s)


def test_sigmoid_rampup_and_consistency_weight() -> None:
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(500, 100) == 1.0  # clipped after the ramp
    assert sigmoid_rampup(3, 0) == 1.0
    values = [sigmoid_rampup(i, 40) for i in range(41)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))  # strictly increasing

    s = MeanTeacherSettings()  # 0.1, ramp over 40 % of the iterations
    assert consistency_weight(0, 1000, s) == pytest.approx(0.1 * math.exp(-5))
    assert consistency_weight(200, 1000, s) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert consistency_weight(400, 1000, s) == pytest.approx(0.1)
    assert consistency_weight(999, 1000, s) == pytest.approx(0.1)


def test_softmax_mse_is_zero_for_equal_outputs_and_ignores_teacher_gradient() -> None:
    a = torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    b = torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    assert float(softmax_mse(a.detach(), a.detach())) == pytest.approx(0.0)
    loss = softmax_mse(a, b)
    loss.backward()
    assert a.grad is not None and b.grad is None
    expected = ((torch.softmax(a, 1) - torch.softmax(b, 1)) ** 2).mean()
    assert float(loss) == pytest.approx(float(expected))


@pytest.mark.parametrize("on_labeled", [True, False])
def test_step_updates_student_by_sgd_and_teacher_by_ema(on_labeled: bool) -> None:
    student = _net(0)
    teacher = copy.deepcopy(student)
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    settings = MeanTeacherSettings(consistency_on_labeled=on_labeled)
    step = MeanTeacherStep(student, teacher, opt, settings)
    g = torch.Generator().manual_seed(0)
    x_l = torch.randn(2, 1, 16, 16, 16, generator=g)
    y_l = (x_l[:, 0] > 0.3).long()
    x_u = torch.randn(2, 1, 16, 16, 16, generator=g)
    out0 = step(x_l, y_l, x_u, weight=0.1)
    assert out0["alpha"] == 0.0 and step.step_count == 1
    for e, s in zip(teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(e, s)  # first EMA update is a copy
    before_t = [p.detach().clone() for p in teacher.parameters()]
    before_s = [p.detach().clone() for p in student.parameters()]
    out1 = step(x_l, y_l, x_u, weight=0.1)
    assert out1["alpha"] == pytest.approx(0.5)
    assert out1["supervised"] > 0 and out1["consistency"] >= 0
    moved = sum(float((p - b).abs().sum()) for p, b in zip(student.parameters(), before_s, strict=True))
    assert moved > 0
    for e, b, s in zip(teacher.parameters(), before_t, student.parameters(), strict=True):
        torch.testing.assert_close(e, 0.5 * b + 0.5 * s)
        assert not e.requires_grad or e.grad is None
