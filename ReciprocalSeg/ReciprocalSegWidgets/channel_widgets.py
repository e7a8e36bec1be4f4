"""The panel's *Case from volumes...* dialog and its *Layer* selector (issue 24): Qt only shows and
forwards; what the rows mean, the names suggested, the checks and the layers are
ReciprocalSegLib.case_channels (tested without Qt on Slicer's real MRML).

Qt and Slicer calls, each read in their sources: qMRMLNodeComboBox's nodeTypes, noneEnabled,
addEnabled, removeEnabled, renameEnabled, setMRMLScene, setCurrentNode, currentNode and the
currentNodeChanged(vtkMRMLNode*) signal (Libs/MRML/Widgets/qMRMLNodeComboBox.h, every Slicer 5.x);
QDialog.exec_() as slicer.util.messageBox calls it (Base/Python/slicer/util.py); QComboBox's
clear, addItems, setCurrentIndex, count and QObject.blockSignals (Qt 5).
"""

import qt
import slicer
from ReciprocalSegLib.case_channels import MAX_CHANNELS, choice_from_rows, suggest_channel_name

FIRST_ROWS = 2


def pick_channels(parent, scene):
    """Main thread, modal: the volumes the user picks in channel order with a name each, checked;
    (node IDs, names), or None when cancelled. A refused choice keeps the dialog open with the reason."""
    dialog = qt.QDialog(parent)
    dialog.setWindowTitle("Case from volumes")
    layout = qt.QVBoxLayout(dialog)
    intro = qt.QLabel(
        "Pick the volumes of one case in channel order and name each (such as T2, ADC). Channel 0 is "
        "the background and the grid every other channel must lie on."
    )
    intro.setWordWrap(True)
    layout.addWidget(intro)
    form = qt.QFormLayout()
    layout.addLayout(form)
    rows = []

    def addRow():
        if len(rows) >= MAX_CHANNELS:
            return
        volume, name, index = slicer.qMRMLNodeComboBox(), qt.QLineEdit(), len(rows)
        volume.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        volume.noneEnabled = True
        volume.addEnabled = volume.removeEnabled = volume.renameEnabled = False
        volume.setMRMLScene(scene)
        volume.setCurrentNode(None)
        name.setPlaceholderText("name, such as T2")

        def suggest(node):
            if node is not None:
                taken = [n.text for _, n in rows if n is not name]
                name.setText(suggest_channel_name(node.GetName(), index, taken))

        volume.connect("currentNodeChanged(vtkMRMLNode*)", suggest)
        row = qt.QHBoxLayout()
        row.addWidget(volume, 2)
        row.addWidget(name, 1)
        form.addRow(f"Channel {index}:", row)
        rows.append((volume, name))

    for _ in range(FIRST_ROWS):
        addRow()
    more = qt.QPushButton("Add a channel")
    more.connect("clicked(bool)", lambda checked: addRow())
    layout.addWidget(more)
    problem = qt.QLabel()
    problem.setWordWrap(True)
    problem.setStyleSheet("color: #c00")
    layout.addWidget(problem)
    buttons = qt.QDialogButtonBox(qt.QDialogButtonBox.Ok | qt.QDialogButtonBox.Cancel)
    layout.addWidget(buttons)
    chosen = []

    def accept():
        try:
            chosen[:] = [choice_from_rows([(volume.currentNode(), name.text) for volume, name in rows])]
        except ValueError as error:
            problem.setText(str(error))
            return
        dialog.accept()

    buttons.connect("accepted()", accept)
    buttons.connect("rejected()", dialog.reject)
    accepted = dialog.exec_()
    dialog.deleteLater()
    return chosen[0] if accepted and chosen else None


def fill_layer_combo(combo, choices):
    """The layer selector's items (case_channels.layer_choices) without emitting a change; then the
    first channel after 0 is selected (that emits, and the slot shows it), as a new case shows it."""
    combo.blockSignals(True)
    try:
        combo.clear()
        combo.addItems(choices)
    finally:
        combo.blockSignals(False)
    if combo.count > 1:
        combo.setCurrentIndex(1)
