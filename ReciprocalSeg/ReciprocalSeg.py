"""ReciprocalSeg: reciprocal-learning annotation loop (teacher + student V-Net) inside 3D Slicer.

This file is thin Slicer glue. Every decision (case IDs, training, inference, scores, which
packages to install) lives in the ``reciprocalseg`` package beside it, which never imports
Slicer. The module talks to the backend only through ``reciprocalseg.client.Client`` and moves
images and labels as NRRD files written and read by Slicer's own I/O (``slicer.util.exportNode``,
``loadVolume``, ``loadLabelVolume``), so Slicer handles RAS/LPS and IJK-to-RAS itself.

Supported Slicer versions: 5.10 and 5.12 (Python 3.12). Every Slicer API used here was read in
Slicer's source at v5.8.1, v5.10.0 and v5.12.3 (see docs/SLICER.md for the list with file and
line); Slicer 5.8 loads this module but ships Python 3.9, older than the core package needs.
This file itself stays Python 3.9 compatible so that 5.8 users get a clear message.
"""

import logging
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated

from reciprocalseg import slicer_requirements
from reciprocalseg.config import PRESETS

# isort: split
# Slicer-only imports. Everything above must import in plain Python with only the packages that
# Slicer bundles (tests/slicer/test_module_static.py checks it).
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_NAME = "ReciprocalSeg"
MIN_PYTHON = (3, 10)

BACKEND_MODES = ("local", "remote")
# Presets come from the core package; "demo" first because it is the one that runs in minutes.
PRESET_NAMES = tuple(sorted(PRESETS, key=lambda name: (name != "demo", name)))
DEVICES = ("auto", "cpu", "cuda")  # the service's TrainingRequest.device values

SETTINGS_WORKSPACE = "ReciprocalSeg/Workspace"
SETTINGS_BACKEND_MODE = "ReciprocalSeg/BackendMode"
SETTINGS_REMOTE_URL = "ReciprocalSeg/RemoteUrl"
SETTINGS_REMOTE_TOKEN = "ReciprocalSeg/RemoteToken"

# Node attributes that tie scene nodes to service cases.
ATTR_CASE_ID = "ReciprocalSeg.CaseId"
ATTR_ROLE = "ReciprocalSeg.Role"
ROLE_IMAGE, ROLE_LABEL, ROLE_TEACHER, ROLE_STUDENT, ROLE_DISAGREEMENT = (
    "image",
    "label",
    "teacher",
    "student",
    "disagreement",
)

# Segment colours per class: the editable label, the teacher (cool) and the student (warm).
LABEL_COLORS = ((0.95, 0.85, 0.2), (0.3, 0.8, 0.3), (0.8, 0.4, 0.8), (0.4, 0.8, 0.9))
TEACHER_COLORS = ((0.2, 0.45, 1.0), (0.1, 0.75, 0.85), (0.45, 0.3, 0.95), (0.2, 0.6, 0.6))
STUDENT_COLORS = ((1.0, 0.45, 0.1), (0.95, 0.2, 0.35), (0.9, 0.7, 0.1), (0.85, 0.35, 0.6))
# Heat colour table for the disagreement map (Libs/MRML/Logic/vtkMRMLColorLogic.h), with a fallback.
HEAT_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeIron")

RUNNING_STATES = ("running",)
FINISHED_STATES = ("completed",)


def _field(obj, name, default=None):
    """``obj.name`` when it exists and is not None, else ``default`` (optional client fields)."""
    value = getattr(obj, name, None)
    return default if value is None else value


def _caseIdFromName(name):
    """A service case ID (``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``) from a Slicer node name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name or "").strip("._-")
    return (cleaned or "case")[:64]


def _formatDuration(seconds):
    """``3725`` -> ``"1 h 02 min"``; ``65`` -> ``"1 min 05 s"``; ``None`` -> ``"?"``."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(float(seconds))))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _formatTrainingStatus(status):
    """One line for the panel: state, phase, iteration/total, ETA and the last losses."""
    state = _field(status, "state", default="idle")
    parts = [str(state)]
    phase = _field(status, "phase")
    if phase:
        parts.append(str(phase))
    iteration, total = _field(status, "iteration"), _field(status, "total")
    if iteration is not None:
        parts.append(f"iteration {iteration}/{total}" if total else f"iteration {iteration}")
    if state in RUNNING_STATES:
        parts.append("ETA " + _formatDuration(_field(status, "eta_s")))
    losses = _field(status, "losses", default={}) or {}
    numeric = [(k, v) for k, v in sorted(losses.items()) if isinstance(v, (int, float))]
    if numeric:
        parts.append(", ".join(f"{k} {v:.4g}" for k, v in numeric))
    device = _field(status, "device")
    if device:
        parts.append(f"on {device}")
    message = _field(status, "message")
    if message and state not in RUNNING_STATES:
        parts.append(str(message))
    return " · ".join(parts)


def _defaultWorkspace():
    return str(Path.home() / "ReciprocalSeg")


#
# ReciprocalSeg
#


