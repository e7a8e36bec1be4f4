"""Speed (issue 5): `python -m benchmarks.speed --tier cpu|gpu [--json-only] [--compile [--compile-mode M]]`.

In one process, on the same inputs and from the same initial weights:

(a) the reciprocal training step: `reference` (the published arithmetic: fp32, one backward
    per loss, deep-copied gradient lists, cuDNN deterministic, no autotuning) against `fast`
    (the default configuration: bf16 autocast where the GPU has it, channels_last_3d, fused
    SGD, cuDNN autotuning, one teacher backward). Iterations alternate between the two so
    that load from other programs hits both alike; median ms per step after warm-up. Peak
    GPU memory of each is its own: the allocator's peak during its steps minus what the
    other pair of networks holds meanwhile.
(b) inference of one 144x144x88 (x, y, z) scan: the paper's stride (18, 18, 4), one window
    at a time in fp32 (cuDNN defaults, as the published evaluation script), against the fast
    path (50% overlap, batched windows, Gaussian weighting, bf16 on the GPU, channels-last,
    the scan kept on the device).
(c) gpu tier: a whole uncropped 576x576x88 scan with the fast path.
(d) gpu tier: the full training loop through the real `Trainer` on synthetic cases held on the
    GPU (data/gpu_sampler.py), supervised and reciprocal ms per iteration, and the projected
    time of a paper round (6000 supervised + 6000 reciprocal iterations).

Tiers: `gpu` is the paper's setting (112x112x80 crops, batch 2+2, V-Net n_filters 16);
`cpu` is sized for a small CPU machine (64x64x48 crops, n_filters 8). Its scan for (b) is
96x96x56: the same margins around its patch as 144x144x88 has around 112x112x80, so both
tiers compare the same 27 paper-stride windows with 8 fast ones (a 144x144x88 scan would
need 396 paper-stride windows of 64x64x48: many minutes on a small CPU; `--scan 144 144 88`
runs it anyway). `tiny` runs every section at toy sizes on the CPU (the test suite uses it
to exercise this code, not to time anything).

A table goes to stdout, then, as the LAST line, one JSON object (see `run`). Scans are never
read or written: SimpleITK is not needed (a placeholder module stands in when it is missing).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


class _MissingModule(types.ModuleType):
    """Stands in for an uninstalled module that is imported but never used on this path."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ModuleNotFoundError(
            f"{self.__name__} is not installed; {self.__name__}.{name} was asked for by a code path "
            "the speed benchmark is not meant to take"
        )


def _allow_missing_simpleitk() -> None:
    """The benchmark never reads or writes a scan, but reciprocalseg modules import SimpleITK at
    the top; let it run on machines without it (the lent GPU machines have no SimpleITK)."""
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        sys.modules["SimpleITK"] = _MissingModule("SimpleITK")


_allow_missing_simpleitk()

from reciprocalseg.config import COMPILE_MODES, TrainConfig, make_config  # noqa: E402
from reciprocalseg.data.io import Case  # noqa: E402
from reciprocalseg.data.sampling import CachedCase  # noqa: E402
from reciprocalseg.inference.sliding_window import (  # noqa: E402
    PAPER_STRIDE_XYZ,
    LoadedModel,
    from_module,
    sliding_window_probabilities,
    window_starts,
)
from reciprocalseg.model.vnet import build_model  # noqa: E402
from reciprocalseg.training.reciprocal import ReciprocalStep, class_argmax, supervised_step  # noqa: E402
from reciprocalseg.training.runner import (  # noqa: E402
    Trainer,
    _sgd,
    _supervised_optimizer,
    amp_dtype_for,
)

Triple = tuple[int, int, int]
PAPER_ITERATIONS = (6000, 6000)  # supervised teacher start, then reciprocal learning


@dataclass(frozen=True)
class Tier:
    """Sizes and repetition counts of one benchmark tier."""

    name: str
    device: str
    patch_xyz: Triple
    n_filters: int
    warmup_steps: int  # per step mode, untimed (cuDNN autotuning happens here)
    timed_steps: int  # per step mode
    scan_xyz: Triple
    inference_warmup: int
    paper_repeats: int
    fast_repeats: int
    whole_scan_xyz: Triple | None  # (c); None skips it
    loop_iterations: int  # (d) per phase; 0 skips it
    loop_warmup: int  # leading iterations of each phase left out of the median
    loop_cases: tuple[int, int] = (16, 64)  # labelled, unlabelled (the paper's 20% of 80 LA scans)
    loop_case_xyz: Triple = (144, 144, 88)


