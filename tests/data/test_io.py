"""Reading/writing volumes, case IDs, case discovery and manifests, on real files in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.common.errors import DataError
from reciprocalseg.data.io import (
    IMAGE_SUFFIXES,
    Case,
    case_id_from_path,
    discover_cases,
    load_case_list,
    read_image,
    read_list_file,
    require_labels,
    write_case_list,
    write_image,
)

# A rotated (30 degrees about z), anisotropic, off-origin grid: catches axis or sign mix-ups.
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION = (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0)
SPACING = (0.7, 0.8, 2.5)
ORIGIN = (10.5, -20.25, 33.0)


def _volume(dtype=np.float32, shape=(6, 7, 8)) -> tuple[np.ndarray, sitk.Image]:
    rng = np.random.default_rng(0)
    arr = (rng.random(shape) * 100 - 20).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    return arr, img


def _assert_geometry(img: sitk.Image, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> None:
    np.testing.assert_allclose(img.GetSpacing(), spacing, rtol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), origin, atol=1e-5)
    np.testing.assert_allclose(img.GetDirection(), direction, atol=1e-6)


def _write_dicom_series(img: sitk.Image, folder: Path, series_uid: str, prefix: str = "slice") -> None:
    """One file per slice with the tags a DICOM reader needs to stack them back."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = img.GetDirection()
    orientation = "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0020|000d": series_uid + ".0",  # study instance UID
            "0020|000e": series_uid,  # series instance UID
            "0008|0018": f"{series_uid}.{k + 1}",  # SOP instance UID
            "0020|0037": orientation,
            "0020|0032": "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1),
            "0028|0030": "\\".join(str(v) for v in img.GetSpacing()[:2]),
            "0018|0050": str(img.GetSpacing()[2]),
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(sl)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd"])
def test_round_trip_every_format(tmp_path: Path, suffix: str) -> None:
    arr, img = _volume()
    path = tmp_path / f"case01_image{suffix}"
    write_image(img, path)
    back = read_image(path)
    assert back.GetSize() == (8, 7, 6)
    assert back.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    _assert_geometry(back)
    # Only the final file(s) remain: no temporaries, no temporary folder.
    names = sorted(p.name for p in tmp_path.iterdir())
    expected = {
        ".nhdr": ["case01_image.nhdr", "case01_image.raw.gz"],
        ".mhd": ["case01_image.mhd", "case01_image.zraw"],
    }.get(suffix, [f"case01_image{suffix}"])
    assert names == expected


def test_round_trip_integer_label(tmp_path: Path) -> None:
    lab = np.zeros((4, 5, 6), np.uint8)
    lab[1:3, 2:4, 1:5] = 2
    img = sitk.GetImageFromArray(lab)
    write_image(img, tmp_path / "x_label.nii.gz")
    back = read_image(tmp_path / "x_label.nii.gz")
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), lab)


