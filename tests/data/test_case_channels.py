"""Several images per case (issue 24): discovery, 4D files, grid checks, manifests, caching and crops,
on real files in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from reciprocalseg.common.errors import DataError
from reciprocalseg.data.channels import case_channel_count, read_case_channels, read_case_image
from reciprocalseg.data.gpu_sampler import DeviceCases
from reciprocalseg.data.io import Case, discover_cases, load_case_list, write_case_list, write_image
from reciprocalseg.data.preprocess import Preprocessing, preprocess_image
from reciprocalseg.data.sampling import CachedCase, cache_case, random_crop

# A rotated, anisotropic, off-origin grid: catches axis or sign mix-ups between channels.
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION = (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0)
SPACING = (0.7, 0.8, 2.5)
ORIGIN = (10.5, -20.25, 33.0)


def _image(seed: int, shape=(6, 10, 12), dtype=np.float32, origin=ORIGIN) -> sitk.Image:
    arr = (np.random.default_rng(seed).random(shape) * 100).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(origin)
    img.SetDirection(DIRECTION)
    return img


def _label(shape=(6, 10, 12)) -> sitk.Image:
    arr = np.zeros(shape, np.uint8)
    arr[2:4, 3:7, 4:9] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    return img


def _nnunet_folder(root: Path, ids=("A", "B"), n_channels=2) -> tuple[Path, Path]:
    images, labels = root / "imagesTr", root / "labelsTr"
    for i, cid in enumerate(ids):
        for k in range(n_channels):
            write_image(_image(10 * i + k), images / f"{cid}_{k:04d}.nii.gz")
        write_image(_label(), labels / f"{cid}.nii.gz")
    return images, labels


def test_nnunet_channel_files_make_one_case_with_its_channels_in_order(tmp_path: Path) -> None:
    images, labels = _nnunet_folder(tmp_path, n_channels=3)
    cases = discover_cases(images, labels)
    assert [c.case_id for c in cases] == ["A", "B"]
    a = cases[0]
    assert [p.name for p in a.channels] == ["A_0000.nii.gz", "A_0001.nii.gz", "A_0002.nii.gz"]
    assert a.image == a.channels[0] and a.label == labels / "A.nii.gz"
    assert case_channel_count(a) == 3
    image = read_case_image(a)
    assert image.GetNumberOfComponentsPerPixel() == 3
    assert image.GetSize() == (12, 10, 6)
    np.testing.assert_allclose(image.GetDirection(), DIRECTION)
    arrays = sitk.GetArrayFromImage(image)  # (z, y, x, C)
    for k in range(3):
        np.testing.assert_array_equal(arrays[..., k], sitk.GetArrayFromImage(_image(k)))


def test_a_single_channel_nnunet_folder_stays_single_channel(tmp_path: Path) -> None:
    images, labels = _nnunet_folder(tmp_path, n_channels=1)
    cases = discover_cases(images, labels)
    assert [(c.case_id, c.image.name, c.channels) for c in cases] == [
        ("A", "A_0000.nii.gz", ()),
        ("B", "B_0000.nii.gz", ()),
    ]
    assert read_case_image(cases[0]).GetNumberOfComponentsPerPixel() == 1


def test_names_ending_in_digits_without_channel_0_are_case_ids(tmp_path: Path) -> None:
    for cid in ("case_0001", "case_0002"):
        write_image(_image(1), tmp_path / f"{cid}.nrrd")
    assert [(c.case_id, c.channels) for c in discover_cases(tmp_path)] == [
        ("case_0001", ()),
        ("case_0002", ()),
    ]


def test_a_case_missing_a_channel_is_refused_by_name(tmp_path: Path) -> None:
    images, labels = _nnunet_folder(tmp_path, n_channels=2)
    (images / "B_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case B lacks channel 0001 \(B_0001.<ext>\).*same 2 channels"):
        discover_cases(images, labels)


def test_a_channel_off_channel_0s_grid_is_refused_naming_case_channel_and_difference(tmp_path: Path) -> None:
    images, labels = _nnunet_folder(tmp_path)
    shifted = (ORIGIN[0] + 3.0, ORIGIN[1], ORIGIN[2])
    write_image(_image(5, origin=shifted), images / "B_0001.nii.gz")
    case = discover_cases(images, labels)[1]
    with pytest.raises(DataError) as err:
        read_case_image(case)
    message = str(err.value)
    assert "case B" in message and "channel 1 (B_0001.nii.gz)" in message
    assert "origin differs" in message and "13.5" in message
    # Resampled onto channel 0's grid when asked for, with the interpolation named.
    aligned = read_case_channels(case, resampling="linear")
    assert aligned[1].GetOrigin() == aligned[0].GetOrigin()
    assert aligned[1].GetSize() == aligned[0].GetSize()
    with pytest.raises(DataError, match="use one of linear, nearest, bspline"):
        read_case_channels(case, resampling="cubic")


def test_size_difference_is_refused(tmp_path: Path) -> None:
    images, labels = _nnunet_folder(tmp_path)
    write_image(_image(5, shape=(6, 10, 11)), images / "A_0001.nii.gz")
    with pytest.raises(DataError, match=r"case A: channel 1 .*size differs"):
        read_case_image(discover_cases(images, labels)[0])


def test_4d_nifti_and_vector_nrrd_hold_channels(tmp_path: Path) -> None:
    channels = [_image(k) for k in range(2)]
    write_image(sitk.JoinSeries(channels), tmp_path / "four_d.nii.gz")
    write_image(sitk.Compose(channels), tmp_path / "vector.nrrd")
    for name in ("four_d.nii.gz", "vector.nrrd"):
        case = Case(name.split(".")[0], tmp_path / name)
        assert case_channel_count(case) == 2
        image = read_case_image(case)
        assert image.GetNumberOfComponentsPerPixel() == 2
        np.testing.assert_allclose(image.GetSpacing(), SPACING, rtol=1e-6)
        np.testing.assert_allclose(image.GetOrigin(), ORIGIN, atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), DIRECTION, atol=1e-6)
        for k in range(2):
            np.testing.assert_array_equal(
                sitk.GetArrayFromImage(image)[..., k], sitk.GetArrayFromImage(channels[k])
            )


def test_manifest_round_trip_keeps_channels(tmp_path: Path) -> None:
    images, labels = _nnunet_folder(tmp_path)
    cases = discover_cases(images, labels)
    write_case_list(tmp_path / "cases.json", cases[:1], [cases[1].without_label()])
    labeled, unlabeled = load_case_list(tmp_path / "cases.json")
    assert labeled[0].channels == tuple(p.absolute() for p in cases[0].channels)
    assert unlabeled[0].channels == tuple(p.absolute() for p in cases[1].channels)
    assert unlabeled[0].label is None


def _two_channel_prep() -> Preprocessing:
    return Preprocessing(channels=(Preprocessing(intensity="zscore"), Preprocessing(intensity="ct")))


def test_each_channel_is_normalised_by_its_own_setting(tmp_path: Path) -> None:
    images, labels = _nnunet_folder(tmp_path)
    image = read_case_image(discover_cases(images, labels)[0])
    array = preprocess_image(image, _two_channel_prep())
    assert array.shape == (2, 6, 10, 12)
    assert abs(float(array[0].mean())) < 1e-5 and abs(float(array[0].std()) - 1) < 1e-4
    raw1 = sitk.GetArrayFromImage(_image(1))
    np.testing.assert_allclose(array[1], (np.clip(raw1, -125, 275) + 125) / 400 * 2 - 1, atol=1e-6)
    with pytest.raises(DataError, match=r"has 2 channel\(s\) but the model takes 1"):
        preprocess_image(image, Preprocessing())


def test_cache_refuses_a_case_with_other_channels_naming_it(tmp_path: Path) -> None:
    images, labels = _nnunet_folder(tmp_path)
    case = discover_cases(images, labels)[0]
    single = Case("lonely", case.image, case.label)
    with pytest.raises(
        DataError, match=r"case lonely has 1 channel\(s\), but the model and the other cases have 2"
    ):
        cache_case(single, _two_channel_prep(), tmp_path / "cache")
    cached = cache_case(case, _two_channel_prep(), tmp_path / "cache")
    image, label = cached.load()
    assert image.shape == (2, 6, 10, 12) and label.shape == (6, 10, 12)


def test_crops_treat_channels_together() -> None:
    rng = np.random.default_rng(0)
    volume = rng.random((3, 20, 24, 28)).astype(np.float32)
    label = (rng.random((20, 24, 28)) > 0.5).astype(np.uint8)
    for seed in range(6):
        crop, lab = random_crop(volume, label, (8, 16, 12), np.random.default_rng(seed))
        assert crop.shape == (3, 8, 16, 12)
        for k in range(3):  # each channel cropped exactly as a single-channel volume with the same draws
            alone, lab_alone = random_crop(volume[k], label, (8, 16, 12), np.random.default_rng(seed))
            np.testing.assert_array_equal(crop[k], alone)
            np.testing.assert_array_equal(lab, lab_alone)


def test_device_crops_treat_channels_together(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    volume = rng.random((2, 12, 20, 20)).astype(np.float32)
    label = (rng.random((12, 20, 20)) > 0.5).astype(np.uint8)
    paths = {}
    for name, array in (("both", volume), ("c0", volume[0]), ("c1", volume[1]), ("label", label)):
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], array)
    held = {n: DeviceCases([CachedCase(n, paths[n], paths["label"])], "cpu") for n in ("both", "c0", "c1")}
    images = {}
    for name, cases in held.items():
        generator = torch.Generator().manual_seed(3)
        images[name], _ = cases.sample((8, 16, 16), 2, generator)
    assert images["both"].shape == (2, 2, 8, 16, 16)
    assert images["c0"].shape == (2, 1, 8, 16, 16)
    torch.testing.assert_close(images["both"][:, :1], images["c0"], rtol=0, atol=0)
    torch.testing.assert_close(images["both"][:, 1:], images["c1"], rtol=0, atol=0)
