"""Evaluate a folder of predictions against a folder of labels: per case, per class, per model.

Rows hold one (model, case, class) each with the metrics of `metrics.evaluate_case`. The
summary gives, per model, each class's mean and standard deviation over the cases, then
the mean over classes: the mean of the per-class means, so every structure counts the same
whatever its size or how often a distance was undefined (nan values are skipped and counted,
as in `metrics.summarize`). Against a partial label (255 = unannotated) Dice and Jaccard count
the annotated voxels only and the distances are nan.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..common.errors import DataError
from ..common.file_formats import UNANNOTATED
from ..inference.prediction_files import find_predictions
from .metrics import CaseMetrics, summarize

METRICS = tuple(CaseMetrics.__dataclass_fields__)
MEAN_OVER_CLASSES = "mean over classes"


def label_files(label_dir: Path) -> dict[str, Path]:
    """Labels by case ID, from `<ID>_image`/`<ID>_label` pairs or a folder of label maps alone."""
    from ..data.io import discover_cases, files_by_case_id

    try:
        cases = discover_cases(label_dir)
    except DataError:
        return files_by_case_id(label_dir, "labels")
    if any(c.label is not None for c in cases):  # pairs: an image without its label is no label
        return {c.case_id: c.label for c in cases if c.label is not None}
    return {c.case_id: c.image for c in cases}  # a folder of label maps alone


def evaluate_folders(
    pred_dir: Path, label_dir: Path, model: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Metric rows (model, case, class, metrics...) and the labelled cases with no prediction.

    ``model`` (teacher, student, supervised) keeps that model's ``<ID>_<model>`` files only.
    """
    import SimpleITK as sitk

    from ..data.io import read_image
    from ..data.validation import check_label, check_same_grid

    labels = label_files(label_dir)
    preds, unmatched = find_predictions(pred_dir, set(labels), model)
    if not preds:
        which = f"{model} " if model else ""
        raise DataError(
            f"no {which}prediction in {pred_dir} matches a case of {label_dir}: predictions are "
            f"named <ID>.<ext> or <ID>_<model>.<ext> with <ID> a labelled case "
            f"(found {len(unmatched)} other image files, e.g. {[p.name for p in unmatched[:3]]})"
        )
    rows = []
    for p in preds:
        pred, ref = read_image(p.path), read_image(labels[p.case_id])
        problems = check_same_grid(pred, ref)
        if problems:
            raise DataError(f"{p.case_id}: prediction and label grids differ: {'; '.join(problems)}")
        check_label(ref, pred, str(labels[p.case_id]))  # as training reads it: e.g. not all 255
        per_class = _evaluate(sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(ref), ref.GetSpacing())
        for cls, m in per_class.items():
            rows.append({"model": p.model or "", "case": p.case_id, "class": cls, **m.to_dict()})
    predicted = {(p.model, p.case_id) for p in preds}
    models = sorted({p.model for p in preds}, key=lambda m: m or "")
    missing = sorted({cid for cid in labels for m in models if (m, cid) not in predicted})
    return rows, missing


def _evaluate(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict[int, CaseMetrics]:
    """`metrics.evaluate_case`; against a partial label (255 = unannotated) on its annotated voxels
    only: Dice and Jaccard there, and no distances (nan: the annotation's edge is no surface)."""
    from .metrics import evaluate_case

    unannotated = ref == UNANNOTATED
    if not unannotated.any():
        return evaluate_case(pred, ref, spacing)
    # Zero outside the annotation in both: overlaps and sizes count the annotated voxels only.
    per_class = evaluate_case(np.where(unannotated, 0, pred), np.where(unannotated, 0, ref), spacing)
    no_distance = dict.fromkeys(("hd95_mm", "asd_mm", "hd95_vox", "asd_vox"), math.nan)
    return {cls: dataclasses.replace(m, **no_distance) for cls, m in per_class.items()}


def class_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: each class's mean and std over cases, then the mean over classes."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        per_class = []
        for cls in sorted({r["class"] for r in mine}):
            summary = summarize([{k: r[k] for k in METRICS} for r in mine if r["class"] == cls])
            entry: dict[str, Any] = {"model": model, "class": cls, "cases": summary.counts[METRICS[0]]}
            for k in METRICS:
                entry[k], entry[f"{k}_std"] = summary[k]
                entry[f"{k}_n_nan"] = summary.nan_counts[k]
            per_class.append(entry)
        overall: dict[str, Any] = {"model": model, "class": MEAN_OVER_CLASSES, "cases": per_class[0]["cases"]}
        for k in METRICS:
            means = [e[k] for e in per_class if not math.isnan(e[k])]
            overall[k] = sum(means) / len(means) if means else math.nan
            overall[f"{k}_std"] = math.nan  # a mean of means has no per-case spread
            overall[f"{k}_n_nan"] = sum(e[f"{k}_n_nan"] for e in per_class)
        out += [*per_class, overall]
    return out