def test_write_image_overwrites_atomically(tmp_path: Path) -> None:
    _, img = _volume()
    path = tmp_path / "a.nrrd"
    write_image(img, path)
    write_image(sitk.Image([2, 3, 4], sitk.sitkInt16), path)
    assert read_image(path).GetSize() == (2, 3, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["a.nrrd"]


def test_write_image_unsupported_extension(tmp_path: Path) -> None:
    _, img = _volume()
    with pytest.raises(DataError, match=r"a\.png"):
        write_image(img, tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_dicom_series_round_trip(tmp_path: Path) -> None:
    arr = np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5) - 50
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    folder = tmp_path / "patient7"
    _write_dicom_series(img, folder, "1.2.826.0.1.3680043.2.1125.7")
    back = read_image(folder)
    assert back.GetSize() == (5, 6, 4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    _assert_geometry(back, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert case_id_from_path(folder) == "patient7"


def test_dicom_folder_with_two_series(tmp_path: Path) -> None:
    arr = np.ones((3, 4, 5), np.int16)
    folder = tmp_path / "mixed"
    _write_dicom_series(sitk.GetImageFromArray(arr), folder, "1.2.3.4.1", prefix="a")
    _write_dicom_series(sitk.GetImageFromArray(arr * 7), folder, "1.2.3.4.2", prefix="b")
    with pytest.raises(DataError) as err:
        read_image(folder)
    msg = str(err.value)
    assert str(folder) in msg and "1.2.3.4.1" in msg and "1.2.3.4.2" in msg and "series_id" in msg
    picked = read_image(folder, series_id="1.2.3.4.2")
    assert sitk.GetArrayFromImage(picked).max() == 7
    with pytest.raises(DataError, match="1.2.3.4.9"):
        read_image(folder, series_id="1.2.3.4.9")


# --------------------------------------------------------------------------- read errors


def _assert_names_file(err: pytest.ExceptionInfo, path: Path) -> None:
    assert str(path) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.nrrd"
    with pytest.raises(DataError, match="not found") as err:
        read_image(path)
    _assert_names_file(err, path)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.nrrd"
    path.write_text("this is not an image")
    with pytest.raises(DataError, match="cannot read") as err:
        read_image(path)
    _assert_names_file(err, path)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "trunc.mha"
    header = (
        "ObjectType = Image\nNDims = 3\nDimSize = 4 5 3\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode() + b"\0" * 20)  # 20 of the 240 bytes of data
    with pytest.raises(DataError, match="cannot read") as err:
        read_image(path)
    _assert_names_file(err, path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_nifti_is_refused_not_padded_with_zeros(tmp_path: Path, suffix: str) -> None:
    """ITK's NIfTI reader fills a short file with zeros; half a scan (or label) must not pass."""
    arr = np.arange(20 * 30 * 40, dtype=np.int16).reshape(20, 30, 40) % 1000 + 1
    img = sitk.GetImageFromArray(arr)
    full = tmp_path / f"full{suffix}"
    sitk.WriteImage(img, str(full))
    assert np.array_equal(sitk.GetArrayFromImage(read_image(full)), arr)
    data = full.read_bytes()
    for cut in (len(data) // 2, len(data) - 8):
        path = tmp_path / f"cut{cut}{suffix}"
        path.write_bytes(data[:cut])
        with pytest.raises(DataError, match="truncated") as err:
            read_image(path)
        _assert_names_file(err, path)


def test_nifti_with_voxels_placed_far_away_is_refused_without_inflating(tmp_path: Path) -> None:
    """A vox_offset of 10^12 in a .nii.gz would make a reader inflate a terabyte to get there."""
    import gzip
    import struct

    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, 4, 4, 4, 1, 1, 1, 1)
    struct.pack_into("<2h", header, 70, 2, 8)  # uint8
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 1e12)
    header[344:348] = b"n+1\0"
    path = tmp_path / "far.nii.gz"
    path.write_bytes(gzip.compress(bytes(header) + bytes(64)))
    with pytest.raises(DataError, match="vox_offset") as err:
        read_image(path)
    _assert_names_file(err, path)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="unsupported file type") as err:
        read_image(path)
    _assert_names_file(err, path)
    assert ".nii.gz" in str(err.value)


def test_2d_image(tmp_path: Path) -> None:
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image([10, 12], sitk.sitkFloat32), str(path))
    with pytest.raises(DataError, match="2D") as err:
        read_image(path)
    _assert_names_file(err, path)


def test_empty_image(tmp_path: Path) -> None:
    path = tmp_path / "empty.mha"
    header = (
        "ObjectType = Image\nNDims = 3\nDimSize = 4 5 0\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
    )
    path.write_text(header)
    with pytest.raises(DataError, match="empty") as err:
        read_image(path)
    _assert_names_file(err, path)


def test_vector_image(tmp_path: Path) -> None:
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3), str(path))
    with pytest.raises(DataError, match="3 components") as err:
        read_image(path)
    _assert_names_file(err, path)


def test_folder_without_dicom(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no readable DICOM") as err:
        read_image(folder)
    _assert_names_file(err, folder)


# --------------------------------------------------------------------------- case IDs


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("ABC_image.nrrd", "ABC"),
        ("ABC_label.nrrd", "ABC"),
        ("ABC_seg.nhdr", "ABC"),
        ("ABC.nii.gz", "ABC"),
        ("labels/ABC.nii.gz", "ABC"),
        ("imagesTr/ABC_0000.nii.gz", "ABC"),
        ("ABC.NII.GZ", "ABC"),
        ("case.v2_image.mha", "case.v2"),
        ("x_image_label.mhd", "x_image"),  # one ending is removed, once
        ("_label.nrrd", "_label"),  # never an empty ID
        ("ABC_0001.nii.gz", "ABC_0001"),  # another channel keeps its number
        ("data/ABC.h5", "ABC"),
    ],
)
def test_case_id_from_path(path: str, expected: str) -> None:
    assert case_id_from_path(path) == expected


