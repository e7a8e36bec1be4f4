"""The speed paths (issue 5) on the CPU: the device crop sampler, streaming inference, and the
speed benchmark's code at toy size. Nothing here times anything."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from reciprocalseg.common.errors import ReciprocalSegError
from reciprocalseg.config import make_config
from reciprocalseg.data.gpu_sampler import DeviceCases, HeldCases, cached_bytes, should_hold_on_device
from reciprocalseg.data.sampling import CachedCase, random_crop
from reciprocalseg.inference.sliding_window import from_module, sliding_window_probabilities
from reciprocalseg.model.vnet import build_model
from reciprocalseg.training.reciprocal import ReciprocalStep, gradient_dot, like_param

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def float32_default() -> Iterator[None]:
    # Another test module switches the default dtype to float64 at import.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(previous)


def _case(folder: Path, name: str, shape_zyx: tuple[int, int, int], labels: bool = True) -> CachedCase:
    """A cached case whose image is its label + 0.5 (so a crop's image gives away its label)."""
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    label = rng.integers(0, 4, size=shape_zyx).astype(np.uint8)
    image = label.astype(np.float32) + 0.5
    np.save(folder / f"{name}-image.npy", image)
    label_path = None
    if labels:
        label_path = folder / f"{name}-label.npy"
        np.save(label_path, label)
    return CachedCase(name, folder / f"{name}-image.npy", label_path)


class _Replay:
    """A numpy-Generator stand-in that returns scripted integers (to drive `random_crop`)."""

    def __init__(self, values: list[int]) -> None:
        self.values = list(values)

    def integers(self, low: int, high: int | None = None) -> int:
        low, high = (0, low) if high is None else (low, high)
        value = self.values.pop(0)
        assert low <= value < high, (low, value, high)
        return value


# -- the device crop sampler --------------------------------------------------------------------
def test_device_crops_shapes_dtypes_and_no_labels(tmp_path: Path) -> None:
    cases = [_case(tmp_path, "a", (20, 30, 28)), _case(tmp_path, "b", (24, 26, 40))]
    held = DeviceCases(cases, "cpu")
    g = torch.Generator().manual_seed(0)
    x, y = held.sample((16, 24, 20), 3, g)
    assert x.shape == (3, 1, 16, 24, 20) and x.dtype == torch.float32
    assert y.shape == (3, 16, 24, 20) and y.dtype == torch.int64
    unlabeled = DeviceCases([_case(tmp_path, "u", (20, 30, 28), labels=False)], "cpu", with_labels=False)
    x_u, y_u = unlabeled.sample((16, 24, 20), 2, g, with_labels=False)
    assert x_u.shape == (2, 1, 16, 24, 20) and y_u.shape == (2, 0)
    with pytest.raises(ReciprocalSegError):
        unlabeled.sample((16, 24, 20), 2, g, with_labels=True)


def test_device_crops_equal_numpy_random_crop_for_the_same_draws(tmp_path: Path) -> None:
    """Same draws -> the very same crop as sampling.random_crop, padding and rot/flip included."""
    # (18, 14, 40): smaller than the patch in z and y (zero padding), larger in x.
    cases = [_case(tmp_path, "a", (18, 14, 40)), _case(tmp_path, "b", (40, 36, 33))]
    held = DeviceCases(cases, "cpu")
    patch = (32, 16, 24)
    g = torch.Generator().manual_seed(5)
    seen_k, seen_axes = set(), set()
    for _ in range(40):
        draw = held.draw(patch, g)
        seen_k.add(draw.k)
        seen_axes.add(draw.flip_axis)
        image, label = cases[draw.index].load()
        # random_crop draws a start in [0, n + pad - w] and shifts it by -pad // 2.
        shifts = [max(w - n, 0) // 2 for n, w in zip(image.shape, draw.window, strict=True)]
        replay = _Replay(
            [draw.k, *(s + sh for s, sh in zip(draw.starts, shifts, strict=True)), draw.flip_axis]
        )
        expected_image, expected_label = random_crop(image, label, patch, replay)  # type: ignore[arg-type]
        assert not replay.values
        got_image, got_label = held.crop(draw)
        assert got_image.shape == patch and got_label is not None
        np.testing.assert_array_equal(got_image.numpy(), expected_image)
        np.testing.assert_array_equal(got_label.numpy(), expected_label)
    assert seen_k == {0, 1, 2, 3} and seen_axes == {1, 2}


def test_zero_padding_centres_a_small_volume(tmp_path: Path) -> None:
    case = _case(tmp_path, "small", (10, 12, 30))
    held = DeviceCases([case], "cpu")
    x, y = held.sample((16, 16, 16), 1, torch.Generator().manual_seed(1), augment=False)
    image = x[0, 0]
    # z: 10 of 16 -> 3 zero slices on each side; y: 12 of 16 -> 2 on each side.
    assert torch.all(image[:3] == 0) and torch.all(image[13:] == 0)
    assert torch.all(image[:, :2] == 0) and torch.all(image[:, 14:] == 0)
    assert torch.all(image[3:13, 2:14] > 0)  # every real voxel is label + 0.5 > 0
    assert torch.all(y[0][image == 0] == 0)


def test_rotation_and_flip_keep_image_and_label_together(tmp_path: Path) -> None:
    cases = [_case(tmp_path, "a", (20, 30, 26)), _case(tmp_path, "b", (12, 40, 40))]
    held = DeviceCases(cases, "cpu")
    batches = held.batches((16, 16, 32), 4, seed=3)
    for _ in range(10):
        x, y = next(batches)
        image = x[:, 0]
        inside = image != 0
        torch.testing.assert_close(image[inside] - 0.5, y[inside].float(), rtol=0, atol=0)
        assert torch.all(y[~inside] == 0)


def test_same_seed_same_crops_other_seed_other_crops(tmp_path: Path) -> None:
    held = DeviceCases([_case(tmp_path, "a", (20, 30, 26)), _case(tmp_path, "b", (24, 20, 20))], "cpu")
    first = next(held.batches((16, 16, 16), 2, seed=7))
    a, b = held.batches((16, 16, 16), 2, seed=7), held.batches((16, 16, 16), 2, seed=8)
    run_a = [next(a) for _ in range(3)]
    run_b = [next(b) for _ in range(3)]
    assert torch.equal(first[0], run_a[0][0]) and torch.equal(first[1], run_a[0][1])
    again = held.batches((16, 16, 16), 2, seed=7)
    for x, y in run_a:
        x2, y2 = next(again)
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert any(not torch.equal(p[0], q[0]) for p, q in zip(run_a, run_b, strict=True))


def test_hold_decision_and_held_streams(tmp_path: Path) -> None:
    labeled = [_case(tmp_path, "a", (20, 30, 26))]
    unlabeled = [_case(tmp_path, "u", (20, 30, 26), labels=False)]
    cpu = torch.device("cpu")
    assert cached_bytes(labeled) == 20 * 30 * 26 * 5  # float32 image + uint8 label
    assert not should_hold_on_device(labeled, cpu, "auto")  # auto: CUDA only
    assert not should_hold_on_device(labeled, cpu, "off")
    assert should_hold_on_device(labeled, cpu, "on")
    with pytest.raises(ValueError):
        should_hold_on_device(labeled, cpu, "sometimes")
    assert HeldCases.load_if_fits(labeled, unlabeled, cpu, "off") is None
    held = HeldCases.load_if_fits(labeled, unlabeled, cpu, "on")
    assert held is not None
    streams = held.streams((16, 16, 16), 2, 3, (1, 2))
    x_l, y_l = next(streams["labeled"])
    x_u, y_u = next(streams["unlabeled"])
    assert x_l.shape == (2, 1, 16, 16, 16) and y_l.shape == (2, 16, 16, 16)
    assert x_u.shape == (3, 1, 16, 16, 16) and y_u.shape == (3, 0)
    assert set(held.streams((16, 16, 16), 2, None, (1, 2))) == {"labeled"}


def test_config_fields_for_speed() -> None:
    config = make_config("demo")
    assert config.data_on_gpu == "auto" and config.compile is False and config.num_workers == -1
    with pytest.raises(ReciprocalSegError):
        make_config("demo", data_on_gpu="maybe")
    with pytest.raises(ReciprocalSegError):
        make_config("demo", num_workers=-2)
    assert config.compile_mode == "default"
    assert make_config("demo", compile_mode="reduce-overhead").compile_mode == "reduce-overhead"
    with pytest.raises(ReciprocalSegError, match="compile_mode"):
        make_config("demo", compile_mode="fastest")


# -- the fast step's plumbing ---------------------------------------------------------------------
class _StrictSGD(torch.optim.SGD):
    """SGD that insists, like the fused CUDA kernel, on gradients laid out as their parameters."""

    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    # The fused kernel's check (PyTorch >= 2.5): strides of size-1 dims do not count.
                    strides = zip(p.shape, p.stride(), p.grad.stride(), strict=True)
                    assert all(n == 1 or a == b for n, a, b in strides), (
                        p.shape,
                        p.stride(),
                        p.grad.stride(),
                    )
        return super().step(closure)


def test_fast_step_hands_gradients_over_in_the_parameters_layout() -> None:
    """Channels-last networks (the fast step on CUDA): the student's gradients from autograd.grad
    must reach the optimiser with their parameters' strides."""
    torch.manual_seed(0)
    cl = torch.channels_last_3d
    teacher, student = (build_model(2, 4).to(memory_format=cl) for _ in range(2))
    g = torch.Generator().manual_seed(1)
    x_l = torch.randn(2, 1, 16, 16, 16, generator=g).contiguous(memory_format=cl)
    x_u = torch.randn(2, 1, 16, 16, 16, generator=g).contiguous(memory_format=cl)
    y_l = (x_l[:, 0] > 0.3).long()

    def opt(m: torch.nn.Module) -> torch.optim.SGD:
        return _StrictSGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    out = ReciprocalStep(teacher, student, opt(teacher), opt(student), mode="fast")(x_l, y_l, x_u, 0.01)
    assert math.isfinite(out.h)


def test_like_param_and_gradient_dot() -> None:
    # The strides `module.to(memory_format=torch.channels_last_3d)` gives a 1x1x1 conv's weight.
    param = torch.empty_strided((2, 4, 1, 1, 1), (4, 1, 4, 4, 4)).normal_()
    grad = torch.randn(2, 4, 1, 1, 1)
    assert like_param(grad, param) is grad  # differs only in size-1 dims: the same memory order
    param = torch.randn(2, 4, 3, 3, 3).contiguous(memory_format=torch.channels_last_3d)
    grad = torch.randn(2, 4, 3, 3, 3)
    fixed = like_param(grad, param)
    assert fixed.stride() == param.stride() and torch.equal(fixed, grad)
    same = torch.randn(3, 3)
    assert like_param(same, torch.zeros(3, 3)) is same  # no copy when the layouts agree
    a = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    b = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    expected = sum(float((x * y).sum()) for x, y in zip(a, b, strict=True))
    assert float(gradient_dot(a, b)) == pytest.approx(expected, rel=1e-12)
    assert gradient_dot(a, b).dtype == torch.float64
    half = [t.to(torch.bfloat16) for t in a]
    assert gradient_dot(half, half).dtype == torch.float32  # accumulated in fp32 at least


# -- streaming inference ------------------------------------------------------------------------
def _tiny_model(batch: int = 2) -> object:
    torch.manual_seed(0)
    net = build_model(2, 4).eval()
    meta = {"n_classes": 2, "patch_size": [32, 32, 16], "inference_batch": batch}
    return from_module(net, meta)


@pytest.mark.parametrize("weighting", ["gaussian", "uniform"])
def test_streaming_inference_equals_device_inference(weighting: str) -> None:
    model = _tiny_model()
    rng = np.random.default_rng(0)
    volume = rng.standard_normal((14, 40, 45)).astype(np.float32)  # z smaller than the patch: padded
    kwargs = {"weighting": weighting, "overlap": 0.5, "mixed_precision": False}
    on_device = sliding_window_probabilities(model, volume, streaming=False, **kwargs)
    streamed = sliding_window_probabilities(model, volume, streaming=True, **kwargs)
    automatic = sliding_window_probabilities(model, volume, **kwargs)
    assert on_device.shape == (2, 14, 40, 45) and on_device.dtype == np.float32
    np.testing.assert_array_equal(on_device, streamed)
    np.testing.assert_array_equal(on_device, automatic)
    np.testing.assert_allclose(on_device.sum(0), 1, rtol=1e-5)


def test_the_published_baseline_is_the_published_code_path() -> None:
    """The speed baseline: the paper-stride arithmetic, with autograd on as the published
    evaluation runs it (no torch.no_grad() there), so its graph-recording cost is in the timing."""
    from benchmarks.speed import published_sliding_window

    model = _tiny_model()
    volume = np.random.default_rng(2).standard_normal((20, 40, 45)).astype(np.float32)
    recorded: list[bool] = []
    hook = model.module.register_forward_hook(lambda m, i, out: recorded.append(out.requires_grad))
    try:
        baseline = published_sliding_window(model, volume, steps_zyx=(4, 18, 18))
    finally:
        hook.remove()
    paper = sliding_window_probabilities(model, volume, paper_stride=True)
    assert recorded and all(recorded)  # one window at a time, each recording a graph
    assert len(recorded) == 2 * 2 * 2  # z: 0, 4; y: 0, 8; x: 0, 13 (patch 16, 32, 32; last flush)
    np.testing.assert_allclose(baseline, paper, rtol=1e-5, atol=1e-6)


def test_out_of_memory_falls_back_to_streaming() -> None:
    model = _tiny_model()
    volume = np.random.default_rng(1).standard_normal((16, 40, 40)).astype(np.float32)
    expected = sliding_window_probabilities(model, volume, streaming=False, mixed_precision=False)

    class RunsOutOnce(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 2:  # mid-scan, with the device buffers allocated
                raise torch.OutOfMemoryError("simulated: CUDA out of memory")
            return self.inner(x)

    flaky = from_module(RunsOutOnce(model.module), model.meta)
    got = sliding_window_probabilities(flaky, volume, mixed_precision=False)
    assert flaky.module.calls > 2
    np.testing.assert_array_equal(got, expected)


# -- the benchmark's own code path ----------------------------------------------------------------
def test_speed_benchmark_runs_without_simpleitk_and_reports_every_number() -> None:
    """`--tier tiny`: all four sections on the CPU, with SimpleITK made unimportable as on the
    lent GPU machines. Checks the JSON line's keys and that its numbers are positive and finite."""
    bootstrap = (
        "import sys; sys.modules['SimpleITK'] = None\n"  # `import SimpleITK` now raises ImportError
        "from benchmarks.speed import main\n"
        "sys.exit(main(['--tier', 'tiny', '--threads', '1']))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "ReciprocalSeg"), str(REPO)])}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", bootstrap], cwd=REPO, env=env, capture_output=True, text=True, timeout=850
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert lines[0].startswith("| measurement")  # the table comes first
    for key in (
        "train_step_ratio",
        "peak_memory_ratio",
        "inference_ratio",
        "device",
        "torch",
        "reference_step_ms",
        "fast_step_ms",
        "fast_before_step_ms",
        "supervised_step_ms",
        "fast_to_supervised",
        "paper_stride_inference_s",
        "fast_inference_s",
        "whole_scan_s",
        "supervised_ms_per_iter",
        "reciprocal_ms_per_iter",
        "projected_round_min",
    ):
        assert key in result, key
    assert result["errors"] == {}
    assert result["peak_memory_ratio"] is None  # no GPU memory on the CPU
    assert result["loop_cases_on_device"] is True  # the loop ran through the device sampler
    assert result["device"] and result["torch"] == torch.__version__
    numbers = [
        "train_step_ratio",
        "inference_ratio",
        "reference_step_ms",
        "fast_step_ms",
        "fast_before_step_ms",
        "supervised_step_ms",
        "fast_to_supervised",
        "paper_stride_inference_s",
        "fast_inference_s",
        "whole_scan_s",
        "supervised_ms_per_iter",
        "reciprocal_ms_per_iter",
        "projected_round_min",
    ]
    for key in numbers:
        value = result[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    assert result["paper_stride_windows"] > result["fast_windows"] > 0
