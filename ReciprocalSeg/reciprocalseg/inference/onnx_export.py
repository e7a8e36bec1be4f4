"""Export a run's teacher and student as ONNX, with the metadata needed to run them elsewhere.

``DIR/teacher.onnx``, ``DIR/student.onnx``: the network with a softmax on top, input
``image`` (N, 1, z, y, x) float32 of the patch size, output ``probabilities`` (N, C, z, y, x);
the batch size is free. ``DIR/metadata.json`` (also stored in each model's metadata_props)
says what a runtime must do around it: classes and names, the spacing the model expects,
the intensity normalisation, the patch size and the sliding window (overlap, Gaussian
weights). ``examples/onnx_predict.py`` applies an exported model to a scan with numpy,
SimpleITK and onnxruntime only.

The exporter is PyTorch's TorchScript-based one (``dynamo=False``): it needs only the
``onnx`` package, works offline, and handles the V-Net's fixed-size convolutions; the
newer torch.export-based exporter (the default since PyTorch 2.9) needs ``onnxscript``
as well and gives nothing more for this network.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.atomic import atomic_write_bytes, atomic_write_json
from ..common.errors import ReciprocalSegError, UsageError
from .sliding_window import LoadedModel, load_model

FORMAT = "reciprocalseg-onnx-1"
DEFAULT_OPSET = 17
# The opsets this export works with: PyTorch's TorchScript exporter writes at most 20, and below 9
# it keeps the weights as graph inputs (ONNX IR v3) and cannot fold constants.
MIN_OPSET, MAX_OPSET = 9, 20
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
# The largest difference between PyTorch's and onnxruntime's probabilities accepted at export.
VERIFY_TOLERANCE = 1e-4
GAUSSIAN_SIGMA_SCALE = 0.125  # inference.gaussian_weights: sigma = patch size / 8


@dataclass
class ExportResult:
    models: dict[str, Path]
    metadata: Path
    max_abs_difference: dict[str, float | None]  # PyTorch vs onnxruntime on a random batch


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ReciprocalSegError(
            "exporting to ONNX needs the onnx package: pip install onnx onnxruntime"
        ) from None
    return onnx


def class_list(n_classes: int, names: list[str] | None) -> list[dict[str, Any]]:
    """[{"value": 0, "name": "background"}, {"value": 1, "name": ...}, ...]."""
    if names is not None and len(names) != n_classes - 1:
        raise ReciprocalSegError(
            f"the model has {n_classes - 1} foreground classes; give that many --class-names "
            f"(got {len(names)}: {names})"
        )
    foreground = names or [f"class {c}" for c in range(1, n_classes)]
    return [{"value": 0, "name": "background"}] + [
        {"value": c, "name": name} for c, name in enumerate(foreground, start=1)
    ]


def _intensity(prep: dict[str, Any]) -> dict[str, Any]:
    if prep["intensity"] == "ct":
        lo, hi = prep["ct_window"]
        return {
            "method": "ct_window",
            "window": [lo, hi],
            "formula": "clip(x, lo, hi), then (x - lo) / (hi - lo) * 2 - 1",
        }
    return {
        "method": "zscore",
        "formula": "(x - mean(x)) / std(x) over the whole scan (on the model's grid), in float32",
    }


def _training_spacing(run: Path) -> list[float] | None:
    """Median spacing (x, y, z) of the run's labelled scans, read from their headers."""
    cases = run / "cases.json"
    if not cases.exists():
        return None
    import SimpleITK as sitk

    spacings = []
    for entry in json.loads(cases.read_text(encoding="utf-8")).get("labeled", []):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(entry["image"]))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue  # a moved or DICOM-folder scan: the median comes from the others
        spacings.append(reader.GetSpacing())
    return [float(v) for v in np.median(spacings, axis=0)] if spacings else None


