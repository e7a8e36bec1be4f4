"""Left-handed grids (issue 26, item 1), on Slicer's real MRML (slicer-core) and a real service.

Slicer gives a volume read from a left-handed file (a radiological LAS NIfTI, an oblique NRRD
with a reversed k axis) a right-handed grid with k reversed; the service stores the file's own
grid. Labels and scribbles painted in Slicer must reach the service on the stored grid, voxel for
voxel: a ball painted around a point is the same ball around the same point on the service.
Each case here failed before (the label went on Slicer's grid: 422 "not on the image's voxel grid").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from mrml_helpers import add_volume, blob_image, ijk_to_ras, oblique_ijk_to_ras, paint, save_and_reload

from reciprocalseg.common.geometry import Geometry, image_from_array

SHAPE = (20, 24, 28)  # k, j, i
RADIUS = 4.37  # mm: no voxel centre lies on the sphere


def las_grid() -> Geometry:
    """Radiological NIfTI (FSL's convention): i to the left, j anterior, k superior (LPS directions)."""
    return Geometry(
        tuple(reversed(SHAPE)), (1.1, 0.9, 1.3), (-14.0, 12.0, -9.0), (1, 0, 0, 0, -1, 0, 0, 0, 1)
    )


def oblique_left_grid() -> Geometry:
    return Geometry.from_ijk_to_ras(oblique_ijk_to_ras(left_handed=True), tuple(reversed(SHAPE)))


GRIDS = {"las.nii.gz": las_grid, "oblique.nrrd": oblique_left_grid}


def centres_lps(grid: Geometry) -> np.ndarray:
    """LPS positions of the voxel centres, shape (k, j, i, 3)."""
    k, j, i = np.indices(tuple(reversed(grid.size)))
    ijk = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk @ grid.ijk_to_lps().T)[..., :3]


def ball(grid: Geometry, centre_lps: np.ndarray, radius: float = RADIUS) -> np.ndarray:
    return (np.linalg.norm(centres_lps(grid) - centre_lps, axis=-1) < radius).astype(np.uint8)


def scene_grid(volume) -> Geometry:
    return Geometry.from_ijk_to_ras(ijk_to_ras(volume), volume.GetImageData().GetDimensions())


def centre_of(grid: Geometry) -> np.ndarray:
    return (grid.ijk_to_lps() @ np.array([11.3, 9.6, 8.2, 1.0]))[:3]


def write_case(folder: Path, name: str, grid: Geometry, with_label: bool = False) -> str:
    """A scan file (and ``<ID>_label`` file) on ``grid``; returns the case ID."""
    folder.mkdir(parents=True, exist_ok=True)
    image, _ = blob_image(shape=SHAPE, seed=11)
    case_id = name.split(".")[0]
    suffix = name[len(case_id) :]
    sitk.WriteImage(image_from_array(image, grid), str(folder / name))
    if with_label:
        label = ball(grid, centre_of(grid))
        sitk.WriteImage(image_from_array(label, grid), str(folder / f"{case_id}_label{suffix}"))
    return case_id


def stored_label(client, case_id: str, tmp: Path) -> tuple:
    path = client.get_label(case_id, tmp / f"{case_id}_stored_label.nrrd")
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), Geometry.from_image(image)


def paint_and_check(loop, client, case_id: str, tmp: Path) -> None:
    """A full label (a ball) and scribbles (a ball of class 1 and a slab of background) painted on
    Slicer's grid reach the service as the same voxels of the stored grid."""
    from ReciprocalSegLib.scene_cases import ROLE_LABEL

    volume, label = loop.show_case(case_id)
    stored = Geometry.from_dict(client.get_case(case_id).geometry)
    assert np.linalg.det(stored.direction_matrix()) < 0 < np.linalg.det(scene_grid(volume).direction_matrix())
    centre = centre_of(stored)
    label.GetSegmentation().RemoveAllSegments()
    label.GetSegmentation().AddEmptySegment("class_1", "Class 1", (1.0, 0.8, 0.2))
    paint(ball(scene_grid(volume), centre), label, "class_1", volume)
    loop.submit_segmentation(case_id, loop.case_node(case_id, ROLE_LABEL), volume)
    voxels, grid = stored_label(client, case_id, tmp)
    assert grid.matches(stored) == []
    np.testing.assert_array_equal(voxels, ball(stored, centre))

    scribbles = loop.scribble_segmentation(case_id)
    slab = np.zeros(SHAPE, np.uint8)
    slab[:, :, :2] = 1  # two i-slices of background, far from the ball
    paint(ball(scene_grid(volume), centre, 2.5), scribbles, "class_1", volume)
    paint(slab, scribbles, "background", volume)
    loop.submit_scribbles(case_id)
    expected = np.full(SHAPE, 255, np.uint8)
    expected[ball(stored, centre, 2.5) > 0] = 1
    background_on_stored = np.zeros(SHAPE, bool)
    scene_slab_centres = centres_lps(scene_grid(volume))[slab > 0]
    for point in scene_slab_centres:  # the same physical voxels, found on the stored grid
        index = np.rint(np.linalg.inv(stored.ijk_to_lps()) @ np.append(point, 1.0))[:3].astype(int)
        background_on_stored[index[2], index[1], index[0]] = True
    expected[background_on_stored] = 0
    np.testing.assert_array_equal(stored_label(client, case_id, tmp)[0], expected)


