"""Node contents built off the GUI thread, and put into the scene on it in one short step.

Reading a 512x512x128 scan, decompressing it, building its vtkImageData and window/level, or a
label's shared labelmap, takes seconds of disk and CPU; MRML is not thread-safe. So a worker
builds plain VTK data objects that no scene knows yet (``volume_data``, ``label_layer``), and the
GUI thread only adds the nodes and hands them the data (``add_volume_node``, ``add_segments``):
pointer work, no voxel copy, no histogram (window/level are computed by the worker and the
display node's automatic window/level is off).

The other direction, the GUI thread reads which labelmap layers hold what the user painted
(``painted_layers``), copies them in slabs of ``STEP_VOXELS`` (``copy_in_steps``, one short
GUI-thread step each, taken again if the user paints meanwhile), and the worker maps them to any
grid (``SegmentsSnapshot.masks``).

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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
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


def release_layers(segmentation_node: Any) -> None:
    """Main thread: drop every segment's labelmap before the segments go. Removing a segment that
    shares a labelmap with others splits it voxel by voxel (``vtkSegmentation::RemoveSegment`` ->
    ``SeparateSegmentLabelmap``: two passes over the layer, v5.12.3 vtkSegmentation.cxx), which
    ``RemoveAllSegments`` and the segmentation's destructor do for each one: seconds on a large
    scan. Without representations nothing is shared (``vtkSegment::RemoveAllRepresentations``)."""
    segmentation = segmentation_node.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segmentation.GetNthSegment(i).RemoveAllRepresentations()


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


@dataclass
class PaintedLayers:
    """What a segmentation holds, read on the GUI thread without copying voxels: its labelmap
    layers (the vtkOrientedImageData objects, their grids in the scan's local frame) and segments
    (segment ID, name, layer index, label value). ``copy`` takes the voxels in GUI-thread steps."""

    layers: list = field(default_factory=list)  # [(vtkOrientedImageData, Geometry) | None (empty)]
    segments: list = field(default_factory=list)

    def copy(self, context: Any) -> SegmentsSnapshot:
        """Any thread: the snapshot, each layer copied in slabs (``copy_in_steps``)."""
        layers = [
            None
            if layer is None
            else (copy_in_steps(context, _voxels_of(layer[0]), layer[0].GetMTime), layer[1])
            for layer in self.layers
        ]
        return SegmentsSnapshot(layers, list(self.segments))


def painted_layers(segmentation_node: Any, volume: Any) -> PaintedLayers | None:
    """Main thread: the segmentation's binary labelmap layers with their grids in the volume's
    local frame (no voxel copied); None when that is not possible here (a non-linear transform
    between the two, or segments kept in another representation): the caller then exports
    through Slicer (``segment_export.exported_masks``)."""
    import slicer

    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSourceRepresentationName() != BINARY_LABELMAP:
        return None
    to_volume = vtk_matrix(np.eye(4))
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
        segmentation_node.GetParentTransformNode(), volume.GetParentTransformNode(), to_volume
    ):
        return None
    frame = matrix_array(to_volume)
    painted, layer_of = PaintedLayers(), {}
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        segment = segmentation.GetSegment(segment_id)
        layer = segment.GetRepresentation(BINARY_LABELMAP)
        if layer is None:
            return None
        key = layer.__this__  # the C++ address: segments of one shared layer give the same object
        if key not in layer_of:
            layer_of[key] = len(painted.layers)
            grid = _layer_grid(layer, frame)
            painted.layers.append(None if grid is None else (layer, grid))
        painted.segments.append((segment_id, segment.GetName(), layer_of[key], segment.GetLabelValue()))
    return painted


def _layer_grid(layer: Any, frame: np.ndarray) -> Geometry | None:
    """A layer's grid (its extent) in the volume's frame; None when it holds no voxel."""
    from reciprocalseg.common.geometry import Geometry

    extent = layer.GetExtent()
    dims = [extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)]
    if min(dims) < 1 or layer.GetPointData().GetScalars() is None:
        return None
    matrix = vtk_matrix(np.eye(4))
    layer.GetImageToWorldMatrix(matrix)
    start = np.eye(4)
    start[:3, 3] = [extent[0], extent[2], extent[4]]
    return Geometry.from_ijk_to_ras(frame @ matrix_array(matrix) @ start, dims)


def _voxels_of(image: Any) -> Callable[[], np.ndarray]:
    """A function giving the (k, j, i) view of an image data's scalars (called on the GUI thread)."""

    def view() -> np.ndarray:
        from vtk.util.numpy_support import vtk_to_numpy

        extent = image.GetExtent()
        dims = [extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)]
        return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(tuple(reversed(dims)))

    return view


# ----------------------------------------------------------------------------- copies in steps

STEP_VOXELS = 1 << 22  # voxels one GUI-thread step copies: 4 Mi, a few ms of memory copy
COPY_TRIES = 3


class ChangedWhileCopied(RuntimeError):
    """The voxels changed (painted, edited) while they were copied, every try."""


def copy_in_steps(context: Any, view: Callable[[], np.ndarray], mtime: Callable[[], int]) -> np.ndarray:
    """Any thread: a copy of ``view()`` (voxels owned by the scene, read on the GUI thread), one
    slab of ``STEP_VOXELS`` per GUI-thread step, so a large scan never holds the GUI thread for
    long. The copy is consistent: when ``mtime()`` (the data's modification time) changes between
    the first and the last slab (the user painted meanwhile), it is taken again."""
    for _ in range(COPY_TRIES):
        copied = _copy_once(context, view, mtime)
        if copied is not None:
            return copied
    raise ChangedWhileCopied(
        "The voxels kept changing while they were copied: stop editing, then submit again."
    )


def _copy_once(context: Any, view: Callable[[], np.ndarray], mtime: Callable[[], int]) -> np.ndarray | None:
    shape, dtype, stamp = context.on_main(lambda: (view().shape, view().dtype, mtime()))
    out = np.empty(shape, dtype)
    per = max(1, STEP_VOXELS // max(1, int(np.prod(shape[1:]))))
    for first in range(0, shape[0], per):
        if not context.on_main(partial(_copy_slab, view, mtime, out, stamp, slice(first, first + per))):
            return None
    return out


def _copy_slab(view: Callable, mtime: Callable, out: np.ndarray, stamp: int, slab: slice) -> bool:
    """GUI thread: one slab of the copy; False when the voxels changed since the copy began."""
    source = view()
    if source.shape != out.shape or mtime() != stamp:
        return False
    out[slab] = source[slab]
    return True
