"""Tests of reciprocalseg.common.geometry with real SimpleITK images and real vtk objects.

The grids are deliberately awkward: a 30 degree rotation about an oblique axis, anisotropic
non-unit spacing and a non-zero origin, so that any axis swap, transpose or missing LPS/RAS flip
shows up as a wrong physical position.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.common.errors import DataError
from reciprocalseg.common.geometry import (
    LPS_TO_RAS,
    Geometry,
    array_from_image,
    array_from_vtk_image,
    geometry_from_vtk,
    ijk_to_ras_vtk_matrix,
    image_from_array,
    lps_to_ras,
    ras_to_lps,
    resample_label_to_reference,
    vtk_image_from_array,
)

vtk = pytest.importorskip("vtk")

SPACING = (0.7, 1.3, 2.5)
ORIGIN = (12.5, -30.25, 47.0)
SIZE = (7, 9, 5)  # x, y, z


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """Rodrigues' rotation matrix about ``axis``."""
    a = np.asarray(axis, dtype=float)
    a /= np.linalg.norm(a)
    t = math.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


DIRECTION = rotation((1.0, 2.0, 3.0), 30.0)


def make_image(size=SIZE, seed=0) -> sitk.Image:
    """An int16 image of random values on the oblique, anisotropic test grid."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1000, size=tuple(reversed(size))).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(tuple(DIRECTION.ravel()))
    return img


def sample_indices(size) -> list[tuple[int, int, int]]:
    sx, sy, sz = size
    return [(0, 0, 0), (sx - 1, 0, 0), (0, sy - 1, 0), (0, 0, sz - 1), (sx - 1, sy - 1, sz - 1), (3, 5, 2)]


def vtk_matrix_to_numpy(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


# --------------------------------------------------------------------- basics
def test_direction_fixture_is_a_proper_oblique_rotation():
    assert np.allclose(DIRECTION @ DIRECTION.T, np.eye(3))
    assert np.isclose(np.linalg.det(DIRECTION), 1.0)
    # every entry non-trivial: no axis is aligned with a physical axis
    assert np.all(np.abs(DIRECTION) > 0.05)


def test_geometry_from_image_and_matrices():
    img = make_image()
    g = Geometry.from_image(img)
    assert g.size == SIZE
    assert g.spacing == pytest.approx(SPACING)
    assert g.origin == pytest.approx(ORIGIN)
    assert np.allclose(g.direction_matrix(), DIRECTION)

    lps = g.ijk_to_lps()
    ras = g.ijk_to_ras()
    for ijk in sample_indices(SIZE):
        p_lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
        h = np.array([*ijk, 1.0])
        assert np.allclose(lps @ h, [*p_lps, 1.0], atol=1e-9)
        assert np.allclose(ras @ h, [-p_lps[0], -p_lps[1], p_lps[2], 1.0], atol=1e-9)
    assert np.allclose(ras, np.diag([-1, -1, 1, 1]) @ lps)


def test_lps_ras_points():
    assert lps_to_ras((1.0, 2.0, 3.0)).tolist() == [-1.0, -2.0, 3.0]
    assert ras_to_lps([-1.0, -2.0, 3.0]).tolist() == [1.0, 2.0, 3.0]
    pts = np.array([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]])
    assert lps_to_ras(pts).tolist() == [[-1.0, 2.0, 3.0], [-4.0, -5.0, -6.0]]
    assert pts.tolist() == [[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]]  # input untouched
    assert np.array_equal(ras_to_lps(lps_to_ras(pts)), pts)
    assert np.array_equal(LPS_TO_RAS @ LPS_TO_RAS, np.eye(4))


def test_array_image_round_trip_and_apply_to():
    img = make_image()
    arr, g = array_from_image(img)
    assert arr.shape == (5, 9, 7)
    assert arr[2, 5, 3] == img[3, 5, 2]  # (z, y, x) array vs (x, y, z) index
    back = image_from_array(arr, g)
    assert back.GetPixelID() == img.GetPixelID()
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)
    assert Geometry.from_image(back) == g

    blank = sitk.Image(7, 9, 5, sitk.sitkUInt8)
    placed = g.apply_to(blank)
    assert Geometry.from_image(placed) == g
    assert blank.GetOrigin() == (0.0, 0.0, 0.0)  # input not modified
    assert g.apply(blank).GetSpacing() == pytest.approx(SPACING)

    as_bool = image_from_array(arr > 0, g)
    assert as_bool.GetPixelID() == sitk.sitkUInt8
    assert int(sitk.GetArrayFromImage(as_bool).sum()) == int((arr > 0).sum())


def test_dict_json_round_trip():
    g = Geometry.from_image(make_image())
    text = json.dumps(g.to_dict())
    g2 = Geometry.from_dict(json.loads(text))
    assert g2 == g
    assert g2.size == (7, 9, 5)
    assert json.loads(text)["spacing"] == [0.7, 1.3, 2.5]


# ------------------------------------------------------------ Slicer (vtk) side
def test_sitk_to_slicer_vtk_to_sitk_round_trip():
    img = make_image()
    arr, g = array_from_image(img)
    image_data, ijk_to_ras = vtk_image_from_array(arr, g)

    # How Slicer stores a volume: trivial image-data geometry, matrix held separately.
    assert isinstance(image_data, vtk.vtkImageData)
    assert isinstance(ijk_to_ras, vtk.vtkMatrix4x4)
    assert image_data.GetDimensions() == SIZE
    assert image_data.GetOrigin() == (0.0, 0.0, 0.0)
    assert image_data.GetSpacing() == (1.0, 1.0, 1.0)
    assert image_data.GetNumberOfScalarComponents() == 1
    assert image_data.GetScalarType() == vtk.VTK_SHORT
    # scalars in x-fastest order: vtk's (i, j, k) accessor gives array[k, j, i]
    for i, j, k in sample_indices(SIZE):
        assert image_data.GetScalarComponentAsDouble(i, j, k, 0) == float(arr[k, j, i])
        assert image_data.GetScalarComponentAsDouble(i, j, k, 0) == float(img[i, j, k])

    # The IJK-to-RAS matrix applied to an index gives the ITK physical point, flipped to RAS.
    for ijk in sample_indices(SIZE):
        p_lps = img.TransformIndexToPhysicalPoint(ijk)
        p_ras = ijk_to_ras.MultiplyPoint((*ijk, 1.0))
        assert p_ras[3] == pytest.approx(1.0)
        assert np.allclose(p_ras[:3], lps_to_ras(p_lps), atol=1e-9)
        assert np.allclose(p_ras[:3], (-p_lps[0], -p_lps[1], p_lps[2]), atol=1e-9)

    # And back to SimpleITK.
    g_back = geometry_from_vtk(image_data, ijk_to_ras)
    assert g_back.matches(g, tol=1e-9) == []
    assert g_back.size == SIZE
    arr_back = array_from_vtk_image(image_data)
    assert arr_back.dtype == np.int16
    assert np.array_equal(arr_back, arr)
    img_back = image_from_array(arr_back, g_back)
    assert np.array_equal(sitk.GetArrayFromImage(img_back), sitk.GetArrayFromImage(img))
    for ijk in sample_indices(SIZE):
        assert np.allclose(
            img_back.TransformIndexToPhysicalPoint(ijk), img.TransformIndexToPhysicalPoint(ijk), atol=1e-9
        )
        assert img_back[ijk] == img[ijk]

    # The array is a copy: changing the vtk scalars later does not change it.
    image_data.SetScalarComponentFromDouble(0, 0, 0, 0, 1234.0)
    assert arr_back[0, 0, 0] == arr[0, 0, 0]
    assert array_from_vtk_image(image_data)[0, 0, 0] == 1234


def test_slicer_matrix_spacing_and_directions_like_volume_node():
    """Slicer's node.GetSpacing() = column norms, IJKToRASDirections = normalised columns."""
    g = Geometry.from_image(make_image())
    m = vtk_matrix_to_numpy(ijk_to_ras_vtk_matrix(g))
    assert np.allclose(np.linalg.norm(m[:3, :3], axis=0), SPACING)
    ras_dirs = m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0)
    assert np.allclose(ras_dirs, np.diag([-1, -1, 1]) @ DIRECTION)
    assert np.allclose(m[:3, 3], (-ORIGIN[0], -ORIGIN[1], ORIGIN[2]))
    assert np.allclose(m[3], [0, 0, 0, 1])
    # from_ijk_to_ras accepts numpy and vtk matrices alike
    assert Geometry.from_ijk_to_ras(m, SIZE).matches(g, tol=1e-9) == []
    assert Geometry.from_ijk_to_ras(ijk_to_ras_vtk_matrix(g), SIZE).matches(g, tol=1e-9) == []


