"""ReciprocalSeg: reciprocal-learning annotation loop (teacher + student V-Net) inside 3D Slicer.

This file is the module's thin skin: Slicer's four template classes, the Qt panel, layouts and
views. The scene logic lives in ``ReciprocalSegLib`` beside it (no Qt; it runs on Slicer's MRML
classes, also from the ``slicer-core`` wheel in CI), and every decision about data, training and
inference in the core package ``reciprocalseg``, reached only through its ``Client``.

Nothing on the GUI thread waits on the network or a process: every service call runs on
``ReciprocalSegLib.tasks.TaskRunner`` (tests/slicer/test_static_gui_thread.py checks the slots).

Supported: Slicer 5.10 and 5.12; every Slicer API used was read in Slicer's source (docs/SLICER.md).
This file and ReciprocalSegLib stay Python 3.9 compatible so that Slicer 5.8 users get a message.
"""

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

from ReciprocalSegLib import messages
from ReciprocalSegLib.case_table import CASE_COLUMNS, case_row, labelled_summary, next_sort, sort_cases
from ReciprocalSegLib.logic import ReciprocalSegLoop
from ReciprocalSegLib.package_install import ensure_requirements
from ReciprocalSegLib.panel_rules import PanelState, enabled_widgets, submit_button_text, visible_widgets
from ReciprocalSegLib.scene_cases import ROLE_IMAGE, ROLE_REFINED, ROLE_SCRIBBLES, ROLE_STUDENT
from ReciprocalSegLib.segment_export import segment_id_for_class
from ReciprocalSegLib.status_text import (
    RUNNING_STATES,
    format_plan_box,
    format_training_status,
    round_end_message,
)
from ReciprocalSegLib.submission import task_name as submission_task_name
from ReciprocalSegLib.tasks import StatusPoller, TaskBusyError, TaskCancelled, TaskRunner
from ReciprocalSegLib.training_request import training_request

from reciprocalseg.config import PRESETS
from reciprocalseg.service import slicer_requirements

# isort: split
# Slicer-only imports. Everything above must import in plain Python with only the packages that
# Slicer bundles (tests/slicer/test_static_imports_lint.py checks it).
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

# isort: split
from ReciprocalSegWidgets.application import open_segment_editor, wait_for_training_with_events
from ReciprocalSegWidgets.channel_widgets import fill_layer_combo, pick_channels

MODULE_NAME = "ReciprocalSeg"
MIN_PYTHON = (3, 10)

BACKEND_MODES = ("local", "remote")
# Presets come from the core package; "auto" (planned from the cases) first: the default.
PRESET_NAMES = tuple(sorted(PRESETS, key=lambda name: (name != "auto", name)))
DEVICES = ("auto", "cpu", "cuda")  # the service's TrainingRequest.device values
# full label: edit a whole label (from scratch or the student's prediction), every voxel submitted;
# scribbles: strokes per class and background, only painted voxels submitted (ReciprocalSegLib.scribbles).
ANNOTATION_MODES = ("full label", "scribbles")
SCRIBBLES = "scribbles"

SETTINGS_WORKSPACE = "ReciprocalSeg/Workspace"
SETTINGS_BACKEND_MODE = "ReciprocalSeg/BackendMode"
SETTINGS_REMOTE_URL = "ReciprocalSeg/RemoteUrl"
SETTINGS_REMOTE_TOKEN = "ReciprocalSeg/RemoteToken"


def _defaultWorkspace():
    return str(Path.home() / "ReciprocalSeg")


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