def build_metadata(
    model: LoadedModel, files: dict[str, str], run: Path, class_names: list[str] | None, opset: int
) -> dict[str, Any]:
    """What a runtime needs to apply the exported networks the way `inference` does."""
    meta = model.meta
    prep = meta["preprocessing"]
    patch_xyz = [int(v) for v in meta["patch_size"]]
    overlap = float(meta.get("inference_overlap", 0.5))
    target = prep.get("target_spacing")
    return {
        "format": FORMAT,
        "models": files,
        "input": {
            "name": INPUT_NAME,
            "shape": ["N", 1, *patch_xyz[::-1]],
            "dtype": "float32",
            "axes": "N, channel, z, y, x (SimpleITK's array order)",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["N", meta["n_classes"], *patch_xyz[::-1]],
            "meaning": "class probabilities (softmax applied); the label is the argmax over axis 1",
        },
        "n_classes": int(meta["n_classes"]),
        "classes": class_list(int(meta["n_classes"]), class_names),
        "spacing": {
            "target_mm_xyz": list(target) if target else None,
            "rule": (
                "resample the scan to target_mm_xyz (linear), predict, resample the probabilities back"
                if target
                else "none: the model runs on the scan's own grid (it was trained without resampling)"
            ),
            "training_median_mm_xyz": _training_spacing(run) if run.is_dir() else None,
        },
        "intensity": _intensity(prep),
        "patch_size_xyz": patch_xyz,
        "patch_size_zyx": patch_xyz[::-1],
        "sliding_window": {
            "overlap": overlap,
            "step_zyx": [max(1, round(p * (1 - overlap))) for p in patch_xyz[::-1]],
            "weighting": meta.get("inference_weighting", "gaussian"),
            "gaussian_sigma": f"{GAUSSIAN_SIGMA_SCALE} x patch size per axis, peak 1, centre (n - 1) / 2",
            "padding": "scans smaller than the patch are padded with 0 symmetrically (extra // 2 before)",
            "windows": "starts 0, step, 2 step, ... and the last flush with the end, per axis",
            "merge": "sum of probabilities x weights over windows, divided by the sum of weights",
        },
        "opset": opset,
        "preset": meta.get("preset"),
    }


class _WithSoftmax(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def _onnx_bytes(model: LoadedModel, opset: int) -> bytes:
    net = _WithSoftmax(model.module.to("cpu", memory_format=torch.contiguous_format)).eval()
    example = torch.zeros((1, 1, *model.patch_zyx), dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: see above
        torch.onnx.export(
            net,
            (example,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
            opset_version=opset,
        )
    return buffer.getvalue()


def _with_metadata(data: bytes, metadata: dict[str, Any], source: Path) -> bytes:
    onnx = _require_onnx()
    proto = onnx.load_from_string(data)
    entries = {
        "reciprocalseg": json.dumps(metadata),
        "source_model_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
    }
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _verify(model: LoadedModel, data: bytes) -> float | None:
    """Max |PyTorch - onnxruntime| of the probabilities on a random batch of 2 (None without ORT)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1, *model.patch_zyx), dtype=np.float32))
    with torch.inference_mode():
        expected = torch.softmax(model.module(x), dim=1).numpy()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= VERIFY_TOLERANCE:
        raise ReciprocalSegError(
            f"the exported model differs from the PyTorch one by {diff:.2e} (tolerance {VERIFY_TOLERANCE}); "
            "the export is not usable: report this with the run's model file"
        )
    return diff


def check_opset(opset: int) -> None:
    """``UsageError`` for an opset this export cannot write."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(
            f"--opset {opset}: the export writes ONNX opsets {MIN_OPSET}..{MAX_OPSET} "
            f"(default {DEFAULT_OPSET})"
        )


def export_run(
    run: Path,
    out_dir: Path,
    which: tuple[str, ...] = ("teacher", "student"),
    class_names: list[str] | None = None,
    opset: int = DEFAULT_OPSET,
) -> ExportResult:
    """Export ``RUN/<name>.pt`` for each name in ``which`` (or one model file) to ``out_dir``."""
    check_opset(opset)
    _require_onnx()
    sources = {run.stem: run} if run.is_file() else {name: run / f"{name}.pt" for name in which}
    missing = [str(p) for p in sources.values() if not p.exists()]
    if missing:
        raise ReciprocalSegError(f"no model file {missing}: has the run in {run} finished?")
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = {name: load_model(path, "cpu") for name, path in sources.items()}
    files = {name: f"{name}.onnx" for name in loaded}
    first = next(iter(loaded.values()))
    metadata = build_metadata(first, files, run, class_names, opset)
    paths, diffs = {}, {}
    for name, model in loaded.items():
        if model.meta != first.meta:
            raise ReciprocalSegError(f"{sources[name]} was trained with other settings than the first model")
        data = _with_metadata(_onnx_bytes(model, opset), metadata, sources[name])
        diffs[name] = _verify(model, data)
        paths[name] = out_dir / files[name]
        atomic_write_bytes(paths[name], data)
    metadata["export_check"] = {"max_abs_difference_vs_pytorch": diffs, "tolerance": VERIFY_TOLERANCE}
    atomic_write_json(out_dir / "metadata.json", metadata)
    return ExportResult(paths, out_dir / "metadata.json", diffs)
