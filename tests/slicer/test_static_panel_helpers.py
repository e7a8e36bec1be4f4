"""The pure helpers of the module and its Lib (case IDs from node names, status lines, model
descriptions, table columns, annotation modes, the minutes limit, the learning curve).
"""

from __future__ import annotations

import ast
import re
from types import SimpleNamespace

import pytest
from static_checks import MODULE_FILE, module_constants, module_tree, parameter_node_fields, ui_widgets

# --------------------------------------------------------------------------- pure helpers of the module


def load_helpers(*names: str) -> dict[str, object]:
    """Compile selected top-level functions/classes of the module (they need no Slicer) with its constants."""
    namespace = module_constants()
    namespace["re"] = re
    for node in module_tree().body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
            exec(compile(ast.Module(body=[node], type_ignores=[]), str(MODULE_FILE), "exec"), namespace)
    missing = [n for n in names if n not in namespace]
    assert not missing, missing
    return namespace


def test_case_ids_from_node_names_are_valid_service_ids():
    from ReciprocalSegLib.scene_cases import case_id_from_name as case_id

    from reciprocalseg.service.workspace import CASE_ID_PATTERN

    assert case_id("MRHead") == "MRHead"
    assert case_id("CT chest (1)") == "CT_chest_1"
    assert case_id("__x") == "x"
    assert case_id("") == "case"
    for name in ("MRHead", "CT chest (1)", "__x", "", "é" * 80, "a" * 100, ".hidden", "Ω"):
        assert re.match(CASE_ID_PATTERN, case_id(name)), name


def test_training_status_line_from_a_real_client_status():
    from ReciprocalSegLib.status_text import format_duration as duration
    from ReciprocalSegLib.status_text import format_training_status as fmt
    from ReciprocalSegLib.status_text import round_end_message

    from reciprocalseg.client import TrainingStatus

    assert duration(None) == "?"
    assert duration(65) == "1 min 05 s"
    assert duration(3725) == "1 h 02 min"
    running = TrainingStatus(
        state="running", phase="reciprocal", iteration=40, total=150, eta_s=95.0,
        losses={"student": 0.41234, "teacher": 0.2, "note": "x"}, device="cuda",
    )  # fmt: skip
    line = fmt(running)
    assert (
        line
        == "running · reciprocal · iteration 40/150 · ETA 1 min 35 s · student 0.4123, teacher 0.2 · on cuda"
    )
    failed = TrainingStatus(state="failed", message="CUDA out of memory: try the lite preset")
    assert fmt(failed) == "failed · CUDA out of memory: try the lite preset"
    assert fmt(TrainingStatus(state="idle")) == "idle"
    assert round_end_message(failed) == ("Training failed. CUDA out of memory: try the lite preset", True)
    assert round_end_message(TrainingStatus(state="completed", round=3))[0].startswith(
        "Training round 3 finished"
    )
    # The plan the round runs: its preset and the budget the panel asked for (issue 16).
    planned = TrainingStatus(
        state="running", phase="supervised", iteration=3, total=90, eta_s=60.0, preset="auto"
    )
    assert (
        fmt(planned, minutes=10)
        == "running · supervised · iteration 3/90 · ETA 1 min 00 s · preset auto, budget 10 min"
    )
    assert fmt(planned).endswith("· preset auto")  # iterations, no budget


def test_model_description_says_round_or_live_checkpoint():
    from ReciprocalSegLib.status_text import model_description

    from reciprocalseg.client import PredictionResult

    def result(**fields):
        return PredictionResult(case_id="a", round=4, score=0.1, time="", **fields)

    assert model_description(result()) == "round 4"
    live = result(live=True, phase="reciprocal", iteration=120)
    assert model_description(live) == "live: round 4 iteration 120 (reciprocal)"
    assert model_description(result(live=True)) == "live: round 4"


def test_case_table_columns_of_the_ui_are_the_lib_columns():
    from ReciprocalSegLib.case_table import CASE_COLUMNS

    root, _, _ = ui_widgets()
    table = next(w for w in root.iter("widget") if w.get("name") == "casesTable")
    assert tuple(c.findtext("property/string") for c in table.findall("column")) == CASE_COLUMNS


def test_unannotated_value_is_the_core_packages():
    """The Lib writes 255 for unpainted scribble voxels (and keeps it out of the class range):
    the value the core package reads as unannotated (issue 17's agreed interface)."""
    from ReciprocalSegLib import scribbles, segment_export

    from reciprocalseg.common import file_formats

    assert scribbles.UNANNOTATED == segment_export.UNANNOTATED == 255
    assert segment_export.MAX_CLASS == 254
    if not hasattr(file_formats, "UNANNOTATED"):
        pytest.skip("reciprocalseg.common.file_formats.UNANNOTATED arrives with issue 17 part 1")
    assert file_formats.UNANNOTATED == segment_export.UNANNOTATED


def test_annotation_modes_of_the_panel():
    """The panel's modes: the full label (the correction mode, the default) and the scribbles."""
    constants = module_constants()
    assert constants["ANNOTATION_MODES"] == ("full label", "scribbles")
    assert constants["SCRIBBLES"] in constants["ANNOTATION_MODES"]
    assert ast.literal_eval(parameter_node_fields()["annotationMode"][1]) == "full label"


def test_minutes_field_has_the_service_limit():
    pytest.importorskip("pydantic")
    from reciprocalseg.service.schemas import TrainingRequest

    bounds = re.search(r"WithinRange\(([\d.]+), ([\d.]+)\)", parameter_node_fields()["minutes"][0])
    limit = next(m.le for m in TrainingRequest.model_fields["minutes"].metadata if hasattr(m, "le"))
    assert bounds and float(bounds.group(1)) == 0 and float(bounds.group(2)) == limit
    root, _, _ = ui_widgets()
    spin = next(w for w in root.iter("widget") if w.get("name") == "minutesSpinBox")
    maximum = next(p for p in spin.findall("property") if p.get("name") == "maximum")
    assert float(maximum.findtext("double")) == limit


def test_learning_curve_samples_continue_across_phases():
    from ReciprocalSegLib.learning_curve import LearningCurve

    curve = LearningCurve(scene=None)  # the samples need no scene; the nodes are tested on real MRML

    def status(iteration, phase, overall=None, **losses):
        return SimpleNamespace(
            iteration=iteration, phase=phase, run_id="r1", overall_iteration=overall, losses=losses
        )

    assert curve.add(status(10, "supervised", teacher=1.0))
    assert not curve.add(status(10, "supervised", teacher=1.0))  # same poll answer twice
    assert curve.add(status(20, "supervised", teacher=0.8))
    assert curve.add(status(5, "reciprocal", teacher=0.7, student=0.9))  # phase restarts at 0
    assert not curve.add(status(None, "reciprocal", teacher=0.7))
    assert not curve.add(status(6, "reciprocal"))  # no losses yet
    assert curve.steps == [10, 20, 25]
    assert curve.losses["teacher"] == [1.0, 0.8, 0.7]
    assert curve.losses["student"][2] == 0.9 and all(v != v for v in curve.losses["student"][:2])  # NaN
    curve.reset()
    assert curve.add(status(3, "supervised", overall=3, teacher=1.0))
    assert curve.add(status(2, "reciprocal", overall=153, teacher=0.5))  # service's overall count wins
    assert curve.steps == [3, 153]
