"""Issue 27 (a reciprocal step's cost in supervised steps): the cheaper pseudo-label argmax gives the
same labels, the fast step as Trainer runs it (channels-last) still computes the reference update,
and the speed benchmark's step section times the supervised step beside them. Nothing is timed."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmarks.speed import STEP_MODES, bench_step, load_step_config, table
from benchmarks.speed import TIERS as SPEED_TIERS
from reciprocalseg.config import make_config
from reciprocalseg.model.vnet import build_model
from reciprocalseg.training.reciprocal import ReciprocalStep, class_argmax

CL = torch.channels_last_3d


@pytest.fixture(autouse=True)
def float32_default() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("n_classes", [2, 3, 4, 9])
def test_class_argmax_gives_argmax_labels_in_either_layout(n_classes: int) -> None:
    g = torch.Generator().manual_seed(n_classes)
    # Small integers: many exact ties, where argmax must still pick the first maximum.
    logits = torch.randint(0, 3, (2, n_classes, 5, 12, 7), generator=g).float()
    logits[0, 1, 2, 3, 4] = float("nan")  # argmax takes NaN as the maximum
    logits[1, :, 0, 0, 0] = float("nan")
    expected = logits.argmax(dim=1)
    for layout in (torch.contiguous_format, CL):
        got = class_argmax(logits.contiguous(memory_format=layout))
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got, expected), layout
    flat = torch.randn(3, n_classes, 10, generator=g)  # not 5-D: plain argmax
    assert torch.equal(class_argmax(flat), flat.argmax(dim=1))


def test_the_networks_head_output_is_what_class_argmax_converts() -> None:
    """Why the conversion is there: with one torch thread (what the CPU benchmarks and the
    equal-time runs use) a channels-last V-Net's logits come back contiguous, as PyTorch runs the
    1x1x1 head on its own convolution rather than oneDNN's. If a PyTorch update changes that,
    class_argmax no longer copies anything and its docstring's reason is gone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = build_model(2, 4).to(memory_format=CL)
        logits = net(torch.randn(2, 1, 16, 16, 16).contiguous(memory_format=CL))
    finally:
        torch.set_num_threads(threads)
    assert logits.is_contiguous() and not logits.is_contiguous(memory_format=CL)


# Two halvings of a 16^3 crop (a 4^3 bottleneck). The paper's four leave a 1-voxel bottleneck, where
# batch norm over a batch of two normalises two values per channel and fp32 round-off alone moves
# h by orders of magnitude (even the reference against itself in fp64): no basis for a tolerance.
STRIDES = ((2, 2, 2), (2, 2, 2), (1, 1, 1), (1, 1, 1))


def _pair(seed: int, strides: tuple = STRIDES) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    return tuple(build_model(3, n_filters=4, dropout=True, strides=strides) for _ in range(2))  # type: ignore[return-value]


def _sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


