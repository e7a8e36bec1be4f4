"""What the panel decides, moved out of ReciprocalSeg.py into the Lib (issue 26, item 7): which
widgets are enabled and shown, the training request, the panel's messages; the module file's size."""

from __future__ import annotations

import inspect
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_FILE = REPO / "ReciprocalSeg" / "ReciprocalSeg.py"
UI_FILE = REPO / "ReciprocalSeg" / "Resources" / "UI" / "ReciprocalSeg.ui"
MAX_MODULE_LINES = 800


def test_module_file_stays_thin():
    lines = len(MODULE_FILE.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, (
        f"ReciprocalSeg.py has {lines} lines: move decisions to ReciprocalSegLib"
    )


def ui_widget_classes() -> dict:
    return {w.get("name"): w.get("class") for w in ET.parse(UI_FILE).getroot().iter("widget")}


def test_every_widget_the_rules_name_is_in_the_ui():
    from ReciprocalSegLib.panel_rules import PanelState, enabled_widgets, visible_widgets

    widgets = ui_widget_classes()
    named = set(enabled_widgets(PanelState())) | set(visible_widgets(PanelState()))
    assert named - set(widgets) == set()
    # Every button of the panel has a rule (a new button without one would stay enabled while a task runs).
    buttons = {name for name, cls in widgets.items() if cls == "QPushButton"}
    assert buttons - set(enabled_widgets(PanelState())) == {"showLearningCurveButton"}


def state(**changes):
    from ReciprocalSegLib.panel_rules import PanelState

    ready = PanelState(connected=True, case_selected=True, input_volume=True, student_shown=True)
    return replace(ready, **changes)


def test_nothing_starts_while_a_task_runs_except_cancel():
    from ReciprocalSegLib.panel_rules import enabled_widgets

    busy = enabled_widgets(state(busy=True))
    assert [name for name, on in busy.items() if on] == ["cancelTaskButton", "iterationsSpinBox"]
    idle = enabled_widgets(state())
    assert not idle["cancelTaskButton"] and idle["casesTable"] and idle["predictButton"]


def test_enable_rules_per_state():
    from ReciprocalSegLib.panel_rules import enabled_widgets, submit_button_text

    offline = enabled_widgets(state(connected=False))
    assert offline["connectButton"] and not offline["disconnectButton"] and not offline["addFolderButton"]
    assert not enabled_widgets(state())["connectButton"]
    assert not enabled_widgets(state(case_selected=False))["submitLabelButton"]
    assert not enabled_widgets(state(input_volume=False))["addCurrentVolumeButton"]
    training = enabled_widgets(state(training=True))
    assert training["stopTrainingButton"] and not training["startTrainingButton"]
    assert not training["retrainButton"] and not training["applyClassCountButton"]
    assert not enabled_widgets(state())["stopTrainingButton"]
    # A correction is a full label: never in scribble mode, and only once the student is in the scene.
    assert enabled_widgets(state())["correctFromStudentButton"]
    assert not enabled_widgets(state(scribbling=True))["correctFromStudentButton"]
    assert not enabled_widgets(state(student_shown=False))["correctFromStudentButton"]
    assert not enabled_widgets(state(budget=True))["iterationsSpinBox"]  # a budget sizes the phases
    assert (submit_button_text(state()), submit_button_text(state(scribbling=True))) == (
        "Submit label",
        "Submit scribbles",
    )


def test_remote_mode_shows_url_and_token_local_mode_the_workspace():
    from ReciprocalSegLib.panel_rules import visible_widgets

    remote, local = visible_widgets(state(remote=True)), visible_widgets(state())
    assert remote["remoteTokenLineEdit"] and not remote["workspacePathLineEdit"]
    assert local["workspacePathLineEdit"] and not local["remoteUrlLineEdit"]


def test_training_request_is_what_the_service_accepts():
    pytest.importorskip("pydantic")
    from ReciprocalSegLib.logic import ReciprocalSegLoop
    from ReciprocalSegLib.training_request import MAX_MINUTES, training_request

    from reciprocalseg.service.schemas import TrainingRequest

    parameters = inspect.signature(ReciprocalSegLoop.start_training).parameters
    budget = training_request("auto", 10.0, 0, "cpu", warm_start=False)
    assert set(budget) <= set(parameters)
    assert budget == {
        "preset": "auto",
        "iterations": None,
        "supervised_iterations": None,
        "device": "cpu",
        "warm_start": False,
        "minutes": 10.0,
    }
    fixed = training_request("demo", 0.0, 40, "auto", warm_start=True)
    assert (fixed["iterations"], fixed["supervised_iterations"], fixed["minutes"]) == (40, 40, None)
    for request in (budget, fixed):
        TrainingRequest(**{k: v for k, v in request.items()})  # the service's own validation
    limit = next(m.le for m in TrainingRequest.model_fields["minutes"].metadata if hasattr(m, "le"))
    assert MAX_MINUTES == limit
    with pytest.raises(ValueError, match="time budget"):
        training_request("auto", MAX_MINUTES + 1, 0, "cpu", False)
    with pytest.raises(ValueError, match="iterations"):
        training_request("auto", 0.0, -1, "cpu", False)


def test_messages_of_the_panel():
    from ReciprocalSegLib import messages

    from reciprocalseg.client import DeviceInfo, ServiceInfo

    fields = {f: None for f in inspect.signature(ServiceInfo).parameters}
    info = ServiceInfo(**{**fields, "version": "1.2", "device": DeviceInfo(type="cpu", name="x86_64")})
    assert messages.backend_state(False, True, None) == "Not connected."
    assert (
        messages.backend_state(True, True, "http://127.0.0.1:9", info)
        == "local service http://127.0.0.1:9 · device: cpu (x86_64) · version 1.2"
    )
    assert messages.backend_state(True, False, "https://gpu:8", None) == "remote service https://gpu:8"
    assert messages.next_case("c1", 0.25, 3, "qa") == "Next: c1 (3 QA flags)"
    assert messages.next_case("c1", 0.25, None, "disagreement") == "Next: c1 (disagreement 0.2500)"
    assert messages.next_case("c1", None, None, "disagreement") is None
    assert messages.prediction_line("round 2", None).endswith("disagreement: ?")
    from ReciprocalSegLib.batch import BatchResult

    assert BatchResult(added=["a"]).message() == "Added 1 case."
    both = BatchResult(added=["a", "b"], existing=["c"], failed=[("CT 3", "NaN voxels")])
    assert both.message() == "Added 2 cases (1 already there); 1 failed: CT 3."
    assert both.failure_text() == "CT 3: NaN voxels"
    assert messages.class_count_set(3, False) == "3 foreground classes, following the labels."


def test_submission_texts():
    from ReciprocalSegLib.submission import SubmitResult, task_name

    assert task_name("c1", False) == "Submitting the label of c1"
    label = SubmitResult("c1", False, warning="Nothing was painted: all background.")
    assert label.done_message() == "Label of c1 submitted. Nothing was painted: all background."
    strokes = SubmitResult("c2", True, summary=SimpleNamespace(text=lambda: "9 voxels"))
    assert strokes.done_message() == "Scribbles of c2 submitted: 9 voxels."
    assert SubmitResult("c3", False, declined=True).done_message() == "The label of c3 was not submitted."


def test_refine_and_accept_need_their_nodes_and_retraining_a_connection():
    from ReciprocalSegLib.panel_rules import enabled_widgets

    assert not enabled_widgets(state())["refineButton"]  # nothing painted over the prediction yet
    assert enabled_widgets(state(scribbles_shown=True))["refineButton"]
    assert not enabled_widgets(state(scribbles_shown=True, case_selected=False))["refineButton"]
    assert not enabled_widgets(state(scribbles_shown=True, busy=True))["refineButton"]
    assert not enabled_widgets(state())["acceptRefinedButton"]
    assert enabled_widgets(state(refined_shown=True))["acceptRefinedButton"]
    assert enabled_widgets(state(refined_shown=True, training=True))["acceptRefinedButton"]
    assert enabled_widgets(state(case_selected=False))["autoRetrainCheckBox"]
    assert not enabled_widgets(state(connected=False))["autoRetrainSpinBox"]


def test_refine_accept_and_retraining_texts():
    from ReciprocalSegLib import messages

    result = SimpleNamespace(name="refined from round 2, 3 strokes", iterations=40, seconds=18.24)
    assert messages.refined("c3", result).startswith("c3 refined from round 2, 3 strokes (40 steps, 18.2 s)")
    accepted = messages.accepted("c3", SimpleNamespace(version=4))
    assert accepted == "c3: the refined map is its label now (version 4)."
    assert messages.auto_retrain(None, 10.0, 2) == "off (2 corrections since the last round)"
    assert messages.auto_retrain(5, 3.0, 2, None) == "2 of 5 since the last round; rounds of 3 min"
    assert messages.auto_retrain(5, 3.0, 0, "started run r1").endswith("Last: started run r1")


def test_case_from_volumes_needs_a_connection_and_the_layer_selector_a_case_of_several_images():
    from ReciprocalSegLib.panel_rules import enabled_widgets, visible_widgets

    assert enabled_widgets(state())["caseFromVolumesButton"]
    assert not enabled_widgets(state(connected=False))["caseFromVolumesButton"]
    assert not enabled_widgets(state(busy=True))["caseFromVolumesButton"]
    several = state(layers=True)
    assert enabled_widgets(several)["channelLayerComboBox"]
    assert visible_widgets(several)["channelLayerComboBox"] and visible_widgets(several)["channelLayerLabel"]
    assert not enabled_widgets(state(layers=True, busy=True))["channelLayerComboBox"]
    for one_image in (state(), state(layers=True, case_selected=False)):  # nothing to layer: hidden
        assert not visible_widgets(one_image)["channelLayerComboBox"]
        assert not enabled_widgets(one_image)["channelLayerComboBox"]
