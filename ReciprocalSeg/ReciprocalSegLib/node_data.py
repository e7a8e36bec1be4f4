"""Node contents built off the GUI thread, and put into the scene on it in one short step.

Reading a 512x512x128 scan, decompressing it, building its vtkImageData and window/level, or a
label's shared labelmap, takes seconds of disk and CPU; MRML is not thread-safe. So a worker
builds plain VTK data objects that no scene knows yet (``volume_data``, ``label_layer``), and the
GUI thread only adds the nodes and hands them the data (``add_volume_node``, ``add_segments``):
pointer work, no voxel copy, no histogram (window/level are computed by the worker and the
display node's automatic window/level is off).

The other direction, the GUI thread copies what the user painted (``snapshot_segments``, one
memory copy per labelmap layer) and the worker maps it to any grid (``SegmentsSnapshot.masks``).

Every grid is a :class:`reciprocalseg.common.geometry.Geometry` in the scan's local frame (the
frame of the case volume's IJK-to-RAS, under its parent transform). Slicer facts used, read in
Slicer's source (v5.10.0 and v5.12.3): a segment's shared labelmap and its ``LabelValue``
(Libs/vtkSegmentationCore/vtkSegment.h:149), ``vtkSegmentation::AddSegment`` (vtkSegmentation.h:217),
``GetSourceRepresentationName`` (vtkSegmentation.h:513), ``vtkOrientedImageData::
Get/SetImageToWorldMatrix`` (vtkOrientedImageData.h:72), ``vtkMRMLTransformNode::
GetMatrixTransformBetweenNodes`` (returns 0 for a non-linear transform, vtkMRMLTransformNode.h:176),
``vtkMRMLScalarVolumeNode::CreateDefaultDisplayNodes`` (what ``add_volume_node`` does without the
automatic window/level, vtkMRMLScalarVolumeNode.cxx:159).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # SimpleITK (under reciprocalseg.common.geometry) is imported when first needed
    from reciprocalseg.common.geometry import Geometry

BINARY_LABELMAP = "Binary labelmap"  # vtkSegmentationConverter::GetBinaryLabelmapRepresentationName()
WINDOW_PERCENTILES = (0.1, 99.9)  # window/level from these percentiles of the voxels
WINDOW_SAMPLE = 1_000_000  # voxels the percentiles are taken from (a strided sample)


def matrix_array(matrix: Any) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def vtk_matrix(array: np.ndarray) -> Any:
    import vtk

    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(array[r, c]))
    return out


def volume_grid(volume: Any) -> Geometry:
    """Main thread: the grid of a volume node (its IJK-to-RAS and dimensions)."""
    from reciprocalseg.common.geometry import Geometry

    matrix = vtk_matrix(np.eye(4))
    volume.GetIJKToRASMatrix(matrix)
    return Geometry.from_ijk_to_ras(matrix, volume.GetImageData().GetDimensions())


# ----------------------------------------------------------------------------- volumes


@dataclass
class VolumeData:
    """A scalar volume's content: vtkImageData (origin 0, spacing 1) on ``grid``, window (low, high)."""

    image: Any
    grid: Geometry
    window: tuple


