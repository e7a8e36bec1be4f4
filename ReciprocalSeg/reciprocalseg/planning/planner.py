"""The `auto` plan: training settings chosen from a dataset fingerprint and the device.

Follows nnU-Net's planning rules (Isensee et al. 2021; MIC-DKFZ/nnUNet experiment_planning),
adapted to the paper's V-Net (four down steps, fixed depth):

- target spacing: the median spacing. When one axis is much coarser (more than 3x the others,
  and with 3x fewer voxels), that axis gets the 10th percentile of its spacings instead, so
  the thin-slice cases are not interpolated far (nnU-Net's rule). When every case already has
  the median spacing, nothing is resampled (predictions stay voxel for voxel).
- when a case at that spacing is much bigger than a crop the device can afford (a crop would
  see under a quarter of it), the spacing is coarsened (at most 2x; the slice axis of thick-slice
  data is kept) so a crop still sees a quarter of a case: nnU-Net's low-resolution rule.
- crop: the median case size at the target spacing, shrunk along its longest physical side
  until it fits the device's voxel budget, then rounded up to what the network needs.
- downsampling per level and axis: an axis is halved only while it has at least 8 voxels left
  (4 in the bottleneck) and while its spacing is within 2x of the finest one, so a thick-slice
  axis keeps its resolution until the in-plane axes have caught up (nnU-Net's pooling rule).
- width and batch: 16 filters and the paper's 2+2 (4 supervised) on a GPU; 8 filters on a CPU
  (the `lite` network); on a GPU the batch doubles when a crop is under half the voxel budget
  (on a CPU time grows with the batch, so a time budget is better spent on more steps).
- normalisation: CT (Hounsfield units) is clipped to the 0.5-99.5 percentiles of the labelled
  voxels and z-scored with their mean and std; MRI is z-scored per scan.
- class-centred crops: a third of labelled crops (`class_crop_share`).

The plan is data: `Plan.values` are `TrainConfig` fields (any can be overridden) and
`Plan.reasons` say why each was chosen; it is written to RUN/plan.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.atomic import atomic_write_json
from ..common.errors import ReciprocalSegError
from ..config import TrainConfig, make_config
from ..data.io import Case
from .fingerprint import ANISOTROPY_THRESHOLD, Fingerprint, compute_fingerprint

PLAN_FORMAT = "reciprocalseg-plan-1"
MIN_BOTTLENECK_EDGE = 4  # nnU-Net's smallest feature map edge
LEVELS = 4  # V-Net's down steps
# Voxels per crop a device affords. CPU: lite's 64x64x48, sized so a round fits minutes on two
# cores. GPU: the paper's 112x112x80 with 8 GiB free (its 2+2 reciprocal step takes a few GiB),
# scaled down with less memory.
CPU_CROP_VOXELS = 64 * 64 * 48
GPU_CROP_VOXELS = 112 * 112 * 80
GPU_REFERENCE_FREE_BYTES = 8 * 1024**3
MAX_COARSENING = 2.0
MIN_CROP_COVERAGE = 1 / 4  # nnU-Net plans a low-resolution stage when a crop sees under a quarter of a case
CLASS_CROP_SHARE = 1 / 3


@dataclass
class Plan:
    values: dict[str, Any]  # TrainConfig fields
    reasons: dict[str, str]
    fingerprint: dict[str, Any]  # Fingerprint.summary()
    device: str
    overrides: dict[str, Any] = field(default_factory=dict)  # fields the user set over the plan

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "device": self.device,
            "values": self.values,
            "overrides": self.overrides,
            "reasons": self.reasons,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if data.get("format") != PLAN_FORMAT:
            raise ReciprocalSegError(f"not a ReciprocalSeg plan (format {data.get('format')!r})")
        return cls(
            data["values"], data["reasons"], data["fingerprint"], data["device"], data.get("overrides", {})
        )

    def save(self, path: Path) -> None:
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path) -> Plan:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            raise ReciprocalSegError(f"plan {path} is unreadable ({exc}); delete it to plan again") from exc

    def describe(self) -> str:
        """A few lines for a person: each planned value and why."""
        lines = [f"plan ({self.device}):"]
        for key, value in self.values.items():
            mark = " (overridden)" if key in self.overrides else ""
            shown = self.overrides.get(key, value)
            lines.append(f"  {key} = {json.dumps(shown)}{mark}  # {self.reasons.get(key, '')}")
        return "\n".join(lines)


def target_spacing(fp: Fingerprint) -> tuple[list[float], str]:
    """The working spacing (x, y, z) and why (nnU-Net's median / 10th-percentile rule)."""
    spacings = np.array(fp.spacings, dtype=float)
    sizes = np.array(fp.sizes, dtype=float)
    target = np.median(spacings, axis=0)
    median_size = np.median(sizes, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    thick_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(target[others])
    thick_voxels = median_size[worst] * ANISOTROPY_THRESHOLD < min(median_size[others])
    if thick_spacing and thick_voxels:
        tenth = float(np.percentile(spacings[:, worst], 10))
        target[worst] = max(tenth, float(max(target[others])))
        return [
            float(t) for t in target
        ], f"median, axis {'xyz'[worst]} at its 10th percentile (thick slices)"
    return [float(t) for t in target], "median spacing"


def crop_budget(device: torch.device) -> tuple[int, str]:
    """Voxels per crop the device affords, and why."""
    if device.type != "cuda":
        return CPU_CROP_VOXELS, "a CPU affords (lite's 64x64x48: a round in minutes on two cores)"
    free, _ = torch.cuda.mem_get_info(device)
    scale = min(1.0, max(0.25, free / GPU_REFERENCE_FREE_BYTES))
    return int(GPU_CROP_VOXELS * scale), f"a GPU with {free / 1024**3:.0f} GiB free affords"


def coarsen_for_budget(target: list[float], shape: np.ndarray, budget: int, anisotropic: bool) -> float:
    """How much to coarsen the in-plane (or every) axis so a crop sees at least a quarter of a case."""
    coverage = budget / float(np.prod(shape))
    if coverage >= MIN_CROP_COVERAGE:
        return 1.0
    axes = 2 if anisotropic else 3
    return min(MAX_COARSENING, (MIN_CROP_COVERAGE / coverage) ** (1 / axes))


def fit_crop(shape: np.ndarray, spacing: list[float], budget: int) -> list[int]:
    """The median case shape shrunk along its longest physical side until it fits `budget`."""
    crop = [max(1, int(round(n))) for n in shape]
    while math.prod(crop) > budget:
        extents = [c * s for c, s in zip(crop, spacing, strict=True)]
        axis = int(np.argmax(extents))
        crop[axis] = max(MIN_BOTTLENECK_EDGE, int(crop[axis] * 0.9))
    return crop


def crop_reason(shape: np.ndarray, fitted: list[int], crop: list[int], budget: int, why_budget: str) -> str:
    """Why the crop is what it is: the whole median case when it fits the device's voxel budget,
    else the case cut along its longest physical side; then rounded to what the strides halve."""
    case = "x".join(str(max(1, int(round(n)))) for n in shape)
    if fitted == [max(1, int(round(n))) for n in shape]:
        text = (
            f"the whole median case ({case} voxels at the target spacing) fits the {budget:,} voxels "
            f"{why_budget}"
        )
    else:
        text = (
            f"the median case ({case} voxels at the target spacing) is more than the {budget:,} voxels "
            f"{why_budget}: cut, its longest physical side first, to {'x'.join(map(str, fitted))}"
        )
    if crop != fitted:
        text += f", rounded up to {'x'.join(map(str, crop))} (each side a multiple of what the strides halve)"
    return text


def downsampling(crop: list[int], spacing: list[float]) -> list[list[int]]:
    """Per V-Net level, (x, y, z) strides of 2 (halve) or 1 (keep): nnU-Net's pooling rule."""
    size, current = [float(c) for c in crop], list(spacing)
    levels = []
    for _ in range(LEVELS):
        valid = [i for i in range(3) if size[i] >= 2 * MIN_BOTTLENECK_EDGE]
        if valid:
            finest = min(current[i] for i in valid)
            valid = [i for i in valid if current[i] / finest < 2]
        if len(valid) == 1 and size[valid[0]] < 3 * MIN_BOTTLENECK_EDGE:
            valid = []
        stride = [2 if i in valid else 1 for i in range(3)]
        for i in valid:
            size[i], current[i] = math.ceil(size[i] / 2), current[i] * 2
        levels.append(stride)
    return levels


def round_up_crop(crop: list[int], levels: list[list[int]]) -> list[int]:
    multiple = [math.prod(level[i] for level in levels) for i in range(3)]
    return [max(m, math.ceil(c / m) * m) for c, m in zip(crop, multiple, strict=True)]


def plan_from_fingerprint(fp: Fingerprint, device: torch.device | str = "cpu") -> Plan:
    """The `auto` plan for a cohort on a device."""
    device = torch.device(device)
    values: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    spacing, why_spacing = target_spacing(fp)
    budget, why_budget = crop_budget(device)
    scale = np.array(fp.spacings, dtype=float) / np.array(spacing)
    shape = np.median(np.array(fp.sizes, dtype=float) * scale, axis=0)
    factor = coarsen_for_budget(spacing, shape, budget, fp.anisotropic)
    if factor > 1:
        worst = int(np.argmax(spacing))
        keep = worst if fp.anisotropic else None
        spacing = [s if i == keep else s * factor for i, s in enumerate(spacing)]
        shape = shape / np.array([1 if i == keep else factor for i in range(3)])
        why_spacing += f", coarsened {factor:.2f}x so a crop sees enough of a case on this device"
    exact = all(np.allclose(s, spacing, rtol=0.01) for s in fp.spacings)
    # 4 significant digits (4 decimals of a mm made a 30 micrometre spacing 0)
    values["target_spacing"] = None if exact else [float(f"{s:.4g}") for s in spacing]
    reasons["target_spacing"] = "every case has the median spacing: no resampling" if exact else why_spacing
    fitted = fit_crop(shape, spacing, budget)
    levels = downsampling(fitted, spacing)
    crop = round_up_crop(fitted, levels)
    values["patch_size"] = crop
    reasons["patch_size"] = crop_reason(shape, fitted, crop, budget, why_budget)
    values["downsampling"] = levels
    reasons["downsampling"] = (
        "halve an axis while >= 8 voxels remain and its spacing is within 2x of the finest"
    )
    gpu = device.type == "cuda"
    values["n_filters"] = 16 if gpu else 8
    values["dropout"] = gpu
    reasons["n_filters"] = "the paper's width on a GPU" if gpu else "lite's width: a CPU round in minutes"
    reasons["dropout"] = "the paper's channel dropout needs 16 channels" if gpu else "off with 8 channels"
    # A GPU left half idle by a small crop does a doubled batch in about the same time. A CPU's
    # cost is linear in the voxels, so within a time budget a doubled batch halves the optimiser
    # steps for the same crops seen (hippocampus, 30 CPU minutes: the demo preset's batch 2 in
    # 3x the steps learned the head better than a plan with batch 8; benchmarks/RESULTS.md).
    small = gpu and math.prod(crop) * 2 <= budget
    values["batch_labeled"] = values["batch_unlabeled"] = 4 if small else 2
    values["supervised_batch"] = 8 if small else 4
    reasons["batch_labeled"] = reasons["batch_unlabeled"] = reasons["supervised_batch"] = (
        "doubled: the crop is under half the GPU's voxel budget"
        if small
        else "the paper's 2+2 (4 supervised)"
        + ("" if gpu else "; not doubled on a CPU, where a bigger batch costs as much more time")
    )
    values.update(_normalisation(fp))
    reasons["intensity"] = (
        "CT: dataset 0.5-99.5 percentile clip of labelled voxels, then their z-score"
        if fp.modality == "CT"
        else "MRI (no absolute scale): per-scan z-score"
    )
    values["n_classes"] = max([1, *fp.classes]) + 1
    reasons["n_classes"] = "background and the classes found in the labelled cases"
    values["class_crop_share"] = CLASS_CROP_SHARE
    reasons["class_crop_share"] = "a third of labelled crops centred on a random class present (nnU-Net)"
    if gpu:  # the paper's schedule; on a CPU the auto preset keeps lite's 300 + 300
        values.update(
            supervised_iterations=6000, reciprocal_iterations=6000, lr_step=2500, checkpoint_every=500
        )
        reasons["supervised_iterations"] = reasons["reciprocal_iterations"] = "the paper's schedule on a GPU"
    return Plan(values, reasons, fp.summary(), str(device))


def _normalisation(fp: Fingerprint) -> dict[str, Any]:
    if fp.modality != "CT":
        return {"intensity": "zscore"}
    stats = fp.foreground_intensity or fp.intensity
    std = max(stats["std"], 1e-3)
    return {
        "intensity": "ct_dataset",
        "intensity_clip": [stats["p00_5"], stats["p99_5"]],
        "intensity_mean_std": [stats["mean"], std],
    }


def planned_config(plan: Plan, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The `auto` preset with the plan's values, then the user's `overrides` (None values ignored).

    Records the overrides in the plan, so RUN/plan.json says what was planned and what was set."""
    chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
    plan.overrides = {k: _jsonable(v) for k, v in chosen.items() if k in plan.values}
    return make_config("auto", **{**plan.values, **chosen})


def plan_for_run(
    run_dir: Path | None,
    labeled: Sequence[Case],
    unlabeled: Sequence[Case],
    device: torch.device | str = "cpu",
) -> Plan:
    """RUN/plan.json when the run folder has one (a resume keeps its plan), else a new plan."""
    path = None if run_dir is None else Path(run_dir) / "plan.json"
    if path is not None and path.exists():
        return Plan.load(path)
    return plan_from_fingerprint(compute_fingerprint(labeled, unlabeled), device)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))
