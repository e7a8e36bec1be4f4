"""Image and label checks: each problem gives a DataError that names the file and the values."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.common.errors import DataError
from reciprocalseg.data.validation import (
    check_image,
    check_image_structure,
    check_label,
    check_same_grid,
    infer_n_classes,
)

SRC = "/data/case7_label.nrrd"


def _on_grid(arr: np.ndarray, spacing=(0.8, 0.8, 2.0), origin=(-10.0, 5.0, 30.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


@pytest.fixture
def image() -> sitk.Image:
    return _on_grid(np.random.default_rng(0).random((5, 6, 7)).astype(np.float32))


def _label(values: np.ndarray | None = None, dtype=np.uint8) -> np.ndarray:
    arr = np.zeros((5, 6, 7), dtype)
    if values is None:
        arr[1:3, 2:5, 3:6] = 1
    else:
        arr.flat[: len(values)] = values
    return arr


# --------------------------------------------------------------------------- images


def test_check_image_accepts_valid(image: sitk.Image) -> None:
    check_image(image, "img.nrrd")  # no exception
    check_image(_on_grid(np.zeros((2, 2, 2), np.int16)), "int.nrrd")


def test_check_image_non_finite() -> None:
    arr = np.ones((3, 4, 5), np.float32)
    arr[0, 0, 0] = np.nan
    arr[1, 1, 1] = np.inf
    with pytest.raises(DataError, match=r"scan\.nii: 2 voxel\(s\) are NaN or infinite"):
        check_image(_on_grid(arr), "scan.nii")


@pytest.mark.parametrize(
    ("img", "pattern"),
    [
        (sitk.Image([4, 5], sitk.sitkFloat32), "2D image of size"),
        (sitk.Image([2, 3, 4, 5], sitk.sitkFloat32), "4D image"),
        (sitk.Image([0, 3, 4], sitk.sitkFloat32), r"empty \(size \(0, 3, 4\)"),
        (sitk.Image([2, 3, 4], sitk.sitkVectorFloat32, 2), "2 components per voxel"),
    ],
)
def test_check_image_structure_errors(img: sitk.Image, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern) as err:
        check_image(img, "scan.nrrd")
    assert str(err.value).startswith("scan.nrrd: ")
    with pytest.raises(DataError, match=pattern):
        check_image_structure(img, "scan.nrrd")


# --------------------------------------------------------------------------- labels


def test_check_label_returns_uint8_array(image: sitk.Image) -> None:
    lab = _label(dtype=np.int16)
    out = check_label(_on_grid(lab), image, SRC, n_classes=1)
    assert out.dtype == np.uint8 and out.shape == (5, 6, 7)
    np.testing.assert_array_equal(out, lab)
    assert int(out.sum()) == 2 * 3 * 3


def test_check_label_float_with_integer_values_is_fine(image: sitk.Image) -> None:
    lab = _label(np.array([0.0, 1.0, 2.0, 2.0]), dtype=np.float32)
    out = check_label(_on_grid(lab), image, SRC, n_classes=2)
    assert out.dtype == np.uint8
    assert out.ravel()[:4].tolist() == [0, 1, 2, 2]


def test_check_label_float_rounding_noise_is_rounded(image: sitk.Image) -> None:
    lab = _label(np.array([0.0, 0.99999994, 2.0000002, 1e-7]), dtype=np.float32)
    out = check_label(_on_grid(lab), image, SRC, n_classes=2)
    assert out.ravel()[:4].tolist() == [0, 1, 2, 0]  # rounded, not truncated (0.9999 -> 1)


def test_check_label_all_background_allowed(image: sitk.Image) -> None:
    out = check_label(_on_grid(np.zeros((5, 6, 7), np.uint8)), image, SRC, n_classes=1)
    assert out.max() == 0


def test_check_label_tiny_rounding_within_tolerance(image: sitk.Image) -> None:
    lab = _on_grid(_label(), spacing=(0.8 * (1 + 1e-5), 0.8, 2.0), origin=(-10.0 + 1e-5, 5.0, 30.0))
    assert check_label(lab, image, SRC).max() == 1


def test_check_label_size_mismatch(image: sitk.Image) -> None:
    lab = _on_grid(np.zeros((5, 6, 8), np.uint8))
    with pytest.raises(DataError, match=r"size differs: label \(8, 6, 5\) vs image \(7, 6, 5\)") as err:
        check_label(lab, image, SRC)
    assert SRC in str(err.value)


def test_check_label_spacing_mismatch(image: sitk.Image) -> None:
    lab = _on_grid(_label(), spacing=(0.8, 0.8, 2.5))
    with pytest.raises(
        DataError, match=r"spacing differs: label \(0\.8, 0\.8, 2\.5\) vs image \(0\.8, 0\.8, 2\)"
    ):
        check_label(lab, image, SRC)


def test_check_label_origin_mismatch(image: sitk.Image) -> None:
    lab = _on_grid(_label(), origin=(-10.0, 5.0, 31.0))
    with pytest.raises(
        DataError, match=r"origin differs: label \(-10, 5, 31\) vs image \(-10, 5, 30\)"
    ) as err:
        check_label(lab, image, SRC)
    assert SRC in str(err.value) and "Resample" in str(err.value)


def test_check_label_direction_mismatch(image: sitk.Image) -> None:
    lab = _on_grid(_label())
    lab.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    with pytest.raises(DataError, match=r"direction differs: label \(-1, 0, 0, 0, -1"):
        check_label(lab, image, SRC)


def test_check_label_fractional_values(image: sitk.Image) -> None:
    lab = _label(np.array([0.0, 0.5, 1.0, 0.25]), dtype=np.float32)
    with pytest.raises(DataError, match=r"non-integer values \(0\.25, 0\.5; 2 voxels\)") as err:
        check_label(_on_grid(lab), image, SRC)
    assert str(err.value).startswith(SRC)
    assert "nearest neighbour" in str(err.value)


def test_check_label_negative_values(image: sitk.Image) -> None:
    lab = _label(np.array([0, -1, 1, -3]), dtype=np.int16)
    with pytest.raises(DataError, match=r"negative values \(-3, -1\)") as err:
        check_label(_on_grid(lab), image, SRC)
    assert SRC in str(err.value)
    # -1 is another tools' "ignore" value: say what marks an unannotated voxel here.
    assert "255 marks an unannotated voxel" in str(err.value)


def test_check_label_values_above_k(image: sitk.Image) -> None:
    lab = _label(np.array([0, 1, 2, 4]), dtype=np.uint8)
    with pytest.raises(DataError) as err:
        check_label(_on_grid(lab), image, SRC, n_classes=1)
    msg = str(err.value)
    assert msg.startswith(SRC)
    assert "values 2, 4" in msg and "K=1" in msg
    # The count to set includes the background, as train/serve --n-classes do (labels 0..4 -> 5).
    assert "configured number of classes is 2" in msg and "Set n_classes to 5" in msg
    assert "train --n-classes 5" in msg
    # With K large enough the same label is fine.
    assert check_label(_on_grid(lab), image, SRC, n_classes=4).max() == 4


def test_check_label_values_above_255_without_k(image: sitk.Image) -> None:
    lab = _label(np.array([0, 1, 300]), dtype=np.int32)
    with pytest.raises(DataError, match=r"values above 255 \(300\)"):
        check_label(_on_grid(lab), image, SRC)


def test_check_label_vector_label(image: sitk.Image) -> None:
    lab = sitk.Image([7, 6, 5], sitk.sitkVectorUInt8, 3)
    with pytest.raises(DataError, match="3 components"):
        check_label(lab, image, SRC)


# --------------------------------------------------------------------------- grid, classes


def test_check_same_grid_lists_every_difference() -> None:
    a = _on_grid(np.zeros((3, 4, 5), np.uint8))
    b = _on_grid(np.zeros((3, 4, 6), np.uint8), spacing=(1.0, 0.8, 2.0), origin=(0.0, 5.0, 30.0))
    b.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    diffs = check_same_grid(a, b, names=("A", "B"))
    assert len(diffs) == 4
    assert diffs[0] == "size differs: A (5, 4, 3) vs B (6, 4, 3) (x, y, z voxels)"
    assert diffs[1].startswith("spacing differs: A (0.8, 0.8, 2) vs B (1, 0.8, 2)")
    assert diffs[2].startswith("origin differs: A (-10, 5, 30) vs B (0, 5, 30)")
    assert diffs[3].startswith("direction differs")
    assert check_same_grid(a, a) == []


def test_check_same_grid_tolerance_is_relative() -> None:
    a = _on_grid(np.zeros((3, 4, 5), np.uint8), spacing=(100.0, 100.0, 100.0), origin=(0.0, 0.0, 0.0))
    b = _on_grid(np.zeros((3, 4, 5), np.uint8), spacing=(100.05, 100.0, 100.0), origin=(0.05, 0.0, 0.0))
    assert check_same_grid(a, b, tol=1e-3) == []  # 0.05 mm on 100 mm voxels is rounding
    assert len(check_same_grid(a, b, tol=1e-4)) == 2


def test_infer_n_classes() -> None:
    assert infer_n_classes([np.array([[0, 1]]), np.array([[0, 3, 2]])]) == 3
    assert infer_n_classes([2, 5, 1]) == 5
    assert infer_n_classes(np.zeros((2, 2), np.uint8)) == 1  # all background -> binary
    assert infer_n_classes([]) == 1
    assert infer_n_classes(4) == 4
    with pytest.raises(DataError, match="-2"):
        infer_n_classes([np.array([0, -2])])