def test_vtk_extent_not_starting_at_zero_is_folded_into_origin():
    g = Geometry.from_image(make_image())
    image_data = vtk.vtkImageData()
    image_data.SetExtent(2, 8, 1, 9, 3, 7)  # 7 x 9 x 5 voxels, first voxel at IJK (2, 1, 3)
    image_data.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    g2 = geometry_from_vtk(image_data, ijk_to_ras_vtk_matrix(g))
    assert g2.size == SIZE
    expected_origin = g.ijk_to_lps() @ np.array([2.0, 1.0, 3.0, 1.0])
    assert np.allclose(g2.origin, expected_origin[:3])
    assert np.allclose(g2.spacing, SPACING)


def test_vtk_dtype_conversions():
    g = Geometry(size=(3, 2, 2), spacing=(1, 1, 1), origin=(0, 0, 0))
    labels = np.arange(12, dtype=np.int64).reshape(2, 2, 3)
    image_data, _ = vtk_image_from_array(labels, g)
    assert image_data.GetScalarType() == vtk.VTK_INT  # Slicer cannot render 64-bit integers
    assert np.array_equal(array_from_vtk_image(image_data), labels)
    mask_data, _ = vtk_image_from_array(labels > 5, g)
    assert mask_data.GetScalarType() == vtk.VTK_UNSIGNED_CHAR
    assert array_from_vtk_image(mask_data).sum() == 6
    f_data, _ = vtk_image_from_array(labels.astype(np.float32) / 2, g)
    assert f_data.GetScalarType() == vtk.VTK_FLOAT
    assert array_from_vtk_image(f_data)[1, 1, 2] == pytest.approx(5.5)


