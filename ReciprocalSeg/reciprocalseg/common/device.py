"""Which torch device a run uses, and how it is named in logs and reports.

Kept apart from the training stack so that code that only predicts (inference.py and what
builds on it) does not import the trainer just to pick a device.
"""

from __future__ import annotations

import torch

from .errors import TrainingError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks the CUDA GPU when there is one and the CPU otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(
            "device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto"
        )
    try:
        return torch.device(name)
    except (RuntimeError, TypeError):
        raise TrainingError(f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None


def describe_device(device: torch.device) -> str:
    """`cuda:0 (NVIDIA H200, 139 GiB)` or `cpu`."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    return "cpu"
