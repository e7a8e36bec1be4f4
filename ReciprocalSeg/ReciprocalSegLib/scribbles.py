"""Scribbles: a few strokes per class and for the background; only painted voxels are annotated.

A case's scribble segmentation (role ``scribbles``) holds one segment ``background`` (named
"Background") and one segment ``class_k`` per class (named as the case label's class segments,
"Class k" by default). The user paints strokes in them with the Segment Editor on any slices.
Exported on the scan's grid, the strokes become a partial label map:

- a voxel in no segment is **unannotated**, value ``UNANNOTATED`` (255): training ignores it;
- a voxel of the Background segment is 0 (annotated as background);
- a voxel of a class segment is that class's value k.

Classes come from segment identity as in the full-label export (``segment_export``): the ID
``class_k``, else the name ("Class k" or a class segment's name); a segment named "Background"
(any case) or with the ID ``background`` is the background. Deleting, reordering or adding
segments therefore never changes what a stroke means.

Overlaps are resolved without looking at the segment order: a voxel painted in segments of
*different* classes (Background included) is left unannotated, since the strokes contradict
each other there, and the count is reported (with the Segment Editor's default masking, "overwrite
all", strokes do not overlap; other masking modes can make them). Segments of the same class may
overlap freely. A scribble with no annotated voxel is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .scene_cases import CaseNodes
from .segment_export import (
    UNANNOTATED,
    SegmentClassError,
    class_of_segment,
    default_class_name,
    export_segment_node,
    exported_masks,
    segment_id_for_class,
    write_label_array,
)

BACKGROUND_SEGMENT_ID = "background"
BACKGROUND_NAME = "Background"
BACKGROUND_COLOR = (0.55, 0.75, 1.0)  # a pale blue, apart from the class colours
BACKGROUND = 0


class ScribbleError(ValueError):
    """A scribble that cannot be submitted (nothing painted)."""


@dataclass
class ScribbleSummary:
    """What a scribble export annotates: voxel counts per class value, and the contradictions."""

    total: int
    per_class: dict = field(default_factory=dict)  # class value (0 = background) -> voxels
    conflicts: int = 0  # voxels painted in two classes, left unannotated

    @property
    def annotated(self) -> int:
        return sum(self.per_class.values())

    @property
    def fraction(self) -> float:
        return self.annotated / self.total if self.total else 0.0

    def text(self) -> str:
        """``"1234 voxels annotated (0.51 %): background 800, class 1 434"`` (+ the conflicts)."""
        parts = ", ".join(
            f"{'background' if k == BACKGROUND else f'class {k}'} {n}"
            for k, n in sorted(self.per_class.items())
        )
        text = f"{self.annotated} voxels annotated ({100 * self.fraction:.3g} %): {parts}"
        if self.conflicts:
            text += f"; {self.conflicts} voxels painted in two classes left unannotated"
        return text


def scribble_class_of_segment(segment_id: str, name: str, class_names: Sequence[str] = ()) -> int | None:
    """0 for the background segment, else the class of ``segment_export.class_of_segment``."""
    named_background = (name or "").strip().casefold() == BACKGROUND_NAME.casefold()
    if segment_id == BACKGROUND_SEGMENT_ID or named_background:
        return BACKGROUND
    return class_of_segment(segment_id, name, class_names)


def scribble_classes(segmentation_node: Any, class_names: Sequence[str] = ()) -> dict:
    """Segment ID -> class value (0 = background) of every segment; SegmentClassError names the
    segments whose class cannot be told."""
    segmentation = segmentation_node.GetSegmentation()
    classes, unknown = {}, []
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        name = segmentation.GetNthSegment(i).GetName()
        k = scribble_class_of_segment(segment_id, name, class_names)
        if k is None:
            unknown.append(f"'{name}' (ID {segment_id})")
        else:
            classes[segment_id] = k
    if unknown:
        raise SegmentClassError(
            "Cannot tell the class of scribble segment(s) "
            + ", ".join(unknown)
            + ": rename each to 'Background' or 'Class 1', 'Class 2', ... (the label value it stands for)."
        )
    if not classes:
        raise ScribbleError(
            "The scribble segmentation has no segments: select the case again to recreate them."
        )
    return classes


def add_scribble_segments(
    segmentation_node: Any, class_names: Sequence[str], colors: Sequence[Sequence[float]]
) -> None:
    """Empty segments: Background first, then one per class (``class_k``, named ``class_names[k-1]``)."""
    segmentation = segmentation_node.GetSegmentation()
    segmentation.AddEmptySegment(BACKGROUND_SEGMENT_ID, BACKGROUND_NAME, BACKGROUND_COLOR)
    for k, name in enumerate(class_names, start=1):
        segmentation.AddEmptySegment(
            segment_id_for_class(k), name or default_class_name(k), colors[(k - 1) % len(colors)]
        )


def compose_scribbles(masks: Iterable[tuple]) -> tuple:
    """Any thread: (partial label map: 255 unpainted, 0 background, k class k; its ScribbleSummary)
    from (segment ID, class value, mask) triples. ScribbleError when no voxel is annotated."""
    label = conflict = None
    values = {BACKGROUND}
    for _segment_id, k, mask in masks:
        values.add(k)
        if label is None:
            label = np.full(mask.shape, UNANNOTATED, dtype=np.uint8)
            conflict = np.zeros(mask.shape, dtype=bool)
        # Order-free: a voxel ends as k only if every segment painting it has class k.
        conflict |= mask & (label != UNANNOTATED) & (label != k)
        label[mask & (label == UNANNOTATED)] = k
    if label is None:
        raise ScribbleError(
            "The scribble segmentation has no segments: select the case again to recreate them."
        )
    label[conflict] = UNANNOTATED
    # One comparison per class (numpy lets other threads run meanwhile; bincount of a large scan
    # holds Python's lock for a quarter of a second, the GUI thread with it).
    counts = {k: int(np.count_nonzero(label == k)) for k in sorted(values)}
    summary = ScribbleSummary(
        total=int(label.size),
        per_class={k: n for k, n in counts.items() if n},
        conflicts=int(np.count_nonzero(conflict)),
    )
    if not summary.annotated:
        detail = (
            f" ({summary.conflicts} painted voxels lie in segments of two classes: unannotated)"
            if summary.conflicts
            else ""
        )
        raise ScribbleError(
            "Nothing is painted" + detail + ": paint strokes in a class segment and in 'Background' "
            "with the Segment Editor (Paint), then submit again."
        )
    return label, summary


def export_scribble_node(
    segmentation_node: Any, reference_volume: Any, nodes: CaseNodes, class_names: Sequence[str] = ()
) -> tuple:
    """(a new vtkMRMLLabelMapVolumeNode on the reference grid: 255 unpainted, 0 background, k class k;
    its ``ScribbleSummary``), through Slicer's export (the slow path, main thread). ScribbleError
    when no voxel is annotated (nothing is made then). The caller removes the node (``nodes.remove``).
    """
    classes = scribble_classes(segmentation_node, class_names)
    # An export keeps the reference grid and parent transform: it holds the composed label.
    output = export_segment_node(segmentation_node, next(iter(classes)), reference_volume, nodes)
    try:
        label, summary = compose_scribbles(
            exported_masks(segmentation_node, classes, reference_volume, nodes)
        )
        write_label_array(output, label)
    except BaseException:
        nodes.remove(output)
        raise
    return output, summary


def import_scribble_label(
    label_node: Any, segmentation_node: Any, class_names: Sequence[str], colors: Sequence[Sequence[float]]
) -> None:
    """A partial label map (255 unannotated, 0 background, k class k) into empty scribble segments
    (``add_scribble_segments``): the inverse of ``export_scribble_node``, so strokes submitted
    before come back for more painting. ``label_node``'s voxels are changed (a temporary node)."""
    import slicer
    import vtk
    from slicer.util import arrayFromVolume, arrayFromVolumeModified

    add_scribble_segments(segmentation_node, class_names, colors)
    voxels = arrayFromVolume(label_node)
    # The import maps label value n to ids[n-1] and skips 0: background -> 1, class k -> k + 1.
    shifted = np.where(voxels == UNANNOTATED, 0, voxels.astype(np.int32) + 1)
    if shifted.max() > len(class_names) + 1:
        raise SegmentClassError(
            f"The label holds class {int(shifted.max()) - 1}, "
            f"beyond the {len(class_names)} classes of the case."
        )
    voxels[:] = shifted
    arrayFromVolumeModified(label_node)
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(BACKGROUND_SEGMENT_ID)
    for k in range(1, len(class_names) + 1):
        ids.InsertNextValue(segment_id_for_class(k))
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        label_node, segmentation_node, ids
    ):
        raise RuntimeError(f"Could not import {label_node.GetName()} into the scribbles.")
