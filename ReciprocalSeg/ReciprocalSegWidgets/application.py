"""The module logic's steps that need Slicer's application (the main window, its module widgets).

Every call was read in Slicer's source (v5.8.1, v5.10.0, v5.12.3): ``slicer.util.selectModule`` and
``slicer.util.getModuleWidget`` (Base/Python/slicer/util.py); ``qMRMLSegmentEditorWidget``'s
setSegmentationNode, setSourceVolumeNode, setCurrentSegmentID, setActiveEffectByName
(Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.h); ``slicer.app.processEvents``
(QCoreApplication).
"""

import slicer
from ReciprocalSegLib.logic import ReciprocalSegLoop


def open_segment_editor(segmentationNode, volumeNode, segmentId=None, effect=None):
    """Switch to the Segment Editor with this segmentation and source volume selected (and, when
    given, this segment and effect, e.g. "Paint" for scribbles)."""
    slicer.util.selectModule("SegmentEditor")
    editor = slicer.util.getModuleWidget("SegmentEditor").editor
    editor.setSegmentationNode(segmentationNode)
    if volumeNode is not None:
        editor.setSourceVolumeNode(volumeNode)
    if segmentId is not None and segmentationNode.GetSegmentation().GetSegment(segmentId) is not None:
        editor.setCurrentSegmentID(segmentId)
    if effect is not None:
        editor.setActiveEffectByName(effect)


def wait_for_training_with_events(logic, poll=1.0, timeout=None, callback=None):
    """Block until the round ends (scripts and the console; Qt events are processed between polls)."""

    def onStatus(status):
        slicer.app.processEvents()
        if callback is not None:
            callback(status)

    return ReciprocalSegLoop.wait_for_training(logic, poll=poll, timeout=timeout, callback=onStatus)