def _crops(seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x_l = torch.randn(2, 1, 16, 16, 16, generator=g, dtype=dtype)
    y_l = torch.bucketize(x_l[:, 0], torch.tensor([0.0, 0.8], dtype=dtype))
    return x_l, y_l, torch.randn(2, 1, 16, 16, 16, generator=g, dtype=dtype)


def _fast_and_reference(dtype: torch.dtype) -> dict[str, tuple]:
    """One step of each mode from the same weights, crops and dropout masks: the fast step as
    Trainer runs it (channels-last networks and crops, pseudo labels through class_argmax), the
    reference as published (contiguous, plain argmax)."""
    teacher, student = _pair(3)
    x_l, y_l, x_u = _crops(100, dtype)
    results = {}
    for mode in ("fast", "reference"):
        t, s = (copy.deepcopy(m).to(dtype) for m in (teacher, student))
        inputs = (x_l, y_l, x_u)
        if mode == "fast":
            t, s = t.to(memory_format=CL), s.to(memory_format=CL)
            inputs = (x_l.contiguous(memory_format=CL), y_l, x_u.contiguous(memory_format=CL))
        step = ReciprocalStep(t, s, _sgd(t), _sgd(s), mode=mode)
        torch.manual_seed(7)  # the same dropout masks in both modes
        out = step(*inputs, 0.01)
        weights = torch.cat([p.detach().flatten() for p in (*t.parameters(), *s.parameters())])
        results[mode] = (out, step.last_counts, weights)
    return results


@pytest.mark.parametrize(
    ("dtype", "h_rel", "weights_rel"),
    [
        # fp64: the same arithmetic up to round-off (the tolerances of test_reciprocal_update.py).
        (torch.float64, 1e-9, 1e-12),
        # fp32: oneDNN's channels-last kernels against PyTorch's contiguous ones. h is a dot product
        # of two nearly orthogonal gradients (here |h| is about 1% of lr * |g_l| * |g_u|),
        # so their fp32 round-off shows in h's second digit with one thread (1.5% measured); the
        # weights, which h only scales a term of, agree to 1e-6.
        (torch.float32, 5e-2, 1e-5),
    ],
)
def test_channels_last_fast_step_equals_the_reference_step(
    dtype: torch.dtype, h_rel: float, weights_rel: float
) -> None:
    """Batch norm, dropout, three classes: the pseudo labels and the student's predictions agree
    voxel for voxel (counts per class), h and every weight within the stated tolerance."""
    results = _fast_and_reference(dtype)
    (fast, fast_counts, fast_w), (ref, ref_counts, ref_w) = results["fast"], results["reference"]
    assert torch.equal(fast_counts[0], ref_counts[0])  # the teacher's pseudo labels, per class
    assert torch.equal(fast_counts[1], ref_counts[1])  # the student's predictions, per class
    assert int(fast_counts[0][1:].sum()) > 0  # foreground pseudo labels exist
    assert abs(ref.h) > 0
    assert fast.h == pytest.approx(ref.h, rel=h_rel)
    assert float((fast_w - ref_w).norm() / ref_w.norm()) < weights_rel


def test_fast_before_issue_27_is_the_same_update() -> None:
    """The benchmark's `fast_before` (plain argmax) and the fast step give the same weights bit for
    bit: the argmax is the only difference, and it gives the same labels."""
    teacher, student = _pair(4)
    g = torch.Generator().manual_seed(5)
    x_l = torch.randn(2, 1, 16, 16, 16, generator=g).contiguous(memory_format=CL)
    y_l = (x_l[:, 0] > 0.3).long()
    x_u = torch.randn(2, 1, 16, 16, 16, generator=g).contiguous(memory_format=CL)
    weights = []
    for plain in (False, True):
        t, s = (copy.deepcopy(m).to(memory_format=CL) for m in (teacher, student))
        step = ReciprocalStep(t, s, _sgd(t), _sgd(s), mode="fast")
        if plain:
            step.argmax = lambda logits: logits.argmax(dim=1)
        for i in range(2):
            torch.manual_seed(i)
            step(x_l, y_l, x_u, 0.01)
        weights.append(torch.cat([p.detach().flatten() for p in (*t.parameters(), *s.parameters())]))
    assert torch.equal(weights[0], weights[1])


def test_speed_step_section_times_every_mode_with_a_runs_config(tmp_path: Path) -> None:
    """`--step-config`: the steps of an `auto`-style configuration (three classes, a level without
    downsampling, Adam in phase 1) at toy size, all four modes, ratios against the supervised step."""
    config = make_config(
        "auto",
        patch_size=(16, 16, 8),
        n_filters=4,
        n_classes=3,
        downsampling=((2, 2, 2), (2, 2, 2), (2, 2, 1), (1, 1, 1)),
    )
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    loaded = load_step_config(path, SPEED_TIERS["tiny"])
    assert loaded.device == "cpu" and loaded.n_classes == 3 and loaded.supervised_optimizer == "adam"
    result = bench_step(SPEED_TIERS["tiny"], torch.device("cpu"), config=loaded)
    assert result["step_patch_xyz"] == [16, 16, 8] and result["step_classes"] == 3
    assert result["supervised_batch"] == config.supervised_batch
    for mode in STEP_MODES:
        key = "supervised_step_ms" if mode == "supervised" else f"{mode}_step_ms"
        assert result[key] > 0, key
    for key in ("reference_to_supervised", "fast_before_to_supervised", "fast_to_supervised"):
        assert result[key] > 0, key
    assert result["fast_to_supervised"] == pytest.approx(
        result["fast_step_ms"] / result["supervised_step_ms"], rel=0.01
    )
    row = {
        "tier": "tiny",
        **dict.fromkeys(("scan_xyz", "paper_stride_windows", "fast_windows", "whole_scan_s")),
        **dict.fromkeys(("paper_stride_inference_s", "fast_inference_s", "inference_ratio")),
        **dict.fromkeys(("supervised_ms_per_iter", "errors")),
        **result,
    }
    assert f"| {result['fast_to_supervised']} |" in table(row)


def test_step_config_that_is_not_json_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read a JSON configuration"):
        load_step_config(bad, SPEED_TIERS["tiny"])
    missing = tmp_path / "absent.json"
    with pytest.raises(SystemExit, match="absent.json"):
        load_step_config(missing, SPEED_TIERS["tiny"])
