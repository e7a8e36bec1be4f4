"""The loop in strokes (issue 27 item 2): a simulated annotator corrects held-out cases stroke by
stroke, and each correction either refines the model (refine/adapt.py) or is only pasted.

  python -m benchmarks.loop --data ../shared/data/hippocampus --out OUT --minutes 12

1. A round: a seeded split of the folder of `<ID>_image` / `<ID>_label` pairs (`--labeled`,
   `--unlabeled`, `--val` held-out cases; `benchmarks.any_dataset.split_cases`) and the `auto`
   plan trained for `--minutes` into OUT/run (resumable; a finished run is reused).
2. Per held-out case: the round's model (`--model`, student by default as the service) predicts;
   then up to `--max-strokes` times the annotator adds one stroke by the rule below, to the
   strokes so far, and the case is refined from all of them (a fresh copy of the round's model
   each time, as the service does) or, for the baseline, the strokes are only pasted into the
   round's prediction (what manual painting gives). Both arms start from the same prediction;
   each arm's annotator looks at its own current mask.

The annotator's rule (`next_stroke`), as interactive-segmentation papers place simulated clicks
(the click at the point of the largest error region farthest from its border): the largest
26-connected component of wrong voxels of one true class; its voxel farthest from the
component's border (Euclidean distance transform in mm); in that voxel's axial slice a straight
stroke through it along the slice section's longest in-plane direction (its principal axis),
`--stroke-length` voxels long at most and kept inside the component. The stroke carries the true
class. When nothing is wrong the case is done.

Recorded: Dice per class after every stroke (foreground classes; the mean of them decides the
thresholds), seconds per refine (the refine's own wall time, prediction included), strokes to
reach mean Dice 0.80 / 0.85 / 0.90 (0 when the round's prediction is there already; "not
reached" within the cap counts as cap + 1 in means), per arm. OUT: split.json, per_stroke.csv,
result.json, results.md (machine, load and date in each).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from benchmarks.any_dataset import machine, method_config, split_cases
from reciprocalseg.common.atomic import atomic_write_json, atomic_write_text
from reciprocalseg.common.file_formats import UNANNOTATED
from reciprocalseg.data.io import Case, discover_cases, read_image, require_labels

THRESHOLDS = (0.80, 0.85, 0.90)
_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)


# --------------------------------------------------------------------------- the annotator


def largest_error(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The largest 26-connected component of voxels of one true class that `predicted` gets
    wrong, as a mask, with that class; None when every voxel is right."""
    best: tuple[int, np.ndarray, int] | None = None
    for cls in np.unique(truth):
        wrong = (truth == cls) & (predicted != cls)
        if not wrong.any():
            continue
        pieces, count = ndimage.label(wrong, structure=_CONNECTIVITY)
        sizes = np.bincount(pieces.ravel(), minlength=count + 1)[1:]
        biggest = int(np.argmax(sizes))
        if best is None or sizes[biggest] > best[0]:
            best = (int(sizes[biggest]), pieces == biggest + 1, int(cls))
    return None if best is None else (best[1], best[2])