class ReciprocalSeg(ScriptedLoadableModule):
    """Module description shown by Slicer (ScriptedLoadableModule template)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("ReciprocalSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["ReciprocalSeg developers"]
        self.parent.helpText = _(
            "Semi-supervised 3D segmentation with reciprocal learning (a teacher and a student V-Net). "
            "Add volumes, annotate a few, train on labelled and unlabelled scans together, compare the "
            "teacher's and the student's predictions, correct, and retrain. "
            "See docs/SLICER.md of the ReciprocalSeg repository."
        )
        if sys.version_info < MIN_PYTHON:
            self.parent.helpText += _(
                "\n\nThis Slicer runs Python {version}; ReciprocalSeg needs Slicer 5.10 or later."
            ).format(version=".".join(map(str, sys.version_info[:3])))
        self.parent.acknowledgementText = _(
            "Method: Zeng et al., Reciprocal Learning for Semi-supervised Segmentation, MICCAI 2021. "
            "Module layout follows 3D Slicer's scripted-module template."
        )


#
# ReciprocalSegParameterNode
#


@parameterNodeWrapper
class ReciprocalSegParameterNode:
    """Panel choices saved with the scene (the remote token is kept in the application settings only).

    backendMode - "local": start a service in Slicer's Python; "remote": connect to remoteUrl.
    workspace - folder of the local service (cases, labels, models).
    remoteUrl - URL of a remote service.
    preset - training preset of the core package (demo, lite, paper, improved).
    iterations - iterations per phase; 0 keeps the preset's.
    device - auto, cpu or cuda.
    inputVolume - the volume that "Add volume" sends.
    """

    backendMode: Annotated[str, Choice(BACKEND_MODES)] = "local"
    workspace: Path
    remoteUrl: str = ""
    preset: Annotated[str, Choice(PRESET_NAMES)] = "demo"
    iterations: Annotated[int, WithinRange(0, 1000000)] = 0
    device: Annotated[str, Choice(DEVICES)] = "auto"
    inputVolume: vtkMRMLScalarVolumeNode


#
# ReciprocalSegWidget
#


class ReciprocalSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: Backend, Data, Annotate, Train, Predict. It only calls the logic."""

    POLL_INTERVAL_MS = 1000

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._currentCaseId = None
        self._lastTrainingState = None
        self._pollQueue = queue.Queue()
        self._pollThread = None
        self._pollTimer = None
        self._pollGeneration = 0  # bumped when a round starts: answers asked for earlier are dropped

    # ------------------------------------------------------------------ setup / teardown

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ReciprocalSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = ReciprocalSegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Backend
        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.ui.disconnectButton.connect("clicked(bool)", self.onDisconnect)
        self.ui.remoteTokenLineEdit.setText(slicer.util.settingsValue(SETTINGS_REMOTE_TOKEN, ""))
        # Data
        self.ui.addCurrentVolumeButton.connect("clicked(bool)", self.onAddCurrentVolume)
        self.ui.addAllVolumesButton.connect("clicked(bool)", self.onAddAllVolumes)
        self.ui.addFolderButton.connect("clicked(bool)", self.onAddFolder)
        self.ui.refreshCasesButton.connect("clicked(bool)", self.onRefreshCases)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCase)
        self.ui.removeCaseButton.connect("clicked(bool)", self.onRemoveCase)
        self.ui.casesTable.connect("itemSelectionChanged()", self.onCaseSelectionChanged)
        # Annotate
        self.ui.editLabelButton.connect("clicked(bool)", self.onEditLabel)
        self.ui.submitLabelButton.connect("clicked(bool)", self.onSubmitLabel)
        # Train
        self.ui.startTrainingButton.connect("clicked(bool)", self.onStartTraining)
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTraining)
        self.ui.showLearningCurveButton.connect("clicked(bool)", self.onShowLearningCurve)
        # Predict
        self.ui.predictButton.connect("clicked(bool)", self.onPredict)
        self.ui.correctFromStudentButton.connect("clicked(bool)", self.onCorrectFromStudent)
        self.ui.retrainButton.connect("clicked(bool)", self.onRetrain)

        # Training progress: a worker thread asks the service, this timer shows the answers.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._onPollTimer)

        self.initializeParameterNode()
        self._updateGui()

    def cleanup(self):
        if self._pollTimer is not None:
            self._pollTimer.stop()
        self.removeObservers()
        if self.logic is not None:
            self.logic.stop_service()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)
        self._currentCaseId = None

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        node = self._parameterNode
        if str(node.workspace) in ("", "."):
            # A new parameter node: start from the choices remembered in the application settings.
            node.workspace = Path(slicer.util.settingsValue(SETTINGS_WORKSPACE, _defaultWorkspace()))
            node.remoteUrl = slicer.util.settingsValue(SETTINGS_REMOTE_URL, "")
            if slicer.util.settingsValue(SETTINGS_BACKEND_MODE, "local") in BACKEND_MODES:
                node.backendMode = slicer.util.settingsValue(SETTINGS_BACKEND_MODE, "local")
        if not node.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                node.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    # ------------------------------------------------------------------ GUI state

    def _updateGui(self, caller=None, event=None):
        node = self._parameterNode
        remote = node is not None and node.backendMode == "remote"
        for widget in (self.ui.workspaceLabel, self.ui.workspacePathLineEdit):
            widget.setVisible(not remote)
        for widget in (
            self.ui.remoteUrlLabel,
            self.ui.remoteUrlLineEdit,
            self.ui.remoteTokenLabel,
            self.ui.remoteTokenLineEdit,
        ):
            widget.setVisible(remote)

        connected = self.logic is not None and self.logic.connected
        running = self._lastTrainingState in RUNNING_STATES
        hasCase = connected and self._currentCaseId is not None
        self.ui.connectButton.setEnabled(not connected)
        self.ui.disconnectButton.setEnabled(connected)
        for widget in (
            self.ui.addCurrentVolumeButton,
            self.ui.addAllVolumesButton,
            self.ui.addFolderButton,
            self.ui.refreshCasesButton,
            self.ui.nextCaseButton,
        ):
            widget.setEnabled(connected)
        self.ui.addCurrentVolumeButton.setEnabled(
            connected and node is not None and node.inputVolume is not None
        )
        for widget in (
            self.ui.removeCaseButton,
            self.ui.editLabelButton,
            self.ui.submitLabelButton,
            self.ui.predictButton,
        ):
            widget.setEnabled(hasCase)
        self.ui.correctFromStudentButton.setEnabled(
            hasCase and self.logic.case_node(self._currentCaseId, ROLE_STUDENT) is not None
        )
        self.ui.startTrainingButton.setEnabled(connected and not running)
        self.ui.retrainButton.setEnabled(connected and not running)
        self.ui.stopTrainingButton.setEnabled(connected and running)

    def _showBackendState(self, info=None):
        if not self.logic.connected:
            self.ui.backendStatusLabel.setText(_("Not connected."))
            return
        where = _("local service") if self.logic.service is not None else _("remote service")
        text = f"{where} {self.logic.url}"
        if info is not None:
            device = info.device
            text += f" · {_('device')}: {device.type} ({device.name}) · {_('version')} {info.version}"
        self.ui.backendStatusLabel.setText(text)

    # ------------------------------------------------------------------ Backend

    def onConnect(self):
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(
            _("Could not start or reach the ReciprocalSeg service."), waitCursor=True
        ):
            if node.backendMode == "remote":
                token = self.ui.remoteTokenLineEdit.text.strip()
                settings = qt.QSettings()
                settings.setValue(SETTINGS_REMOTE_URL, node.remoteUrl)
                settings.setValue(SETTINGS_REMOTE_TOKEN, token)
                info = self.logic.connect(node.remoteUrl, token or None)
            else:
                qt.QSettings().setValue(SETTINGS_WORKSPACE, str(node.workspace))
                slicer.util.showStatusMessage(_("Starting the local ReciprocalSeg service..."))
                info = self.logic.start_local_service(node.workspace)
            qt.QSettings().setValue(SETTINGS_BACKEND_MODE, node.backendMode)
            self._showBackendState(info)
            self._pollTimer.start()
            self.onRefreshCases()
        self._updateGui()

    def onDisconnect(self):
        self._pollTimer.stop()
        with slicer.util.tryWithErrorDisplay(_("Could not stop the service."), waitCursor=True):
            self.logic.stop_service()
        self._lastTrainingState = None
        self._showBackendState()
        self._updateGui()

    # ------------------------------------------------------------------ Data

    def onAddCurrentVolume(self):
        with slicer.util.tryWithErrorDisplay(_("Could not add the volume."), waitCursor=True):
            caseId = self.logic.add_volume(self._parameterNode.inputVolume)
            slicer.util.showStatusMessage(_("Added case {case}.").format(case=caseId), 3000)
        self.onRefreshCases()

    def onAddAllVolumes(self):
        with slicer.util.tryWithErrorDisplay(_("Could not add the volumes."), waitCursor=True):
            caseIds = self.logic.add_all_volumes()
            slicer.util.showStatusMessage(_("Added {n} cases.").format(n=len(caseIds)), 3000)
        self.onRefreshCases()

    def onAddFolder(self):
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Folder of images (and <ID>_label files)"), str(Path.home())
        )
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not add the folder."), waitCursor=True):
            caseIds = self.logic.add_folder(folder)
            slicer.util.showStatusMessage(_("Added {n} cases.").format(n=len(caseIds)), 3000)
        self.onRefreshCases()

    def onRefreshCases(self):
        if not self.logic.connected:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not list the cases.")):
            cases = self.logic.list_cases()
            table = self.ui.casesTable
            table.blockSignals(True)
            try:
                table.setRowCount(len(cases))
                selectedRow = -1
                for row, case in enumerate(cases):
                    caseId, score = case.id, case.score
                    values = (caseId, case.status, "" if score is None else f"{score:.4f}")
                    for column, value in enumerate(values):
                        table.setItem(row, column, qt.QTableWidgetItem(str(value)))
                    if caseId == self._currentCaseId:
                        selectedRow = row
                if selectedRow >= 0:
                    table.selectRow(selectedRow)
            finally:
                table.blockSignals(False)
            labelled = sum(1 for c in cases if c.status == "labelled")
            self.ui.labelledCountLabel.setText(
                _("{labelled} labelled of {total} cases").format(labelled=labelled, total=len(cases))
            )
        self._updateGui()

    def _selectedCaseId(self):
        row = self.ui.casesTable.currentRow()
        item = self.ui.casesTable.item(row, 0) if row >= 0 else None
        return item.text() if item is not None else None

    def onCaseSelectionChanged(self):
        caseId = self._selectedCaseId()
        if not caseId or caseId == self._currentCaseId:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not show the case."), waitCursor=True):
            self.logic.show_case(caseId)
            self._currentCaseId = caseId
            self.ui.selectedCaseLabel.setText(caseId)
            self.ui.predictionLabel.setText("")
        self._updateGui()

    def _selectCase(self, caseId):
        table = self.ui.casesTable
        for row in range(table.rowCount):
            item = table.item(row, 0)
            if item is not None and item.text() == caseId:
                table.selectRow(row)  # emits itemSelectionChanged -> onCaseSelectionChanged
                return

    def onNextCase(self):
        with slicer.util.tryWithErrorDisplay(_("Could not choose the next case."), waitCursor=True):
            caseId, score = self.logic.next_case()
            if caseId is None:
                slicer.util.infoDisplay(_("Every case is labelled."))
                return
            self.onRefreshCases()
            self._selectCase(caseId)
            if score is not None:
                slicer.util.showStatusMessage(
                    _("Next: {case} (disagreement {score:.4f})").format(case=caseId, score=score), 5000
                )

    def onRemoveCase(self):
        caseId = self._currentCaseId
        if not caseId or not slicer.util.confirmOkCancelDisplay(
            _("Remove case {case} and its labels from the workspace?").format(case=caseId)
        ):
            return
        with slicer.util.tryWithErrorDisplay(_("Could not remove the case."), waitCursor=True):
            self.logic.delete_case(caseId)
            self._currentCaseId = None
            self.ui.selectedCaseLabel.setText(_("(none)"))
        self.onRefreshCases()

    # ------------------------------------------------------------------ Annotate

    def onEditLabel(self):
        with slicer.util.tryWithErrorDisplay(_("Could not open the Segment Editor."), waitCursor=True):
            volume, segmentation = self.logic.show_case(self._currentCaseId)
            self.logic.open_segment_editor(segmentation, volume)

    def onSubmitLabel(self):
        caseId = self._currentCaseId
        with slicer.util.tryWithErrorDisplay(_("Could not submit the label."), waitCursor=True):
            volume = self.logic.case_node(caseId, ROLE_IMAGE)
            segmentation = self.logic.case_node(caseId, ROLE_LABEL)
            if volume is None or segmentation is None:
                raise RuntimeError(_("Select the case again: its volume or label is no longer in the scene."))
            self.logic.submit_segmentation(caseId, segmentation, volume)
            slicer.util.showStatusMessage(_("Label of {case} submitted.").format(case=caseId), 3000)
        self.onRefreshCases()

    # ------------------------------------------------------------------ Train

    def _startTraining(self, warmStart):
        node = self._parameterNode
        iterations = node.iterations or None
        with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
            status = self.logic.start_training(
                preset=node.preset,
                iterations=iterations,
                supervised_iterations=iterations,
                device=node.device,
                warm_start=warmStart,
            )
            self._pollGeneration += 1
            self._lastTrainingState = status.state
            self.ui.trainingStatusLabel.setText(_formatTrainingStatus(status))
            self._pollTimer.start()
        self._updateGui()

    def onStartTraining(self):
        self._startTraining(warmStart=False)

    def onRetrain(self):
        self._startTraining(warmStart=True)

    def onStopTraining(self):
        with slicer.util.tryWithErrorDisplay(_("Could not stop training."), waitCursor=True):
            self.logic.stop_training()

    def onShowLearningCurve(self):
        self.logic.learning_curve.show()

    def _onPollTimer(self):
        while True:
            try:
                generation, kind, payload = self._pollQueue.get_nowait()
            except queue.Empty:
                break
            if generation != self._pollGeneration:
                continue  # asked before the current round started
            if kind == "status":
                self._showTrainingStatus(payload)
            else:
                self.ui.trainingStatusLabel.setText(_("Service not answering: {error}").format(error=payload))
        if not self.logic.connected:
            self._pollTimer.stop()
            return
        if self._pollThread is None or not self._pollThread.is_alive():
            client = self.logic.polling_client()
            self._pollThread = threading.Thread(
                target=self._pollOnce, args=(client, self._pollGeneration), daemon=True
            )
            self._pollThread.start()

    def _pollOnce(self, client, generation):
        """Worker thread: one status request; never touches Qt."""
        try:
            self._pollQueue.put((generation, "status", client.training_status()))
        except Exception as error:  # reported on the main thread
            self._pollQueue.put((generation, "error", str(error)))

    def _showTrainingStatus(self, status):
        state = status.state
        fraction = status.fraction  # overall progress of the round (both phases) when known
        if fraction is not None:
            self.ui.trainingProgressBar.setRange(0, 1000)
            self.ui.trainingProgressBar.setValue(int(round(1000 * fraction)))
        self.ui.trainingStatusLabel.setText(_formatTrainingStatus(status))
        if state in RUNNING_STATES and self.logic.learning_curve.add(status):
            self.logic.learning_curve.update_nodes()
        previous = self._lastTrainingState
        self._lastTrainingState = state
        if previous in RUNNING_STATES and state not in RUNNING_STATES:
            self._announceRoundEnd(status)
        self._updateGui()

    def _announceRoundEnd(self, status):
        state = status.state
        if state in FINISHED_STATES:
            roundId = _field(status, "round", _field(status, "current_round", "?"))
            message = _(
                "Training round {round} finished. Predict a case to see the new teacher and student."
            ).format(round=roundId)
            slicer.util.showStatusMessage(message, 10000)
            self.ui.trainingProgressBar.setValue(self.ui.trainingProgressBar.maximum)
            self.onRefreshCases()
            slicer.util.infoDisplay(message, windowTitle=_("ReciprocalSeg"))
        else:
            detail = _field(status, "message", default="")
            slicer.util.showStatusMessage(
                _("Training {state}. {detail}").format(state=state, detail=detail), 10000
            )
            if state == "failed":
                slicer.util.errorDisplay(_("Training failed: {detail}").format(detail=detail))

    # ------------------------------------------------------------------ Predict

    def onPredict(self):
        caseId = self._currentCaseId
        with slicer.util.tryWithErrorDisplay(_("Prediction failed."), waitCursor=True):
            self.logic.predict(caseId)
            score = self.logic.last_prediction_score
            self.ui.predictionLabel.setText(
                _("Teacher/student disagreement: {score}").format(
                    score="?" if score is None else f"{score:.4f}"
                )
            )
        self.onRefreshCases()

    def onCorrectFromStudent(self):
        caseId = self._currentCaseId
        with slicer.util.tryWithErrorDisplay(_("Could not copy the student's prediction."), waitCursor=True):
            segmentation = self.logic.copy_student_to_label(caseId)
            self.logic.open_segment_editor(segmentation, self.logic.case_node(caseId, ROLE_IMAGE))


