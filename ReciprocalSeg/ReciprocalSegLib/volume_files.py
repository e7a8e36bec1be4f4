"""Volumes to and from NRRD files through MRML storage nodes and the volumes logic.

These work both in the Slicer application and in ``slicer-core`` (which has no
``coreIOManager``, so ``slicer.util.loadVolume`` / ``exportNode`` are not available there).

A volume is written on its own grid (IJK-to-RAS), never hardened: the service stores the local
grid, and predictions coming back are placed under the same parent transform (scene_cases).

A node loaded for the scene keeps its file: ``keep_dir`` is a folder that outlives the download,
the storage node points at the real file there, and the node is marked modified since read, so
that *Save* writes it wherever the user saves the scene.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

LOAD_AS_LABELMAP = 1  # vtkSlicerVolumesLogic::AddArchetypeVolume loadingOptions bit 0


def write_volume(volume: Any, path: Path, compress: bool = False) -> Path:
    """Write a volume to ``path`` (NRRD) without touching the node's own storage node.

    Uncompressed by default: these are transfer files written on the GUI thread, and zlib takes
    most of the time there (about 130 ms for a 64x128x128 float scan, against ~10 ms raw).
    """
    import slicer

    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()  # not added to the scene: leaves no node
    storage.SetFileName(str(path))
    storage.SetUseCompression(1 if compress else 0)
    if not storage.WriteData(volume):
        raise RuntimeError(f"Could not write {volume.GetName()} to {path}.")
    return Path(path)


def read_volume(volumes_logic: Any, path: Path, name: str, labelmap: bool = False) -> Any:
    """A new volume node (with storage and display nodes) read from ``path`` by the volumes logic."""
    node = volumes_logic.AddArchetypeVolume(str(path), name, LOAD_AS_LABELMAP if labelmap else 0)
    if node is None:
        raise RuntimeError(f"Could not read the volume {path}.")
    return node


def keep_file(node: Any, path: Path, keep_dir: Path | None) -> None:
    """Move the node's file (already read) into ``keep_dir`` and mark the node modified, so Save writes it.

    Without this a node loaded from a temporary download keeps a storage node pointing at a
    deleted file, marked unmodified: Save then leaves it out and the saved scene is missing it.
    """
    storage = node.GetStorageNode()
    if storage is None:
        node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
    if keep_dir is not None:
        keep_dir.mkdir(parents=True, exist_ok=True)
        target = _free_name(keep_dir, Path(path).name)
        # A move: instant on the same file system (downloads and kept files are both under
        # Slicer's temporary folder), so a large scan costs the GUI thread no copy.
        shutil.move(str(path), str(target))
        storage.SetFileName(str(target))
    node.StorableModified()


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    stem, suffix = name.split(".", 1) if "." in name else (name, "")
    n = 2
    while target.exists():
        target = folder / (f"{stem}_{n}.{suffix}" if suffix else f"{stem}_{n}")
        n += 1
    return target


def is_scalar_volume(node: Any) -> bool:
    """A plain single-component scalar volume (not a label map, vector, RGB, DWI or tensor volume).

    Vector, diffusion-weighted and tensor volumes are subclasses of vtkMRMLScalarVolumeNode, so
    ``IsA`` is not enough: the class name must be exactly the scalar class.
    """
    if node is None or node.GetClassName() != "vtkMRMLScalarVolumeNode":
        return False
    image = node.GetImageData()
    return image is not None and image.GetNumberOfScalarComponents() == 1
