"""Segmentation <-> label map, with class values decided by segment identity, never list order.

A class ``k`` (label value k, 1..K) is held by the segment whose ID is ``class_k``; the module
creates segments with these IDs. A segment added in the Segment Editor (ID like
``Segment_1``) takes its class from its name, ``Class k`` (case and spaces ignored) or the
name of the class-k segment the module made. So deleting, reordering or adding segments never
moves voxels to another class, and a segment whose class cannot be told is an error that names
it. Voxels in two segments of different classes are an error too (with the count), never a
silent choice.

Export per segment through ``ExportSegmentsToLabelmapNode`` on the reference volume's full grid
(``EXTENT_REFERENCE_GEOMETRY``), which resamples across parent transforms, so the label lands
on the scan's voxels wherever the segmentation and the scan sit in the transform tree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .scene_cases import CaseNodes

SEGMENT_ID_PATTERN = re.compile(r"^class_(\d+)$")
CLASS_NAME_PATTERN = re.compile(r"^class\s*(\d+)$", re.IGNORECASE)
# Label maps are written as uint8 and 255 marks unannotated voxels (partial labels, issue 17):
# the highest class a segment can hold is 254.
UNANNOTATED = (
    255  # = reciprocalseg.common.file_formats.UNANNOTATED (agreed; test_static_panel_helpers checks)
)
MAX_CLASS = UNANNOTATED - 1


class SegmentClassError(ValueError):
    """A segment's class cannot be told, or segments of different classes overlap."""


def segment_id_for_class(k: int) -> str:
    return f"class_{k}"


def default_class_name(k: int) -> str:
    return f"Class {k}"


def class_of_segment(segment_id: str, name: str, class_names: Sequence[str] = ()) -> int | None:
    """The class of one segment (1..254) from its ID, else its name; None when neither tells."""
    for pattern, text in ((SEGMENT_ID_PATTERN, segment_id), (CLASS_NAME_PATTERN, (name or "").strip())):
        match = pattern.match(text or "")
        if match and 1 <= int(match.group(1)) <= MAX_CLASS:
            return int(match.group(1))
    wanted = (name or "").strip().casefold()
    for k, class_name in enumerate(class_names, start=1):
        if wanted and wanted == class_name.strip().casefold():
            return k
    return None


def segment_classes(segmentation_node: Any, class_names: Sequence[str] = ()) -> dict:
    """Segment ID -> class for every segment; SegmentClassError names the ones with no class."""
    segmentation = segmentation_node.GetSegmentation()
    classes, unknown = {}, []
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        name = segmentation.GetNthSegment(i).GetName()
        k = class_of_segment(segment_id, name, class_names)
        if k is None:
            unknown.append(f"'{name}' (ID {segment_id})")
        else:
            classes[segment_id] = k
    if unknown:
        raise SegmentClassError(
            "Cannot tell the class of segment(s) "
            + ", ".join(unknown)
            + ": rename each to 'Class 1', 'Class 2', ... (the label value it should get)."
        )
    if not classes:
        raise SegmentClassError("The segmentation has no segments to submit.")
    return classes


def compose_full_label(masks: Iterable[tuple]) -> np.ndarray | None:
    """Any thread: the label map (uint8, 0 where no segment) of (segment ID, class, mask) triples;
    SegmentClassError when segments of different classes share voxels. None for no segment."""
    label = None
    owner: dict = {}  # class -> first segment that put it there, for the overlap message
    for segment_id, k, mask in masks:
        if label is None:
            label = np.zeros(mask.shape, dtype=np.uint8)
        clash = mask & (label > 0) & (label != k)
        if clash.any():
            others = sorted({owner[int(v)] for v in np.unique(label[clash])})
            raise SegmentClassError(
                f"{int(clash.sum())} voxels are in segment {segment_id} (class {k}) and in "
                f"{', '.join(others)}: remove the overlap (Segment Editor, 'Logical operators' or "
                "masking 'Outside all segments') and submit again."
            )
        label[mask] = k
        owner.setdefault(k, segment_id)
    return label


def exported_masks(
    segmentation_node: Any, classes: dict, reference_volume: Any, nodes: CaseNodes
) -> Iterator:
    """Main thread: (segment ID, class, mask on the reference volume's grid) per segment of
    ``classes``, each exported through Slicer (resampled across any transform, linear or not)."""
    from slicer.util import arrayFromVolume

    for segment_id, k in classes.items():
        node = export_segment_node(segmentation_node, segment_id, reference_volume, nodes)
        try:
            mask = arrayFromVolume(node) > 0
        finally:
            nodes.remove(node)
        yield segment_id, k, mask


def export_label_node(
    segmentation_node: Any, reference_volume: Any, nodes: CaseNodes, class_names: Sequence[str] = ()
) -> Any:
    """A new vtkMRMLLabelMapVolumeNode on the reference grid with class values by segment identity
    (through Slicer's export: the slow path, on the main thread; tests compare with it).

    The caller writes it and removes it with ``nodes.remove`` (which also removes its colour table).
    """
    classes = segment_classes(segmentation_node, class_names)
    # An export keeps the reference grid and parent transform: it holds the composed label.
    output = export_segment_node(segmentation_node, next(iter(classes)), reference_volume, nodes)
    try:
        write_label_array(
            output, compose_full_label(exported_masks(segmentation_node, classes, reference_volume, nodes))
        )
    except BaseException:
        nodes.remove(output)
        raise
    return output


def export_segment_node(
    segmentation_node: Any, segment_id: str, reference_volume: Any, nodes: CaseNodes
) -> Any:
    """One segment as a new vtkMRMLLabelMapVolumeNode (non-zero inside) on the reference volume's
    full grid (``EXTENT_REFERENCE_GEOMETRY``, resampled across any transform between the two); an
    empty segment gives an all-zero map. The caller removes it with ``nodes.remove``."""
    import slicer
    import vtk

    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    node = nodes.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{segment_id} export")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node,
            ids,
            node,
            reference_volume,
            slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
        ):
            raise RuntimeError(f"Could not export segment {segment_id} to a label map.")
    except BaseException:
        nodes.remove(node)
        raise
    return node


def write_label_array(label_node: Any, label: np.ndarray) -> None:
    """Put ``label`` into an exported label map's voxels (same shape), checking every value fits
    the node's scalar type (the export makes int16 maps; 255 must survive)."""
    from slicer.util import arrayFromVolume, arrayFromVolumeModified

    voxels = arrayFromVolume(label_node)
    voxels[:] = label
    if not np.array_equal(voxels, label):
        raise RuntimeError(f"The label map's scalar type ({voxels.dtype}) cannot hold the label values.")
    arrayFromVolumeModified(label_node)


def import_label_node(
    label_node: Any,
    segmentation_node: Any,
    class_count: int,
    colors: Sequence[Sequence[float]],
    class_names: Sequence[str] = (),
) -> None:
    """Label value k of ``label_node`` -> segment ``class_k`` (all classes 1..class_count created)."""
    import slicer
    import vtk

    segmentation = segmentation_node.GetSegmentation()
    ids = vtk.vtkStringArray()
    for k in range(1, class_count + 1):
        name = class_names[k - 1] if k - 1 < len(class_names) else default_class_name(k)
        segmentation.AddEmptySegment(segment_id_for_class(k), name, colors[(k - 1) % len(colors)])
        ids.InsertNextValue(segment_id_for_class(k))
    # label value k -> ids[k-1] (vtkSlicerSegmentationsModuleLogic.h, updatedSegmentIDs)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        label_node, segmentation_node, ids
    ):
        raise RuntimeError(f"Could not import {label_node.GetName()} into a segmentation.")
