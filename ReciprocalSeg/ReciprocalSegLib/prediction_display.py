"""How predictions look: teacher filled, student as an outline, disagreement with zero transparent,
the refined map filled in greens."""

from __future__ import annotations

from typing import Any

# Segment colours per class: the editable label, the teacher (cool) and the student (warm).
LABEL_COLORS = ((0.95, 0.85, 0.2), (0.3, 0.8, 0.3), (0.8, 0.4, 0.8), (0.4, 0.8, 0.9))
TEACHER_COLORS = ((0.2, 0.45, 1.0), (0.1, 0.75, 0.85), (0.45, 0.3, 0.95), (0.2, 0.6, 0.6))
STUDENT_COLORS = ((1.0, 0.45, 0.1), (0.95, 0.2, 0.35), (0.9, 0.7, 0.1), (0.85, 0.35, 0.6))
# The refined prediction (strokes taken in): greens, apart from the teacher's blues and the student's oranges.
REFINED_COLORS = ((0.2, 0.9, 0.35), (0.6, 0.95, 0.2), (0.1, 0.7, 0.5), (0.75, 0.9, 0.45))
# Heat colour table for the disagreement map (Libs/MRML/Logic/vtkMRMLColorLogic.h), with a fallback.
HEAT_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeIron")


def show_teacher(segmentation_node: Any) -> None:
    display = segmentation_node.GetDisplayNode()
    display.SetAllSegmentsVisibility2DFill(True)
    display.SetAllSegmentsVisibility2DOutline(True)


def show_student(segmentation_node: Any) -> None:
    """Outline only, so the student reads on top of the filled teacher."""
    display = segmentation_node.GetDisplayNode()
    display.SetAllSegmentsVisibility2DFill(False)
    display.SetAllSegmentsVisibility2DOutline(True)


def show_refined(segmentation_node: Any) -> None:
    """Filled and outlined, like the teacher: the refined map is the one to accept or paint over."""
    display = segmentation_node.GetDisplayNode()
    display.SetAllSegmentsVisibility2DFill(True)
    display.SetAllSegmentsVisibility2DOutline(True)


def show_disagreement(volume_node: Any, scene: Any, value_range: tuple | None = None) -> None:
    """Heat colours where teacher and student disagree; voxels with zero disagreement transparent.

    ``value_range`` is (smallest positive value, largest value), computed where the voxels were
    read (off the GUI thread); from the node's voxels when None. A scalar volume's display node
    makes voxels outside [lower, upper] transparent when its threshold is applied
    (vtkMRMLScalarVolumeDisplayNode), so the overlay never dims the scan where the two agree.
    """
    if volume_node.GetDisplayNode() is None:
        volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    for color_id in HEAT_COLOR_NODE_IDS:
        if scene.GetNodeByID(color_id) is not None:
            display.SetAndObserveColorNodeID(color_id)
            break
    lower, top = value_range if value_range is not None else _positive_range(volume_node)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, max(top, lower))
    display.SetAutoThreshold(False)
    # Just above zero (half the smallest positive value): every disagreeing voxel stays visible.
    display.SetThreshold(lower / 2.0, max(top, lower))
    display.SetApplyThreshold(True)


def _positive_range(volume_node: Any) -> tuple:
    from slicer.util import arrayFromVolume

    values = arrayFromVolume(volume_node)
    positive = values[values > 0]
    return (float(positive.min()) if positive.size else 1.0, float(values.max()) if values.size else 1.0)
