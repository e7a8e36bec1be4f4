"""Training configuration and named presets.

`paper` reproduces the published recipe (Zeng et al., MICCAI 2021; XYZach/RLSSS
RL_code/train_RL.py and the UA-MT supervised baseline it starts from) and nothing else.
Every other behaviour is opt-in through a field that defaults to the paper's choice.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .common.errors import ReciprocalSegError

Triple = tuple[int, int, int]
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    """Everything that decides what a training run does.

    `n_classes` counts the network's outputs *including* background (the paper's
    `num_classes=2` for one foreground structure); label maps hold 0..n_classes-1.
    `patch_size` is (x, y, z) as the paper writes it (112x112x80).
    """

    preset: str = "paper"
    n_classes: int = 2
    patch_size: Triple = (112, 112, 80)
    # model
    n_filters: int = 16
    normalization: str = "batchnorm"
    dropout: bool = True
    # V-Net's four down steps, (x, y, z) per level, 2 = halve that axis, 1 = keep it (thin axes of
    # thick-slice scans, planning/planner.py). The paper halves every axis at every level.
    downsampling: tuple[Triple, ...] = ((2, 2, 2),) * 4
    # sampling: 2 labelled + 2 unlabelled crops per iteration, random rot90/flip
    batch_labeled: int = 2
    batch_unlabeled: int = 2
    # The supervised teacher start uses the same 4 crops per step, all labelled (UA-MT's batch of 4).
    supervised_batch: int = 4
    augment: bool = True
    # Share of labelled crops centred on a voxel of a class present in the case (the class drawn at
    # random), so small structures are seen; nnU-Net uses 1/3. The paper's crops are uniform (0).
    class_crop_share: float = 0.0
    # When some labelled cases are partial (255 = unannotated) and some full, the partial ones
    # together get at most this share of the labelled crops (drawn uniformly among themselves).
    # Uniform over all cases let 24 scribbled left-atrium cases (0.07% annotated) take 3 of 4
    # crops from 8 full labels, and the teacher lost 2.9 Dice points (benchmarks/RESULTS.md).
    partial_crop_share: float = 0.5
    # optimisation (both phases, both networks): SGD, lr x0.1 every 2500 iterations
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 2500
    lr_gamma: float = 0.1
    # The teacher's supervised start (phase 1): "sgd" uses the settings above (the paper, UA-MT);
    # "adam" uses Adam at `supervised_adam_lr` with the same step schedule. Short budgets need it:
    # on hippocampus (two small structures, 5 labelled cases) 150 SGD iterations left the Dice
    # loss flat and the model predicted nothing; 150 Adam iterations at lr 1e-3 learned one
    # structure, at 3e-3 both (held-out Dice 0.66-0.80 per class; benchmarks/RESULTS.md). Phase 2
    # stays SGD: the meta-gradient h is derived for the student's SGD step.
    supervised_optimizer: str = "sgd"
    supervised_adam_lr: float = 3e-3
    supervised_iterations: int = 6000
    reciprocal_iterations: int = 6000
    # A time budget in minutes (None: the iteration counts above). Each phase gets its share of the
    # budget; its iteration count (and lr drop) is set from the measured speed of its first
    # iterations (training/budget.py).
    minutes: float | None = None
    # Time shares of the phases under a budget: (supervised, reciprocal, finetune), normalised.
    budget_split: tuple[float, float, float] = (0.4, 0.6, 0.0)
    # preprocessing
    # "zscore" per volume (MRI), "ct" (fixed window scaled to [-1, 1]), or "ct_dataset": clip to
    # the dataset's intensity percentiles (`intensity_clip`), then z-score with the dataset's
    # mean and std (`intensity_mean_std`), as nnU-Net normalises CT.
    intensity: str = "zscore"
    ct_window: tuple[float, float] = (-125.0, 275.0)
    intensity_clip: tuple[float, float] | None = None
    intensity_mean_std: tuple[float, float] | None = None
    target_spacing: tuple[float, float, float] | None = None  # (x, y, z) mm; None keeps the scan's grid
    # Several images per case (issue 24): one entry per channel, in order, {"name": "T2", "intensity":
    # "zscore" | "ct" | "ct_dataset", and that mode's "ct_window" / "intensity_clip" /
    # "intensity_mean_std"}; the fields above then only set the working grid. Empty: one channel,
    # normalised by the fields above (what every run did before).
    channels: tuple[dict[str, Any], ...] = ()
    # A channel off channel 0's grid is refused, or resampled onto it with this interpolation
    # ("linear", "nearest", "bspline") when the user asks for it.
    channel_resampling: str | None = None
    # execution
    step_mode: str = "fast"  # "fast" (default) or "reference" (the published arithmetic, fp32)
    amp: str = "auto"  # "auto": bf16 autocast on CUDA GPUs that support it; "off": fp32
    device: str = "auto"
    seed: int = 1337
    checkpoint_every: int = 500
    # DataLoader workers per run: -1 picks them (sampling.default_num_workers on CUDA, 0 on CPU).
    num_workers: int = -1
    # "auto": hold the cached cases on the GPU and crop there when they fit (data/gpu_sampler.py);
    # "on": hold them on the training device whatever it is; "off": stream crops from disk.
    data_on_gpu: str = "auto"
    # torch.compile both networks (opt-in: minutes of compilation before the first iteration).
    compile: bool = False
    # torch.compile's mode: "default", "reduce-overhead" (CUDA graphs), "max-autotune",
    # "max-autotune-no-cudagraphs". Which one pays is a GPU measurement (benchmarks/speed.py).
    compile_mode: str = "default"
    # inference
    inference_overlap: float = 0.5
    inference_weighting: str = "gaussian"  # or "uniform"
    inference_batch: int = 4
    # opt-in improvements beyond the paper (all off in `paper`)
    teacher_dice: bool = False  # CE + Dice on the teacher's labelled term
    student_ema: float = 0.0  # >0: keep an EMA of the student for evaluation
    h_baseline: float = 0.0  # >0: subtract a moving average of h (momentum) from h
    finetune_iterations: int = 0  # supervised fine-tune of the student on labelled scans at the end
    # >0: the student sees the unlabelled crops with random intensity changes (brightness, contrast,
    # gamma, noise; each with this probability) while the teacher labels them unchanged.
    unlabeled_student_aug: float = 0.0
    # "scratch" (the paper) or "teacher": start the student from the supervised teacher, which short
    # runs need (a from-scratch student gets too few iterations to leave the all-background optimum).
    student_init: str = "scratch"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_zyx(self) -> Triple:
        x, y, z = self.patch_size
        return (z, y, x)

    @property
    def in_channels(self) -> int:
        """Input channels of the network: one per entry of `channels`, else one."""
        return max(1, len(self.channels))

    @property
    def channel_names(self) -> list[str]:
        return [str(c.get("name", f"channel {k}")) for k, c in enumerate(self.channels)]

    @property
    def strides_zyx(self) -> tuple[Triple, ...]:
        """`downsampling` in the network's (z, y, x) order."""
        return tuple((z, y, x) for x, y, z in self.downsampling)

    @property
    def size_multiple(self) -> Triple:
        """What each (x, y, z) side of a crop must be a multiple of (16 with the paper's strides)."""
        out = [1, 1, 1]
        for level in self.downsampling:
            out = [m * s for m, s in zip(out, level, strict=True)]
        return (out[0], out[1], out[2])

    @property
    def total_iterations(self) -> int:
        return self.supervised_iterations + self.reciprocal_iterations + self.finetune_iterations

    def validate(self) -> None:
        """Raise a clear error for settings that cannot work."""
        problems = []
        if self.n_classes < 2:
            problems.append(f"n_classes={self.n_classes}: needs background plus at least one class (>= 2)")
        levels = self.downsampling
        if len(levels) != 4 or any(len(v) != 3 or any(s not in (1, 2) for s in v) for v in levels):
            problems.append(f"downsampling={levels}: four (x, y, z) triples of 1 or 2, one per V-Net level")
        else:
            multiple = self.size_multiple
            if any(p < m or p % m for p, m in zip(self.patch_size, multiple, strict=True)):
                problems.append(
                    f"patch_size={self.patch_size}: each side must be a multiple of {multiple[0]} along x, "
                    f"{multiple[1]} along y, {multiple[2]} along z (2 to the number of times V-Net halves it)"
                )
        if self.normalization not in ("batchnorm", "groupnorm", "instancenorm", "none"):
            problems.append(
                f"normalization={self.normalization!r}: use batchnorm, groupnorm, instancenorm or none"
            )
        if self.student_init not in ("scratch", "teacher"):
            problems.append(f"student_init={self.student_init!r}: use 'scratch' or 'teacher'")
        if self.step_mode not in ("fast", "reference"):
            problems.append(f"step_mode={self.step_mode!r}: use 'fast' or 'reference'")
        if self.intensity not in ("zscore", "ct", "ct_dataset"):
            problems.append(f"intensity={self.intensity!r}: use 'zscore', 'ct' or 'ct_dataset'")
        if self.intensity == "ct_dataset" and (
            self.intensity_clip is None
            or self.intensity_mean_std is None
            or not self.intensity_clip[0] < self.intensity_clip[1]
            or not self.intensity_mean_std[1] > 0
        ):
            problems.append(
                "intensity='ct_dataset' needs intensity_clip (low < high) and intensity_mean_std "
                "(std > 0): the `auto` plan sets them from the data"
            )
        problems += _channel_problems(self.channels, self.channel_resampling)
        spacing = self.target_spacing
        positive = spacing is not None and all(math.isfinite(v) and v > 0 for v in spacing)
        if spacing is not None and not (len(spacing) == 3 and positive):
            problems.append(f"target_spacing={spacing}: three finite spacings > 0 mm (x, y, z), or none")
        if not 0 <= self.class_crop_share <= 1:
            problems.append(f"class_crop_share={self.class_crop_share}: a share in [0, 1]")
        if not 0 < self.partial_crop_share <= 1:
            problems.append(f"partial_crop_share={self.partial_crop_share}: a share in (0, 1]")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            problems.append(f"minutes={self.minutes}: a time budget must be a finite number > 0")
        if len(self.budget_split) != 3 or min(self.budget_split) < 0 or sum(self.budget_split) <= 0:
            problems.append(f"budget_split={self.budget_split}: three shares >= 0, not all 0")
        elif self.minutes is not None:
            counts = (self.supervised_iterations, self.reciprocal_iterations, self.finetune_iterations)
            if not any(s > 0 and n > 0 for s, n in zip(self.budget_split, counts, strict=True)):
                problems.append("minutes: no phase both has a share of the budget and iterations > 0")
        if self.batch_labeled < 1 or self.batch_unlabeled < 0:
            problems.append("batch_labeled must be >= 1 and batch_unlabeled >= 0")
        if min(self.supervised_iterations, self.reciprocal_iterations, self.finetune_iterations) < 0:
            problems.append("iteration counts must be >= 0")
        if not 0 <= self.unlabeled_student_aug <= 1:
            problems.append(f"unlabeled_student_aug={self.unlabeled_student_aug}: a probability in [0, 1]")
        if not 0 <= self.inference_overlap < 1:
            problems.append(f"inference_overlap={self.inference_overlap}: must be in [0, 1)")
        if self.compile_mode not in COMPILE_MODES:
            problems.append(f"compile_mode={self.compile_mode!r}: use one of {', '.join(COMPILE_MODES)}")
        if self.supervised_optimizer not in ("sgd", "adam"):
            problems.append(f"supervised_optimizer={self.supervised_optimizer!r}: use 'sgd' or 'adam'")
        if self.data_on_gpu not in ("auto", "on", "off"):
            problems.append(f"data_on_gpu={self.data_on_gpu!r}: use 'auto', 'on' or 'off'")
        if self.num_workers < -1:
            problems.append(f"num_workers={self.num_workers}: use -1 (automatic) or a count >= 0")
        if problems:
            raise ReciprocalSegError("Invalid training configuration: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ReciprocalSegError(f"Unknown configuration keys {unknown}; known keys: {sorted(known)}")
        values = dict(data)
        for key in ("patch_size", "ct_window", "target_spacing", "intensity_clip", "intensity_mean_std"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if values.get("channels") is not None:
            values["channels"] = tuple(dict(c) if isinstance(c, dict) else c for c in values["channels"])
        for key in ("downsampling", "budget_split"):
            if values.get(key) is not None:
                values[key] = tuple(tuple(v) if isinstance(v, list | tuple) else v for v in values[key])
        return cls(**values)

    @classmethod
    def completed(cls, stored: dict[str, Any]) -> dict[str, Any]:
        """A configuration dict stored by an earlier version, with the fields added since filled in
        by their defaults: every field added defaults to what the code did before it existed."""
        return {**cls().to_dict(), **stored}

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _channel_problems(channels: tuple[dict[str, Any], ...], resampling: str | None) -> list[str]:
    problems = []
    names = []
    for k, channel in enumerate(channels):
        if not isinstance(channel, dict):
            problems.append(f"channels[{k}]={channel!r}: an object with a name and an intensity")
            continue
        name = channel.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"channels[{k}]: needs a name (such as T2, ADC, CT, PET)")
        names.append(name)
        intensity = channel.get("intensity", "zscore")
        if intensity not in ("zscore", "ct", "ct_dataset"):
            problems.append(f"channels[{k}].intensity={intensity!r}: use 'zscore', 'ct' or 'ct_dataset'")
        if intensity == "ct_dataset" and not (
            channel.get("intensity_clip") and channel.get("intensity_mean_std")
        ):
            problems.append(f"channels[{k}]: 'ct_dataset' needs intensity_clip and intensity_mean_std")
        unknown = sorted(
            set(channel) - {"name", "intensity", "ct_window", "intensity_clip", "intensity_mean_std"}
        )
        if unknown:
            problems.append(f"channels[{k}]: unknown keys {unknown}")
    duplicates = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if duplicates:
        problems.append(f"channels: names used twice {duplicates}; each channel needs its own name")
    if resampling not in (None, "linear", "nearest", "bspline"):
        problems.append(f"channel_resampling={resampling!r}: use 'linear', 'nearest', 'bspline' or none")
    return problems


def with_channels(config: TrainConfig, names: list[str]) -> TrainConfig:
    """`config` for cases with these channels: each channel normalised as `config` normalises its one
    channel (the `auto` plan sets them per channel instead). One name leaves a single-channel config."""
    if len(names) <= 1 or config.channels:
        return config
    keys = ("intensity", "ct_window", "intensity_clip", "intensity_mean_std")
    base = {k: _jsonable_value(getattr(config, k)) for k in keys if getattr(config, k) is not None}
    channels = tuple({"name": name, **base} for name in names)
    return config.replace(channels=channels)


def preset_channels(preset: str, overrides: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """A preset's `channels` for cases with these channels: each normalised as the preset (with
    the settings in `overrides`, None: not set) normalises its one channel."""
    config = make_config(preset, **{k: v for k, v in overrides.items() if v is not None})
    return [dict(c) for c in with_channels(config, names).channels]


def _jsonable_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


PRESETS: dict[str, dict[str, Any]] = {
    # The published recipe: 6000 supervised teacher iterations (UA-MT supervised baseline),
    # then 6000 reciprocal iterations, 112x112x80 crops, batch 2+2, V-Net n_filters 16, batch norm.
    "paper": {},
    # CPU-sized: coarser grid and smaller network so a round fits a 2-core machine.
    "lite": {
        "patch_size": (64, 64, 48),
        "n_filters": 8,
        # Channel dropout (p 0.5) over the 8 channels before the head makes the teacher's
        # train-mode pseudo labels noise (on LA crops its foreground fraction swung 0-15% between
        # draws) and the student collapses to background; the paper's 16 channels survive it.
        "dropout": False,
        # 300 reciprocal iterations are 5% of the paper's: a student started from scratch ended
        # level with supervised-only (median -0.5 Dice, 8/16 cases better), one started from the
        # teacher clearly above it (median +4.8, 11/16); validation split, benchmarks/RESULTS.md.
        # Against the supervised model trained 300 more iterations on labelled crops alone, the
        # teacher was ahead (+1.1 Dice, 11/16; with seed 7 behind, -0.8) and the student behind
        # (-1.0; -1.7): at this budget the teacher is the better of the two. (A 600-iteration
        # phase 1: teacher 81.5 vs 79.5, median +0.7, student unchanged; not clearly worth 5 more
        # minutes.)
        "student_init": "teacher",
        "target_spacing": (1.25, 1.25, 1.25),
        # About 19 min on an idle 2-core CPU, evaluation included (benchmarks/la.py; 1.0 s per
        # supervised and 2.2 s per reciprocal iteration), so a loaded machine still fits 30 min:
        # one lr drop (x0.1) for the last 50 iterations of each phase.
        "supervised_iterations": 300,
        "reciprocal_iterations": 300,
        "lr_step": 250,
        "checkpoint_every": 50,
    },
    # The built-in phantom demo and fast tests: minutes on a laptop CPU.
    "demo": {
        "student_init": "teacher",
        "patch_size": (48, 48, 32),
        "n_filters": 8,
        "dropout": False,  # as in `lite`: 8 channels are too few for channel dropout's noise
        "supervised_iterations": 150,
        "reciprocal_iterations": 150,
        # One lr drop (x0.1) for the last 30 iterations of each phase. Without it the weights still
        # move at lr 0.01 when a phase ends, batch norm's running statistics lag behind them, and
        # the supervised model predicted nothing in eval mode (held-out Dice 0.002; 0.54-0.86 with
        # batch statistics on the same weights).
        "lr_step": 120,
        "checkpoint_every": 50,
        "inference_batch": 2,
        "supervised_batch": 2,
    },
    # Planned from the data (planning/planner.py): the values here are what the plan does not set
    # (and a usable CPU-sized fallback where no cases are at hand); `plan_config` fills in spacing,
    # crop, strides, width, batch, normalisation and iteration counts from the cases and device.
    "auto": {
        "student_init": "teacher",  # as lite/demo: short runs need the student started from the teacher
        "patch_size": (64, 64, 48),
        "n_filters": 8,
        "dropout": False,  # as lite: 8 channels are too few for channel dropout's noise
        "class_crop_share": 1 / 3,
        "supervised_optimizer": "adam",  # see TrainConfig.supervised_optimizer
        "supervised_iterations": 300,
        "reciprocal_iterations": 300,
        "lr_step": 250,
        "checkpoint_every": 50,
    },
    # Opt-in additions chosen on a validation split (see benchmarks/RESULTS.md).
    "improved": {
        "teacher_dice": True,
        "student_ema": 0.99,
        "finetune_iterations": 500,
    },
}


def make_config(preset: str = "paper", **overrides: Any) -> TrainConfig:
    """A preset's configuration with `overrides` applied (None values are ignored)."""
    if preset not in PRESETS:
        raise ReciprocalSegError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values: dict[str, Any] = {"preset": preset, **PRESETS[preset]}
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig.from_dict(values)
    config.validate()
    return config
