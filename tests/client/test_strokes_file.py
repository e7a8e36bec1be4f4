"""A strokes array written by the light client (no SimpleITK) reads back in ITK on the case's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.client.strokes_file import write_strokes
from reciprocalseg.service.workspace import geometry_of


def oblique_image(shape_zyx=(5, 6, 7)) -> sitk.Image:
    image = sitk.Image(list(reversed(shape_zyx)), sitk.sitkFloat32)
    image.SetSpacing((0.8, 1.1, 2.5))
    image.SetOrigin((-12.5, 30.25, 7.0))
    a, b = np.deg2rad(25.0), np.deg2rad(-15.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    direction = rz @ rx
    direction[:, 2] *= -1  # left-handed
    image.SetDirection(direction.ravel().tolist())
    return image


def test_the_written_strokes_are_on_the_case_grid_voxel_for_voxel(tmp_path: Path) -> None:
    image = oblique_image()
    strokes = np.full((5, 6, 7), 255, np.uint8)
    strokes[2, 1:4, 3] = 1
    strokes[0, 0, :] = 0
    strokes[4, 5, 6] = 2
    path = write_strokes(strokes, geometry_of(image), tmp_path / "s.nrrd")
    back = sitk.ReadImage(str(path))
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), strokes)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((5, 6, 8), np.uint8), "shape (5, 6, 8)"),
        (np.full((5, 6, 7), 256, np.int32), "outside 0..255"),
        (np.full((5, 6, 7), 0.5), "non-integer"),
    ],
)
def test_an_array_that_does_not_fit_the_case_is_refused_before_sending(tmp_path, array, words) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        write_strokes(array, geometry_of(oblique_image()), tmp_path / "s.nrrd")
    assert not (tmp_path / "s.nrrd").exists()