#
# Learning curve (table + plot nodes)
#


class LearningCurve:
    """Losses of the running round as a vtkMRMLTableNode plotted in a vtkMRMLPlotChartNode."""

    TABLE_NAME = "ReciprocalSeg losses"
    CHART_NAME = "ReciprocalSeg learning curve"

    def __init__(self):
        self._tableNode = None
        self._chartNode = None
        self._seriesNodes = {}
        self._shown = False
        self.reset()

    def reset(self):
        self.steps = []
        self.losses = {}
        self._phaseKey = None
        self._offset = 0
        self._shown = False

    def add(self, status):
        """Record one status sample; returns True if it added a point.

        The x axis is the round's overall iteration (supervised then reciprocal phase) when the
        service reports it; otherwise a new phase continues after the previous phase's last point.
        """
        losses = {
            k: float(v)
            for k, v in (_field(status, "losses", {}) or {}).items()
            if isinstance(v, (int, float))
        }
        iteration = _field(status, "iteration")
        if iteration is None or not losses:
            return False
        step = _field(status, "overall_iteration")
        if step is None:
            phaseKey = (_field(status, "run_id"), _field(status, "phase"))
            if phaseKey != self._phaseKey:
                if self._phaseKey is not None and self.steps:
                    self._offset = self.steps[-1]
                self._phaseKey = phaseKey
            step = self._offset + int(iteration)
        step = int(step)
        if self.steps and step <= self.steps[-1]:
            return False
        self.steps.append(step)
        for name in set(self.losses) | set(losses):
            values = self.losses.setdefault(name, [float("nan")] * (len(self.steps) - 1))
            values.append(losses.get(name, float("nan")))
        return True

    def _nodes(self):
        scene = slicer.mrmlScene
        if self._tableNode is None or scene.GetNodeByID(self._tableNode.GetID()) is None:
            self._tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", self.TABLE_NAME)
            self._seriesNodes = {}
        if self._chartNode is None or scene.GetNodeByID(self._chartNode.GetID()) is None:
            self._chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", self.CHART_NAME)
            self._chartNode.SetTitle("ReciprocalSeg training losses")
            self._chartNode.SetXAxisTitle("iteration")
            self._chartNode.SetYAxisTitle("loss")
            self._seriesNodes = {}
        return self._tableNode, self._chartNode

    def update_nodes(self):
        """Write the samples into the table node and make one plot series per loss."""
        import numpy as np

        if not self.steps:
            return
        table, chart = self._nodes()
        names = sorted(self.losses)
        columns = [np.asarray(self.steps, dtype=float)] + [
            np.asarray(self.losses[n], dtype=float) for n in names
        ]
        slicer.util.updateTableFromArray(table, columns, ["iteration"] + names)
        for name in names:
            if name in self._seriesNodes:
                continue
            series = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"loss {name}")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("iteration")
            series.SetYColumnName(name)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            series.SetUniqueColor()
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self._seriesNodes[name] = series
        if not self._shown:
            self.show()

    def show(self):
        if not self.steps:
            return
        chart = self._nodes()[1]
        slicer.modules.plots.logic().ShowChartInLayout(chart)
        self._shown = True