# ------------------------------------------------------------------------ NRRD
def _parse_nrrd_header(path: Path) -> dict[str, str]:
    raw = path.read_bytes()
    header = raw[: raw.index(b"\n\n")].decode("ascii")
    fields = {}
    for line in header.splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip()] = value.strip().lstrip("=").strip()
    return fields


def _vectors(text: str) -> list[list[float]]:
    return [[float(v) for v in group.split(",")] for group in re.findall(r"\(([^)]*)\)", text)]


def test_nrrd_written_by_sitk_matches_what_slicer_shows(tmp_path):
    img = make_image()
    path = tmp_path / "volume.nrrd"
    sitk.WriteImage(img, str(path), useCompression=False)

    header = _parse_nrrd_header(path)
    assert header["space"] == "left-posterior-superior"
    assert header["sizes"].split() == ["7", "9", "5"]
    axis_vectors = _vectors(header["space directions"])  # one LPS vector per index axis
    (origin_lps,) = _vectors(header["space origin"])
    ijk_to_lps_file = np.eye(4)
    ijk_to_lps_file[:3, :3] = np.array(axis_vectors).T
    ijk_to_lps_file[:3, 3] = origin_lps
    slicer_ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps_file  # what Slicer shows

    # The file holds what we put in: columns = direction * spacing, origin as given.
    assert np.allclose(ijk_to_lps_file[:3, :3], DIRECTION * np.array(SPACING), atol=1e-9)
    assert np.allclose(origin_lps, ORIGIN)

    read = sitk.ReadImage(str(path))
    g = Geometry.from_image(read)
    assert np.allclose(g.ijk_to_ras(), slicer_ijk_to_ras, atol=1e-9)
    assert np.allclose(vtk_matrix_to_numpy(ijk_to_ras_vtk_matrix(g)), slicer_ijk_to_ras, atol=1e-9)
    # e.g. first axis: RAS column = (-d00, -d10, d20) * 0.7
    assert np.allclose(
        slicer_ijk_to_ras[:3, 0], [-DIRECTION[0, 0] * 0.7, -DIRECTION[1, 0] * 0.7, DIRECTION[2, 0] * 0.7]
    )
    assert Geometry.from_ijk_to_ras(slicer_ijk_to_ras, (7, 9, 5)).matches(g, tol=1e-9) == []
    assert np.array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(img))


