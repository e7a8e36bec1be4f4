"""Scene builders and checks shared by the real-MRML tests (Slicer's classes from slicer-core)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from reciprocalseg.client import Client


def matrix4(array: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def oblique_ijk_to_ras(spacing=(0.8, 0.9, 1.3), origin=(-20.0, 15.0, 30.0), left_handed=False) -> np.ndarray:
    """An oblique grid (rotated about two axes); with ``left_handed`` the k axis is flipped."""
    a, b = np.deg2rad(25.0), np.deg2rad(-15.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    direction = rz @ rx
    if left_handed:
        direction[:, 2] *= -1
    m = np.eye(4)
    m[:3, :3] = direction * np.asarray(spacing)
    m[:3, 3] = origin
    return m


def add_volume(scene, name: str, array_kji: np.ndarray, ijk_to_ras: np.ndarray):
    """A scalar volume node with this voxel array (k, j, i) on this grid."""
    from slicer.util import updateVolumeFromArray

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(matrix4(ijk_to_ras))
    updateVolumeFromArray(node, np.ascontiguousarray(array_kji))
    node.CreateDefaultDisplayNodes()
    return node


def blob_image(shape=(20, 24, 28), seed=0, center=None) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, mask uint8): a bright ellipsoid with noise; the mask is the ellipsoid."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape)
    c = center or (shape[0] / 2, shape[1] / 2, shape[2] / 2)
    r = (
        ((k - c[0]) / (shape[0] / 4)) ** 2
        + ((j - c[1]) / (shape[1] / 3.5)) ** 2
        + ((i - c[2]) / (shape[2] / 3)) ** 2
    )
    mask = (r <= 1).astype(np.uint8)
    image = (mask * 200.0 + rng.normal(0, 20, shape)).astype(np.float32)
    return image, mask


def service_label(client: Client, case_id: str, tmp: Path) -> np.ndarray:
    """The case's current label on the service, as a (k, j, i) array of its own grid."""
    path = client.get_label(case_id, tmp / f"{case_id}_check_label.nrrd")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def service_prediction(client: Client, case_id: str, tmp: Path) -> dict:
    out = tmp / f"{case_id}_check_prediction"
    result = client.get_prediction(case_id, out_dir=out)
    return {
        kind: sitk.GetArrayFromImage(sitk.ReadImage(str(getattr(result, kind))))
        for kind in ("teacher", "student", "disagreement")
    }


def segmentation_on_grid(nodes, segmentation, volume) -> np.ndarray:
    """Export every segment (value = class by ID) on the volume's grid, as the user sees it in world space."""
    from ReciprocalSegLib.segment_export import export_label_node
    from slicer.util import arrayFromVolume

    node = export_label_node(segmentation, volume, nodes)
    try:
        return arrayFromVolume(node).copy()
    finally:
        nodes.remove(node)


def node_counts(scene) -> dict:
    """Number of nodes per class in the scene."""
    counts: dict = {}
    for i in range(scene.GetNumberOfNodes()):
        name = scene.GetNthNode(i).GetClassName()
        counts[name] = counts.get(name, 0) + 1
    return counts


def add_linear_transform(scene, name="scan pose"):
    """A rotation + translation parent transform (a scan registered to another)."""
    import vtk

    transform = vtk.vtkTransform()
    transform.Translate(12.0, -7.0, 5.0)
    transform.RotateZ(17.0)
    transform.RotateX(-9.0)
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(transform.GetMatrix())
    return node


def ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_on_grid_of(node, volume) -> np.ndarray:
    """``node``'s voxels on ``volume``'s grid by index mapping (exact when the grids coincide up to
    axis flips, as when Slicer reads a left-handed file as right-handed); fails otherwise."""
    from slicer.util import arrayFromVolume

    values = arrayFromVolume(node)
    to_node = np.linalg.inv(ijk_to_ras(node)) @ ijk_to_ras(volume)  # volume IJK -> node IJK
    shape = arrayFromVolume(volume).shape
    k, j, i = np.indices(shape).reshape(3, -1)
    ijk = to_node @ np.vstack([i, j, k, np.ones_like(i)])
    rounded = np.rint(ijk[:3]).astype(int)
    assert np.allclose(ijk[:3], rounded, atol=1e-3), "the grids do not coincide"
    return values[rounded[2], rounded[1], rounded[0]].reshape(shape)


def orphans(scene) -> list:
    """Display, storage and user colour-table nodes that no node of the scene refers to."""
    referenced = set()
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        for getter, count in (("GetNthDisplayNodeID", "GetNumberOfDisplayNodes"),
                              ("GetNthStorageNodeID", "GetNumberOfStorageNodes")):  # fmt: skip
            if hasattr(node, count):
                referenced |= {getattr(node, getter)(n) for n in range(getattr(node, count)())}
        if node.IsA("vtkMRMLDisplayNode") and node.GetColorNodeID():
            referenced.add(node.GetColorNodeID())
    out = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        user_colors = node.IsA("vtkMRMLColorTableNode") and node.GetType() == node.User
        if (node.IsA("vtkMRMLDisplayNode") or node.IsA("vtkMRMLStorageNode") or user_colors) and (
            node.GetID() not in referenced
        ):
            out.append(f"{node.GetClassName()} {node.GetName()}")
    return out


def save_and_reload(logics, folder: Path):
    """Save the scene as Slicer does into a data-bundle folder, then load it into a fresh scene."""
    import slicer
    from ReciprocalSegLib.slicer_logics import SlicerLogics

    folder.mkdir(parents=True, exist_ok=True)
    assert logics.application.SaveSceneToSlicerDataBundleDirectory(str(folder))
    previous = slicer.mrmlScene
    reloaded = SlicerLogics.standalone()
    reloaded.scene.SetURL(str(next(folder.glob("*.mrml"))))
    reloaded.scene.SetRootDirectory(str(folder))
    assert reloaded.scene.Import()
    slicer.mrmlScene = previous
    return reloaded


def use_as_application(logics) -> None:
    """Point ``slicer.modules`` at these logics, as the application does for its scene.

    slicer.util's segment helpers (the tests paint with updateSegmentBinaryLabelmapFromArray)
    reach the volumes and segmentations logics through ``slicer.modules``, which only the
    application fills; without this they would use another test's scene.
    """
    from types import SimpleNamespace

    import slicer

    slicer.mrmlScene = logics.scene
    slicer.modules = SimpleNamespace(
        volumes=SimpleNamespace(logic=lambda: logics.volumes),
        segmentations=SimpleNamespace(logic=lambda: logics.application.GetModuleLogic("Segmentations")),
    )


def paint(mask: np.ndarray, segmentation, segment_id: str, volume) -> None:
    """``slicer.util.updateSegmentBinaryLabelmapFromArray``, then remove the display node its
    temporary label map leaves behind (util.py removes the node but not its display node), so
    that orphan checks see only what the module leaves."""
    from slicer.util import updateSegmentBinaryLabelmapFromArray

    scene = volume.GetScene()
    before = set(orphans(scene))
    updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, volume)
    for i in reversed(range(scene.GetNumberOfNodes())):
        node = scene.GetNthNode(i)
        if f"{node.GetClassName()} {node.GetName()}" in set(orphans(scene)) - before:
            scene.RemoveNode(node)
