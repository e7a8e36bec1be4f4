"""Largest connected component per class on synthetic label volumes."""

from __future__ import annotations

import numpy as np
import pytest

from reciprocalseg.common.errors import DataError
from reciprocalseg.inference.postprocess import largest_connected_component


def two_blobs_per_class(dtype=np.uint8) -> tuple[np.ndarray, dict[str, tuple[slice, ...]]]:
    """Classes 1 and 2, each a large and a small cuboid; class 2's large blob touches class 1's."""
    v = np.zeros((20, 30, 40), dtype=dtype)
    boxes = {
        "big1": np.s_[2:10, 2:12, 2:12],  # 800 voxels
        "small1": np.s_[14:17, 20:23, 30:33],  # 27
        "big2": np.s_[2:10, 2:12, 12:24],  # 960, face-adjacent to big1: must not merge across classes
        "small2": np.s_[15:19, 2:5, 2:5],  # 36
    }
    v[boxes["big1"]] = 1
    v[boxes["small1"]] = 1
    v[boxes["big2"]] = 2
    v[boxes["small2"]] = 2
    return v, boxes


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_keeps_largest_blob_per_class(dtype):
    v, boxes = two_blobs_per_class(dtype)
    out = largest_connected_component(v)
    assert out.dtype == v.dtype and out.shape == v.shape
    assert out is not v
    expected = v.copy()
    expected[boxes["small1"]] = 0
    expected[boxes["small2"]] = 0
    np.testing.assert_array_equal(out, expected)
    assert np.count_nonzero(out == 1) == 800 and np.count_nonzero(out == 2) == 960
    # the input is untouched
    assert np.count_nonzero(v == 1) == 827 and np.count_nonzero(v == 2) == 996


def test_only_requested_classes_are_filtered():
    v, boxes = two_blobs_per_class()
    out = largest_connected_component(v, classes=[2])
    assert np.count_nonzero(out == 1) == 827  # class 1 untouched, small blob included
    assert (out[boxes["small2"]] == 0).all() and (out[boxes["big2"]] == 2).all()
    # background and absent classes are ignored
    np.testing.assert_array_equal(largest_connected_component(v, classes=[0, 7]), v)


def test_connectivity_decides_what_is_connected():
    v = np.zeros((6, 6, 6), dtype=np.uint8)
    v[1:3, 1:3, 1:3] = 1  # 8 voxels
    v[3, 3, 3] = 1  # touches the cube at a corner only
    v[4, 4, 4] = 1  # touches that voxel at a corner only
    full = largest_connected_component(v, connectivity=3)
    np.testing.assert_array_equal(full, v)  # 26-connectivity: one component of 10
    faces = largest_connected_component(v, connectivity=1)
    assert np.count_nonzero(faces) == 8 and faces[3, 3, 3] == 0 and faces[4, 4, 4] == 0
    w = np.zeros((5, 5, 5), dtype=np.uint8)
    w[2, 2, 2] = w[2, 3, 3] = w[2, 3, 4] = 1  # (2,2,2)-(2,3,3) share an edge; (2,3,3)-(2,3,4) a face
    w[0, 0, 0] = w[0, 0, 1] = 1
    assert np.count_nonzero(largest_connected_component(w, connectivity=2)) == 3
    assert np.count_nonzero(largest_connected_component(w, connectivity=1)) == 2


def test_ties_keep_first_component_in_array_order():
    v = np.zeros((4, 4, 10), dtype=np.uint8)
    v[1:3, 1:3, 0:2] = 1
    v[1:3, 1:3, 6:8] = 1
    out = largest_connected_component(v)
    assert (out[1:3, 1:3, 0:2] == 1).all() and not out[:, :, 6:8].any()


def test_single_component_and_empty_volumes_are_unchanged():
    v = np.zeros((5, 5, 5), dtype=np.uint8)
    np.testing.assert_array_equal(largest_connected_component(v), v)
    v[1:4, 1:4, 1:4] = 3
    out = largest_connected_component(v)
    np.testing.assert_array_equal(out, v)
    assert out is not v


def test_bad_connectivity_raises():
    with pytest.raises(DataError, match="connectivity"):
        largest_connected_component(np.zeros((3, 3, 3), dtype=np.uint8), connectivity=4)