#
# ReciprocalSegLogic
#


class ReciprocalSegLogic(ScriptedLoadableModuleLogic):
    """The annotation loop for the GUI and the Python console.

    Example (Python console)::

        logic = slicer.util.getModuleLogic("ReciprocalSeg")  # or ReciprocalSegLogic()
        logic.start_local_service("/data/rs-workspace")
        ids = logic.add_all_volumes()
        logic.submit_segmentation(ids[0], getNode("Segmentation"), getNode(ids[0]))
        logic.start_training(preset="demo")
        logic.wait_for_training()
        teacher, student, disagreement = logic.predict(ids[1])
        print(logic.next_case())
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.client = None
        self.service = None
        self.url = None
        self.info_ = None  # the last ServiceInfo
        self.last_prediction_score = None
        self.learning_curve = LearningCurve()
        self._token = None
        self._pollClient = None
        self._tempDir = None
        self._quitConnected = False

    def getParameterNode(self):
        return ReciprocalSegParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ backend

    @property
    def connected(self):
        return self.client is not None

    def _requireClient(self):
        if self.client is None:
            raise RuntimeError(_("Not connected: start the local service or connect to a remote one first."))
        return self.client

    @staticmethod
    def _checkPython():
        if sys.version_info < MIN_PYTHON:
            raise RuntimeError(
                _(
                    "ReciprocalSeg needs Slicer 5.10 or later (Python 3.10+); this Slicer runs Python {v}."
                ).format(v=".".join(map(str, sys.version_info[:3])))
            )

    def _temp(self):
        if self._tempDir is None or not os.path.isdir(self._tempDir):
            self._tempDir = tempfile.mkdtemp(prefix="ReciprocalSeg-", dir=slicer.app.temporaryPath)
        return Path(tempfile.mkdtemp(dir=self._tempDir))

    def ensure_requirements(self, askConfirmation=True):
        """Install the missing Python packages (after confirmation). Returns False if declined.

        torch comes from the PyTorch extension (right CUDA build for the GPU); the rest from pip,
        with Slicer's bundled packages pinned so that pip cannot replace them.
        """
        import importlib

        missing = slicer_requirements.missing_requirements()
        if not missing:
            return True
        torchRequirement, others = slicer_requirements.split_torch(missing)
        if askConfirmation:
            text = _("ReciprocalSeg needs Python packages that this Slicer does not have yet:") + "\n\n"
            text += "\n".join("  " + spec for spec in missing)
            if torchRequirement is not None:
                text += "\n\n" + _(
                    "PyTorch is installed by the PyTorch extension, which picks the build that fits your GPU "
                    "(it asks for its own confirmation)."
                )
            text += "\n\n" + _("Install now? This can take several minutes.")
            if not slicer.util.confirmOkCancelDisplay(text, windowTitle=_("ReciprocalSeg: install packages")):
                return False
        if torchRequirement is not None:
            try:
                import PyTorchUtils
            except ImportError as error:
                raise RuntimeError(
                    _("ReciprocalSeg needs the PyTorch extension: install it (Extensions Manager), restart.")
                ) from error
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=askConfirmation, torchVersionRequirement=torchRequirement or None
            )
            if torch is None:
                return False
        if others:
            args = list(others)
            constraints = slicer_requirements.constraints_for_bundled()
            if constraints:
                constraintsFile = self._temp() / "slicer-bundled-constraints.txt"
                constraintsFile.write_text("\n".join(constraints) + "\n", encoding="utf-8")
                args = ["-c", str(constraintsFile)] + args
            slicer.util.pip_install(args)
        importlib.invalidate_caches()
        stillMissing = slicer_requirements.missing_requirements()
        if stillMissing:
            raise RuntimeError(_("Still missing after installation: {p}").format(p=", ".join(stillMissing)))
        return True

    def _connectQuit(self):
        if not self._quitConnected:
            slicer.app.connect("aboutToQuit()", self.stop_service)
            self._quitConnected = True

    def start_local_service(self, workspace=None, timeout=60.0, askConfirmation=True):
        """Start a service in Slicer's Python on a free loopback port and connect to it."""
        self._checkPython()
        if not self.ensure_requirements(askConfirmation=askConfirmation):
            raise RuntimeError(_("The required Python packages were not installed."))
        from reciprocalseg.service.launcher import LocalService

        self.stop_service()
        workspace = Path(workspace or _defaultWorkspace()).expanduser()
        workspace.mkdir(parents=True, exist_ok=True)
        python = shutil.which("PythonSlicer") or sys.executable
        # The child process must find the core package, which sits beside this file.
        env = dict(os.environ)
        moduleDir = os.path.dirname(os.path.abspath(__file__))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (moduleDir, env.get("PYTHONPATH", "")) if p)
        service = LocalService(str(workspace), python=python, env=env)
        url, token = service.start(timeout=timeout)
        self.service = service
        self._connectQuit()
        try:
            return self.connect(url, token)
        except Exception:
            self.stop_service()
            raise

    def connect(self, url, token=None):
        """Use the service at ``url``; returns its info (version, device, counts)."""
        self._checkPython()
        from reciprocalseg.client import Client

        client = Client(url, token=token or None)
        info = client.info()
        self.client, self.url, self._token, self.info_ = client, url, token or None, info
        self._pollClient = None
        return info

    def polling_client(self):
        """A second client with a short timeout, used only by the training-progress worker thread."""
        from reciprocalseg.client import Client

        self._requireClient()
        if self._pollClient is None:
            self._pollClient = Client(self.url, token=self._token, timeout=5.0)
        return self._pollClient

    def info(self):
        self.info_ = self._requireClient().info()
        return self.info_

    def stop_service(self):
        """Disconnect; stop the local service if this logic started it."""
        self.client = None
        self._pollClient = None
        service, self.service = self.service, None
        if service is not None:
            service.stop()  # also ends a training worker the service left behind
        if self._tempDir is not None:
            shutil.rmtree(self._tempDir, ignore_errors=True)
            self._tempDir = None

    # ------------------------------------------------------------------ scene bookkeeping

    @staticmethod
    def case_node(caseId, role):
        """The scene node holding ``role`` (image, label, teacher, student, disagreement) of a case."""
        if caseId is None:
            return None
        for className in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode"):
            for node in slicer.util.getNodesByClass(className):
                if node.GetAttribute(ATTR_CASE_ID) == caseId and node.GetAttribute(ATTR_ROLE) == role:
                    return node
        return None

    @staticmethod
    def _tag(node, caseId, role):
        node.SetAttribute(ATTR_CASE_ID, caseId)
        node.SetAttribute(ATTR_ROLE, role)

    def _replaceCaseNode(self, caseId, role, className, name):
        old = self.case_node(caseId, role)
        if old is not None:
            slicer.mrmlScene.RemoveNode(old)
        node = slicer.mrmlScene.AddNewNodeByClass(className, name)
        self._tag(node, caseId, role)
        return node

    @staticmethod
    def _save(node, path):
        # exportNode, unlike saveNode, leaves the node's storage node (its file name) untouched.
        if not slicer.util.exportNode(node, str(path), {"useCompression": 1}, world=False):
            raise RuntimeError(_("Could not write {node} to {path}.").format(node=node.GetName(), path=path))

    def _foregroundClassCount(self):
        # The service's n_classes counts the background too (as `train --n-classes`).
        nClasses = _field(self.info_, "n_classes")
        return int(nClasses) - 1 if nClasses else None

    @staticmethod
    def _classNames(segmentationNode, count):
        names = []
        if segmentationNode is not None:
            segmentation = segmentationNode.GetSegmentation()
            names = [
                segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())
            ]
        return [names[k] if k < len(names) else f"Class {k + 1}" for k in range(count)]

    # ------------------------------------------------------------------ data

    def list_cases(self):
        return self._requireClient().list_cases()

    def _caseIds(self):
        return {c.id for c in self.list_cases()}

    def add_volume(self, volumeNode, case_id=None, _known=None):
        """Send a scene volume to the service (saved as NRRD by Slicer); returns its case ID."""
        client = self._requireClient()
        if volumeNode is None:
            raise ValueError(_("No volume selected."))
        known = self._caseIds() if _known is None else _known
        existing = volumeNode.GetAttribute(ATTR_CASE_ID)
        if existing and existing in known and volumeNode.GetAttribute(ATTR_ROLE) == ROLE_IMAGE:
            return existing
        caseId = case_id or _caseIdFromName(volumeNode.GetName())
        if case_id is None:
            base, n = caseId, 2
            while caseId in known:
                caseId, n = f"{base[:60]}_{n}", n + 1
        folder = self._temp()
        try:
            path = folder / f"{caseId}.nrrd"
            self._save(volumeNode, path)
            result = client.add_case(str(path), case_id=caseId, upload=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        caseId = result.id
        self._tag(volumeNode, caseId, ROLE_IMAGE)
        known.add(caseId)
        return caseId

    def add_all_volumes(self):
        """Add every scalar volume of the scene that is not a case yet (label maps and our maps excluded)."""
        known = self._caseIds()
        added = []
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute(ATTR_ROLE) == ROLE_DISAGREEMENT:
                continue
            if node.GetAttribute(ATTR_ROLE) == ROLE_IMAGE and node.GetAttribute(ATTR_CASE_ID) in known:
                continue
            added.append(self.add_volume(node, _known=known))
        return added

    def add_folder(self, path):
        """Add the images of a folder (and their ``<ID>_label`` files as labels); returns the case IDs.

        The folder layout and case IDs are the core's (``reciprocalseg.data.io.discover_cases``).
        A local service reads the files in place; a remote one gets them uploaded.
        """
        from reciprocalseg.data.io import discover_cases

        client = self._requireClient()
        upload = self.service is None
        added = []
        for case in discover_cases(path):
            result = client.add_case(str(case.image), case_id=case.case_id, upload=upload)
            caseId = result.id
            if case.label is not None:
                client.put_label(caseId, str(case.label))
            added.append(caseId)
        return added

    def delete_case(self, case_id):
        self._requireClient().delete_case(case_id)
        for role in (ROLE_LABEL, ROLE_TEACHER, ROLE_STUDENT, ROLE_DISAGREEMENT):
            node = self.case_node(case_id, role)
            if node is not None:
                slicer.mrmlScene.RemoveNode(node)

    def case_volume(self, case_id):
        """The case's image in the scene, downloaded from the service if it is not there yet."""
        volume = self.case_node(case_id, ROLE_IMAGE)
        if volume is not None:
            return volume
        folder = self._temp()
        try:
            path = folder / f"{case_id}.nrrd"
            self._requireClient().get_image(case_id, str(path))
            volume = slicer.util.loadVolume(str(path), {"name": case_id, "show": False})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self._tag(volume, case_id, ROLE_IMAGE)
        return volume

    def label_segmentation(self, case_id, volumeNode, loadExisting=True):
        """The case's editable label segmentation: the scene's, else the service's label, else empty."""
        segmentation = self.case_node(case_id, ROLE_LABEL)
        if segmentation is not None:
            return segmentation
        label = None
        if loadExisting:
            from reciprocalseg.client import ServiceError

            folder = self._temp()
            try:
                path = folder / f"{case_id}_label.nrrd"
                try:
                    self._requireClient().get_label(case_id, str(path))
                except ServiceError as error:
                    if error.status_code != 404:
                        raise
                    path = None  # no label yet
                if path is not None:
                    label = self.segmentation_from_label_file(
                        path, f"{case_id} label", case_id, ROLE_LABEL, volumeNode, LABEL_COLORS
                    )
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        if label is None:
            label = self._replaceCaseNode(case_id, ROLE_LABEL, "vtkMRMLSegmentationNode", f"{case_id} label")
            label.CreateDefaultDisplayNodes()
            label.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            for k, name in enumerate(self._classNames(None, self._foregroundClassCount() or 1)):
                label.GetSegmentation().AddEmptySegment(
                    f"class_{k + 1}", name, LABEL_COLORS[k % len(LABEL_COLORS)]
                )
        return label

    def show_case(self, case_id):
        """Show a case with its editable label segmentation; returns (volumeNode, segmentationNode)."""
        volume = self.case_volume(case_id)
        segmentation = self.label_segmentation(case_id, volume)
        slicer.util.setSliceViewerLayers(background=volume, foreground=None, fit=True)
        segmentation.GetDisplayNode().SetVisibility(True)
        return volume, segmentation

    def segmentation_from_label_file(self, path, name, case_id, role, volumeNode, colors):
        """Load a label-map file into a new segmentation node: label value k becomes segment ``class_k``."""
        labelNode = slicer.util.loadLabelVolume(str(path), {"name": f"{name} labelmap", "show": False})
        try:
            present = int(slicer.util.arrayFromVolume(labelNode).max())
            count = max(self._foregroundClassCount() or 0, present, 1)
            names = self._classNames(self.case_node(case_id, ROLE_LABEL), count)
            segmentation = self._replaceCaseNode(case_id, role, "vtkMRMLSegmentationNode", name)
            segmentation.CreateDefaultDisplayNodes()
            if volumeNode is not None:
                segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            segmentIds = vtk.vtkStringArray()
            for k in range(count):
                segmentId = f"class_{k + 1}"
                segmentation.GetSegmentation().AddEmptySegment(segmentId, names[k], colors[k % len(colors)])
                segmentIds.InsertNextValue(segmentId)
            # label value k+1 -> segmentIds[k] (vtkSlicerSegmentationsModuleLogic.h, updatedSegmentIDs)
            if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(
                labelNode, segmentation, segmentIds
            ):
                raise RuntimeError(_("Could not import {path} into a segmentation.").format(path=path))
        finally:
            slicer.mrmlScene.RemoveNode(labelNode)
        return segmentation

    # ------------------------------------------------------------------ annotate

    def submit_segmentation(self, case_id, segmentationNode, referenceVolumeNode, author=None):
        """Upload a segmentation as the case's label: segment i (in segment order) becomes label value i+1.

        The label map is exported on the reference volume's grid by Slicer
        (``ExportSegmentsToLabelmapNode`` with the reference volume) and saved as NRRD.
        Where segments overlap, the later segment wins; the number of such voxels is logged.
        """
        client = self._requireClient()
        segmentation = segmentationNode.GetSegmentation()
        segmentIds = vtk.vtkStringArray()
        for i in range(segmentation.GetNumberOfSegments()):
            segmentIds.InsertNextValue(segmentation.GetNthSegmentID(i))
        if segmentIds.GetNumberOfValues() == 0:
            raise ValueError(_("The segmentation has no segments to submit."))
        self._warnOverlaps(segmentationNode, segmentIds, referenceVolumeNode)
        labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{case_id} export")
        folder = self._temp()
        try:
            if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                segmentationNode, segmentIds, labelNode, referenceVolumeNode
            ):
                raise RuntimeError(_("Could not export the segmentation to a label map."))
            path = folder / f"{case_id}_label.nrrd"
            self._save(labelNode, path)
            result = client.put_label(case_id, str(path), author=author)
        finally:
            slicer.mrmlScene.RemoveNode(labelNode)
            shutil.rmtree(folder, ignore_errors=True)
        if self.case_node(case_id, ROLE_LABEL) is None and segmentationNode.GetAttribute(ATTR_ROLE) is None:
            self._tag(segmentationNode, case_id, ROLE_LABEL)
        return result

    @staticmethod
    def _warnOverlaps(segmentationNode, segmentIds, referenceVolumeNode):
        if segmentIds.GetNumberOfValues() < 2:
            return
        total = None
        for i in range(segmentIds.GetNumberOfValues()):
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(
                segmentationNode, segmentIds.GetValue(i), referenceVolumeNode
            )
            if mask is None:
                continue
            total = (mask > 0).astype("uint8") if total is None else total + (mask > 0)
        overlap = int((total > 1).sum()) if total is not None else 0
        if overlap:
            logging.warning(
                "ReciprocalSeg: %d voxels are in more than one segment; the later segment's class is kept.",
                overlap,
            )

    def open_segment_editor(self, segmentationNode, volumeNode):
        """Switch to the Segment Editor with this segmentation and source volume selected."""
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.util.getModuleWidget("SegmentEditor").editor
        editor.setSegmentationNode(segmentationNode)
        if volumeNode is not None:
            editor.setSourceVolumeNode(volumeNode)

    # ------------------------------------------------------------------ training

    def start_training(
        self, preset="demo", iterations=None, supervised_iterations=None, device="auto", warm_start=True
    ):
        """Start a training round on the service (returns at once; poll ``training_status``)."""
        self.learning_curve.reset()
        return self._requireClient().start_training(
            preset=preset,
            iterations=iterations,
            supervised_iterations=supervised_iterations,
            device=device,
            warm_start=warm_start,
        )

    def training_status(self):
        return self._requireClient().training_status()

    def training_events(self, since=0):
        return self._requireClient().training_events(since=since)

    def stop_training(self):
        return self._requireClient().stop_training()

    def wait_for_training(self, poll=1.0, timeout=None, callback=None):
        """Block until the round ends and return its final status (for scripts and the Python console).

        Slicer's GUI keeps repainting: the client polls every 0.2 s and Qt events are processed
        between polls; ``callback(status)`` is called about every ``poll`` seconds and at the end.
        """
        import time

        lastCall = [float("-inf")]

        def onStatus(status):
            slicer.app.processEvents()
            now = time.monotonic()
            if callback is not None and (now - lastCall[0] >= poll or status.state not in RUNNING_STATES):
                lastCall[0] = now
                callback(status)

        return self._requireClient().wait_for_training(
            poll=min(poll, 0.2), timeout=timeout, callback=onStatus
        )

    # ------------------------------------------------------------------ prediction

    def predict(self, case_id):
        """Predict a case; returns (teacher segmentation, student segmentation, disagreement volume) nodes."""
        client = self._requireClient()
        volume = self.case_volume(case_id)
        folder = self._temp()
        try:
            result = client.predict(case_id, out_dir=str(folder))
            self.last_prediction_score = result.score
            teacher = self.segmentation_from_label_file(
                result.teacher, f"{case_id} teacher", case_id, ROLE_TEACHER, volume, TEACHER_COLORS
            )
            student = self.segmentation_from_label_file(
                result.student, f"{case_id} student", case_id, ROLE_STUDENT, volume, STUDENT_COLORS
            )
            old = self.case_node(case_id, ROLE_DISAGREEMENT)
            if old is not None:
                slicer.mrmlScene.RemoveNode(old)
            disagreement = slicer.util.loadVolume(
                str(result.disagreement), {"name": f"{case_id} disagreement", "show": False}
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self._tag(disagreement, case_id, ROLE_DISAGREEMENT)
        self._showDisagreement(disagreement)
        # Teacher filled, student as outline: both readable on top of each other.
        student.GetDisplayNode().SetAllSegmentsVisibility2DFill(False)
        slicer.util.setSliceViewerLayers(background=volume, foreground=disagreement, foregroundOpacity=0.4)
        return teacher, student, disagreement

    @staticmethod
    def _showDisagreement(volumeNode):
        volumeNode.CreateDefaultDisplayNodes()
        display = volumeNode.GetDisplayNode()
        for colorId in HEAT_COLOR_NODE_IDS:
            if slicer.mrmlScene.GetNodeByID(colorId) is not None:
                display.SetAndObserveColorNodeID(colorId)
                break

    def copy_student_to_label(self, case_id):
        """Replace the case's editable label with the student's prediction; returns the label segmentation."""
        student = self.case_node(case_id, ROLE_STUDENT)
        if student is None:
            raise RuntimeError(_("Predict {case} first.").format(case=case_id))
        volume = self.case_volume(case_id)
        label = self.label_segmentation(case_id, volume, loadExisting=False)
        target, source = label.GetSegmentation(), student.GetSegmentation()
        target.RemoveAllSegments()
        for i in range(source.GetNumberOfSegments()):
            segmentId = source.GetNthSegmentID(i)
            target.CopySegmentFromSegmentation(source, segmentId)
            target.GetSegment(segmentId).SetColor(*LABEL_COLORS[i % len(LABEL_COLORS)])
        label.GetDisplayNode().SetVisibility(True)
        return label

    def next_case(self):
        """(case_id, score) of the unlabelled case where teacher and student disagree most.

        case_id is None when every case is labelled.
        """
        result = self._requireClient().next_case()
        return result.case_id, result.score


#
# ReciprocalSegTest
#


class ReciprocalSegTest(ScriptedLoadableModuleTest):
    """The whole loop inside Slicer on small phantoms (registered with ctest; run with --testing)."""

    N_CASES = 4
    SHAPE_ZYX = (32, 48, 48)

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ReciprocalSegLoop()

    def test_ReciprocalSegLoop(self):
        import SimpleITK as sitk

        from reciprocalseg.data.phantom import make_phantom

        self.delayDisplay("Building a phantom scene")
        tmp = Path(tempfile.mkdtemp(prefix="ReciprocalSegTest-"))
        logic = ReciprocalSegLogic()
        try:
            volumes, labelPaths = [], []
            for i in range(self.N_CASES):
                image, label = make_phantom(i, shape_zyx=self.SHAPE_ZYX)
                imagePath, labelPath = tmp / f"phantom{i}.nrrd", tmp / f"phantom{i}_label.nrrd"
                sitk.WriteImage(image, str(imagePath), True)
                sitk.WriteImage(label, str(labelPath), True)
                volumes.append(slicer.util.loadVolume(str(imagePath), {"name": f"phantom{i}", "show": False}))
                labelPaths.append(labelPath)

            self.delayDisplay("Starting a local service")
            info = logic.start_local_service(tmp / "workspace", timeout=120.0, askConfirmation=False)
            self.assertTrue(logic.connected)
            self.assertTrue(info.version)
            self.assertIn(info.device.type, ("cpu", "cuda"))

            caseIds = [logic.add_volume(volume) for volume in volumes]
            self.assertEqual(caseIds, [f"phantom{i}" for i in range(self.N_CASES)])
            self.assertEqual(logic.add_all_volumes(), [])  # nothing new in the scene
            self.assertEqual(len(logic.list_cases()), self.N_CASES)

            self.delayDisplay("Submitting two labels")
            for i in (0, 1):
                segmentation = logic.segmentation_from_label_file(
                    labelPaths[i], f"phantom{i} label", caseIds[i], ROLE_LABEL, volumes[i], LABEL_COLORS
                )
                self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), 1)
                logic.submit_segmentation(caseIds[i], segmentation, volumes[i])
            statuses = {c.id: c.status for c in logic.list_cases()}
            self.assertEqual(statuses[caseIds[0]], "labelled")
            self.assertEqual(statuses[caseIds[1]], "labelled")
            self.assertEqual(statuses[caseIds[2]], "unlabelled")

            self.delayDisplay("Training a few iterations")
            logic.start_training(preset="demo", iterations=4, supervised_iterations=4, device="cpu")
            final = logic.wait_for_training(poll=0.5, timeout=900)
            self.assertEqual(final.state, "completed", final.message)

            self.delayDisplay("Predicting")
            teacher, student, disagreement = logic.predict(caseIds[2])
            for node, role in ((teacher, ROLE_TEACHER), (student, ROLE_STUDENT)):
                self.assertTrue(node.IsA("vtkMRMLSegmentationNode"))
                self.assertEqual(logic.case_node(caseIds[2], role).GetID(), node.GetID())
                segmentation = node.GetSegmentation()
                self.assertEqual(segmentation.GetNumberOfSegments(), 1)
                self.assertEqual(segmentation.GetNthSegmentID(0), "class_1")
                self.assertEqual(segmentation.GetNthSegment(0).GetName(), "Class 1")
            self.assertNotEqual(teacher.GetName(), student.GetName())
            self.assertNotEqual(
                teacher.GetSegmentation().GetNthSegment(0).GetColor(),
                student.GetSegmentation().GetNthSegment(0).GetColor(),
            )
            self.assertTrue(disagreement.IsA("vtkMRMLScalarVolumeNode"))
            self.assertEqual(
                disagreement.GetImageData().GetDimensions(), volumes[2].GetImageData().GetDimensions()
            )

            label = logic.copy_student_to_label(caseIds[2])
            self.assertEqual(label.GetSegmentation().GetNumberOfSegments(), 1)

            nextId, _score = logic.next_case()
            self.assertIn(nextId, caseIds[2:])
            self.delayDisplay("Test passed")
        finally:
            logic.stop_service()
            shutil.rmtree(tmp, ignore_errors=True)
