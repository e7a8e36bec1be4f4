"""What a case's files become in the scene, prepared off the GUI thread (plain data, no node).

A worker reads a downloaded scan, label or prediction (SimpleITK; the file's own header checked
and bounded before any voxel is read), puts it on the grid of the case's volume in the scene
(exact copies between grids that share voxel centres, ``reciprocalseg.common.grid_mapping``), and
builds the VTK objects; ``ReciprocalSegLoop`` then adds the nodes on the GUI thread in one step.

A scan downloaded from the service gets the grid Slicer's own reader would give it
(``right_handed``: the k axis reversed for a left-handed file), so a case shown from the service,
a file loaded by the user and a scene saved and read back all have one grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .node_data import SegmentSpec, VolumeData, label_layer, volume_data
from .scribbles import BACKGROUND_COLOR, BACKGROUND_NAME, BACKGROUND_SEGMENT_ID
from .segment_export import UNANNOTATED, default_class_name, segment_id_for_class

if TYPE_CHECKING:  # SimpleITK (under reciprocalseg.common.geometry) is imported when first needed
    from reciprocalseg.common.geometry import Geometry

# A downloaded file declaring more voxels than this is refused before it is read (a small
# compressed file could expand into gigabytes); 1024^3, far above any scan the service trains on.
MAX_DOWNLOAD_VOXELS = 1 << 30


@dataclass
class CaseState:
    """What the scene has of a case (read on the GUI thread): its volume's grid (None: no volume),
    whether it has a label and scribble segmentation, and the class names its own nodes give."""

    grid: Geometry | None = None
    has_label: bool = False
    has_scribbles: bool = False
    names: dict = field(default_factory=dict)

    def class_names(self, count: int) -> list:
        """Names of classes 1..count: the case's own (label, then scribbles), else "Class k"."""
        return [self.names.get(k, default_class_name(k)) for k in range(1, count + 1)]


def read_volume_file(path: Path) -> tuple:
    """(voxels (k, j, i), the file's grid), checked and bounded by the core package's reader."""
    import SimpleITK as sitk

    from reciprocalseg.common.geometry import Geometry
    from reciprocalseg.data.io import read_image

    image = read_image(path, max_voxels=MAX_DOWNLOAD_VOXELS, attached_only=True)
    return sitk.GetArrayFromImage(image), Geometry.from_image(image)


def scan_content(path: Path) -> VolumeData:
    """A downloaded scan on the grid Slicer gives it (``right_handed``)."""
    from reciprocalseg.common.grid_mapping import array_on_grid, right_handed

    voxels, stored = read_volume_file(path)
    grid = right_handed(stored)
    return volume_data(array_on_grid(voxels, stored, grid, what="The scan"), grid)


@dataclass
class SegmentationContent:
    """A shared labelmap and the segments that use it (``node_data.add_segments``)."""

    layer: Any
    specs: list


@dataclass
class LabelContent:
    """A label file in the scene: the label segmentation (annotated classes only) and, for a
    partial label, the scribble segmentation that gives the same label back."""

    label: SegmentationContent
    scribbles: SegmentationContent | None
    classes: int


def class_specs(names: Sequence[str], colors: Sequence) -> list:
    """Segments ``class_k`` named ``names[k-1]``, label value k."""
    return [
        SegmentSpec(segment_id_for_class(k), name, colors[(k - 1) % len(colors)], k)
        for k, name in enumerate(names, start=1)
    ]


def label_content(
    path: Path, grid: Geometry, state: CaseState, min_classes: int, colors: Sequence
) -> LabelContent:
    """A label file (255 = unannotated) as segmentations on ``grid``: label value k is segment
    ``class_k``; unannotated voxels are in no label segment, and come back as scribbles."""
    from reciprocalseg.common.grid_mapping import array_on_grid

    voxels, stored = read_volume_file(path)
    on_grid = array_on_grid(voxels.astype(np.uint8, copy=False), stored, grid, fill=0)
    unannotated = on_grid == UNANNOTATED
    classes = max(min_classes, int(np.where(unannotated, 0, on_grid).max()), 1)
    names = state.class_names(classes)
    label = SegmentationContent(
        label_layer(np.where(unannotated, 0, on_grid), grid), class_specs(names, colors)
    )
    scribbles = None
    if unannotated.any():
        background = classes + 1  # the Background segment's value in the shared labelmap
        strokes = np.where(unannotated, 0, np.where(on_grid == 0, background, on_grid))
        specs = [SegmentSpec(BACKGROUND_SEGMENT_ID, BACKGROUND_NAME, BACKGROUND_COLOR, background)]
        scribbles = SegmentationContent(label_layer(strokes, grid), specs + class_specs(names, colors))
    return LabelContent(label, scribbles, classes)


@dataclass
class PredictionContent:
    """Teacher and student segmentations and the disagreement volume on the case volume's grid,
    with the disagreement's display range (positive minimum, maximum)."""

    teacher: SegmentationContent
    student: SegmentationContent
    disagreement: VolumeData
    disagreement_range: tuple


def prediction_content(
    result: Any, grid: Geometry, state: CaseState, min_classes: int, colors: tuple
) -> PredictionContent:
    """The service's prediction files (on the stored grid) on ``grid``; ``colors`` = (teacher, student)."""
    from reciprocalseg.common.grid_mapping import array_on_grid

    segmentations = []
    classes = max(min_classes, 1)
    arrays = []
    for path in (result.teacher, result.student):
        voxels, stored = read_volume_file(Path(path))
        arrays.append(array_on_grid(voxels.astype(np.uint8, copy=False), stored, grid, fill=0))
        classes = max(classes, int(arrays[-1].max()))
    names = state.class_names(classes)
    for n, array in enumerate(arrays):
        segmentations.append(SegmentationContent(label_layer(array, grid), class_specs(names, colors[n])))
    voxels, stored = read_volume_file(Path(result.disagreement))
    values = array_on_grid(voxels.astype(np.float32, copy=False), stored, grid, fill=0)
    positive = values[values > 0]
    top = float(values.max()) if values.size else 1.0
    lower = float(positive.min()) if positive.size else 1.0
    return PredictionContent(segmentations[0], segmentations[1], volume_data(values, grid), (lower, top))


def refined_content(path: Path, grid: Geometry, state: CaseState, min_classes: int, colors: Sequence) -> Any:
    """The service's refined map (a label map on the stored grid) on ``grid``, a segment per class."""
    from reciprocalseg.common.grid_mapping import array_on_grid

    voxels, stored = read_volume_file(Path(path))
    array = array_on_grid(voxels.astype(np.uint8, copy=False), stored, grid, fill=0)
    names = state.class_names(max(min_classes, int(array.max()), 1))
    return SegmentationContent(label_layer(array, grid), class_specs(names, colors))