TIERS = {
    "gpu": Tier(
        "gpu",
        "cuda",
        (112, 112, 80),
        16,
        warmup_steps=5,
        timed_steps=20,
        scan_xyz=(144, 144, 88),
        inference_warmup=1,
        paper_repeats=3,
        fast_repeats=10,
        whole_scan_xyz=(576, 576, 88),
        loop_iterations=120,
        loop_warmup=20,
    ),
    "cpu": Tier(
        "cpu",
        "cpu",
        (64, 64, 48),
        8,
        warmup_steps=1,
        timed_steps=6,
        scan_xyz=(96, 96, 56),
        inference_warmup=0,
        paper_repeats=1,
        fast_repeats=2,
        whole_scan_xyz=None,
        loop_iterations=0,
        loop_warmup=0,
    ),
    "tiny": Tier(
        "tiny",
        "cpu",
        (32, 32, 16),
        4,
        warmup_steps=1,
        timed_steps=2,
        scan_xyz=(48, 40, 24),
        inference_warmup=1,
        paper_repeats=1,
        fast_repeats=1,
        whole_scan_xyz=(64, 64, 24),
        loop_iterations=4,
        loop_warmup=1,
        loop_cases=(2, 2),
        loop_case_xyz=(40, 36, 20),
    ),
}


# -- helpers -----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds `fn` takes, with the GPU's queue drained before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _cudnn(benchmark: bool, deterministic: bool = False) -> None:
    """cuDNN settings: the published training script's are deterministic=True, benchmark=False
    (UA-MT/RLSSS); its evaluation script leaves PyTorch's defaults (both False); the fast path
    autotunes (benchmark=True)."""
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = deterministic


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def _tensor_bytes(tensors: Sequence[torch.Tensor]) -> dict[int, int]:
    """{data pointer: bytes} of the given tensors' storages (each storage counted once)."""
    out: dict[int, int] = {}
    for t in tensors:
        if t is not None and t.device.type == "cuda":
            storage = t.untyped_storage()
            out[storage.data_ptr()] = storage.nbytes()
    return out


def _resident(models: Sequence[torch.nn.Module], opts: Sequence[torch.optim.Optimizer]) -> list[torch.Tensor]:
    """Tensors a pair of networks keeps between steps: weights, buffers, gradients, optimiser state."""
    out: list[torch.Tensor] = []
    for m in models:
        out += list(m.parameters()) + list(m.buffers())
        out += [p.grad for p in m.parameters() if p.grad is not None]
    for opt in opts:
        for state in opt.state.values():
            out += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return out


def _synthetic_volume(shape_zyx: Triple, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A z-scored noisy scan with a bright ellipsoid, and the ellipsoid's label (uint8)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape_zyx), indexing="ij")
    label = ((zz / 0.5) ** 2 + (yy / 0.35) ** 2 + (xx / 0.3) ** 2 < 1).astype(np.uint8)
    image = rng.standard_normal(shape_zyx, dtype=np.float32) + 2.0 * label
    image = (image - image.mean()) / image.std()
    return image.astype(np.float32), label


def _config(tier: Tier, **changes: Any) -> TrainConfig:
    return make_config(
        "paper", patch_size=tier.patch_xyz, n_filters=tier.n_filters, device=tier.device, **changes
    )


# -- (a) the training step ---------------------------------------------------------------------
STEP_MODES = ("reference", "fast_before", "fast", "supervised")


def _plain_argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=1)


def _step_inputs(config: TrainConfig) -> tuple[torch.Tensor, ...]:
    """Labelled crops with a learnable label of `n_classes`, unlabelled crops, and the supervised
    batch: the same crops when it holds as many as the two together, else its own."""
    g = torch.Generator().manual_seed(1)
    shape = (1, *config.patch_zyx)
    thresholds = torch.linspace(-0.5, 1.0, config.n_classes - 1)

    def crops(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, *shape, generator=g)
        return x, torch.bucketize(x[:, 0], thresholds).long()

    (x_l, y_l), (x_u, y_u) = crops(config.batch_labeled), crops(config.batch_unlabeled)
    if config.supervised_batch == len(x_l) + len(x_u):
        x_s, y_s = torch.cat([x_l, x_u]), torch.cat([y_l, y_u])
    else:
        x_s, y_s = crops(config.supervised_batch)
    return x_l, y_l, x_u, x_s, y_s


