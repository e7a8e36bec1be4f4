"""The rules that finish a run's plan, applied once, where the plan is made.

A plan made from a fingerprint (``planner.py``) becomes a run's plan here: the class count is
checked (labels whose classes skip values are refused; with more labelled cases than the
fingerprint reads, the count comes from every label map), a warm start keeps the network of the
run it continues, and the user's settings are recorded over the plan. ``reciprocalseg train``
applies them in process; the service applies them when it starts a round and hands the child the
plan as written (``training/request.py``), which the child trains without changing it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..common.errors import ReciprocalSegError
from .fingerprint import MAX_LABEL_CASES
from .planner import Plan, planned_config

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..data.io import Case

# What a warm start needs unchanged (the weights' shapes and what they were trained to see).
ARCHITECTURE = ("patch_size", "downsampling", "n_filters", "normalization", "dropout", "target_spacing")
ARCHITECTURE += ("intensity", "intensity_clip", "intensity_mean_std")


def finish_plan(
    plan: Plan,
    overrides: dict[str, Any],
    labeled: Sequence[Case] = (),
    warm_start: Path | None = None,
) -> TrainConfig:
    """Apply the final rules to ``plan`` (in place) and return the configuration it trains.

    ``overrides``: ``TrainConfig`` fields the user set (None: not set), ``n_classes`` included;
    without it the class count is the plan's, checked here. ``labeled``: the labelled cases, read
    when the fingerprint sampled their label maps. ``warm_start``: the run folder a warm start
    continues (its ``config.json`` fixes the network).
    """
    if overrides.get("n_classes") is None:
        if len(labeled) > MAX_LABEL_CASES:  # the fingerprint read a sample of the label maps
            plan.values["n_classes"] = max(plan.values["n_classes"], n_classes_from_labels(labeled))
        else:
            refuse_class_gaps(int(c) for c in plan.fingerprint.get("classes", {}))
    if warm_start is not None and (Path(warm_start) / "config.json").is_file():
        keep_architecture(plan, Path(warm_start) / "config.json")
    return planned_config(plan, overrides)


def keep_architecture(plan: Plan, previous_config: Path) -> None:
    """A round warm-started from a run keeps that run's network and grid, whatever the new
    cases would plan (a new fingerprint must not make the warm start impossible)."""
    previous = json.loads(previous_config.read_text(encoding="utf-8"))
    for key in ARCHITECTURE:
        if key in previous and key in plan.values and plan.values[key] != previous[key]:
            plan.values[key] = previous[key]
            plan.reasons[key] = f"kept from the warm-start run {previous_config.parent.name}"


def n_classes_from_labels(labeled: Sequence[Case]) -> int:
    """Classes including background, from the largest label value found in the label maps."""
    import SimpleITK as sitk

    from ..common.file_formats import UNANNOTATED
    from ..data.io import read_image
    from ..data.validation import infer_n_classes, present_values

    # GetArrayFromImage (a copy): a view of a temporary image would read freed memory. 255 marks
    # unannotated voxels of a partial label, never a class.
    present: set[int] = set()
    for case in labeled:
        present.update(int(v) for v in present_values(sitk.GetArrayFromImage(read_image(case.label))))
    present.discard(UNANNOTATED)
    refuse_class_gaps(present)
    return infer_n_classes(max(present, default=0)) + 1


def refuse_class_gaps(present: Iterable[int]) -> None:
    """Without --n-classes the class count comes from the largest label value; refuse labels whose
    classes skip values (254 from another tool, a scan saved as a label), which would otherwise
    train that many output channels, most of them never labelled."""
    classes = {int(c) for c in present if c != 0}
    missing = sorted(set(range(1, max(classes, default=0))) - classes)
    if missing:
        shown = f"{missing[0]}..{missing[-1]}" if len(missing) > 3 else ", ".join(map(str, missing))
        largest = max(classes)
        raise ReciprocalSegError(
            f"the labels hold class {largest}, but no label has class {shown}: is a label a scan, or "
            "another tool's class numbering? Remap the labels to consecutive classes 1..K, or give "
            f"--n-classes {largest + 1} to train {largest + 1} classes (background included) anyway"
        )
