"""`auto` against a fixed preset and supervised-only training at equal time, on any dataset
(issue 16 item 6): `python -m benchmarks.any_dataset --data ../shared/data/hippocampus`.

The data folder holds `<ID>_image` / `<ID>_label` pairs. A seeded split takes `--labeled`
labelled cases, `--unlabeled` cases used without their labels, and `--val` held-out cases to
evaluate on (their labels are read only for the metrics). Each method trains for `--minutes`
on this machine (the time budget of `TrainConfig.minutes`, so equal time by construction).
`--concurrent` trains all methods at once, one process each with `--threads` torch threads,
so that whatever else loads the machine loads every method alike (the budget is wall time):

  auto        the plan from the training cases (planning/planner.py), reciprocal learning;
  fixed       a fixed preset (`--fixed-preset`, default `lite`: the CPU preset) with the same
              time budget and n_classes from the labels; `fixed:<preset>` names one, so several
              fixed presets can run side by side (`--methods auto,fixed:demo,fixed:lite`);
  supervised  the `auto` plan trained on the labelled cases alone for the whole budget
              (budget_split 1, 0, 0): what the time gives without the unlabelled scans.

Each model (teacher and student; supervised: its one model) predicts the held-out cases; Dice
and HD95 (mm) per class and case, means, and paired differences per case against `auto`'s
student and teacher. Outputs in OUT: per_case.csv, result.json, results.md (machine and date
in each), runs/<method>/ (the run folders, resumable). The last line printed is the headline
JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import math
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from reciprocalseg.common.atomic import atomic_path, atomic_write_json, atomic_write_text
from reciprocalseg.config import TrainConfig, make_config
from reciprocalseg.data.io import Case, discover_cases, read_image, require_labels
from reciprocalseg.data.validation import infer_n_classes
from reciprocalseg.planning.fingerprint import compute_fingerprint
from reciprocalseg.planning.planner import plan_from_fingerprint, planned_config

METHODS = ("auto", "fixed", "supervised")


def split_cases(
    cases: list[Case], n_labeled: int, n_unlabeled: int, n_val: int, seed: int
) -> tuple[list[Case], list[Case], list[Case]]:
    """A seeded split into labelled, unlabelled (labels dropped) and held-out cases."""
    need = n_labeled + n_unlabeled + n_val
    if len(cases) < need:
        raise SystemExit(f"{len(cases)} cases, {need} needed: lower --labeled/--unlabeled/--val")
    order = np.random.default_rng(seed).permutation(len(cases))
    picked = [cases[i] for i in order[:need]]
    labeled = picked[:n_labeled]
    unlabeled = [Case(c.case_id, c.image, None) for c in picked[n_labeled : n_labeled + n_unlabeled]]
    return labeled, unlabeled, picked[n_labeled + n_unlabeled :]


def method_config(
    method: str, labeled: list[Case], unlabeled: list[Case], args: argparse.Namespace
) -> TrainConfig:
    common = {"minutes": args.minutes, "device": args.device, "seed": args.seed}
    if method.startswith("fixed"):
        import SimpleITK as sitk

        preset = method.partition(":")[2] or args.fixed_preset
        maxima = [int(sitk.GetArrayFromImage(read_image(c.label)).max()) for c in labeled]
        return make_config(preset, n_classes=infer_n_classes(maxima) + 1, **common)
    plan = plan_from_fingerprint(compute_fingerprint(labeled, unlabeled), _device(args.device))
    if method == "supervised":
        common.update(budget_split=(1.0, 0.0, 0.0), reciprocal_iterations=0)
    return planned_config(plan, common)


def _device(name: str) -> str:
    from reciprocalseg.common.device import resolve_device

    return str(resolve_device(name))


def evaluate(model_path: Path, cases: list[Case], n_classes: int, device: str) -> list[dict[str, Any]]:
    """Per case and class: Dice and HD95 (mm) of the model's prediction on the scan's grid."""
    import SimpleITK as sitk

    from reciprocalseg.evaluation.metrics import evaluate_case
    from reciprocalseg.inference.sliding_window import load_model, predict_image

    model = load_model(model_path, device)
    rows = []
    for case in cases:
        image, label = read_image(case.image), read_image(case.label)
        pred = sitk.GetArrayFromImage(predict_image(model, image).labels)
        per_class = evaluate_case(pred, sitk.GetArrayFromImage(label), image.GetSpacing(), n_classes)
        for cls, m in per_class.items():
            rows.append({"case": case.case_id, "class": cls, "dice": m.dice, "hd95_mm": m.hd95_mm})
    return rows


def paired(rows: list[dict[str, Any]], model: str, reference: str) -> dict[str, dict[str, float]]:
    """Per class: the median per-case Dice difference model - reference and how many cases it wins."""
    by = {(r["model"], r["case"], r["class"]): r for r in rows}
    out = {}
    for cls in sorted({r["class"] for r in rows}):
        diffs = [
            by[(model, c, cls)]["dice"] - by[(reference, c, cls)]["dice"]
            for (m, c, k) in by
            if m == model and k == cls and (reference, c, cls) in by
        ]
        if diffs:
            out[str(cls)] = {
                "median_dice_diff": round(float(np.median(diffs)), 4),
                "wins": int(sum(d > 0 for d in diffs)),
                "cases": len(diffs),
            }
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and class: mean Dice and mean HD95 (mm; cases where it is undefined left out)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        out[model] = {}
        for cls in sorted({r["class"] for r in rows}):
            sel = [r for r in rows if r["model"] == model and r["class"] == cls]
            hd = [r["hd95_mm"] for r in sel if not math.isnan(r["hd95_mm"])]
            out[model][str(cls)] = {
                "dice": round(float(np.mean([r["dice"] for r in sel])), 4),
                "hd95_mm": round(float(np.mean(hd)), 3) if hd else math.nan,
                "hd95_undefined": len(sel) - len(hd),
            }
    return out


def machine() -> dict[str, Any]:
    import torch

    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }


def _train_one(
    method: str, labeled: list[Case], unlabeled: list[Case], args: argparse.Namespace, threads: int
) -> tuple[dict[str, Path], float]:
    """Train one method into OUT/runs/<method>; its models and the seconds it took."""
    import torch

    from reciprocalseg.training.runner import train

    if threads:
        torch.set_num_threads(threads)
    config = method_config(method, labeled, unlabeled, args)
    t0 = time.perf_counter()
    pool = unlabeled if method != "supervised" else []
    run_dir = args.out / "runs" / method.replace(":", "-")
    result = train(config, labeled, pool, run_dir)
    # A finished run is not redone (an evaluation-only rerun): its own record has the training time.
    done = json.loads((run_dir / "done.json").read_text(encoding="utf-8"))
    seconds = round(float(done.get("seconds", time.perf_counter() - t0)), 1)
    if method == "supervised":
        return {"teacher": result.teacher}, seconds
    return {"teacher": result.teacher, "student": result.student}, seconds


def train_methods(
    labeled: list[Case], unlabeled: list[Case], args: argparse.Namespace
) -> dict[str, tuple[dict[str, Path], float]]:
    """Each method's models and training seconds: one after another, or all at once."""
    if not args.concurrent:
        return {m: _train_one(m, labeled, unlabeled, args, args.threads) for m in args.methods}
    import multiprocessing

    threads = args.threads or max(1, (os.cpu_count() or 1) // len(args.methods))
    with concurrent.futures.ProcessPoolExecutor(
        len(args.methods), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = {m: pool.submit(_train_one, m, labeled, unlabeled, args, threads) for m in args.methods}
        return {m: f.result() for m, f in futures.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    cases = require_labels(discover_cases(args.data))
    labeled, unlabeled, val = split_cases(cases, args.labeled, args.unlabeled, args.val, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    split = {
        k: [c.case_id for c in v] for k, v in (("labeled", labeled), ("unlabeled", unlabeled), ("val", val))
    }
    atomic_write_json(args.out / "split.json", split)
    rows: list[dict[str, Any]] = []
    timing, iterations = {}, {}
    trained = train_methods(labeled, unlabeled, args)
    for method, (models, seconds) in trained.items():
        timing[method] = seconds
        run_dir = args.out / "runs" / method.replace(":", "-")
        iterations[method] = _iterations_done(run_dir)
        n_classes = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["n_classes"]
        for name, path in models.items():
            for row in evaluate(path, val, n_classes, args.device):
                rows.append({"model": f"{method}/{name}", **row})
        print(f"{method}: trained {seconds} s, evaluated", file=sys.stderr)
    result = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "minutes": args.minutes,
        "split": {k: len(v) for k, v in split.items()},
        "concurrent": bool(args.concurrent),
        "threads_per_method": args.threads
        or (max(1, (os.cpu_count() or 1) // len(args.methods)) if args.concurrent else None),
        "train_seconds": timing,
        "iterations": iterations,
        "summary": summary(rows),
        "paired_vs_auto_student": {
            m: paired(rows, m, "auto/student")
            for m in dict.fromkeys(r["model"] for r in rows)
            if m != "auto/student"
        },
        "paired_vs_auto_teacher": {
            m: paired(rows, m, "auto/teacher")
            for m in dict.fromkeys(r["model"] for r in rows)
            if m != "auto/teacher"
        },
    }
    _write(args.out, rows, result)
    return result


def _iterations_done(run_dir: Path) -> dict[str, int]:
    """The last iteration each phase reached (from the run's events): what the budget bought."""
    from reciprocalseg.training.events import read_events

    done: dict[str, int] = {}
    for event in read_events(run_dir / "events.jsonl"):
        if "phase" in event and "iteration" in event:
            done[event["phase"]] = max(done.get(event["phase"], 0), int(event["iteration"]))
    return done


def _write(out: Path, rows: list[dict[str, Any]], result: dict[str, Any]) -> None:
    with atomic_path(out / "per_case.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_json(out / "result.json", result)
    lines = [
        f"# {result['minutes']} min per method on {result['machine']['host']} "
        f"({result['machine']['cores']} cores), {result['machine']['date']}",
        "",
        f"`{result['command']}`; split {result['split']}",
        "",
        "| model | class | mean Dice | mean HD95 (mm) | HD95 undefined |",
        "|---|---|---|---|---|",
    ]
    for model, classes in result["summary"].items():
        for cls, m in classes.items():
            lines.append(
                f"| {model} | {cls} | {m['dice']:.4f} | {m['hd95_mm']:.2f} | {m['hd95_undefined']} |"
            )
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder of <ID>_image / <ID>_label pairs")
    p.add_argument("--out", type=Path, default=Path("any-dataset-out"))
    p.add_argument("--labeled", type=int, default=8)
    p.add_argument("--unlabeled", type=int, default=100)
    p.add_argument("--val", type=int, default=40)
    p.add_argument("--minutes", type=float, default=30.0, help="training time per method")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--fixed-preset", default="lite")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrent", action="store_true", help="train all methods at once (see above)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per method (0: cores / methods)")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted({m.partition(":")[0] for m in args.methods} - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {METHODS}")
    result = run(args)
    print(json.dumps({"summary": result["summary"], "machine": result["machine"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