@parameterNodeWrapper
class ReciprocalSegParameterNode:
    """Panel choices saved with the scene (the remote token only in the application settings).

    backendMode local/remote; workspace of a local service; remoteUrl; preset, time budget in
    minutes (0: the iterations decide), iterations per phase (0: the preset's) and device of
    training; inputVolume, the volume "Add volume" sends; liveModel: predict with the round in
    training; nextByQa: *Next to annotate* orders by QA flags instead of disagreement;
    annotationMode: what *Edit* and *Submit* work on, the full label or the scribbles.
    """

    backendMode: Annotated[str, Choice(BACKEND_MODES)] = "local"
    workspace: Path
    remoteUrl: str = ""
    preset: Annotated[str, Choice(PRESET_NAMES)] = "auto"
    minutes: Annotated[float, WithinRange(0.0, 1440.0)] = 0.0  # the service's TrainingRequest limit
    iterations: Annotated[int, WithinRange(0, 1000000)] = 0
    device: Annotated[str, Choice(DEVICES)] = "auto"
    inputVolume: vtkMRMLScalarVolumeNode
    liveModel: bool = False
    nextByQa: bool = False
    annotationMode: Annotated[str, Choice(ANNOTATION_MODES)] = "full label"


class ReciprocalSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: Backend, Data, Annotate, Train, Predict.

    Every slot does its scene step on the GUI thread and hands service calls to ``self.tasks``
    (``_run``); while a task runs its buttons are disabled, a progress bar moves and *Cancel*
    stops it between requests.
    """

    POLL_INTERVAL_MS = 1000
    TASK_INTERVAL_MS = 50

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.tasks = TaskRunner()
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._currentCaseId = None
        self._lastTrainingState = None
        self.poller = StatusPoller()  # training progress, asked on its own thread
        self._pollTimer = None
        self._taskTimer = None
        self._cases = []  # the last case list, re-sorted by a header click
        self._caseSort = (0, False)  # (column, descending)
        self._lastStatus = None  # the last training status (its plan goes to the plan box)
        self._nextPlan = None  # what an auto round would plan now (Client.plan())

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

        for button, slot in (
            (self.ui.connectButton, self.onConnect),
            (self.ui.disconnectButton, self.onDisconnect),
            (self.ui.addCurrentVolumeButton, self.onAddCurrentVolume),
            (self.ui.addAllVolumesButton, self.onAddAllVolumes),
            (self.ui.addFolderButton, self.onAddFolder),
            (self.ui.caseFromVolumesButton, self.onCaseFromVolumes),
            (self.ui.refreshCasesButton, self.onRefreshCases),
            (self.ui.nextCaseButton, self.onNextCase),
            (self.ui.removeCaseButton, self.onRemoveCase),
            (self.ui.editLabelButton, self.onEditLabel),
            (self.ui.submitLabelButton, self.onSubmitLabel),
            (self.ui.startTrainingButton, self.onStartTraining),
            (self.ui.stopTrainingButton, self.onStopTraining),
            (self.ui.showLearningCurveButton, self.onShowLearningCurve),
            (self.ui.predictButton, self.onPredict),
            (self.ui.correctFromStudentButton, self.onCorrectFromStudent),
            (self.ui.retrainButton, self.onRetrain),
            (self.ui.cancelTaskButton, self.onCancelTask),
            (self.ui.applyClassCountButton, self.onApplyClassCount),
            (self.ui.refineButton, self.onRefine),
            (self.ui.acceptRefinedButton, self.onAcceptRefined),
            (self.ui.autoRetrainCheckBox, self.onAutoRetrain),
        ):
            button.connect("clicked(bool)", slot)
        self.ui.autoRetrainSpinBox.connect("editingFinished()", self.onAutoRetrain)
        self.ui.casesTable.connect("itemSelectionChanged()", self.onCaseSelectionChanged)
        self.ui.channelLayerComboBox.connect("currentIndexChanged(int)", self.onChannelLayerChanged)
        # The panel sorts the rows itself (numbers as numbers, empty cells last): see case_table.py.
        header = self.ui.casesTable.horizontalHeader()
        header.setSortIndicatorShown(True)
        header.connect("sectionClicked(int)", self.onCaseHeaderClicked)
        self.ui.remoteTokenLineEdit.setText(slicer.util.settingsValue(SETTINGS_REMOTE_TOKEN, ""))

        # Training progress: a worker thread asks the service, this timer shows the answers.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._onPollTimer)
        # Background tasks: this timer delivers their progress and results on the GUI thread.
        self._taskTimer = qt.QTimer()
        self._taskTimer.setInterval(self.TASK_INTERVAL_MS)
        self._taskTimer.connect("timeout()", self._onTaskTimer)

        self.initializeParameterNode()
        self._updateGui()

    def cleanup(self):
        for timer in (self._pollTimer, self._taskTimer):
            if timer is not None:
                timer.stop()
        self.tasks.cancel()
        self.removeObservers()
        if self.logic is not None:
            self.logic.release_service()  # asks the service to stop; it checkpoints by itself

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

    # ------------------------------------------------------------------ background tasks

    def _run(self, name, work, done=None):
        """Run ``work(context)`` on the task runner; ``done(result)`` then runs on the GUI thread."""

        def onDone(result):
            with slicer.util.tryWithErrorDisplay(_("{task}: could not show the result.").format(task=name)):
                if done is not None:
                    done(result)

        def onError(error):
            if isinstance(error, TaskCancelled):
                slicer.util.showStatusMessage(messages.task_cancelled(name), 5000)
            else:
                slicer.util.errorDisplay(messages.task_failed(name, error))

        try:
            self.tasks.submit(name, work, onDone, onError, self._showTaskProgress)
        except TaskBusyError as error:
            slicer.util.showStatusMessage(str(error), 3000)
            return
        self.ui.taskStatusLabel.setText(name + "...")
        self.ui.taskProgressBar.setRange(0, 0)  # busy until the task reports a fraction
        self._taskTimer.start()
        self._updateGui()

    def _showTaskProgress(self, fraction, text):
        if fraction is not None:
            self.ui.taskProgressBar.setRange(0, 1000)
            self.ui.taskProgressBar.setValue(int(round(1000 * fraction)))
        if text:
            self.ui.taskStatusLabel.setText(text)

    def _onTaskTimer(self):
        self.tasks.poll()
        if not self.tasks.busy:
            self._taskTimer.stop()
            self.ui.taskStatusLabel.setText("")
            self.ui.taskProgressBar.setRange(0, 1)
            self.ui.taskProgressBar.setValue(0)
        self._updateGui()

    def onCancelTask(self):
        self.tasks.cancel()

    # ------------------------------------------------------------------ GUI state

    def _updateGui(self, caller=None, event=None):
        node = self._parameterNode
        connected = self.logic is not None and self.logic.connected
        roles = self.logic.case_roles(self._currentCaseId) if connected else set()
        state = PanelState(
            connected=connected,
            busy=self.tasks.busy,
            training=self._lastTrainingState in RUNNING_STATES,
            case_selected=self._currentCaseId is not None,
            input_volume=node is not None and node.inputVolume is not None,
            scribbling=node is not None and node.annotationMode == SCRIBBLES,
            student_shown=ROLE_STUDENT in roles,
            scribbles_shown=ROLE_SCRIBBLES in roles,
            refined_shown=ROLE_REFINED in roles,
            budget=node is not None and bool(node.minutes),
            remote=node is not None and node.backendMode == "remote",
            layers=self.ui.channelLayerComboBox.count > 1,
        )
        # Widget names from ReciprocalSegLib.panel_rules (tests/slicer check them against the .ui).
        for name, visible in visible_widgets(state).items():
            getattr(self.ui, name).setVisible(visible)
        for name, enabled in enabled_widgets(state).items():
            getattr(self.ui, name).setEnabled(enabled)
        self.ui.submitLabelButton.setText(submit_button_text(state))

    def _showBackendState(self, info=None):
        local = self.logic.service is not None
        self.ui.backendStatusLabel.setText(
            messages.backend_state(self.logic.connected, local, self.logic.url, info)
        )

    # ------------------------------------------------------------------ Backend

    def onConnect(self):
        node = self._parameterNode
        if node.backendMode == "remote":
            url, token = node.remoteUrl, self.ui.remoteTokenLineEdit.text.strip()
            settings = qt.QSettings()
            settings.setValue(SETTINGS_REMOTE_URL, url)
            settings.setValue(SETTINGS_REMOTE_TOKEN, token)
            settings.setValue(SETTINGS_BACKEND_MODE, node.backendMode)
            self._run(_("Connecting"), lambda c: self.logic.connect(url, token or None), self._onConnected)
            return
        workspace = node.workspace
        qt.QSettings().setValue(SETTINGS_WORKSPACE, str(workspace))
        qt.QSettings().setValue(SETTINGS_BACKEND_MODE, node.backendMode)
        with slicer.util.tryWithErrorDisplay(_("Could not install the packages the service needs.")):
            # pip must run on the main thread (slicer-notes); it asks first and shows its progress.
            if not self.logic.ensure_requirements(askConfirmation=True):
                return
            start = lambda c: self.logic.start_local_service(workspace, timeout=120.0, askConfirmation=False)  # noqa: E731
            self._run(_("Starting the local service"), start, self._onConnected)

    def _onConnected(self, info):
        self.logic.connectQuit()
        self._showBackendState(info)
        self._showClassCount((info.n_classes - 1, bool(getattr(info, "n_classes_fixed", False))))
        self._pollTimer.start()
        self.onRefreshCases()

    def onDisconnect(self):
        self._pollTimer.stop()
        self._lastTrainingState = None
        self._run(
            _("Stopping the service"), lambda c: self.logic.stop_service(), lambda r: self._showBackendState()
        )

    # ------------------------------------------------------------------ Data

    def onAddCurrentVolume(self):
        self._addVolumes([self._parameterNode.inputVolume.GetID()], [])

    def onAddAllVolumes(self):
        self._addVolumes(*self.logic.volumes_to_add())

    def _addVolumes(self, nodeIds, skipped):
        if skipped:
            slicer.util.warningDisplay("\n".join(skipped), windowTitle=_("Volumes skipped"))
        if nodeIds:
            add = lambda c: self.logic.add_volumes(nodeIds, c)  # noqa: E731
            self._run(_("Adding volumes"), add, self._showBatchResult)

    def _showBatchResult(self, result):
        """Every case added is tagged already; the failures are named (batch.py)."""
        slicer.util.showStatusMessage(result.message(), 8000)
        if result.failed:
            slicer.util.errorDisplay(result.failure_text(), windowTitle=_("Not added"))
        self.onRefreshCases()

    def onAddFolder(self):
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Folder of images (and <ID>_label files)"), str(Path.home())
        )
        if folder:
            add = lambda c: self.logic.add_folder(folder, c)  # noqa: E731
            self._run(_("Adding the folder"), add, self._showBatchResult)

    def onCaseFromVolumes(self):
        choice = pick_channels(slicer.util.mainWindow(), slicer.mrmlScene)  # (node IDs, names) or None
        if choice:
            add = lambda c: self.logic.add_channel_case(*choice, context=c)  # noqa: E731
            show = lambda caseId: self._showCase(caseId, then=lambda v, s: self.onRefreshCases())  # noqa: E731
            self._run(_("Adding a case of {n} images").format(n=len(choice[0])), add, show)

    def onRefreshCases(self):
        if not self.logic.connected:
            return

        def done(answer):  # the case list and what follows the labels (logic.overview)
            cases, classes, self._nextPlan, retrain = answer
            self._showCases(cases)
            self._showClassCount(classes)
            self._showPlan()
            self._showAutoRetrain(retrain)

        self._run(_("Listing cases"), lambda context: self.logic.overview(), done)

    def onCaseHeaderClicked(self, column):
        self._caseSort = next_sort(self._caseSort, column)
        self._showCases(self._cases)

    def _showCases(self, cases):
        self._cases = list(cases)
        column, descending = self._caseSort
        cases = sort_cases(self._cases, column, descending)
        table = self.ui.casesTable
        table.blockSignals(True)
        try:
            table.setColumnCount(len(CASE_COLUMNS))
            table.setHorizontalHeaderLabels([_(name) for name in CASE_COLUMNS])
            table.horizontalHeader().setSortIndicator(
                column, qt.Qt.DescendingOrder if descending else qt.Qt.AscendingOrder
            )
            table.setRowCount(len(cases))
            for row, case in enumerate(cases):
                for col, value in enumerate(case_row(case)):
                    table.setItem(row, col, qt.QTableWidgetItem(value))
        finally:
            table.blockSignals(False)
        self._selectCaseRow(self._currentCaseId)
        self.ui.labelledCountLabel.setText(labelled_summary(cases))

    def _selectedCaseId(self):
        row = self.ui.casesTable.currentRow()
        item = self.ui.casesTable.item(row, 0) if row >= 0 else None
        return item.text() if item is not None else None

    def onCaseSelectionChanged(self):
        caseId = self._selectedCaseId()
        if caseId and caseId != self._currentCaseId:
            self._showCase(caseId)

    def _showCase(self, caseId, then=None):
        """Download and read what the scene lacks (task), then show the case."""

        def done(nodes):
            volume, segmentation = nodes
            self._currentCaseId = caseId
            self.ui.selectedCaseLabel.setText(caseId)
            self.ui.predictionLabel.setText("")
            slicer.util.setSliceViewerLayers(background=volume, foreground=None, fit=True)
            fill_layer_combo(self.ui.channelLayerComboBox, self.logic.layer_choices(caseId))
            if then is not None:
                then(volume, segmentation)

        self._run(_("Showing {case}").format(case=caseId), lambda c: self.logic.load_case(caseId, c), done)

    def onChannelLayerChanged(self, index):  # channel 0 stays behind; item 0: no layer
        if self._currentCaseId:
            with slicer.util.tryWithErrorDisplay(_("Could not show the layer.")):
                self.logic.show_layer(self._currentCaseId, index)

    def _selectCaseRow(self, caseId):
        table = self.ui.casesTable
        table.blockSignals(True)  # the case is shown by the caller, not by the selection signal
        try:
            for row in range(table.rowCount):
                item = table.item(row, 0)
                if item is not None and item.text() == caseId:
                    table.selectRow(row)
        finally:
            table.blockSignals(False)

    def onNextCase(self):
        by = "qa" if self._parameterNode.nextByQa else "disagreement"

        def done(answer):
            caseId, score = answer
            if caseId is None:
                slicer.util.infoDisplay(messages.EVERY_CASE_LABELLED)
                return
            self._selectCaseRow(caseId)
            self._showCase(caseId)
            flags = getattr(self.logic.last_next_case, "qa_flags", None)
            message = messages.next_case(caseId, score, flags, by)
            if message:
                slicer.util.showStatusMessage(message, 5000)

        # The service may predict every unscored case first: minutes, so off the GUI thread.
        self._run(_("Ranking the cases"), lambda context: self.logic.next_case(by), done)

    def onRemoveCase(self):
        caseId = self._currentCaseId
        if not caseId or not slicer.util.confirmOkCancelDisplay(messages.confirm_remove(caseId)):
            return

        def done(result):
            self.logic.forget_case(caseId)
            self._currentCaseId = None
            self.ui.selectedCaseLabel.setText(_("(none)"))
            self.onRefreshCases()

        remove = lambda c: self.logic.delete_case_on_service(caseId)  # noqa: E731
        self._run(_("Removing {case}").format(case=caseId), remove, done)

    # ------------------------------------------------------------------ Annotate

    def onEditLabel(self):
        if self._parameterNode.annotationMode == SCRIBBLES:
            self._showCase(self._currentCaseId, then=self._editScribbles)
            return
        self._showCase(
            self._currentCaseId, then=lambda volume, label: self.logic.open_segment_editor(label, volume)
        )

    def _editScribbles(self, volume, label):
        """The case's scribble segmentation (Background + a segment per class) in the Segment Editor,
        the first class selected and the Paint effect active."""
        with slicer.util.tryWithErrorDisplay(_("Could not open the scribbles.")):
            scribbles = self.logic.scribble_segmentation(self._currentCaseId)
            self.logic.open_segment_editor(
                scribbles, volume, segmentId=segment_id_for_class(1), effect="Paint"
            )

    def onSubmitLabel(self):
        caseId, scribbling = self._currentCaseId, self._parameterNode.annotationMode == SCRIBBLES
        confirm = slicer.util.confirmOkCancelDisplay  # asked (GUI thread) before an empty label goes

        def done(result):
            slicer.util.showStatusMessage(result.done_message(), 8000)
            self.onRefreshCases()

        # A copy of what is painted is taken on the GUI thread; the export and upload run in the task.
        submit = lambda c: self.logic.submit(caseId, scribbling, c, confirm=confirm)  # noqa: E731
        self._run(submission_task_name(caseId, scribbling), submit, done)

    # ------------------------------------------------------------------ Train

    def _showClassCount(self, classes):
        """(foreground classes, fixed?) from the service into the spin box and the toggle (only
        *Apply* sends them: no signal of theirs is connected)."""
        self.ui.classCountSpinBox.setValue(max(int(classes[0]), 1))
        self.ui.classCountFixedCheckBox.setChecked(bool(classes[1]))

    def onAutoRetrain(self):
        after = self.ui.autoRetrainSpinBox.value if self.ui.autoRetrainCheckBox.checked else None
        minutes = self._parameterNode.minutes or None  # None: the service's (10 at first)
        apply = lambda c: self.logic.set_auto_retrain(after, minutes)  # noqa: E731
        self._run(_("Setting retraining"), apply, self._showAutoRetrain)

    def _showAutoRetrain(self, settings):
        """(K or None, minutes, corrections, message) from the service; setting the widgets sends
        nothing (``clicked`` and ``editingFinished`` come from the user only)."""
        self.ui.autoRetrainCheckBox.setChecked(settings[0] is not None)
        self.ui.autoRetrainSpinBox.setValue(int(settings[0] or self.ui.autoRetrainSpinBox.value))
        self.ui.autoRetrainLabel.setText(messages.auto_retrain(*settings))

    def onApplyClassCount(self):
        foreground = self.ui.classCountSpinBox.value if self.ui.classCountFixedCheckBox.checked else None

        def done(classes):
            self._showClassCount(classes)
            slicer.util.showStatusMessage(messages.class_count_set(*classes), 5000)

        apply = lambda context: self.logic.set_class_count(foreground)  # noqa: E731
        self._run(_("Setting the class count"), apply, done)

    def _startTraining(self, warmStart):
        node = self._parameterNode
        request = training_request(node.preset, node.minutes, node.iterations, node.device, warmStart)

        def start(context):
            return self.logic.start_training(**request)

        def done(status):
            self.poller.new_generation()
            self._lastTrainingState = status.state
            self.ui.trainingStatusLabel.setText(
                format_training_status(status, self.logic.budget_minutes(status))
            )
            self._lastStatus = status
            self._showPlan()
            self._pollTimer.start()

        self._run(_("Starting training"), start, done)

    def onStartTraining(self):
        self._startTraining(warmStart=False)

    def onRetrain(self):
        self._startTraining(warmStart=True)

    def onStopTraining(self):
        self._run(_("Stopping training"), lambda context: self.logic.stop_training())

    def onShowLearningCurve(self):
        chart = self.logic.learning_curve.chart
        if chart is None or chart.GetScene() is None:
            slicer.util.showStatusMessage(messages.NO_LOSSES, 3000)
            return
        slicer.modules.plots.logic().ShowChartInLayout(chart)

    def _showPlan(self):
        """The plan box: the planned values of the round in training (or the last one) and what an
        auto round would plan from the current cases, each with the planner's reasons."""
        self.ui.planLabel.setText(format_plan_box(self._lastStatus, self._nextPlan))

    def _onPollTimer(self):
        for kind, payload in self.poller.drain():
            if kind == "status":
                self._showTrainingStatus(payload)
            else:
                self.ui.trainingStatusLabel.setText(messages.service_not_answering(payload))
        if not self.logic.connected:
            self._pollTimer.stop()
            return
        self.poller.poll(self.logic.polling_client().training_status)

    def _showTrainingStatus(self, status):
        fraction = status.fraction  # overall progress of the round (both phases) when known
        if fraction is not None:
            self.ui.trainingProgressBar.setRange(0, 1000)
            self.ui.trainingProgressBar.setValue(int(round(1000 * fraction)))
        self.ui.trainingStatusLabel.setText(format_training_status(status, self.logic.budget_minutes(status)))
        self._lastStatus = status
        self._showPlan()
        curve = self.logic.learning_curve
        if status.state in RUNNING_STATES and curve.add(status) and curve.update_nodes():
            # Only a chart that did not exist is put in the layout; later rounds leave the layout alone.
            slicer.modules.plots.logic().ShowChartInLayout(curve.chart)
        previous, self._lastTrainingState = self._lastTrainingState, status.state
        if previous in RUNNING_STATES and status.state not in RUNNING_STATES:
            message, failed = round_end_message(status)
            slicer.util.showStatusMessage(message, 10000)
            self.onRefreshCases()
            if failed:
                slicer.util.errorDisplay(message)
            else:
                self.ui.trainingProgressBar.setValue(self.ui.trainingProgressBar.maximum)
                slicer.util.infoDisplay(message, windowTitle=_("ReciprocalSeg"))
        self._updateGui()

    # ------------------------------------------------------------------ Predict

    def onPredict(self):
        caseId, live = self._currentCaseId, self._parameterNode.liveModel

        def done(nodes):
            volume = self.logic.case_node(caseId, ROLE_IMAGE)
            # Zero disagreement is transparent (thresholded), so the overlay never dims the scan.
            slicer.util.setSliceViewerLayers(background=volume, foreground=nodes[2], foregroundOpacity=0.6)
            model = self.logic.last_prediction_model
            self.ui.predictionLabel.setText(messages.prediction_line(model, self.logic.last_prediction_score))
            slicer.util.showStatusMessage(messages.predicted(caseId, model), 5000)
            self.onRefreshCases()

        predict = lambda c: self.logic.show_prediction(caseId, live, c)  # noqa: E731
        self._run(_("Predicting {case}").format(case=caseId), predict, done)

    def onRefine(self):
        caseId = self._currentCaseId

        def done(refined):
            slicer.util.showStatusMessage(messages.refined(caseId, self.logic.last_refined), 10000)
            self.onRefreshCases()

        refine = lambda c: self.logic.refine(caseId, context=c)  # noqa: E731
        self._run(_("Refining {case}").format(case=caseId), refine, done)

    def onAcceptRefined(self):
        caseId = self._currentCaseId

        def done(version):
            slicer.util.showStatusMessage(messages.accepted(caseId, version), 8000)
            self.onRefreshCases()

        accept = lambda c: self.logic.accept_refined(caseId, c)  # noqa: E731
        self._run(_("Accepting the refined {case}").format(case=caseId), accept, done)

    def onCorrectFromStudent(self):
        caseId = self._currentCaseId
        volume = self.logic.case_node(caseId, ROLE_IMAGE)
        copy = lambda c: self.logic.copy_student_to_label(caseId, c)  # noqa: E731
        edit = lambda label: self.logic.open_segment_editor(label, volume)  # noqa: E731
        self._run(_("Copying the student's prediction"), copy, edit)