@pytest.mark.parametrize("name", list(GRIDS))
def test_a_left_handed_file_added_by_file(two_class_service, loop_factory, tmp_path, name):
    loop = loop_factory(two_class_service)
    case_id = write_case(tmp_path / "data", f"file_{name}", GRIDS[name]())
    result = loop.add_folder(tmp_path / "data")
    assert result.added == [case_id] and not result.failed
    paint_and_check(loop, two_class_service.client, case_id, tmp_path)


@pytest.mark.parametrize("name", list(GRIDS))
def test_a_left_handed_folder_with_labels_shows_and_resubmits_its_label_unchanged(
    two_class_service, loop_factory, tmp_path, name
):
    from ReciprocalSegLib.segment_export import export_label_node
    from slicer.util import arrayFromVolume

    loop = loop_factory(two_class_service)
    case_id = write_case(tmp_path / "data", f"folder_{name}", GRIDS[name](), with_label=True)
    assert loop.add_folder(tmp_path / "data").added == [case_id]
    original, stored = stored_label(two_class_service.client, case_id, tmp_path)
    volume, label = loop.show_case(case_id)
    shown = export_label_node(label, volume, loop.nodes)  # what Slicer shows, on its own grid
    np.testing.assert_array_equal(arrayFromVolume(shown), ball(scene_grid(volume), centre_of(stored)))
    loop.nodes.remove(shown)
    versions = len(two_class_service.client.label_history(case_id).versions)
    loop.submit_segmentation(case_id, label, volume)  # shown unchanged, submitted: the same label
    assert len(two_class_service.client.label_history(case_id).versions) == versions + 1
    np.testing.assert_array_equal(stored_label(two_class_service.client, case_id, tmp_path)[0], original)
    paint_and_check(loop, two_class_service.client, case_id, tmp_path)


def test_a_left_handed_volume_after_a_scene_save_and_reload(two_class_service, loop_factory, tmp_path):
    """A volume built in memory on a left-handed grid is sent as it is; the scene saved and read
    back gives it Slicer's right-handed grid; painting there still reaches the stored voxels."""
    import slicer
    from ReciprocalSegLib.logic import ReciprocalSegLoop

    loop = loop_factory(two_class_service)
    image, _ = blob_image(shape=SHAPE, seed=12)
    volume = add_volume(loop.logics.scene, "reloaded_obl", image, oblique_ijk_to_ras(left_handed=True))
    case_id = loop.add_volume(volume)
    loop.show_case(case_id)
    reloaded = save_and_reload(loop.logics, tmp_path / "bundle")
    again = ReciprocalSegLoop(reloaded, scratch_dir=tmp_path / "scratch2")
    again.connect(two_class_service.launcher.url, two_class_service.launcher.token)
    try:
        slicer.mrmlScene = reloaded.scene
        from mrml_helpers import use_as_application

        use_as_application(reloaded)
        volume = again.case_node(case_id, "image")
        assert np.linalg.det(ijk_to_ras(volume)[:3, :3]) > 0  # Slicer's reader made it right-handed
        paint_and_check(again, two_class_service.client, case_id, tmp_path)
    finally:
        use_as_application(loop.logics)
        reloaded.scene.Clear(1)


def test_prediction_correct_submit_round_trip_on_a_las_nifti(trained_service, loop_factory, tmp_path):
    """Predict a case whose file is LAS, correct from the student, submit: the service gets its
    own student prediction back, voxel for voxel."""
    from mrml_helpers import service_prediction

    loop = loop_factory(trained_service)
    case_id = write_case(tmp_path / "data", "roundtrip_las.nii.gz", las_grid())
    assert loop.add_folder(tmp_path / "data").added == [case_id]
    loop.show_case(case_id)
    loop.predict(case_id)
    corrected = loop.copy_student_to_label(case_id)
    loop.submit_segmentation(case_id, corrected)
    truth = service_prediction(trained_service.client, case_id, tmp_path)
    np.testing.assert_array_equal(
        stored_label(trained_service.client, case_id, tmp_path)[0], truth["student"]
    )