def _step_pair(
    mode: str, config: TrainConfig, device: torch.device, compile_fast: bool, compile_mode: str
) -> dict[str, Any]:
    """Networks, optimisers and a callable for one step mode, from the same initial weights."""
    torch.manual_seed(0)
    init = [
        build_model(
            config.n_classes, config.n_filters, config.normalization, config.dropout, config.strides_zyx
        )
        for _ in range(2)
    ]
    x_l, y_l, x_u, x_s, y_s = _step_inputs(config)
    reference = mode == "reference"
    cfg = config.replace(step_mode="reference" if reference else "fast")
    nets = [m.to(device) for m in init]
    inputs = [t.to(device) for t in (x_l, y_l, x_u, x_s, y_s)]
    if not reference:  # what Trainer does for the fast mode (channels-last, on any device)
        nets = [m.to(memory_format=torch.channels_last_3d) for m in nets]
        inputs = [t.contiguous(memory_format=torch.channels_last_3d) if t.dim() == 5 else t for t in inputs]
        if compile_fast:
            for m in nets:
                m.compile(dynamic=False, mode=compile_mode)  # as Trainer does with `compile: true`
    opts = [_sgd(m, cfg, device) for m in nets]
    amp = amp_dtype_for(cfg, device)
    a, b, c, xs, ys = inputs
    if mode == "supervised":  # phase 1 of the same configuration: one network, its optimiser
        nets, opts = nets[:1], [_supervised_optimizer(nets[0], cfg, device, opts[0])]
        net, opt = nets[0], opts[0]
        run: Callable[[], Any] = lambda: supervised_step(net, opt, xs, ys, amp)  # noqa: E731
    else:
        step = ReciprocalStep(nets[0], nets[1], opts[0], opts[1], mode=cfg.step_mode, amp_dtype=amp)
        if mode == "fast_before":
            step.argmax = _plain_argmax  # the fast step before issue 27: argmax of the contiguous head
        run = lambda: step(a, b, c, config.lr)  # noqa: E731
    return {"nets": nets, "opts": opts, "inputs": inputs, "run": run, "amp": amp, "times": [], "peak": 0}