class ReciprocalSegLogic(ScriptedLoadableModuleLogic, ReciprocalSegLoop):
    """The annotation loop (``ReciprocalSegLib.logic``) for the panel and the Python console:
    ``slicer.util.getModuleLogic("ReciprocalSeg")`` (docs/SLICER.md, "Scripting", shows the calls)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        ReciprocalSegLoop.__init__(self, scratch_dir=Path(slicer.app.temporaryPath) / "ReciprocalSeg")
        self._quitConnected = False

    def getParameterNode(self):
        return ReciprocalSegParameterNode(super().getParameterNode())

    def ensure_requirements(self, askConfirmation=True):
        """Install the missing Python packages (after confirmation; main thread). False if declined."""
        if sys.version_info < MIN_PYTHON:
            version = ".".join(map(str, sys.version_info[:3]))
            raise RuntimeError(
                _("ReciprocalSeg needs Slicer 5.10 or later; this one runs Python {v}.").format(v=version)
            )
        return ensure_requirements(self._scratch(), askConfirmation=askConfirmation)

    def connectQuit(self):
        """Stop a local service when Slicer quits (main thread)."""
        if not self._quitConnected:
            slicer.app.connect("aboutToQuit()", self.release_service)  # never waits for the service
            self._quitConnected = True

    def start_local_service(self, workspace=None, timeout=60.0, askConfirmation=True):
        """Start a service in Slicer's Python on a free loopback port and connect to it (blocks).

        The panel calls this on its task runner after ``ensure_requirements`` ran on the main thread.
        """
        if not self.ensure_requirements(askConfirmation=askConfirmation):
            raise RuntimeError(_("The required Python packages were not installed."))
        from reciprocalseg.client import service_python

        python = service_python()  # PythonSlicer, never sys.executable (inside Slicer that is Slicer itself)
        # The child process must find the core package, which sits beside this file.
        env = dict(os.environ)
        moduleDir = os.path.dirname(os.path.abspath(__file__))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (moduleDir, env.get("PYTHONPATH", "")) if p)
        workspace = Path(workspace or _defaultWorkspace()).expanduser()
        return ReciprocalSegLoop.start_local_service(self, workspace, python, env=env, timeout=timeout)

    # Application-side steps in ReciprocalSegWidgets/application.py (Qt events, the Segment Editor).
    wait_for_training = wait_for_training_with_events
    open_segment_editor = staticmethod(open_segment_editor)


class ReciprocalSegTest(ScriptedLoadableModuleTest):
    """The whole loop inside Slicer on small phantoms (registered with ctest; run with --testing).

    The steps and checks are ``ReciprocalSegLib.loop_check`` (also run on slicer-core in CI); this
    test adds what only the application has: Slicer's reader, PythonSlicer and the module logic."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ReciprocalSegLoop()

    def test_ReciprocalSegLoop(self):
        import tempfile

        from ReciprocalSegLib.loop_check import check_whole_loop, write_phantoms

        reason = slicer_requirements.missing_for_test()
        if reason:  # an extension build machine: never install packages from a test
            self.skipTest(reason)
        self.delayDisplay("Building a phantom scene")
        tmp = Path(tempfile.mkdtemp(prefix="ReciprocalSegTest-"))
        logic = ReciprocalSegLogic()
        try:
            paths, truths = write_phantoms(tmp)
            volumes = [slicer.util.loadVolume(str(path), {"show": False}) for path in paths]
            self.delayDisplay("Starting a local service")
            info = logic.start_local_service(tmp / "workspace", timeout=120.0, askConfirmation=False)
            self.assertTrue(logic.connected)
            self.assertIn(info.device.type, ("cpu", "cuda"))
            check_whole_loop(logic, volumes, truths, tmp, say=self.delayDisplay)
            self.delayDisplay("Test passed")
        finally:
            logic.stop_service()
            shutil.rmtree(tmp, ignore_errors=True)
