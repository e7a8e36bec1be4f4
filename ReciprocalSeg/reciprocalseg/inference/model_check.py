"""Whether a model file's contents can be used: its description builds a network, its weights fit
that network exactly and are finite, and one forward pass on a tiny input gives finite scores.

A model file is untrusted input (an imported bundle, a hand-edited or damaged file, a diverged
checkpoint). Checked once, before it is stored or used, it cannot fail later in the middle of a
prediction, or predict nothing because its weights are NaN. Every failure is a
``ReciprocalSegError`` that names the file and the problem.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..common.errors import ReciprocalSegError
from ..data.preprocess import Preprocessing
from ..model.vnet import build_model, check_strides, size_multiple
from ..training.checkpoint import nonfinite_tensors

NORMALIZATIONS = ("batchnorm", "groupnorm", "instancenorm", "none")
WEIGHTINGS = ("gaussian", "uniform")
#: Bounds on what a model file may describe: far above any preset or plan (width 16, crops of
#: 160^3), low enough that a forged description cannot make the service allocate gigabytes.
MAX_CLASSES = 255
MAX_FILTERS = 64
MAX_PATCH_SIDE = 512
MAX_PATCH_VOXELS = 256**3
MAX_OVERLAP = 0.9  # a step of 10 % of the patch: finer overlaps multiply the windows for nothing


def _problem(source: str, text: str) -> ReciprocalSegError:
    return ReciprocalSegError(f"{source}: {text}; it is not a usable ReciprocalSeg model")


def _int_in(meta: dict[str, Any], key: str, low: int, high: int, source: str) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _problem(source, f"its {key} is {value!r}, not a whole number in {low}..{high}")
    return value


def network_description(meta: Any, source: str) -> dict[str, Any]:
    """The network a model file's ``meta`` describes (n_classes, n_filters, normalization,
    dropout, strides), checked; ``ReciprocalSegError`` naming the first bad field."""
    if not isinstance(meta, dict):
        raise _problem(source, "it has no description of its network (meta)")
    n_classes = _int_in(meta, "n_classes", 2, MAX_CLASSES, source)
    n_filters = _int_in(meta, "n_filters", 1, MAX_FILTERS, source)
    if meta.get("normalization") not in NORMALIZATIONS:
        raise _problem(
            source, f"its normalization {meta.get('normalization')!r} is not one of {NORMALIZATIONS}"
        )
    if not isinstance(meta.get("dropout"), bool):
        raise _problem(source, f"its dropout {meta.get('dropout')!r} is not true or false")
    strides = meta.get("strides")
    try:
        strides = [list(s) for s in check_strides(strides)] if strides is not None else None
    except (TypeError, ValueError) as exc:
        raise _problem(source, f"its strides are unusable ({str(exc)[:200]})") from None
    return {
        "n_classes": n_classes,
        "n_filters": n_filters,
        "normalization": meta["normalization"],
        "dropout": meta["dropout"],
        "strides": strides,
        "in_channels": _int_in(meta, "in_channels", 1, 16, source) if "in_channels" in meta else 1,
    }


def check_inference_meta(meta: dict[str, Any], source: str) -> None:
    """What prediction reads from ``meta`` besides the network: the patch (a multiple of what the
    strides need, bounded), the preprocessing and the sliding-window settings."""
    network = network_description(meta, source)
    patch = meta.get("patch_size")
    if (
        not isinstance(patch, list | tuple)
        or len(patch) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_PATCH_SIDE for v in patch)
        or math.prod(patch) > MAX_PATCH_VOXELS
    ):
        raise _problem(
            source,
            f"its patch_size {patch!r} is not three sides of 1..{MAX_PATCH_SIDE} voxels "
            f"(at most {MAX_PATCH_VOXELS} in all)",
        )
    multiple_zyx = size_multiple(network["strides"] or [[2, 2, 2]] * 4)
    if any(p % m for p, m in zip(patch[::-1], multiple_zyx, strict=True)):
        raise _problem(
            source, f"its patch_size {list(patch)} (x, y, z) is not a multiple of {list(multiple_zyx[::-1])}"
        )
    try:
        Preprocessing.from_dict(meta["preprocessing"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _problem(
            source, f"its preprocessing is unusable ({type(exc).__name__}: {str(exc)[:100]})"
        ) from None
    overlap = meta.get("inference_overlap", 0.5)
    if not isinstance(overlap, int | float) or not 0 <= overlap <= MAX_OVERLAP:
        raise _problem(source, f"its inference_overlap {overlap!r} is not in [0, {MAX_OVERLAP}]")
    if meta.get("inference_weighting", "gaussian") not in WEIGHTINGS:
        raise _problem(
            source, f"its inference_weighting {meta.get('inference_weighting')!r} is not one of {WEIGHTINGS}"
        )
    if "inference_batch" in meta:
        _int_in(meta, "inference_batch", 1, 64, source)


def build_network(meta: dict[str, Any], state_dict: Any, source: str) -> nn.Module:
    """The network ``meta`` describes with ``state_dict`` loaded, exactly (no missing, extra,
    reshaped or retyped tensor) and finite; in evaluation mode, on the CPU.

    Built on PyTorch's "meta" device and given the file's tensors (``assign``): no random
    initialisation of weights that are replaced at once (seconds for a paper-width network).
    """
    network = network_description(meta, source)
    if not isinstance(state_dict, dict) or not state_dict:
        raise _problem(source, "it holds no weights (state_dict)")
    with torch.device("meta"):
        module = _build(network)
    _check_tensors(module.state_dict(), state_dict, source)
    bad = nonfinite_tensors(state_dict)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ReciprocalSegError(
            f"{source}: has NaN or infinite weights ({len(bad)} tensor(s): {shown}); it cannot be used "
            "(was it trained on images with NaN/inf voxels, or did training diverge?)"
        )
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.eval()


def _build(network: dict[str, Any]) -> nn.Module:
    return build_model(
        network["n_classes"],
        network["n_filters"],
        network["normalization"],
        network["dropout"],
        network["strides"],
        network["in_channels"],
    )


def _check_tensors(expected: dict[str, torch.Tensor], given: dict[str, Any], source: str) -> None:
    """``given`` holds exactly the tensors of ``expected``: same names, shapes and types."""
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    if missing or extra:
        parts = [
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(map(str, extra[:3]))}" if extra else "",
        ]
        raise _problem(
            source,
            f"its weights do not fit the network its description builds ({'; '.join(p for p in parts if p)})",
        )
    for name, ref in expected.items():
        value = given[name]
        if not isinstance(value, torch.Tensor) or value.shape != ref.shape or value.dtype != ref.dtype:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise _problem(
                source,
                f"its weights do not fit the network its description builds ({name}: {shape}, "
                f"expected {tuple(ref.shape)} {str(ref.dtype).removeprefix('torch.')})",
            )


def tiny_input_zyx(strides: list[list[int]] | None) -> tuple[int, int, int]:
    """The smallest input worth a forward pass: twice what the strides need per axis (instance
    norm needs more than one voxel at the bottleneck)."""
    multiple = size_multiple(strides or [[2, 2, 2]] * 4)
    return (2 * multiple[0], 2 * multiple[1], 2 * multiple[2])


@torch.inference_mode()
def forward_check(module: nn.Module, meta: dict[str, Any], source: str) -> None:
    """One forward pass of a tiny input on the CPU: the scores have the classes' shape and are finite."""
    network = network_description(meta, source)
    shape = tiny_input_zyx(network["strides"])
    channels = network["in_channels"]  # one image per channel of a case (a multi-channel round)
    x = torch.linspace(-1, 1, channels * math.prod(shape), dtype=torch.float32).reshape(1, channels, *shape)
    try:
        out = module.to("cpu").eval()(x)
    except RuntimeError as exc:
        raise _problem(source, f"a forward pass fails ({str(exc).splitlines()[0][:200]})") from None
    expected = (1, network["n_classes"], *shape)
    if tuple(out.shape) != expected:
        raise _problem(source, f"a forward pass gives scores of shape {tuple(out.shape)}, not {expected}")
    if not bool(torch.isfinite(out).all()):
        raise _problem(source, "a forward pass gives NaN or infinite scores")


def checked_network(data: dict[str, Any], source: str) -> nn.Module:
    """A model file's contents (``load_model_file``) as a usable network: described, loaded,
    finite, one forward pass made (``ReciprocalSegError`` otherwise)."""
    meta = data.get("meta")
    if not isinstance(meta, dict):
        raise _problem(source, "it has no description of its network (meta)")
    check_inference_meta(meta, source)
    module = build_network(meta, data.get("state_dict"), source)
    forward_check(module, meta, source)
    return module


def weights_nbytes(network: dict[str, Any]) -> int:
    """Bytes of the weights of the network ``network_description`` describes, counted without
    allocating them (built on PyTorch's "meta" device)."""
    with torch.device("meta"):
        module = _build(network)
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())
