"""Inference modes side by side on real scans: `python -m benchmarks.inference_quality`.

Speed alone cannot choose how a scan is tiled into windows: this runs each model file on the
same cases with each mode and prints Dice and seconds per case, the means, and the paired Dice
difference of every mode to the first one, so that a faster mode is only taken if it loses
nothing. Modes:

  fast    the product's default (inference.py: 50% overlap, Gaussian weights, batched windows)
  paper   the published evaluation's stride (18, 18, 4), uniform weights, one fp32 window at a time
  whole   one forward over the whole scan, padded to a multiple of 16 (the V-Net's four
          halvings): fewer voxel-convolutions than overlapping windows, but every scan is a new
          input shape and the network never saw more context than a training patch in training

Cases: `--ids` from `--data` (the left-atrium folder by default), or the evaluation cases of a
`benchmarks.la` output (`--split OUT/split.json`). Dice is that of label 1 (the left atrium).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import torch

from benchmarks.la import DEFAULT_DATA, EvalCase, load_eval_cases, parse_ids
from reciprocalseg.data.io import Case, discover_cases
from reciprocalseg.data.preprocess import preprocess_image
from reciprocalseg.evaluation.metrics import evaluate_case
from reciprocalseg.inference.sliding_window import LoadedModel, Prediction, load_model, predict_image

# The V-Net halves the resolution four times: a whole-scan input must divide by 2**4.
NETWORK_DIVISOR = 16


def whole_scan_model(model: LoadedModel, image: sitk.Image) -> LoadedModel:
    """`model` with its window grown to cover the whole preprocessed scan (one window)."""
    shape = preprocess_image(image, model.preprocessing).shape
    window_zyx = [
        max(math.ceil(n / NETWORK_DIVISOR) * NETWORK_DIVISOR, p)
        for n, p in zip(shape, model.patch_zyx, strict=True)
    ]
    meta = {**model.meta, "patch_size": window_zyx[::-1]}
    return dataclasses.replace(model, meta=meta)


MODES: dict[str, Callable[[LoadedModel, sitk.Image], Prediction]] = {
    "fast": lambda m, image: predict_image(m, image),
    "paper": lambda m, image: predict_image(m, image, paper_stride=True),
    "whole": lambda m, image: predict_image(whole_scan_model(m, image), image),
}


def compare(model: LoadedModel, cases: Sequence[EvalCase], modes: Sequence[str]) -> list[dict[str, Any]]:
    """Per case: {"case", "<mode>_dice", "<mode>_s"} for every mode."""
    rows = []
    for case in cases:
        row: dict[str, Any] = {"case": case.case_id}
        for mode in modes:
            start = time.perf_counter()
            pred = MODES[mode](model, case.image)
            row[f"{mode}_s"] = time.perf_counter() - start
            labels = sitk.GetArrayFromImage(pred.labels)
            row[f"{mode}_dice"] = evaluate_case(labels, case.label, case.spacing, n_classes=2)[1].dice
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]], modes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean Dice (%), seconds per case, and the paired Dice difference to modes[0]."""
    out = {}
    for mode in modes:
        deltas = [100 * (r[f"{mode}_dice"] - r[f"{modes[0]}_dice"]) for r in rows]
        out[mode] = {
            "dice": 100 * statistics.fmean(r[f"{mode}_dice"] for r in rows),
            "s_per_case": statistics.fmean(r[f"{mode}_s"] for r in rows),
            "delta_mean": statistics.fmean(deltas),
            "delta_median": statistics.median(deltas),
            "better": sum(d > 0 for d in deltas),
        }
    return out


def _cases(args: argparse.Namespace) -> list[Case]:
    if args.split is not None:
        ids = json.loads(args.split.read_text())["evaluation"]
    else:
        ids = parse_ids(args.ids)
    if not ids:
        raise SystemExit("error: give the cases with --ids ID,ID,... or --split OUT/split.json")
    found = {c.case_id: c for c in discover_cases(args.data) if c.label is not None}
    missing = [i for i in ids if i not in found]
    if missing:
        raise SystemExit(
            f"error: not found in {args.data} (with a label): {', '.join(missing[:3])}; "
            "check --data and the IDs"
        )
    return [found[i] for i in ids]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path, help="model files (teacher.pt, student.pt, ...)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of <ID>_image/_label.nrrd")
    ap.add_argument("--ids", default=None, help="comma-separated case IDs or a list file")
    ap.add_argument(
        "--split", type=Path, default=None, help="a benchmarks.la split.json: its evaluation cases"
    )
    ap.add_argument("--modes", default="fast,paper,whole", help=f"comma-separated, of {sorted(MODES)}")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        ap.error(f"unknown mode(s) {unknown}; choose from {sorted(MODES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    eval_cases = load_eval_cases(_cases(args))
    record: dict[str, Any] = {"host": platform.node(), "torch": torch.__version__, "n_cases": len(eval_cases)}
    for path in args.models:
        model = load_model(path, args.device)
        rows = compare(model, eval_cases, modes)
        for r in rows:
            print(
                path.name,
                r["case"],
                "  ".join(f"{m} {100 * r[f'{m}_dice']:.2f} ({r[f'{m}_s']:.2f} s)" for m in modes),
            )
        summary = summarise(rows, modes)
        for mode, s in summary.items():
            print(
                f"{path.name} {mode}: Dice {s['dice']:.2f}, {s['s_per_case']:.2f} s per case; "
                f"vs {modes[0]} {s['delta_mean']:+.2f} mean / {s['delta_median']:+.2f} median, "
                f"better on {s['better']} of {len(rows)}"
            )
        record[str(path)] = {
            "device": str(model.device),
            **{m: {k: round(v, 4) for k, v in s.items()} for m, s in summary.items()},
        }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
