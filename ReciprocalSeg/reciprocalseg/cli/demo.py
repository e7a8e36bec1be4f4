"""The built-in demo: the whole loop on a procedural phantom cohort, on the CPU, in minutes.

A few labelled cases, more unlabelled ones, and a held-out set. The supervised-only
baseline is the teacher at the end of the supervised phase (the paper's supervised-only
row is the same recipe), so it costs nothing extra; then reciprocal learning runs with
the same crops, and all three models are evaluated on the held-out cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import SimpleITK as sitk

from ..common.atomic import atomic_write_json
from ..config import make_config
from ..data.io import read_image, write_image
from ..data.phantom import write_phantom_cohort
from ..evaluation.metrics import evaluate_case
from ..inference.sliding_window import load_model, predict_image
from ..training.progress import progress_listener
from ..training.runner import train

N_LABELED, N_UNLABELED, N_TEST = 4, 12, 6


def evaluate_model(
    model_path: Path, cases: list, out_dir: Path | None = None, device: str = "auto"
) -> list[dict]:
    """Per-case Dice/HD95/ASD (class 1 and mean over classes) of one model on labelled cases."""
    model = load_model(model_path, device)
    rows = []
    for case in cases:
        image = read_image(case.image)
        pred = predict_image(model, image)
        if out_dir is not None:
            write_image(pred.labels, out_dir / f"{case.case_id}.nrrd")
        ref = sitk.GetArrayFromImage(read_image(case.label))
        per_class = evaluate_case(
            sitk.GetArrayFromImage(pred.labels), ref, image.GetSpacing(), model.n_classes
        )
        dice = sum(m.dice for m in per_class.values()) / len(per_class)
        rows.append(
            {
                "case": case.case_id,
                "dice": dice,
                "hd95_mm": per_class[1].hd95_mm,
                "asd_mm": per_class[1].asd_mm,
            }
        )
    return rows


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r[key] == r[key]]  # skip nan
    return sum(values) / len(values) if values else float("nan")


def run_demo(
    out: Path,
    device: str = "auto",
    reciprocal_iterations: int | None = None,
    supervised_iterations: int | None = None,
    seed: int = 0,
    json_events: bool = False,
) -> dict[str, Any]:
    out = Path(out)
    cases = write_phantom_cohort(out / "data", N_LABELED + N_UNLABELED + N_TEST, seed=seed)
    labeled = cases[:N_LABELED]
    unlabeled = [c.__class__(c.case_id, c.image, None) for c in cases[N_LABELED : N_LABELED + N_UNLABELED]]
    test = cases[N_LABELED + N_UNLABELED :]
    config = make_config(
        "demo",
        device=device,
        reciprocal_iterations=reciprocal_iterations,
        supervised_iterations=supervised_iterations,
        seed=seed + 1337,
    )
    result = train(config, labeled, unlabeled, out / "run", [progress_listener(json_events)])

    table = {}
    for name, path in (
        ("supervised", result.supervised),
        ("teacher", result.teacher),
        ("student", result.student),
    ):
        rows = evaluate_model(path, test, out / "predictions" / name, device)
        table[name] = rows
    report = {
        "supervised_dice": _mean(table["supervised"], "dice"),
        "teacher_dice": _mean(table["teacher"], "dice"),
        "student_dice": _mean(table["student"], "dice"),
        "supervised_hd95_mm": _mean(table["supervised"], "hd95_mm"),
        "teacher_hd95_mm": _mean(table["teacher"], "hd95_mm"),
        "student_hd95_mm": _mean(table["student"], "hd95_mm"),
        "n_labeled": len(labeled),
        "n_unlabeled": len(unlabeled),
        "n_test": len(test),
        "iterations": {
            "supervised": config.supervised_iterations,
            "reciprocal": config.reciprocal_iterations,
        },
        "device": result.device,
        "train_seconds": round(result.seconds, 1),
        "per_case": table,
    }
    atomic_write_json(out / "report.json", report)
    print(f"\n{'model':<12}{'Dice':>8}{'HD95 mm':>10}   (mean over {len(test)} held-out phantom cases)")
    for name in ("supervised", "teacher", "student"):
        print(f"{name:<12}{report[name + '_dice']:>8.4f}{report[name + '_hd95_mm']:>10.2f}")
    print(f"report: {out / 'report.json'}")
    return report