def test_image_suffixes_constant() -> None:
    assert IMAGE_SUFFIXES == (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


# --------------------------------------------------------------------------- discovery


def _touch_image(path: Path, value: int = 1) -> Path:
    write_image(sitk.GetImageFromArray(np.full((2, 3, 4), value, np.uint8)), path)
    return path


def test_discover_pairs_layout(tmp_path: Path) -> None:
    for cid in ("B2", "A1", "C3"):
        _touch_image(tmp_path / f"{cid}_image.nrrd")
    _touch_image(tmp_path / "A1_label.nrrd")
    _touch_image(tmp_path / "C3_seg.nrrd")
    (tmp_path / "train.list").write_text("A1\n")  # not an image: ignored
    (tmp_path / ".hidden_image.nrrd").write_text("x")  # hidden: ignored
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["A1", "B2", "C3"]
    assert cases[0] == Case("A1", tmp_path / "A1_image.nrrd", tmp_path / "A1_label.nrrd")
    assert cases[1].label is None
    assert cases[2].label == tmp_path / "C3_seg.nrrd"
    with pytest.raises(DataError, match=r"1 case\(s\) have no label: B2"):
        require_labels(cases)
    assert require_labels([cases[0], cases[2]]) == [cases[0], cases[2]]


def test_discover_split_layout_and_dicom_folder(tmp_path: Path) -> None:
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    _touch_image(images / "p2_0000.nii.gz")
    _touch_image(images / "p1.nii.gz")
    _touch_image(labels / "p1.nii.gz")
    _touch_image(labels / "p2.nii.gz")
    _write_dicom_series(sitk.GetImageFromArray(np.ones((3, 4, 5), np.int16)), images / "p3", "1.2.3.9")
    cases = discover_cases(images, labels)
    assert cases == [
        Case("p1", images / "p1.nii.gz", labels / "p1.nii.gz"),
        Case("p2", images / "p2_0000.nii.gz", labels / "p2.nii.gz"),
        Case("p3", images / "p3", None),
    ]
    assert read_image(cases[2].image).GetSize() == (5, 4, 3)


def test_discover_label_without_image(tmp_path: Path) -> None:
    _touch_image(tmp_path / "A_image.nrrd")
    _touch_image(tmp_path / "A_label.nrrd")
    orphan = _touch_image(tmp_path / "Z_label.nrrd")
    with pytest.raises(DataError, match="label without an image") as err:
        discover_cases(tmp_path)
    _assert_names_file(err, orphan)


def test_discover_label_without_image_in_label_folder(tmp_path: Path) -> None:
    _touch_image(tmp_path / "img" / "A.nii.gz")
    orphan = _touch_image(tmp_path / "lab" / "B.nii.gz")
    with pytest.raises(DataError) as err:
        discover_cases(tmp_path / "img", tmp_path / "lab")
    _assert_names_file(err, orphan)


def test_discover_duplicate_ids(tmp_path: Path) -> None:
    a = _touch_image(tmp_path / "A_image.nrrd")
    b = _touch_image(tmp_path / "A.nii.gz")
    with pytest.raises(DataError, match="duplicate case ID 'A'") as err:
        discover_cases(tmp_path)
    assert str(a) in str(err.value) and str(b) in str(err.value)


def test_discover_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as err:
        discover_cases(tmp_path / "missing")
    _assert_names_file(err, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        discover_cases(tmp_path / "empty")


# --------------------------------------------------------------------------- manifests and lists


def test_case_list_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "data"
    labeled = [
        Case("A", _touch_image(data / "A_image.nrrd"), _touch_image(data / "A_label.nrrd")),
        Case("B", _touch_image(data / "B_image.nrrd"), _touch_image(data / "B_label.nrrd")),
    ]
    unlabeled = [Case("U", _touch_image(data / "U_image.nrrd"))]
    manifest = tmp_path / "run" / "cases.json"
    write_case_list(manifest, labeled, unlabeled)
    doc = json.loads(manifest.read_text())
    assert doc["labeled"][0] == {
        "id": "A",
        "image": str(data / "A_image.nrrd"),
        "label": str(data / "A_label.nrrd"),
    }
    assert doc["unlabeled"] == [{"id": "U", "image": str(data / "U_image.nrrd")}]
    assert load_case_list(manifest) == (labeled, unlabeled)


def test_case_list_relative_paths_and_default_ids(tmp_path: Path) -> None:
    _touch_image(tmp_path / "imgs" / "K_image.nrrd")
    _touch_image(tmp_path / "imgs" / "K_label.nrrd")
    _touch_image(tmp_path / "imgs" / "M.nii.gz")
    manifest = tmp_path / "cases.json"
    manifest.write_text(
        json.dumps(
            {
                "labeled": [{"image": "imgs/K_image.nrrd", "label": "imgs/K_label.nrrd"}],
                "unlabeled": [{"image": "imgs/M.nii.gz"}],
                "note": "extra keys are ignored",
            }
        )
    )
    labeled, unlabeled = load_case_list(manifest)
    assert labeled == [Case("K", tmp_path / "imgs" / "K_image.nrrd", tmp_path / "imgs" / "K_label.nrrd")]
    assert unlabeled == [Case("M", tmp_path / "imgs" / "M.nii.gz")]


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("{not json", r"not valid JSON \(line 1"),
        ("[1, 2]", "expected a JSON object"),
        ('{"labeled": {"id": "A"}}', "'labeled' must be a list"),
        ('{"labeled": [{"id": "A", "image": "A.nrrd"}]}', r"labeled\[0\] needs a 'label' path"),
        ('{"unlabeled": [{"id": "A"}]}', r"unlabeled\[0\] needs a 'image' path"),
        ('{"labelled": []}', "spelled 'labeled'"),
        (
            '{"unlabeled": [{"id": "A", "image": "A.nrrd"}, {"id": "A", "image": "A.nrrd"}]}',
            "duplicate case IDs: A",
        ),
        (
            '{"unlabeled": [{"id": "A", "image": "missing.nrrd"}]}',
            r"1 listed file\(s\) not found: A: .*missing\.nrrd",
        ),
        ('{"unlabeled": [{"id": 5, "image": "A.nrrd"}]}', "invalid 'id' 5"),
    ],
)
def test_case_list_errors(tmp_path: Path, content: str, pattern: str) -> None:
    _touch_image(tmp_path / "A.nrrd")
    manifest = tmp_path / "cases.json"
    manifest.write_text(content)
    with pytest.raises(DataError, match=pattern) as err:
        load_case_list(manifest)
    _assert_names_file(err, manifest)


