"""What the panel writes for the case table (annotation, annotated fraction) and the plan (issues
16 and 17), from the objects the client returns and from plans the real planner makes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.data.io import Case
from reciprocalseg.planning.fingerprint import compute_fingerprint
from reciprocalseg.planning.planner import plan_from_fingerprint

# --------------------------------------------------------------------------- case table


def case(case_id: str, status: str = "labelled", **fields) -> SimpleNamespace:
    """A case as the client returns it (``CaseInfo`` attributes); ``annotation`` and
    ``annotated_fraction`` only when given, as from a service before partial labels."""
    return SimpleNamespace(id=case_id, status=status, score=None, qa_flags=None, **fields)


def test_case_table_shows_full_partial_unlabelled_and_the_annotated_fraction():
    from ReciprocalSegLib.case_table import COLUMN_ANNOTATED, COLUMN_ANNOTATION, case_row

    rows = {
        c.id: case_row(c)
        for c in (
            case("full", annotation="full", annotated_fraction=1.0),
            case("scribbled", annotation="partial", annotated_fraction=0.0052),
            case("half", annotation="partial", annotated_fraction=0.5),
            case("none", "unlabelled", annotation="none", annotated_fraction=0.0),
        )
    }
    assert [rows[i][COLUMN_ANNOTATION] for i in rows] == ["full", "partial", "partial", "unlabelled"]
    assert [rows[i][COLUMN_ANNOTATED] for i in rows] == ["100 %", "0.52 %", "50 %", "0 %"]
    assert rows["scribbled"][:2] == ("scribbled", "labelled") and len(rows["full"]) == 7


def test_case_table_without_the_annotation_fields_shows_question_marks():
    from ReciprocalSegLib.case_table import COLUMN_ANNOTATED, COLUMN_ANNOTATION, case_row, labelled_summary

    old = case("old")  # a service from before partial labels sends neither field
    bad = case("bad", annotation="most", annotated_fraction=1.5)  # unknown value, out of range
    nan = case("nan", annotation=None, annotated_fraction=math.nan)
    for c in (old, bad, nan):
        assert (case_row(c)[COLUMN_ANNOTATION], case_row(c)[COLUMN_ANNOTATED]) == ("?", "?")
    assert labelled_summary([old, case("u", "unlabelled")]) == "1 labelled of 2 cases"


def test_case_table_sorts_by_annotation_and_fraction_unknown_last():
    from ReciprocalSegLib.case_table import COLUMN_ANNOTATED, COLUMN_ANNOTATION, labelled_summary, sort_cases

    cases = [
        case("a", "unlabelled", annotation="none", annotated_fraction=0.0),
        case("b", annotation="partial", annotated_fraction=0.3),
        case("c", annotation="full", annotated_fraction=1.0),
        case("d"),
        case("e", annotation="partial", annotated_fraction=0.01),
    ]
    ids = lambda cs: [c.id for c in cs]  # noqa: E731
    assert ids(sort_cases(cases, COLUMN_ANNOTATION)) == ["c", "b", "e", "a", "d"]
    assert ids(sort_cases(cases, COLUMN_ANNOTATED)) == ["a", "e", "b", "c", "d"]
    assert ids(sort_cases(cases, COLUMN_ANNOTATED, descending=True)) == ["c", "b", "e", "a", "d"]
    assert (
        labelled_summary([c for c in cases if c.id != "d"]) == "1 fully and 2 partially labelled of 4 cases"
    )


def test_header_clicks_flip_the_same_column_and_put_scores_highest_first():
    from ReciprocalSegLib.case_table import COLUMN_ANNOTATED, COLUMN_QA, COLUMN_SCORE, next_sort

    assert next_sort((0, False), 0) == (0, True)
    assert next_sort((0, True), COLUMN_SCORE) == (COLUMN_SCORE, True)
    assert next_sort((COLUMN_SCORE, True), COLUMN_SCORE) == (COLUMN_SCORE, False)
    assert next_sort((0, False), COLUMN_QA) == (COLUMN_QA, True)
    assert next_sort((COLUMN_QA, True), COLUMN_ANNOTATED) == (
        COLUMN_ANNOTATED,
        False,
    )  # least annotated first


# --------------------------------------------------------------------------- plan


def _cohort(folder: Path, spacing_xyz: tuple, shape_zyx: tuple, ct: bool = False) -> list:
    """Three labelled scans (a box of class 1) written as files, as the service stores cases."""
    cases = []
    rng = np.random.default_rng(0)
    for i in range(3):
        label = np.zeros(shape_zyx, np.uint8)
        z, y, x = shape_zyx
        label[z // 4 : 3 * z // 4, y // 4 : 3 * y // 4, x // 4 : 3 * x // 4] = 1
        base = np.where(label > 0, 60.0, -1000.0) if ct else 100.0 + 50.0 * label
        image = (base + rng.normal(0, 10, shape_zyx)).astype(np.float32)
        paths = []
        for kind, array in (("image", image), ("label", label)):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing(spacing_xyz)
            paths.append(folder / f"c{i}_{kind}.nrrd")
            sitk.WriteImage(itk, str(paths[-1]))
        cases.append(Case(f"c{i}", paths[0], paths[1]))
    return cases


def _plan_as_served(folder: Path, **kwargs) -> dict:
    """A real ``auto`` plan, through JSON as ``GET /plan`` sends it (``Plan.to_dict()``)."""
    plan = plan_from_fingerprint(compute_fingerprint(_cohort(folder, **kwargs)), "cpu")
    return json.loads(json.dumps(plan.to_dict()))


def _times(values) -> str:
    return " × ".join(f"{v:g}" for v in values)


def test_plan_box_shows_spacing_crop_strides_batch_normalisation_of_a_real_plan(tmp_path):
    from ReciprocalSegLib.status_text import format_plan_box, format_plan_details, plan_lines

    plan = _plan_as_served(tmp_path, spacing_xyz=(1.5, 1.5, 10.0), shape_zyx=(8, 48, 48))  # thick slices
    values = plan["values"]
    lines = {label: (text, reason) for label, text, reason in plan_lines(plan)}
    assert list(lines) == ["Spacing", "Crop", "Strides", "Batch", "Normalisation", "Width"]
    spacing = values["target_spacing"]
    assert lines["Spacing"][0] == (
        "the scans' own (no resampling)" if spacing is None else _times(spacing) + " mm"
    )
    assert lines["Crop"][0] == _times(values["patch_size"]) + " voxels"
    x_total = math.prod(level[0] for level in values["downsampling"])
    z_total = math.prod(level[2] for level in values["downsampling"])
    assert z_total < x_total  # the thin axis is halved less often
    assert lines["Strides"][0].endswith(
        f"(÷{x_total}×{math.prod(lv[1] for lv in values['downsampling'])}×{z_total})"
    )
    assert lines["Batch"][0].startswith(
        f"{values['batch_labeled']} labelled + {values['batch_unlabeled']} unlabelled"
    )
    assert lines["Normalisation"][0] == "z-score per scan"  # MRI-like intensities
    assert lines["Crop"][1] == plan["reasons"]["patch_size"]  # the planner's reason beside the value
    details = format_plan_details(plan, "Planned:")
    assert (
        details.splitlines()[0] == "Planned:" and f"Crop: {lines['Crop'][0]} — {lines['Crop'][1]}" in details
    )
    box = format_plan_box(None, plan)
    assert box.startswith("An auto round would now plan") and "Normalisation: z-score per scan" in box


def test_ct_plan_shows_the_dataset_clip_and_z_score(tmp_path):
    from ReciprocalSegLib.status_text import plan_lines

    plan = _plan_as_served(tmp_path, spacing_xyz=(0.8, 0.8, 0.8), shape_zyx=(24, 24, 24), ct=True)
    values = plan["values"]
    assert values["intensity"] == "ct_dataset"
    normalisation = dict((label, text) for label, text, _ in plan_lines(plan))["Normalisation"]
    low, high = values["intensity_clip"]
    mean, std = values["intensity_mean_std"]
    assert (
        normalisation == f"CT: dataset clip {low:.4g} to {high:.4g}, z-score (mean {mean:.4g}, std {std:.4g})"
    )


def test_status_line_and_plan_box_show_the_running_rounds_plan(tmp_path):
    from ReciprocalSegLib.status_text import NO_PLAN, format_plan_box, format_training_status

    values = _plan_as_served(tmp_path, spacing_xyz=(1.0, 1.0, 1.0), shape_zyx=(16, 24, 24))["values"]
    # The job status carries the round's plan values (its ``plan``; null for presets not planned).
    running = SimpleNamespace(state="running", phase="supervised", iteration=3, total=90, eta_s=60.0,
                              preset="auto", plan=values)  # fmt: skip
    line = format_training_status(running, minutes=10)
    crop = _times(values["patch_size"])
    assert line.endswith(
        f"preset auto, budget 10 min, spacing the scans' own (no resampling), crop {crop} voxels"
    )
    assert format_plan_box(running, None).startswith("The round in training runs (auto plan):\nSpacing:")
    finished = SimpleNamespace(state="completed", plan=values)
    both = format_plan_box(finished, {"values": values, "reasons": {}})
    assert both.startswith("The last round ran") and "\n\nAn auto round would now plan" in both
    demo = SimpleNamespace(state="completed", preset="demo", plan=None)
    assert format_training_status(demo).endswith("preset demo")
    assert format_plan_box(demo, None) == NO_PLAN


@pytest.mark.parametrize(
    "plan",
    [
        None,
        "crop 64",
        {"values": ["not", "a", "dict"]},
        {
            "values": {
                "patch_size": ["64", None],
                "target_spacing": [math.nan, 1.0, 1.0],
                "downsampling": [[2, 2], [2, 2, 2]],
                "batch_labeled": 2,
                "intensity": None,
            },
            "reasons": "none",
        },
    ],
    ids=["none", "text", "values-not-a-dict", "malformed-values"],
)
def test_malformed_plans_show_what_is_valid_and_never_raise(plan):
    from ReciprocalSegLib.status_text import format_plan, format_plan_box, plan_lines

    assert plan_lines(plan) == []  # no field above is complete and finite
    assert format_plan(SimpleNamespace(preset="auto", plan=plan)) == "preset auto"
    assert format_plan_box(SimpleNamespace(state="running", plan=plan), plan).startswith("No plan")
