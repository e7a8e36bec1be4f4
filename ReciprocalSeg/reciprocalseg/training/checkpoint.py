"""Checkpoints (atomic writes) and model files.

`checkpoints/latest.pt` holds everything needed to resume: both networks, both
optimisers, the phase and iteration, and the random states. Model files (`teacher.pt`,
`student.pt`, `supervised.pt`) hold one network's weights plus the metadata needed to
rebuild and apply it (architecture, classes, preprocessing, patch size).
"""

from __future__ import annotations

import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.atomic import atomic_path
from ..common.errors import ReciprocalSegError
from ..config import TrainConfig
from ..data.preprocess import Preprocessing


def save_torch(obj: Any, path: Path) -> None:
    """torch.save through a temporary file + fsync + rename: never a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def model_meta(config: TrainConfig) -> dict[str, Any]:
    return {
        "n_classes": config.n_classes,
        "n_filters": config.n_filters,
        "normalization": config.normalization,
        "dropout": config.dropout,
        "strides": [list(s) for s in config.strides_zyx],  # (z, y, x) per V-Net level (planner)
        "patch_size": list(config.patch_size),
        "preprocessing": Preprocessing.from_config(config).to_dict(),
        "inference_overlap": config.inference_overlap,
        "inference_weighting": config.inference_weighting,
        "inference_batch": config.inference_batch,
        "preset": config.preset,
    }


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def save_model(model: nn.Module, config: TrainConfig, path: Path, **info: Any) -> None:
    save_torch(
        {
            "format": "reciprocalseg-model-1",
            "state_dict": _cpu_state(model),
            "meta": model_meta(config),
            "info": info,
        },
        path,
    )


def load_model_file(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ReciprocalSegError(f"model file {path} does not exist") from None
    except Exception as exc:  # torch raises many types for a corrupt file
        reason = _torch_reason(exc, path)
        raise ReciprocalSegError(f"model file {path} is unreadable or corrupt: {reason}") from None
    if not isinstance(data, dict) or data.get("format") != "reciprocalseg-model-1":
        raise ReciprocalSegError(f"{path} is not a ReciprocalSeg model file")
    return data


def nonfinite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state_dict`` that hold a NaN or an infinity."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not _all_finite(value)
    ]


def _all_finite(tensor: torch.Tensor) -> bool:
    # numpy on CPU tensors: torch.isfinite(...).all() over a paper-width V-Net took 1-2 s on a busy
    # 2-core machine, numpy 30-60 ms (checked whenever a model file is loaded).
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float16, torch.float32, torch.float64):
        return bool(np.isfinite(tensor.detach().numpy()).all())
    return bool(torch.isfinite(tensor).all())


def check_finite_model(path: Path) -> dict[str, Any]:
    """Load a model file and raise ReciprocalSegError if any of its weights is NaN or infinite.

    A network trained on non-finite inputs (or diverged) predicts nothing useful and would carry
    the damage into every warm-started round, so such a model is never made current.
    """
    data = load_model_file(path)
    state = data.get("state_dict")
    if not isinstance(state, dict):
        raise ReciprocalSegError(f"{path} holds no weights (state_dict)")
    bad = nonfinite_tensors(state)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ReciprocalSegError(
            f"model file {path} has NaN or infinite weights ({len(bad)} tensor(s): {shown}); "
            "it cannot be used (was it trained on images with NaN/inf voxels, or did training diverge?)"
        )
    return data


def _torch_reason(exc: Exception, path: Path) -> str:
    """A short reason for a failed ``torch.load`` (torch's own text is a page of ``weights_only`` advice)."""
    if not zipfile.is_zipfile(path):
        return "not a PyTorch file (truncated, or another format)"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "weights_only" in first or "Weights only load failed" in first:
        return "it holds objects other than tensors (not a model file saved by ReciprocalSeg)"
    return first if len(first) <= 200 else first[:200] + "..."


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].tolist(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(state["python"]) if not isinstance(state["python"], tuple) else state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ReciprocalSegError(
            f"checkpoint {path} is unreadable ({exc}); delete it to restart the run from scratch"
        ) from exc