# ------------------------------------------------------------------ resampling
def test_resample_label_shifted_by_whole_voxels():
    ref = make_image(size=(10, 12, 8))
    offset = np.array([2, -1, 3])  # label voxel m sits on reference voxel m + offset
    label_origin = np.array(ORIGIN) + DIRECTION @ (np.array(SPACING) * offset)
    rng = np.random.default_rng(1)
    label_arr = rng.integers(0, 4, size=(6, 7, 5)[::-1]).astype(np.uint8)  # size (6, 7, 5) x, y, z
    label = image_from_array(label_arr, Geometry((6, 7, 5), SPACING, tuple(label_origin), DIRECTION.ravel()))

    out = resample_label_to_reference(label, ref)
    assert out.GetPixelID() == sitk.sitkUInt8
    assert Geometry.from_image(out) == Geometry.from_image(ref)

    expected = np.zeros((8, 12, 10), dtype=np.uint8)
    covered = 0
    for z in range(5):
        for y in range(7):
            for x in range(6):
                rx, ry, rz = x + offset[0], y + offset[1], z + offset[2]
                if 0 <= rx < 10 and 0 <= ry < 12 and 0 <= rz < 8:
                    expected[rz, ry, rx] = label_arr[z, y, x]
                    covered += 1
                    # the same physical position
                    assert np.allclose(
                        ref.TransformIndexToPhysicalPoint((int(rx), int(ry), int(rz))),
                        label.TransformIndexToPhysicalPoint((x, y, z)),
                        atol=1e-9,
                    )
    assert covered == 6 * 6 * 5  # the y = 0 row falls outside the reference
    out_arr = sitk.GetArrayFromImage(out)
    assert np.array_equal(out_arr, expected)
    assert out_arr.sum() > 0


def test_resample_label_with_flipped_axis_is_the_original():
    """A label stored with its x axis reversed (another orientation, same voxels in space)."""
    ref = make_image()
    rng = np.random.default_rng(2)
    label_arr = rng.integers(0, 3, size=(5, 9, 7)).astype(np.uint8)
    ref_g = Geometry.from_image(ref)
    flipped_dir = DIRECTION.copy()
    flipped_dir[:, 0] *= -1
    last_x = ref.TransformIndexToPhysicalPoint((SIZE[0] - 1, 0, 0))
    flipped = image_from_array(label_arr[:, :, ::-1], Geometry(SIZE, SPACING, last_x, flipped_dir.ravel()))
    out = resample_label_to_reference(flipped, ref)
    assert Geometry.from_image(out) == ref_g
    assert np.array_equal(sitk.GetArrayFromImage(out), label_arr)


def test_resample_identity_when_grids_match():
    ref = make_image()
    label_arr = (sitk.GetArrayFromImage(ref) > 0).astype(np.uint8)
    nudged = tuple(np.array(ORIGIN) + 1e-7)
    label = image_from_array(label_arr, Geometry(SIZE, SPACING, nudged, DIRECTION.ravel()))
    out = resample_label_to_reference(label, ref)
    assert np.array_equal(sitk.GetArrayFromImage(out), label_arr)
    assert out.GetOrigin() == ref.GetOrigin()  # snapped exactly onto the reference grid
    assert out.GetDirection() == ref.GetDirection()
    assert label.GetOrigin() == pytest.approx(nudged)  # input untouched


# --------------------------------------------------------------------- matches
def test_matches_reports_each_kind_of_difference():
    g = Geometry.from_image(make_image())
    assert g.matches(g) == []
    close = Geometry(g.size, tuple(np.array(SPACING) + 1e-6), tuple(np.array(ORIGIN) - 1e-6), g.direction)
    assert g.matches(close) == []

    d = g.matches(Geometry((7, 9, 6), g.spacing, g.origin, g.direction))
    assert d == ["size differs: (7, 9, 5) vs (7, 9, 6) (x, y, z voxels)"]

    d = g.matches(Geometry(g.size, (0.7, 1.3, 2.0), g.origin, g.direction))
    assert len(d) == 1 and d[0].startswith("spacing differs") and "2.5" in d[0] and "2)" in d[0]

    d = g.matches(Geometry(g.size, g.spacing, (12.5, -30.25, 48.0), g.direction))
    assert len(d) == 1 and d[0].startswith("origin differs") and "47" in d[0] and "48" in d[0]

    d = g.matches(Geometry(g.size, g.spacing, g.origin))
    assert len(d) == 1 and d[0].startswith("direction differs")

    everything = Geometry((1, 2, 3), (1, 1, 1), (0, 0, 0))
    kinds = [m.split()[0] for m in g.matches(everything)]
    assert kinds == ["size", "spacing", "origin", "direction"]
    assert g.matches(close, tol=1e-8) != []