def test_case_list_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as err:
        load_case_list(tmp_path / "cases.json")
    _assert_names_file(err, tmp_path / "cases.json")


def test_write_case_list_rejects_labeled_without_label(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="without a label.*X"):
        write_case_list(tmp_path / "c.json", [Case("X", tmp_path / "x.nrrd")], [])
    assert not (tmp_path / "c.json").exists()


def test_read_list_file(tmp_path: Path) -> None:
    path = tmp_path / "train.list"
    path.write_text("0RZDK210BSMWAA6467LU\n\n  1D7CUD1955YZPGK8XHJX  \n# a comment\r\n3DZ\n")
    assert read_list_file(path) == ["0RZDK210BSMWAA6467LU", "1D7CUD1955YZPGK8XHJX", "3DZ"]
    path.write_text("A\nB\nA\n")
    with pytest.raises(DataError, match="more than once: A") as err:
        read_list_file(path)
    _assert_names_file(err, path)
    with pytest.raises(DataError, match="not found"):
        read_list_file(tmp_path / "missing.list")


def test_case_accepts_str_paths() -> None:
    c = Case("A", os.path.join("x", "A.nrrd"), "y/A_label.nrrd")
    assert c.image == Path("x/A.nrrd") and c.label == Path("y/A_label.nrrd")