def bench_pseudo_labels(config: TrainConfig, device: torch.device, repeats: int = 11) -> tuple[float, float]:
    """Median ms of the pseudo-label argmax, before issue 27 and now, on logits of a step's shape
    in the layout the V-Net's head gives with one CPU thread (contiguous), alternating."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(config.batch_unlabeled, config.n_classes, *config.patch_zyx, generator=g).to(device)
    times: dict[str, list[float]] = {"before": [], "now": []}
    for _ in range(repeats):
        times["before"].append(_timed(lambda: _plain_argmax(logits), device))
        times["now"].append(_timed(lambda: class_argmax(logits), device))
    return tuple(round(1000 * statistics.median(times[k]), 2) for k in ("before", "now"))  # type: ignore[return-value]


def bench_step(
    tier: Tier,
    device: torch.device,
    compile_fast: bool = False,
    compile_mode: str = "default",
    config: TrainConfig | None = None,
) -> dict[str, Any]:
    """Median ms per step and peak GPU memory of each mode in STEP_MODES, in rotation.

    `config` (a run's config.json, `--step-config`): its crop, network, batches and phase-1
    optimiser instead of the tier's (which are the paper preset's at the tier's sizes).
    """
    config = config or _config(tier)
    pairs = {mode: _step_pair(mode, config, device, compile_fast, compile_mode) for mode in STEP_MODES}
    cuda = device.type == "cuda"
    for i in range(tier.warmup_steps + tier.timed_steps):
        # Rotate which mode goes first, so that none always follows the same other.
        k = i % len(STEP_MODES)
        for mode in STEP_MODES[k:] + STEP_MODES[:k]:
            pair = pairs[mode]
            reference = mode == "reference"
            _cudnn(benchmark=not reference, deterministic=reference)
            if cuda:
                mine = _tensor_bytes(_resident(pair["nets"], pair["opts"]) + pair["inputs"])
                others = {}
                for other in STEP_MODES:
                    if other != mode:
                        others.update(_tensor_bytes(_resident(pairs[other]["nets"], pairs[other]["opts"])))
                        others.update(_tensor_bytes(pairs[other]["inputs"]))
                other_only = sum(n for ptr, n in others.items() if ptr not in mine)
                torch.cuda.reset_peak_memory_stats(device)
            seconds = _timed(pair["run"], device)
            if i >= tier.warmup_steps:
                pair["times"].append(seconds)
                if cuda:
                    pair["peak"] = max(pair["peak"], torch.cuda.max_memory_allocated(device) - other_only)
    ms = {mode: 1000 * statistics.median(pairs[mode]["times"]) for mode in STEP_MODES}
    argmax_before_ms, argmax_ms = bench_pseudo_labels(config, device)
    result: dict[str, Any] = {
        "step_patch_xyz": list(config.patch_size),
        "step_n_filters": config.n_filters,
        "step_batch": f"{config.batch_labeled}+{config.batch_unlabeled}",
        "supervised_batch": config.supervised_batch,
        "step_classes": config.n_classes,
        "reference_step_ms": round(ms["reference"], 2),
        "fast_before_step_ms": round(ms["fast_before"], 2),
        "fast_step_ms": round(ms["fast"], 2),
        "supervised_step_ms": round(ms["supervised"], 2),
        "train_step_ratio": round(ms["reference"] / ms["fast"], 3),
        # A reciprocal step's cost in supervised steps (issue 27: at most 2.5 on the CPU).
        "reference_to_supervised": round(ms["reference"] / ms["supervised"], 3),
        "fast_before_to_supervised": round(ms["fast_before"] / ms["supervised"], 3),
        "fast_to_supervised": round(ms["fast"] / ms["supervised"], 3),
        # One argmax of the step's unlabelled logits (the step takes two: pseudo labels, the
        # student's predictions for the collapse guard).
        "argmax_before_ms": argmax_before_ms,
        "argmax_ms": argmax_ms,
        # Every timed step in the order run (a shared machine's load shows here, not in a median).
        "step_times_ms": {mode: [round(1000 * t, 1) for t in pairs[mode]["times"]] for mode in STEP_MODES},
        "reference_peak_mib": None,
        "fast_peak_mib": None,
        "peak_memory_ratio": None,
        "fast_amp": str(pairs["fast"]["amp"]).replace("torch.", "") if pairs["fast"]["amp"] else "fp32",
        "fast_compiled": compile_mode if compile_fast else False,
    }
    if cuda:
        ref_peak, fast_peak = pairs["reference"]["peak"], pairs["fast"]["peak"]
        result.update(
            reference_peak_mib=round(ref_peak / 2**20, 1),
            fast_peak_mib=round(fast_peak / 2**20, 1),
            peak_memory_ratio=round(fast_peak / ref_peak, 3),
        )
    del pairs
    if cuda:
        torch.cuda.empty_cache()
    return result


# -- (b), (c) inference ------------------------------------------------------------------------
def _inference_models(tier: Tier, device: torch.device) -> tuple[LoadedModel, LoadedModel]:
    """The same weights twice: as published (NCDHW) and as the fast path holds them (channels-last)."""
    config = _config(tier)
    torch.manual_seed(2)
    net = build_model(2, tier.n_filters).to(device).eval()
    meta = {
        "n_classes": 2,
        "patch_size": list(tier.patch_xyz),
        "inference_overlap": config.inference_overlap,
        "inference_weighting": config.inference_weighting,
        "inference_batch": config.inference_batch,
    }
    fast = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)  # as load_model holds it
    return from_module(net, meta), from_module(fast, meta)


def _window_count(scan_zyx: Triple, patch_zyx: Triple, steps_zyx: Sequence[int]) -> int:
    counts = [
        len(window_starts(max(n, p), p, s)) for n, p, s in zip(scan_zyx, patch_zyx, steps_zyx, strict=True)
    ]
    return math.prod(counts)


def published_sliding_window(model: LoadedModel, volume: np.ndarray, steps_zyx: Sequence[int]) -> np.ndarray:
    """The published evaluation's code path (RLSSS test_util.test_single_case), our own rewrite.

    The scan and the accumulators live in host numpy arrays; each window is copied to the device,
    run alone in fp32, soft-maxed and copied back. This is the cost the paper's numbers came with,
    and the baseline the speed target is stated against; `paper_stride=True` in inference.py keeps
    the same arithmetic but on the device. Like the published code (test.py / test_util.py), it
    runs with autograd on: the forward records a graph that is never used, as there; a caller
    that wants that cost gone wraps the call in `torch.no_grad()`.
    """
    patch = model.patch_zyx
    image = np.pad(volume, [(0, max(p - n, 0)) for n, p in zip(volume.shape, patch, strict=True)])
    score = np.zeros((model.n_classes, *image.shape), np.float32)
    count = np.zeros(image.shape, np.float32)
    starts = [window_starts(n, p, st) for n, p, st in zip(image.shape, patch, steps_zyx, strict=True)]
    for z0 in starts[0]:
        for y0 in starts[1]:
            for x0 in starts[2]:
                region = (slice(z0, z0 + patch[0]), slice(y0, y0 + patch[1]), slice(x0, x0 + patch[2]))
                window = torch.from_numpy(np.ascontiguousarray(image[region])[None, None]).to(model.device)
                probs = torch.softmax(model.module(window), dim=1).detach().cpu().numpy()[0]
                score[(slice(None), *region)] += probs
                count[region] += 1
    score /= count
    return score[(slice(None), *(slice(0, n) for n in volume.shape))]


def bench_inference(tier: Tier, device: torch.device) -> dict[str, Any]:
    """Paper-stride vs fast sliding-window inference of one scan; and (c) a whole scan."""
    reference, fast = _inference_models(tier, device)
    x, y, z = tier.scan_xyz
    volume, _ = _synthetic_volume((z, y, x), seed=3)
    patch = reference.patch_zyx
    paper_steps = [min(s, p) for s, p in zip(PAPER_STRIDE_XYZ[::-1], patch, strict=True)]
    overlap = reference.meta["inference_overlap"]
    fast_steps = [max(1, round(p * (1 - overlap))) for p in patch]

    def paper() -> np.ndarray:
        _cudnn(benchmark=False)
        return sliding_window_probabilities(reference, volume, paper_stride=True)

    def fast_run(vol: np.ndarray = volume) -> np.ndarray:
        _cudnn(benchmark=True)
        return sliding_window_probabilities(fast, vol)

    def published() -> np.ndarray:
        _cudnn(benchmark=False)
        return published_sliding_window(reference, volume, paper_steps)

    for _ in range(tier.inference_warmup):
        np.testing.assert_allclose(published(), paper(), rtol=1e-4, atol=1e-5)  # the same arithmetic
        fast_run()
    published_s = statistics.median(_timed(published, device) for _ in range(tier.paper_repeats))
    paper_s = statistics.median(_timed(paper, device) for _ in range(tier.paper_repeats))
    fast_s = statistics.median(_timed(fast_run, device) for _ in range(tier.fast_repeats))
    result: dict[str, Any] = {
        "scan_xyz": list(tier.scan_xyz),
        "paper_stride_windows": _window_count((z, y, x), patch, paper_steps),
        "fast_windows": _window_count((z, y, x), patch, fast_steps),
        # The baseline is the published code path; the on-device paper stride is shown beside it.
        "paper_stride_inference_s": round(published_s, 4),
        "paper_stride_on_device_s": round(paper_s, 4),
        "fast_inference_s": round(fast_s, 4),
        "inference_ratio": round(published_s / fast_s, 2),
        "inference_ratio_vs_on_device_paper_stride": round(paper_s / fast_s, 2),
        "whole_scan_xyz": None,
        "whole_scan_windows": None,
        "whole_scan_s": None,
    }
    if tier.whole_scan_xyz is not None:
        wx, wy, wz = tier.whole_scan_xyz
        whole, _ = _synthetic_volume((wz, wy, wx), seed=4)
        for _ in range(tier.inference_warmup):
            fast_run(whole)
        whole_s = statistics.median(_timed(lambda: fast_run(whole), device) for _ in range(3))
        result.update(
            whole_scan_xyz=list(tier.whole_scan_xyz),
            whole_scan_windows=_window_count((wz, wy, wx), patch, fast_steps),
            whole_scan_s=round(whole_s, 4),
        )
    return result


# -- (d) the training loop ---------------------------------------------------------------------
class _PrecachedTrainer(Trainer):
    """The real Trainer, on cases already in its .npy cache format (no scan is read)."""

    def __init__(self, *args: Any, cached: tuple[list[CachedCase], list[CachedCase]], **kwargs: Any) -> None:
        self._cached = cached
        super().__init__(*args, **kwargs)

    def _prepare_data(self) -> None:
        self.labeled_cached, self.unlabeled_cached = self._cached


class _IterationClock:
    """Listener: wall time between consecutive progress events of each phase."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.seconds: dict[str, list[float]] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        if event["event"] != "progress":
            return
        now, phase = time.perf_counter(), event["phase"]
        if phase in self.last:
            self.seconds.setdefault(phase, []).append(now - self.last[phase])
        self.last[phase] = now


def _write_cases(
    tier: Tier, folder: Path
) -> tuple[list[Case], list[Case], list[CachedCase], list[CachedCase]]:
    x, y, z = tier.loop_case_xyz
    n_labeled, n_unlabeled = tier.loop_cases
    cases: tuple[list[Case], list[Case], list[CachedCase], list[CachedCase]] = ([], [], [], [])
    for i in range(n_labeled + n_unlabeled):
        image, label = _synthetic_volume((z, y, x), seed=100 + i)
        case_id = f"case{i:03d}"
        image_path = folder / f"{case_id}-image.npy"
        np.save(image_path, image)
        if i < n_labeled:
            label_path = folder / f"{case_id}-label.npy"
            np.save(label_path, label)
            cases[0].append(Case(case_id, image_path, label_path))
            cases[2].append(CachedCase(case_id, image_path, label_path))
        else:
            cases[1].append(Case(case_id, image_path))
            cases[3].append(CachedCase(case_id, image_path, None))
    return cases


def bench_loop(
    tier: Tier, device: torch.device, compile_models: bool = False, compile_mode: str = "default"
) -> dict[str, Any]:
    """ms per iteration of both phases of the real training loop, crops cut on the device."""
    n = tier.loop_iterations
    config = _config(
        tier,
        supervised_iterations=n,
        reciprocal_iterations=n,
        checkpoint_every=10**9,  # only the end-of-phase checkpoints, which are not timed
        data_on_gpu="on",
        compile=compile_models,  # compilation happens in the warm-up iterations, left out of the median
        compile_mode=compile_mode,
    )
    _cudnn(benchmark=True)  # what Trainer sets for the fast mode on CUDA (and no leftover determinism)
    clock = _IterationClock()
    with tempfile.TemporaryDirectory(prefix="speed-loop-") as tmp:
        labeled, unlabeled, labeled_cached, unlabeled_cached = _write_cases(tier, Path(tmp))
        trainer = _PrecachedTrainer(
            config, labeled, unlabeled, Path(tmp) / "run", [clock], cached=(labeled_cached, unlabeled_cached)
        )
        trainer.run()
        held = trainer._held_cases()
        on_device = held is not None and held.labeled.device.type == device.type
    per_iter = {}
    for phase in ("supervised", "reciprocal"):
        times = clock.seconds[phase][max(0, tier.loop_warmup - 1) :]
        per_iter[phase] = 1000 * statistics.median(times)
    sup_iters, rec_iters = PAPER_ITERATIONS
    round_s = (sup_iters * per_iter["supervised"] + rec_iters * per_iter["reciprocal"]) / 1000
    return {
        "loop_cases": list(tier.loop_cases),
        "loop_case_xyz": list(tier.loop_case_xyz),
        "loop_cases_on_device": on_device,
        "supervised_ms_per_iter": round(per_iter["supervised"], 2),
        "reciprocal_ms_per_iter": round(per_iter["reciprocal"], 2),
        "projected_round_min": round(round_s / 60, 2),
    }


# -- the whole benchmark -----------------------------------------------------------------------
def run(
    tier_name: str,
    compile_fast: bool = False,
    log: Callable[[str], None] = print,
    scan_xyz: Triple | None = None,
    only: Sequence[str] | None = None,
    compile_mode: str = "default",
    step_config: TrainConfig | None = None,
    timed_steps: int | None = None,
) -> dict[str, Any]:
    """The sections of one tier (`only`: a subset of SECTIONS; `scan_xyz` replaces its scan for (b);
    `step_config` the crop, network and batches of (a); `timed_steps` its timed steps per mode).

    Returns the JSON line's object.
    """
    tier = TIERS[tier_name]
    if scan_xyz is not None:
        tier = dataclasses.replace(tier, scan_xyz=scan_xyz)
    if timed_steps is not None:
        tier = dataclasses.replace(tier, timed_steps=timed_steps)
    if tier.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the gpu tier needs a CUDA GPU; use --tier cpu here")
    device = torch.device(tier.device)
    result: dict[str, Any] = {
        "tier": tier.name,
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "patch_xyz": list(tier.patch_xyz),
        "n_filters": tier.n_filters,
        "batch": "2+2",
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    result.update(dict.fromkeys(RESULT_KEYS))
    result["errors"] = {}
    t0 = time.perf_counter()
    log(f"[speed] tier {tier.name} on {result['device']}, torch {result['torch']}")
    sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("step", lambda: bench_step(tier, device, compile_fast, compile_mode, step_config)),
        ("inference", lambda: bench_inference(tier, device)),
    ]
    if tier.loop_iterations:
        sections.append(("loop", lambda: bench_loop(tier, device, compile_fast, compile_mode)))
    for name, section in sections:
        if only and name not in only:
            continue
        # One failing section (on a GPU session that cannot be repeated at will) keeps the others.
        try:
            result.update(section())
            log(f"[speed] {name} done ({time.perf_counter() - t0:.0f} s)")
        except Exception as exc:  # reported in the JSON line and the exit status
            log(traceback.format_exc())
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["benchmark_s"] = round(time.perf_counter() - t0, 1)
    return result


SECTIONS = ("step", "inference", "loop")  # (a), (b) with (c), (d)

# Every key the JSON line has (None where a section did not run or does not apply).
RESULT_KEYS = (
    "step_patch_xyz",
    "step_n_filters",
    "step_batch",
    "supervised_batch",
    "step_classes",
    "reference_step_ms",
    "fast_before_step_ms",
    "fast_step_ms",
    "supervised_step_ms",
    "train_step_ratio",
    "reference_to_supervised",
    "fast_before_to_supervised",
    "fast_to_supervised",
    "argmax_before_ms",
    "argmax_ms",
    "step_times_ms",
    "reference_peak_mib",
    "fast_peak_mib",
    "peak_memory_ratio",
    "fast_amp",
    "fast_compiled",
    "scan_xyz",
    "paper_stride_windows",
    "fast_windows",
    "paper_stride_inference_s",
    "fast_inference_s",
    "inference_ratio",
    "whole_scan_xyz",
    "whole_scan_windows",
    "whole_scan_s",
    "loop_cases",
    "loop_case_xyz",
    "loop_cases_on_device",
    "supervised_ms_per_iter",
    "reciprocal_ms_per_iter",
    "projected_round_min",
)


def _fmt(value: Any, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def _xyz(value: Sequence[int] | None) -> str:
    return "-" if value is None else "x".join(map(str, value))


# Issue 5's targets, per tier, for the table's last column.
TARGETS = {
    "gpu": {
        "step": ">= 4x",
        "memory": "<= 0.6",
        "inference": ">= 30x",
        "whole": "< 1 s",
        "round": "< 6 min",
        "per_sup": "",
    },
    "cpu": {
        "step": ">= 1x",
        "memory": "",
        "inference": ">= 5x",
        "whole": "",
        "round": "",
        "per_sup": "<= 2.5",
    },
}


def table(r: dict[str, Any]) -> str:
    """The human-readable summary (Markdown); "-" where a section did not run."""
    target = TARGETS.get(r["tier"], dict.fromkeys(TARGETS["gpu"], ""))
    rows = [
        "| measurement | reference / paper | fast | ratio | target |",
        "|---|---|---|---|---|",
        f"| reciprocal step {_xyz(r['step_patch_xyz'])}, batch {_fmt(r['step_batch'])}, n_filters "
        f"{_fmt(r['step_n_filters'])}, {_fmt(r['step_classes'])} classes (ms) "
        f"| {_fmt(r['reference_step_ms'])} | {_fmt(r['fast_step_ms'])} ({_fmt(r['fast_amp'])}) "
        f"| {_fmt(r['train_step_ratio'], 'x')} | {target['step']} |",
        f"| same, fast step as before issue 27 (argmax of the contiguous head output) (ms) | "
        f"| {_fmt(r['fast_before_step_ms'])} | | |",
        f"| one argmax of the unlabelled logits, contiguous: before issue 27 / now (ms) "
        f"| {_fmt(r['argmax_before_ms'])} "
        f"| {_fmt(r['argmax_ms'])} | | |",
        f"| supervised step, batch {_fmt(r['supervised_batch'])}, same layout as fast (ms) | "
        f"| {_fmt(r['supervised_step_ms'])} | | |",
        f"| reciprocal / supervised step (fast before issue 27: {_fmt(r['fast_before_to_supervised'])}) "
        f"| {_fmt(r['reference_to_supervised'])} | {_fmt(r['fast_to_supervised'])} | | {target['per_sup']} |",
        f"| peak GPU memory of a step (MiB) | {_fmt(r['reference_peak_mib'])} | {_fmt(r['fast_peak_mib'])} "
        f"| {_fmt(r['peak_memory_ratio'])} | {target['memory']} |",
        f"| inference of a {_xyz(r['scan_xyz'])} scan (s; {_fmt(r['paper_stride_windows'])} vs "
        f"{_fmt(r['fast_windows'])} windows) | {_fmt(r['paper_stride_inference_s'])} "
        f"| {_fmt(r['fast_inference_s'])} | {_fmt(r['inference_ratio'], 'x')} | {target['inference']} |",
    ]
    if r.get("whole_scan_s") is not None:
        rows.append(
            f"| whole {_xyz(r['whole_scan_xyz'])} scan, fast path (s; {r['whole_scan_windows']} windows) "
            f"| | {r['whole_scan_s']} | | {target['whole']} |"
        )
    if r.get("supervised_ms_per_iter") is not None:
        rows += [
            f"| training loop, supervised (ms/iteration) | | {r['supervised_ms_per_iter']} | | |",
            f"| training loop, reciprocal (ms/iteration) | | {r['reciprocal_ms_per_iter']} | | |",
            f"| projected paper round, 6000 + 6000 iterations (min) | | {r['projected_round_min']} | "
            f"| {target['round']} |",
        ]
    for name, error in (r.get("errors") or {}).items():
        rows.append(f"| FAILED: {name} | {error} | | | |")
    return "\n".join(rows)


def load_step_config(path: Path, tier: Tier) -> TrainConfig:
    """A run's config.json (as Trainer writes it) for the step section, on the tier's device."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--step-config {path}: cannot read a JSON configuration ({exc})") from exc
    config = TrainConfig.from_dict(TrainConfig.completed(stored)).replace(device=tier.device)
    config.validate()
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n")[0])
    parser.add_argument("--tier", choices=sorted(TIERS), default="cpu")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the networks of the fast step and the loop"
    )
    parser.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        default="default",
        help="torch.compile mode with --compile (reduce-overhead: CUDA graphs)",
    )
    parser.add_argument("--scan", type=int, nargs=3, metavar=("X", "Y", "Z"), help="scan size for (b)")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections")
    parser.add_argument(
        "--timed-steps",
        type=int,
        metavar="N",
        help="timed steps per mode in (a) (default: the tier's; fewer where every step takes minutes)",
    )
    parser.add_argument(
        "--step-config",
        type=Path,
        metavar="CONFIG_JSON",
        help="time the steps (a) with a run's config.json (its crop, network, batches and phase-1 "
        "optimiser; e.g. an `auto` plan's) instead of the tier's paper-preset sizes",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's choice; 1 on a machine shared with other jobs, "
        "where spinning OpenMP threads slow everything down many times over)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        if not args.json_only:
            print(message, file=sys.stderr, flush=True)

    scan = tuple(args.scan) if args.scan else None
    if args.timed_steps is not None and args.timed_steps < 1:
        parser.error("--timed-steps needs at least 1")
    step_config = load_step_config(args.step_config, TIERS[args.tier]) if args.step_config else None
    result = run(
        args.tier, args.compile, log, scan, args.only, args.compile_mode, step_config, args.timed_steps
    )
    if not args.json_only:
        print(table(result))
    print(json.dumps(result), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
