"""Volumes read from files through the volumes logic, and which volumes can be cases.

``read_volume`` reads a file the way Slicer's *Add data* does (``vtkSlicerVolumesLogic::
AddArchetypeVolume``: works in the Slicer application and in ``slicer-core``, which has no
``coreIOManager`` for ``slicer.util.loadVolume``); a left-handed file gets a right-handed grid with
the k axis reversed (vtkMRMLVolumeArchetypeStorageNode, ForceRightHandedIJKCoordinateSystem).

The module itself reads and writes its transfer files with SimpleITK off the GUI thread
(case_content.py, logic.py) and makes nodes from memory (node_data.py): no node of it points at
a temporary file, and a scene *Save* writes every one of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOAD_AS_LABELMAP = 1  # vtkSlicerVolumesLogic::AddArchetypeVolume loadingOptions bit 0


def read_volume(volumes_logic: Any, path: Path, name: str, labelmap: bool = False) -> Any:
    """A new volume node (with storage and display nodes) read from ``path`` by the volumes logic."""
    node = volumes_logic.AddArchetypeVolume(str(path), name, LOAD_AS_LABELMAP if labelmap else 0)
    if node is None:
        raise RuntimeError(f"Could not read the volume {path}.")
    return node


def is_scalar_volume(node: Any) -> bool:
    """A plain single-component scalar volume (not a label map, vector, RGB, DWI or tensor volume).

    Vector, diffusion-weighted and tensor volumes are subclasses of vtkMRMLScalarVolumeNode, so
    ``IsA`` is not enough: the class name must be exactly the scalar class.
    """
    if node is None or node.GetClassName() != "vtkMRMLScalarVolumeNode":
        return False
    image = node.GetImageData()
    return image is not None and image.GetNumberOfScalarComponents() == 1