def stroke_in(component: np.ndarray, spacing_zyx: tuple[float, float, float], length: int) -> np.ndarray:
    """The stroke's voxels ((n, 3) z, y, x) in `component`: see the module's docstring."""
    inside = np.pad(component, 1)  # the border of the volume counts as the component's border
    distance = ndimage.distance_transform_edt(inside, sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    centre = np.unravel_index(int(np.argmax(distance)), component.shape)
    section = np.argwhere(component[centre[0]])  # (n, 2) y, x in the centre's axial slice
    direction = np.array([0.0, 1.0])
    if len(section) > 1:
        scaled = (section - section.mean(axis=0)) * np.asarray(spacing_zyx[1:])
        _, vectors = np.linalg.eigh(np.cov(scaled.T))
        direction = vectors[:, -1] / np.asarray(spacing_zyx[1:])  # back to voxel steps
        direction /= np.abs(direction).max()
    voxels = {tuple(int(v) for v in centre)}
    for sign in (1, -1):
        for step in range(1, length):
            if len(voxels) >= length:
                break
            y, x = np.rint(np.asarray(centre[1:]) + sign * step * direction).astype(int)
            if (
                not (0 <= y < component.shape[1] and 0 <= x < component.shape[2])
                or not component[centre[0], y, x]
            ):
                break
            voxels.add((int(centre[0]), int(y), int(x)))
    return np.array(sorted(voxels))


def next_stroke(
    truth: np.ndarray, current: np.ndarray, spacing_zyx: tuple[float, float, float], length: int
) -> tuple[np.ndarray, int] | None:
    """The annotator's next stroke on `current` (voxels, class), or None when nothing is wrong."""
    error = largest_error(truth, current)
    if error is None:
        return None
    component, cls = error
    return stroke_in(component, spacing_zyx, length), cls


# --------------------------------------------------------------------------- Dice and strokes-to-Dice


def dice_per_class(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> list[float]:
    """Dice of each foreground class (1 when both are empty)."""
    out = []
    for cls in range(1, n_classes):
        p, t = predicted == cls, truth == cls
        total = int(p.sum()) + int(t.sum())
        out.append(1.0 if total == 0 else 2.0 * int(np.sum(p & t)) / total)
    return out


def strokes_to(curve: list[float], threshold: float) -> int | None:
    """How many strokes a Dice curve (index 0 = no stroke) needs to reach `threshold`; None: never."""
    for strokes, value in enumerate(curve):
        if value >= threshold:
            return strokes
    return None


# --------------------------------------------------------------------------- the round


def split(args: argparse.Namespace) -> tuple[list[Case], list[Case], list[Case], list[Case]]:
    """Labelled, unlabelled, held-out (reported) and tuning cases: one seeded permutation, so the
    tuning cases (`--tune`, after the held-out ones) never overlap what is reported."""
    cases = require_labels(discover_cases(args.data))
    labeled, unlabeled, held = split_cases(
        cases, args.labeled, args.unlabeled, args.val + args.tune, args.seed
    )
    return labeled, unlabeled, held[: args.val], held[args.val :]


def train_round(args: argparse.Namespace, labeled: list[Case], unlabeled: list[Case]) -> Path:
    """The round every held-out case starts from: `auto` for `--minutes` (OUT/run, resumable);
    `--supervised-only`: the same plan on the labelled cases alone (its model is teacher.pt)."""
    from reciprocalseg.training.runner import train

    method = "supervised" if args.supervised_only else "auto"
    config = method_config(method, labeled, unlabeled, args)
    pool = [] if args.supervised_only else unlabeled
    return train(config, labeled, pool, args.run or args.out / "run").run_dir


# --------------------------------------------------------------------------- the loop


def _stroke_image(strokes: np.ndarray, image: Any) -> Any:
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(strokes)
    out.CopyInformation(image)
    return out


def run_case(
    case: Case, model_file: Path, replay: list[Case], cache_dir: Path, settings: Any, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Both arms on one held-out case: one row per (arm, stroke count)."""
    import SimpleITK as sitk

    from reciprocalseg.inference.sliding_window import load_model, predict_image
    from reciprocalseg.refine.adapt import refine_case

    image = read_image(case.image)
    truth = sitk.GetArrayFromImage(read_image(case.label))
    model = load_model(model_file, args.device)
    base = sitk.GetArrayFromImage(predict_image(model, image).labels)
    n_classes = model.n_classes
    spacing = tuple(float(v) for v in image.GetSpacing()[::-1])
    first = dice_per_class(base, truth, n_classes)
    rows = [_row(case, arm, 0, first, {}) for arm in ("paste", "refine")]
    for arm in ("paste", "refine"):
        current, strokes = base, np.full(truth.shape, UNANNOTATED, np.uint8)
        for count in range(1, args.max_strokes + 1):
            if arm == "refine" and np.mean(rows[-1]["dice"]) >= max(THRESHOLDS):
                break  # past the last threshold: the tables need no more (and refines cost time)
            stroke = next_stroke(truth, current, spacing, args.stroke_length)
            if stroke is None:
                break
            voxels, cls = stroke
            strokes[tuple(voxels.T)] = cls
            extra: dict[str, Any] = {"stroke_class": cls, "stroke_voxels": len(voxels)}
            if arm == "paste":
                current = np.where(strokes != UNANNOTATED, strokes, base)
            else:
                result = refine_case(
                    model_file,
                    image,
                    _stroke_image(strokes, image),
                    replay=replay,
                    settings=settings,
                    device=args.device,
                    cache_dir=cache_dir,
                )
                current = sitk.GetArrayFromImage(result.labels)
                extra |= {
                    "seconds": round(result.seconds, 2),
                    "predict_seconds": round(result.predict_seconds, 2),
                    "iterations": result.iterations,
                    "stopped_by": result.stopped_by,
                    "agreement": round(result.stroke_agreement, 3),
                }
            rows.append(_row(case, arm, count, dice_per_class(current, truth, n_classes), extra))
            print(
                json.dumps({k: v for k, v in rows[-1].items() if k != "case"} | {"case": case.case_id}),
                flush=True,
            )
    return rows


def _row(case: Case, arm: str, strokes: int, dice: list[float], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "case": case.case_id,
        "arm": arm,
        "strokes": strokes,
        "dice": [round(d, 4) for d in dice],
        **extra,
    }


def curves(rows: list[dict[str, Any]], cap: int) -> dict[tuple[str, str], list[float]]:
    """Mean-Dice curve per (case, arm), index = strokes, carried forward to `cap` when it stopped."""
    out: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        out.setdefault((row["case"], row["arm"]), []).append(float(np.mean(row["dice"])))
    for curve in out.values():
        curve.extend([curve[-1]] * (cap + 1 - len(curve)))
    return out


def class_dice_at(rows: list[dict[str, Any]], arm: str, cap: int) -> dict[str, list[float]]:
    """Per foreground class, the mean Dice over the cases at 0, 1, 5 strokes and at the cap (a
    case that stopped keeps its last value)."""
    by_case: dict[str, list[list[float]]] = {}
    for row in rows:
        if row["arm"] == arm:
            by_case.setdefault(row["case"], []).append(row["dice"])
    out = {}
    for k in sorted({0, 1, 5, cap} & set(range(cap + 1))):
        values = [dice[min(k, len(dice) - 1)] for dice in by_case.values()]
        out[str(k)] = [round(float(v), 4) for v in np.mean(values, axis=0)]
    return out


def summarise(rows: list[dict[str, Any]], cap: int) -> dict[str, Any]:
    """Per arm: strokes to each threshold (mean with 'not reached' = cap + 1, median, how many
    reached), the Dice at 0, 1, 3, 5 strokes and at the cap, and the refine's seconds."""
    per = curves(rows, cap)
    summary: dict[str, Any] = {}
    for arm in ("paste", "refine"):
        arm_curves = [c for (case, a), c in per.items() if a == arm]
        entry: dict[str, Any] = {"cases": len(arm_curves)}
        for t in THRESHOLDS:
            needed = [strokes_to(c, t) for c in arm_curves]
            counted = [cap + 1 if n is None else n for n in needed]
            entry[f"to_{t:.2f}"] = {
                "mean": round(float(np.mean(counted)), 2),
                "median": float(np.median(counted)),
                "reached": sum(n is not None for n in needed),
            }
        entry["dice_at"] = {
            str(k): round(float(np.mean([c[k] for c in arm_curves])), 4)
            for k in sorted({0, 1, 3, 5, cap} & set(range(cap + 1)))
        }
        entry["class_dice_at"] = class_dice_at(rows, arm, cap)
        summary[arm] = entry
    seconds = [r["seconds"] for r in rows if r["arm"] == "refine" and "seconds" in r]
    if seconds:
        summary["refine"]["seconds"] = {
            "mean": round(float(np.mean(seconds)), 2),
            "median": round(float(np.median(seconds)), 2),
            "max": round(float(np.max(seconds)), 2),
            "refines": len(seconds),
        }
    p85, r85 = summary["paste"]["to_0.85"]["mean"], summary["refine"]["to_0.85"]["mean"]
    summary["paste_over_refine_to_0.85"] = round(p85 / r85, 2) if r85 else None
    return summary


def run_loop(
    args: argparse.Namespace, run_dir: Path, labeled: list[Case], cases: list[Case]
) -> dict[str, Any]:
    from reciprocalseg.refine.settings import default_refine_settings

    settings = default_refine_settings(args.device).replace(**json.loads(args.settings))
    model_file = run_dir / f"{args.model}.pt"
    started = time.time()
    load_before = os.getloadavg()
    done = args.out / "cases"
    # One file per finished case: a rerun skips them, and shards (`--shard k/n`, processes that
    # share OUT) each take every n-th case; the tables are made from whatever files are there.
    k, n = (int(v) for v in args.shard.split("/"))
    for case in [] if args.tables_only else cases[k - 1 :: n]:
        if not (done / f"{case.case_id}.json").exists():
            rows = run_case(case, model_file, labeled, run_dir / "cache", settings, args)
            atomic_write_json(done / f"{case.case_id}.json", rows)
    rows = [row for case in cases if (done / f"{case.case_id}.json").exists() for row in _read(done, case)]
    result = {
        "summary": summarise(rows, args.max_strokes),
        "cases": len({r["case"] for r in rows}),
        "settings": vars(settings),
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine() | {"load_average_at_start": load_before},
        "wall_seconds": round(time.time() - started, 1),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write(args.out, rows, result)
    return result


def _read(folder: Path, case: Case) -> list[dict[str, Any]]:
    return json.loads((folder / f"{case.case_id}.json").read_text(encoding="utf-8"))


def _write(out: Path, rows: list[dict[str, Any]], result: dict[str, Any]) -> None:
    n = max(len(r["dice"]) for r in rows)
    columns = ["case", "arm", "strokes", *[f"dice_{c}" for c in range(1, n + 1)], "dice_mean"]
    columns += [
        "stroke_class",
        "stroke_voxels",
        "seconds",
        "predict_seconds",
        "iterations",
        "stopped_by",
        "agreement",
    ]
    lines = [",".join(columns)]
    for r in rows:
        values = {
            **r,
            **{f"dice_{c + 1}": d for c, d in enumerate(r["dice"])},
            "dice_mean": round(np.mean(r["dice"]), 4),
        }
        lines.append(",".join(str(values.get(c, "")) for c in columns))
    atomic_write_text(out / "per_stroke.csv", "\n".join(lines) + "\n")
    atomic_write_json(out / "result.json", result)
    atomic_write_text(out / "results.md", markdown(result))


def markdown(result: dict[str, Any]) -> str:
    s, m = result["summary"], result["machine"]
    load = tuple(round(v, 1) for v in m["load_average_at_start"])
    lines = [
        f"Loop benchmark, {result['date']}, {m['cpu']} x{m['cores']}, torch {m['torch']} "
        f"({m['torch_threads']} threads), load at start {load}",
        "",
        "| arm | cases | to 0.80 (mean / median / reached) | to 0.85 | to 0.90 | Dice 0 | 1 | 3 | 5 | cap |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ("paste", "refine"):
        e = s[arm]
        cells = [
            f"{e[f'to_{t:.2f}']['mean']} / {e[f'to_{t:.2f}']['median']} / {e[f'to_{t:.2f}']['reached']}"
            for t in THRESHOLDS
        ]
        dice = [f"{v:.3f}" for v in e["dice_at"].values()]
        lines.append(f"| {arm} | {e['cases']} | " + " | ".join(cells + dice) + " |")
    if "seconds" in s["refine"]:
        sec = s["refine"]["seconds"]
        lines += [
            "",
            f"Refine seconds: mean {sec['mean']}, median {sec['median']}, max {sec['max']} "
            f"({sec['refines']} refines).",
        ]
    lines.append(f"Paste / refine, strokes to 0.85: {s['paste_over_refine_to_0.85']}")
    lines += ["", "Dice per class (mean over the cases) after k strokes:", ""]
    for arm in ("paste", "refine"):
        cells = [f"{k}: " + " / ".join(f"{v:.3f}" for v in d) for k, d in s[arm]["class_dice_at"].items()]
        lines.append(f"- {arm}: " + "; ".join(cells))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder of <ID>_image / <ID>_label pairs")
    p.add_argument("--out", type=Path, default=Path("loop-out"))
    p.add_argument("--labeled", type=int, default=8)
    p.add_argument("--unlabeled", type=int, default=32)
    p.add_argument("--val", type=int, default=8, help="held-out cases the tables report")
    p.add_argument("--tune", type=int, default=0, help="further held-out cases; --on tune runs on them")
    p.add_argument("--on", choices=("val", "tune"), default="val")
    p.add_argument("--minutes", type=float, default=12.0, help="the round's training time")
    p.add_argument("--supervised-only", action="store_true", help="train the round without unlabelled cases")
    p.add_argument("--run", type=Path, default=None, help="the round's run folder (default OUT/run)")
    p.add_argument("--model", choices=("student", "teacher", "supervised"), default="student")
    p.add_argument("--max-strokes", type=int, default=20)
    p.add_argument("--stroke-length", type=int, default=7, help="voxels; see the annotator's rule")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", default="1/1", help="k/n: this process runs every n-th case from the k-th")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--tables-only", action="store_true", help="tables from OUT/cases/ only; runs nothing")
    p.add_argument(
        "--settings", default="{}", help="JSON of RefineSettings fields over the device's defaults"
    )
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = split(args)
    labeled, unlabeled, val, tune = parts
    names = ("labeled", "unlabeled", "val", "tune")
    ids = {k: [c.case_id for c in v] for k, v in zip(names, parts, strict=True)}
    atomic_write_json(args.out / "split.json", {**ids, "seed": args.seed, "data": str(args.data)})
    run_dir = train_round(args, labeled, unlabeled)
    if args.train_only:
        return 0
    result = run_loop(args, run_dir, labeled, val if args.on == "val" else tune)
    print(json.dumps(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
