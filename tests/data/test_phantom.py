"""The procedural phantom: deterministic, valid, varied, and not solvable by a global threshold."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.data.io import discover_cases, read_image
from reciprocalseg.data.phantom import make_phantom, phantom_case_seed, write_phantom_cohort
from reciprocalseg.data.validation import check_image, check_label


def _arrays(seed: int, **kw) -> tuple[np.ndarray, np.ndarray]:
    img, lab = make_phantom(seed, **kw)
    return sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)


def _best_threshold_dice(image: np.ndarray, fg: np.ndarray) -> float:
    """Dice of the best single global threshold (foreground = brighter than it)."""
    best = 0.0
    for t in np.percentile(image, np.linspace(40, 99.9, 120)):
        pred = image > t
        best = max(best, 2 * np.count_nonzero(pred & fg) / (np.count_nonzero(pred) + np.count_nonzero(fg)))
    return best


def test_same_seed_same_arrays() -> None:
    a1, l1 = _arrays(11)
    a2, l2 = _arrays(11)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(l1, l2)
    a3, _ = _arrays(12)
    assert not np.array_equal(a1, a3)


def test_image_and_label_are_valid_and_on_one_grid() -> None:
    img, lab = make_phantom(3, shape_zyx=(40, 48, 56), spacing_xyz=(0.9, 1.1, 1.6))
    assert img.GetSize() == (56, 48, 40)
    assert img.GetPixelID() == sitk.sitkFloat32 and lab.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(img.GetSpacing(), (0.9, 1.1, 1.6))
    assert img.GetOrigin() == lab.GetOrigin()
    assert img.GetOrigin() != (0.0, 0.0, 0.0)  # a random origin, as real scans have
    check_image(img, "phantom")
    arr = check_label(lab, img, "phantom", n_classes=1)
    assert set(np.unique(arr).tolist()) == {0, 1}
    image = sitk.GetArrayFromImage(img)
    assert 0.0 <= image.min() and image.max() <= 255.0
    organ, background = image[arr == 1].mean(), image[arr == 0].mean()
    assert 70 < organ < 230  # MRI-like 0..255 range, target brighter than tissue
    assert organ > 1.3 * background


@pytest.mark.parametrize("n_classes", [2, 3])
def test_multi_class_labels_all_present(n_classes: int) -> None:
    for seed in range(3):
        img, lab = make_phantom(seed, n_classes=n_classes)
        arr = check_label(lab, img, "phantom", n_classes=n_classes)
        counts = np.bincount(arr.ravel(), minlength=n_classes + 1)
        assert len(counts) == n_classes + 1
        assert (counts[1:] >= 30).all(), counts


def test_structure_varies_across_seeds() -> None:
    volumes, centres = [], []
    for seed in range(6):
        _, lab = _arrays(seed)
        fg = np.argwhere(lab > 0)
        volumes.append(len(fg))
        centres.append(fg.mean(axis=0))
    volumes_arr, centres_arr = np.array(volumes), np.array(centres)
    assert volumes_arr.min() > 500  # always a sizeable organ
    assert volumes_arr.max() / volumes_arr.min() > 1.5
    assert centres_arr.std(axis=0).min() > 2.0  # centre moves along every axis (voxels)


def test_global_threshold_does_not_solve_it() -> None:
    dices = []
    for seed in range(5):
        image, lab = _arrays(seed)
        dices.append(_best_threshold_dice(image, lab > 0))
    assert max(dices) < 0.85, dices
    assert np.mean(dices) < 0.8, dices


def test_cohort_pairs_layout(tmp_path: Path) -> None:
    cases = write_phantom_cohort(tmp_path, n_cases=4, seed=5, shape_zyx=(32, 40, 40))
    assert [c.case_id for c in cases] == ["phantom_000", "phantom_001", "phantom_002", "phantom_003"]
    assert cases[1].image == tmp_path / "phantom_001_image.nrrd"
    assert cases[1].label == tmp_path / "phantom_001_label.nrrd"
    assert discover_cases(tmp_path) == cases
    # Files hold exactly what make_phantom gives for the per-case seed.
    img, lab = make_phantom(phantom_case_seed(5, 2), shape_zyx=(32, 40, 40))
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(read_image(cases[2].image)), sitk.GetArrayFromImage(img)
    )
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(read_image(cases[2].label)), sitk.GetArrayFromImage(lab)
    )
    assert read_image(cases[2].image).GetOrigin() == img.GetOrigin()


def test_cohort_split_layout_multiclass(tmp_path: Path) -> None:
    cases = write_phantom_cohort(
        tmp_path, n_cases=2, seed=1, n_classes=2, shape_zyx=(32, 32, 32), layout="split"
    )
    assert cases[0].image == tmp_path / "imagesTr" / "phantom_000.nii.gz"
    assert cases[0].label == tmp_path / "labelsTr" / "phantom_000.nii.gz"
    assert discover_cases(tmp_path / "imagesTr", tmp_path / "labelsTr") == cases
    label = sitk.GetArrayFromImage(read_image(cases[1].label))
    assert label.max() == 2


def test_cohort_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    write_phantom_cohort(tmp_path, n_cases=10, shape_zyx=(64, 64, 64))
    # About 0.1 s per 64^3 case (generate + write) on an idle core; the bound leaves room for busy CI.
    assert time.perf_counter() - start < 10.0
    assert len(list(tmp_path.glob("*_image.nrrd"))) == 10


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        write_phantom_cohort(tmp_path, 1, layout="flat")
    with pytest.raises(ValueError, match="n_classes"):
        make_phantom(0, n_classes=0)
    with pytest.raises(ValueError, match="shape_zyx"):
        make_phantom(0, shape_zyx=(4, 64, 64))
