"""Which panel widgets are enabled and shown, from the panel's state (plain Python, tested).

The panel asks ``enabled_widgets`` and ``visible_widgets`` after every change and applies the
answers to the widgets of ``Resources/UI/ReciprocalSeg.ui`` by name (tests check every name is a
widget there). One task runs at a time, so every button that starts one waits while one runs.
"""

from __future__ import annotations

from dataclasses import dataclass

REMOTE_WIDGETS = ("remoteUrlLabel", "remoteUrlLineEdit", "remoteTokenLabel", "remoteTokenLineEdit")
LOCAL_WIDGETS = ("workspaceLabel", "workspacePathLineEdit")
# Buttons that need a connection and no running task.
CONNECTED_BUTTONS = ("disconnectButton", "addAllVolumesButton", "addFolderButton", "caseFromVolumesButton",
                     "refreshCasesButton", "nextCaseButton")  # fmt: skip
# The layer selector of a case with several images (channel 0 behind, the chosen one in front).
LAYER_WIDGETS = ("channelLayerLabel", "channelLayerComboBox")
# Buttons that act on the selected case.
CASE_BUTTONS = ("removeCaseButton", "editLabelButton", "submitLabelButton", "predictButton")


@dataclass(frozen=True)
class PanelState:
    """What the enable rules depend on.

    connected: a service answers; busy: a task runs; training: a round runs on the service;
    case_selected: a case is selected; input_volume: *Add volume* has a volume; scribbling: the
    annotation mode is scribbles; student_shown: the selected case has a student prediction in the
    scene; budget: a time budget is set (it overrides the iterations); remote: remote backend mode;
    scribbles_shown / refined_shown: the selected case has scribbles / a refined prediction in the scene;
    layers: the selected case has several images (channels) in the scene.
    """

    connected: bool = False
    busy: bool = False
    training: bool = False
    case_selected: bool = False
    input_volume: bool = False
    scribbling: bool = False
    student_shown: bool = False
    budget: bool = False
    remote: bool = False
    scribbles_shown: bool = False
    refined_shown: bool = False
    layers: bool = False


def enabled_widgets(state: PanelState) -> dict:
    """Widget name -> enabled."""
    idle = not state.busy
    ready = state.connected and idle
    has_case = ready and state.case_selected
    enabled = {
        "cancelTaskButton": state.busy,
        "casesTable": idle,  # selecting a case starts a download
        "connectButton": idle and not state.connected,
        "addCurrentVolumeButton": ready and state.input_volume,
        # A correction is a full label: not in scribble mode, and only once the student is shown.
        "correctFromStudentButton": has_case and not state.scribbling and state.student_shown,
        "startTrainingButton": ready and not state.training,
        "iterationsSpinBox": not state.budget,
        "applyClassCountButton": ready and not state.training,
        "retrainButton": ready and not state.training,
        "stopTrainingButton": ready and state.training,
        # Refine paints over the prediction with the case's scribbles; Accept takes what it gave.
        "refineButton": has_case and state.scribbles_shown,
        "acceptRefinedButton": has_case and state.refined_shown,
        "autoRetrainCheckBox": ready,
        "autoRetrainSpinBox": ready,
        "channelLayerComboBox": idle and state.case_selected and state.layers,
    }
    enabled.update(dict.fromkeys(CONNECTED_BUTTONS, ready))
    enabled.update(dict.fromkeys(CASE_BUTTONS, has_case))
    return enabled


def visible_widgets(state: PanelState) -> dict:
    """Widget name -> visible: the workspace for a local service, URL and token for a remote one;
    the layer selector for a case with several images."""
    shown = dict.fromkeys(LOCAL_WIDGETS, not state.remote)
    shown.update(dict.fromkeys(REMOTE_WIDGETS, state.remote))
    shown.update(dict.fromkeys(LAYER_WIDGETS, state.case_selected and state.layers))
    return shown


def submit_button_text(state: PanelState) -> str:
    return "Submit scribbles" if state.scribbling else "Submit label"