# ---------------------------------------------------------------------- errors
def test_errors_name_the_problem():
    g = Geometry.from_image(make_image())
    with pytest.raises(DataError, match="3D array"):
        image_from_array(np.zeros((9, 7)), g)
    with pytest.raises(
        DataError, match=r"shape \(5, 9, 8\).*size \(7, 9, 5\).*expected array shape \(5, 9, 7\)"
    ):
        image_from_array(np.zeros((5, 9, 8)), g)
    with pytest.raises(DataError, match=r"shape \(7, 9, 5\) \(z, y, x\)"):  # (x, y, z) order by mistake
        vtk_image_from_array(np.zeros((7, 9, 5)), g)
    with pytest.raises(DataError, match="Only 3D images.*2D"):
        Geometry.from_image(sitk.Image(4, 4, sitk.sitkUInt8))
    with pytest.raises(DataError, match="Only 3D images.*2D"):
        array_from_image(sitk.Image(4, 4, sitk.sitkUInt8))
    with pytest.raises(DataError, match="3 components"):
        array_from_image(sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3))
    with pytest.raises(DataError, match="Only 3D images.*label is 2D"):
        resample_label_to_reference(sitk.Image(4, 4, sitk.sitkUInt8), make_image())

    singular = g.ijk_to_ras()
    singular[:3, 2] = 0.0
    with pytest.raises(DataError, match="singular"):
        Geometry.from_ijk_to_ras(singular, SIZE)
    parallel = g.ijk_to_ras()
    parallel[:3, 1] = parallel[:3, 0] * 2
    with pytest.raises(DataError, match="singular"):
        Geometry.from_ijk_to_ras(parallel, SIZE)
    with pytest.raises(DataError, match="must be 4x4"):
        Geometry.from_ijk_to_ras(np.eye(3), SIZE)
    with pytest.raises(DataError, match="affine"):
        Geometry.from_ijk_to_ras(np.ones((4, 4)), SIZE)
    with pytest.raises(DataError, match="direction matrix is singular"):
        Geometry(SIZE, SPACING, ORIGIN, (1, 0, 0, 1, 0, 0, 0, 0, 1))
    with pytest.raises(DataError, match="spacing must be > 0"):
        Geometry(SIZE, (1.0, 0.0, 1.0), ORIGIN)
    with pytest.raises(DataError, match="only 3D images"):
        Geometry((4, 4), (1, 1), (0, 0))
    with pytest.raises(DataError, match="missing key.*direction"):
        Geometry.from_dict({"size": [1, 1, 1], "spacing": [1, 1, 1], "origin": [0, 0, 0]})
    with pytest.raises(DataError, match=r"shape \(2,\)"):
        lps_to_ras((1.0, 2.0))


def test_vtk_errors_name_the_problem():
    g = Geometry(size=(3, 2, 2), spacing=(1, 1, 1), origin=(0, 0, 0))
    with pytest.raises(DataError, match="outside the int32 range"):
        vtk_image_from_array(np.full((2, 2, 3), 2**40, dtype=np.int64), g)

    empty = vtk.vtkImageData()
    empty.SetDimensions(3, 2, 2)
    with pytest.raises(DataError, match="no scalars"):
        array_from_vtk_image(empty)

    rgb = vtk.vtkImageData()
    rgb.SetDimensions(3, 2, 2)
    rgb.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    with pytest.raises(DataError, match="3 components"):
        array_from_vtk_image(rgb)

    image_data, m = vtk_image_from_array(np.zeros((2, 2, 3), dtype=np.uint8), g)
    image_data.SetSpacing(0.5, 1.0, 1.0)
    image_data.SetOrigin(1.0, 0.0, 0.0)
    with pytest.raises(DataError, match=r"spacing \(0.5, 1.0, 1.0\), origin \(1.0, 0.0, 0.0\).*IJK-to-RAS"):
        geometry_from_vtk(image_data, m)

    good, m = vtk_image_from_array(np.zeros((2, 2, 3), dtype=np.uint8), g)
    zero = vtk.vtkMatrix4x4()
    zero.Zero()
    zero.SetElement(3, 3, 1.0)
    with pytest.raises(DataError, match="singular"):
        geometry_from_vtk(good, zero)


def test_module_imports_without_vtk():
    """geometry.py must import without vtk, and say clearly what is missing when vtk is needed."""
    code = (
        "import sys\n"
        "sys.modules['vtk'] = None\n"
        "sys.modules['vtkmodules'] = None\n"
        "import numpy as np\n"
        "from reciprocalseg.common import geometry as G\n"
        "g = G.Geometry((2, 2, 2), (1, 1, 1), (0, 0, 0))\n"
        "img = G.image_from_array(np.zeros((2, 2, 2)), g)\n"
        "assert G.Geometry.from_image(img) == g\n"
        "try:\n"
        "    G.ijk_to_ras_vtk_matrix(g)\n"
        "except ImportError as e:\n"
        "    print('IMPORT-ERROR:', e)\n"
    )
    root = Path(__file__).resolve().parents[2] / "ReciprocalSeg"
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "IMPORT-ERROR: The vtk package is needed" in res.stdout
