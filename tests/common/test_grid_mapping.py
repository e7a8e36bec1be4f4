"""Grid mapping (issue 26): labels move between grids that share voxel centres by exact copies
(flips, permutations, crops), and are resampled or refused between genuinely different grids."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.common.errors import DataError
from reciprocalseg.common.geometry import Geometry, image_from_array
from reciprocalseg.common.grid_mapping import array_on_grid, lattice_map, resample_nearest


def oblique(size=(7, 6, 5), spacing=(0.8, 0.9, 1.3), left_handed=True) -> Geometry:
    a, b = np.deg2rad(25.0), np.deg2rad(-15.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    direction = rz @ rx
    if left_handed:
        direction[:, 2] *= -1
    return Geometry(size, spacing, (20.0, -15.0, 30.0), tuple(direction.ravel()))


def reversed_axis(geometry: Geometry, axis: int) -> Geometry:
    """The same voxel centres indexed from the other end of ``axis`` (what Slicer's reader does
    to the k axis of a left-handed file)."""
    m = geometry.ijk_to_lps()
    origin = m[:3, 3] + (geometry.size[axis] - 1) * m[:3, axis]
    direction = geometry.direction_matrix().copy()
    direction[:, axis] *= -1
    return Geometry(geometry.size, geometry.spacing, tuple(origin), tuple(direction.ravel()))


def permuted(geometry: Geometry, order: tuple) -> Geometry:
    """The same voxel centres with the index axes taken in ``order`` (i, j, k of the new grid)."""
    direction = geometry.direction_matrix()[:, list(order)]
    return Geometry(
        tuple(geometry.size[a] for a in order),
        tuple(geometry.spacing[a] for a in order),
        geometry.origin,
        tuple(direction.ravel()),
    )


def labels(geometry: Geometry, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=tuple(reversed(geometry.size))).astype(np.uint8)


def physical_lookup(array_kji, source: Geometry, target: Geometry) -> np.ndarray:
    """Reference: each target voxel takes the source voxel at the same physical point (SimpleITK)."""
    return resample_nearest(array_kji, source, target, fill=0)


@pytest.mark.parametrize(
    "transform",
    [
        lambda g: reversed_axis(g, 2),  # Slicer reading a left-handed file
        lambda g: reversed_axis(reversed_axis(g, 0), 1),
        lambda g: permuted(g, (2, 0, 1)),
        lambda g: reversed_axis(permuted(g, (1, 0, 2)), 2),
    ],
    ids=["k-reversed", "i-and-j-reversed", "permuted", "permuted-and-reversed"],
)
def test_grids_sharing_voxel_centres_map_exactly(transform):
    stored = oblique()
    scene = transform(stored)
    mapping = lattice_map(scene, stored)
    assert mapping is not None and not mapping.is_identity
    drawn = labels(scene)
    on_stored = array_on_grid(drawn, scene, stored)
    np.testing.assert_array_equal(on_stored, physical_lookup(drawn, scene, stored))
    assert on_stored.shape == tuple(reversed(stored.size))
    # and back: the stored grid's voxels on the scene's grid
    np.testing.assert_array_equal(array_on_grid(on_stored, stored, scene), drawn)


def test_k_reversed_grid_is_the_array_flipped_along_k():
    stored = oblique()
    drawn = labels(reversed_axis(stored, 2), seed=1)
    np.testing.assert_array_equal(array_on_grid(drawn, reversed_axis(stored, 2), stored), drawn[::-1])


def test_a_crop_lands_at_its_offset_and_the_rest_is_filled():
    stored = Geometry((10, 8, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    crop_origin = stored.ijk_to_lps() @ np.array([3, 2, 1, 1.0])
    crop = Geometry((4, 3, 2), stored.spacing, tuple(crop_origin[:3]), stored.direction)
    part = np.ones((2, 3, 4), np.uint8) * 7
    out = array_on_grid(part, crop, stored, fill=255)
    assert out.shape == (6, 8, 10)
    assert (out[1:3, 2:5, 3:7] == 7).all() and (out == 7).sum() == part.size
    assert (out[out != 7] == 255).all()
    np.testing.assert_array_equal(array_on_grid(part, crop, stored), physical_lookup(part, crop, stored))


def test_round_off_of_a_float32_header_still_maps_exactly():
    stored = oblique(left_handed=True)
    scene = reversed_axis(stored, 2)
    noisy = Geometry(
        scene.size,
        tuple(np.float32(scene.spacing)),
        tuple(np.float32(scene.origin)),
        tuple(np.float32(scene.direction)),
    )
    assert lattice_map(noisy, stored) is not None


def test_genuinely_different_grids_are_resampled_or_refused():
    stored = oblique(left_handed=False)
    shifted = Geometry(
        stored.size, stored.spacing, tuple(np.add(stored.origin, (0.3, 0, 0))), stored.direction
    )
    finer = Geometry((14, 12, 10), (0.4, 0.45, 0.65), stored.origin, stored.direction)
    for other in (shifted, finer):
        assert lattice_map(other, stored) is None
        with pytest.raises(DataError, match="does not share voxel centres.*differs"):
            array_on_grid(labels(other), other, stored, resample=False)
    drawn = labels(finer)
    np.testing.assert_array_equal(array_on_grid(drawn, finer, stored), physical_lookup(drawn, finer, stored))


def test_resample_nearest_keeps_the_voxel_type_and_fills_outside():
    source = Geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    target = Geometry((4, 4, 4), (1.0, 1.0, 1.0), (2.0, 0.0, 0.0))
    values = np.full((4, 4, 4), 9, np.uint8)
    out = resample_nearest(values, source, target, fill=255)
    assert out.dtype == np.uint8
    assert (out[:, :, :2] == 9).all() and (out[:, :, 2:] == 255).all()
    # the same as SimpleITK reading the grid from an image
    image = image_from_array(values, source)
    assert sitk.GetArrayFromImage(image).shape == out.shape


def test_right_handed_is_what_slicer_reads_and_keeps_the_voxels():
    from reciprocalseg.common.grid_mapping import right_handed, same_voxels

    left = oblique(left_handed=True)
    right = right_handed(left)
    assert np.linalg.det(right.direction_matrix()) > 0 and right == reversed_axis(left, 2)
    assert right_handed(right) == right
    assert same_voxels(left, right) and same_voxels(right, left)
    crop = Geometry((3, 6, 5), left.spacing, left.origin, left.direction)
    assert not same_voxels(crop, left) and not same_voxels(left, crop)
    assert not same_voxels(oblique(left_handed=False), left)  # mirrored: other voxel centres