def display_window(array: np.ndarray) -> tuple:
    """(low, high): the 0.1 and 99.9 percentiles of a sample of the voxels (never low == high)."""
    flat = array.reshape(-1)
    step = max(1, flat.size // WINDOW_SAMPLE)
    low, high = (float(v) for v in np.percentile(flat[::step], WINDOW_PERCENTILES))
    return (low, high) if high > low else (low, low + 1.0)


def volume_data(array_kji: np.ndarray, grid: Geometry) -> VolumeData:
    """Any thread: a volume's content from a (k, j, i) array on ``grid`` (one copy into VTK)."""
    from reciprocalseg.common.geometry import vtk_image_from_array

    image, _ = vtk_image_from_array(array_kji, grid)
    return VolumeData(image, grid, display_window(array_kji))


def add_volume_node(scene: Any, data: VolumeData, name: str) -> Any:
    """Main thread: a new scalar volume node holding ``data`` (no voxel copy), grey, with its window."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(vtk_matrix(data.grid.ijk_to_ras()))
    display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    display.SetAutoWindowLevel(False)  # the histogram of a large scan takes seconds
    display.SetWindowLevelMinMax(*data.window)
    if not display.GetColorNodeID():
        display.SetDefaultColorMap()
    node.SetAndObserveDisplayNodeID(display.GetID())
    node.SetAndObserveImageData(data.image)
    return node


# ----------------------------------------------------------------------------- segmentations


@dataclass
class SegmentSpec:
    """One segment to add: its ID, name, colour and value in the shared labelmap."""

    segment_id: str
    name: str
    color: Sequence[float]
    label_value: int


def label_layer(array_kji: np.ndarray, grid: Geometry) -> Any:
    """Any thread: a vtkOrientedImageData (uint8) holding ``array_kji`` on ``grid`` (RAS)."""
    import slicer

    from reciprocalseg.common.geometry import vtk_image_from_array

    image, matrix = vtk_image_from_array(np.asarray(array_kji, dtype=np.uint8), grid)
    layer = slicer.vtkOrientedImageData()
    layer.ShallowCopy(image)  # the voxels built above, owned by nothing else
    layer.SetImageToWorldMatrix(matrix)
    return layer


def add_segments(segmentation_node: Any, layer: Any, specs: Sequence[SegmentSpec]) -> None:
    """Main thread: segments sharing ``layer`` (each its own label value), in ``specs`` order."""
    import slicer

    segmentation = segmentation_node.GetSegmentation()
    for spec in specs:
        segment = slicer.vtkSegment()
        segment.SetName(spec.name)
        segment.SetColor(*spec.color[:3])
        segment.SetLabelValue(int(spec.label_value))
        segment.AddRepresentation(BINARY_LABELMAP, layer)
        segmentation.AddSegment(segment, spec.segment_id)


# ----------------------------------------------------------------------------- what the user painted


@dataclass
class SegmentsSnapshot:
    """A copy of a segmentation's labelmap layers, each with its grid in the scan's local frame,
    and its segments: (segment ID, name, layer index, label value)."""

    layers: list = field(default_factory=list)  # [(uint8 or int array (k, j, i), Geometry) | None]
    segments: list = field(default_factory=list)

    def masks(self, classes: dict, target: Geometry) -> Iterator[tuple]:
        """Any thread: (segment ID, class, boolean mask on ``target``) per segment of ``classes``
        (exact on grids that share voxel centres with the layer, nearest neighbour otherwise)."""
        from reciprocalseg.common.grid_mapping import array_on_grid

        on_target: dict = {}
        for segment_id, _name, layer_index, value in self.segments:
            if segment_id not in classes:
                continue
            if layer_index not in on_target:
                layer = self.layers[layer_index]
                on_target[layer_index] = (
                    None if layer is None else array_on_grid(layer[0], layer[1], target, fill=0)
                )
            voxels = on_target[layer_index]
            shape = tuple(reversed(target.size))
            mask = np.zeros(shape, dtype=bool) if voxels is None else voxels == value
            yield segment_id, classes[segment_id], mask


def snapshot_segments(segmentation_node: Any, volume: Any) -> SegmentsSnapshot | None:
    """Main thread: a copy of the segmentation's binary labelmaps in the volume's local frame;
    None when that is not possible here (a non-linear transform between the two, or segments kept
    in another representation): the caller then exports through Slicer (``export_segment_node``)."""
    import slicer
    from vtk.util.numpy_support import vtk_to_numpy

    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSourceRepresentationName() != BINARY_LABELMAP:
        return None
    to_volume = vtk_matrix(np.eye(4))
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
        segmentation_node.GetParentTransformNode(), volume.GetParentTransformNode(), to_volume
    ):
        return None
    frame = matrix_array(to_volume)
    snapshot, layer_of = SegmentsSnapshot(), {}
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        segment = segmentation.GetSegment(segment_id)
        layer = segment.GetRepresentation(BINARY_LABELMAP)
        if layer is None:
            return None
        key = layer.__this__  # the C++ address: segments of one shared layer give the same object
        if key not in layer_of:
            layer_of[key] = len(snapshot.layers)
            snapshot.layers.append(_layer_copy(layer, frame, vtk_to_numpy))
        snapshot.segments.append((segment_id, segment.GetName(), layer_of[key], segment.GetLabelValue()))
    return snapshot


def _layer_copy(layer: Any, frame: np.ndarray, vtk_to_numpy: Any) -> tuple | None:
    """(a copy of the layer's voxels (k, j, i), its grid in the volume's frame); None if empty."""
    from reciprocalseg.common.geometry import Geometry

    extent = layer.GetExtent()
    dims = [extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)]
    scalars = layer.GetPointData().GetScalars()
    if min(dims) < 1 or scalars is None:
        return None
    matrix = vtk_matrix(np.eye(4))
    layer.GetImageToWorldMatrix(matrix)
    start = np.eye(4)
    start[:3, 3] = [extent[0], extent[2], extent[4]]
    grid = Geometry.from_ijk_to_ras(frame @ matrix_array(matrix) @ start, dims)
    voxels = np.array(vtk_to_numpy(scalars)).reshape(tuple(reversed(dims)))  # the one copy
    return voxels, grid
