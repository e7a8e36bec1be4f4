"""Where 3D Slicer's conventions meet the core's: RAS / IJK-to-RAS / vtk <-> LPS / SimpleITK.

Conventions
-----------
* Core arrays are numpy in SimpleITK order ``(z, y, x)`` (what ``sitk.GetArrayFromImage`` returns).
* The core describes a voxel grid in **LPS** (ITK, NRRD and NIfTI files as read by ITK) with
  :class:`Geometry`: ``size``, ``spacing`` and ``origin`` as ``(x, y, z)`` and ``direction`` as 9
  floats, row-major, whose *columns* are the directions of the i, j and k axes.
* Slicer works in **RAS**. A volume node holds a ``vtkImageData`` with origin (0, 0, 0), spacing
  (1, 1, 1) and identity direction, scalars in x-fastest order, and the geometry separately as an
  IJK-to-RAS 4x4 matrix (``node.GetIJKToRASMatrix(m)``). ``slicer.util.arrayFromVolume(node)`` gives
  the voxels as ``(k, j, i) = (z, y, x)``, the same order as the core.
* LPS <-> RAS flips the sign of the first two physical axes: ``RAS = diag(-1, -1, 1) @ LPS``.

Slicer facts used here were read from Slicer's source (Slicer/Slicer main, 5.13 development):
``Libs/MRML/Core/vtkMRMLVolumeNode.cxx`` (``IsImageDataGeometryValid``: a volume node's image data
must have origin 0, spacing 1, identity direction) and ``Base/Python/slicer/util.py``
(``arrayFromVolume`` reshapes the scalars to ``reversed(GetDimensions())``; ``updateVolumeFromArray``
rejects 64-bit "long long" scalars because Slicer does not render them correctly).

Only numpy and SimpleITK are needed at import time; vtk is imported inside the functions that take
or return vtk objects, so this module works outside Slicer without vtk installed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from reciprocalseg.common.errors import DataError

if TYPE_CHECKING:  # pragma: no cover - only for type checkers
    import vtk

__all__ = [
    "LPS_TO_RAS",
    "Geometry",
    "lps_to_ras",
    "ras_to_lps",
    "image_from_array",
    "array_from_image",
    "ijk_to_ras_vtk_matrix",
    "geometry_from_vtk",
    "vtk_image_from_array",
    "array_from_vtk_image",
    "resample_label_to_reference",
]

#: 4x4 homogeneous matrix that maps LPS coordinates to RAS (and, being its own inverse, RAS to LPS).
LPS_TO_RAS: np.ndarray = np.diag([-1.0, -1.0, 1.0, 1.0])
LPS_TO_RAS.setflags(write=False)

# A direction matrix whose |determinant| is below this is treated as singular.
_SINGULAR_EPS = 1e-9


def _float_tuple(name: str, values: Any, length: int) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise DataError(f"Geometry {name} must be {length} numbers, got {values!r}.") from exc
    if len(out) != length:
        raise DataError(f"Geometry {name} must have {length} values, got {len(out)}: {values!r}.")
    if not all(math.isfinite(v) for v in out):
        raise DataError(f"Geometry {name} must be finite numbers, got {values!r}.")
    return out


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


@dataclass(frozen=True)
class Geometry:
    """A 3D voxel grid in LPS (ITK) coordinates.

    Attributes:
        size: number of voxels along (x, y, z) = (i, j, k).
        spacing: voxel size in mm along (i, j, k), all > 0.
        origin: LPS position in mm of the centre of voxel (0, 0, 0).
        direction: 3x3 direction cosines, row-major, 9 floats; column c is the LPS direction of
            index axis c (ITK's ``GetDirection()`` layout). Must be non-singular.

    Values are normalised to tuples of int/float on construction, so instances compare and hash
    by value; invalid values raise :class:`~reciprocalseg.common.errors.DataError`.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        try:
            size = tuple(int(v) for v in self.size)
        except (TypeError, ValueError) as exc:
            raise DataError(f"Geometry size must be 3 integers (x, y, z), got {self.size!r}.") from exc
        if len(size) != 3:
            raise DataError(
                "Geometry size must have 3 values (x, y, z): only 3D images are supported, "
                f"got {self.size!r}."
            )
        if any(v < 1 for v in size):
            raise DataError(f"Geometry size must be positive along every axis, got {size}.")
        spacing = _float_tuple("spacing", self.spacing, 3)
        if any(v <= 0 for v in spacing):
            raise DataError(f"Geometry spacing must be > 0 along every axis, got {_fmt(spacing)}.")
        origin = _float_tuple("origin", self.origin, 3)
        direction = _float_tuple("direction", self.direction, 9)
        det = float(np.linalg.det(np.asarray(direction).reshape(3, 3)))
        if abs(det) < _SINGULAR_EPS:
            raise DataError(
                f"Geometry direction matrix is singular (determinant {det:.3g}): {_fmt(direction)}. "
                "The three axis directions must be linearly independent."
            )
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    # ----------------------------------------------------------------- SimpleITK
    @classmethod
    def from_image(cls, img: sitk.Image) -> Geometry:
        """The geometry of a 3D SimpleITK image."""
        _require_3d_image(img, "image")
        return cls(
            size=img.GetSize(),
            spacing=img.GetSpacing(),
            origin=img.GetOrigin(),
            direction=img.GetDirection(),
        )

    def apply_to(self, img: sitk.Image) -> sitk.Image:
        """Return a copy of ``img`` carrying this geometry (the input image is not modified).

        Raises DataError when ``img`` is not 3D or its size differs from ``self.size``.
        """
        _require_3d_image(img, "image")
        if tuple(img.GetSize()) != self.size:
            raise DataError(
                f"Cannot apply geometry of size {self.size} (x, y, z) to an image of size "
                f"{tuple(img.GetSize())}."
            )
        out = sitk.Image(img)
        out.SetSpacing(self.spacing)
        out.SetOrigin(self.origin)
        out.SetDirection(self.direction)
        return out

    def apply(self, img: sitk.Image) -> sitk.Image:
        """Same as :meth:`apply_to` (the name used in docs/DESIGN.md)."""
        return self.apply_to(img)

    # ------------------------------------------------------------------ matrices
    def direction_matrix(self) -> np.ndarray:
        """The 3x3 direction matrix (columns = LPS directions of the i, j, k axes)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping a voxel index (i, j, k, 1) to its LPS position in mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix() @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) to RAS: Slicer's IJK-to-RAS matrix."""
        return LPS_TO_RAS @ self.ijk_to_lps()

    @classmethod
    def from_ijk_to_lps(cls, matrix: Any, size: Sequence[int]) -> Geometry:
        """Geometry from a 4x4 IJK-to-LPS matrix (numpy-like or vtkMatrix4x4) and a size (x, y, z)."""
        m = _as_4x4(matrix, "IJK-to-LPS")
        linear = m[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        direction = linear / np.maximum(spacing, _SINGULAR_EPS)
        if np.any(spacing < _SINGULAR_EPS) or abs(np.linalg.det(direction)) < _SINGULAR_EPS:
            raise DataError(
                "The IJK-to-RAS/LPS matrix is singular (an axis has zero length or two axes are "
                f"parallel), so it does not describe a voxel grid:\n{np.array2string(m, precision=6)}"
            )
        return cls(
            size=tuple(size),
            spacing=tuple(spacing),
            origin=tuple(m[:3, 3]),
            direction=tuple(direction.ravel()),
        )

    @classmethod
    def from_ijk_to_ras(cls, matrix: Any, size: Sequence[int]) -> Geometry:
        """Geometry from Slicer's IJK-to-RAS matrix (numpy 4x4 or vtkMatrix4x4) and a size (x, y, z).

        Spacing is the length of each matrix column, direction the normalised columns, both
        converted from RAS to LPS.
        """
        ras = _as_4x4(matrix, "IJK-to-RAS")
        return cls.from_ijk_to_lps(LPS_TO_RAS @ ras, size)

    # ------------------------------------------------------------------ compare
    def matches(self, other: Geometry, tol: float = 1e-4) -> list[str]:
        """Human-readable differences from ``other``; an empty list when both describe the same grid.

        Size must be equal; spacing and origin (mm) and direction cosines must agree within ``tol``
        (absolute, per component).
        """
        diffs: list[str] = []
        if self.size != other.size:
            diffs.append(f"size differs: {self.size} vs {other.size} (x, y, z voxels)")
        if not np.allclose(self.spacing, other.spacing, rtol=0.0, atol=tol):
            diffs.append(f"spacing differs: {_fmt(self.spacing)} vs {_fmt(other.spacing)} mm")
        if not np.allclose(self.origin, other.origin, rtol=0.0, atol=tol):
            diffs.append(f"origin differs: {_fmt(self.origin)} vs {_fmt(other.origin)} mm (LPS)")
        if not np.allclose(self.direction, other.direction, rtol=0.0, atol=tol):
            diffs.append(f"direction differs: {_fmt(self.direction)} vs {_fmt(other.direction)}")
        return diffs

    # --------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """JSON-ready dict with keys size, spacing, origin, direction (all lists)."""
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Geometry:
        """Inverse of :meth:`to_dict`; raises DataError for missing keys or bad values."""
        if not isinstance(data, Mapping):
            raise DataError(f"Geometry must be given as a JSON object, got {type(data).__name__}.")
        missing = [k for k in ("size", "spacing", "origin", "direction") if k not in data]
        if missing:
            raise DataError(f"Geometry JSON is missing key(s) {', '.join(missing)}; got keys {sorted(data)}.")
        return cls(
            size=data["size"],
            spacing=data["spacing"],
            origin=data["origin"],
            direction=data["direction"],
        )


# ---------------------------------------------------------------------- points
def _flip_points(point: Any) -> np.ndarray:
    p = np.array(point, dtype=float)  # a copy
    if p.ndim == 0 or p.shape[-1] != 3:
        raise DataError(f"Expected a 3D point (x, y, z) or an array of shape (N, 3), got shape {p.shape}.")
    p[..., :2] *= -1.0
    return p


def lps_to_ras(point: Any) -> np.ndarray:
    """LPS point(s) -> RAS: negate the first two coordinates. Accepts shape (3,) or (..., 3)."""
    return _flip_points(point)


def ras_to_lps(point: Any) -> np.ndarray:
    """RAS point(s) -> LPS: negate the first two coordinates. Accepts shape (3,) or (..., 3)."""
    return _flip_points(point)


# ------------------------------------------------------------------- SimpleITK
def _require_3d_image(img: sitk.Image, what: str) -> None:
    if not isinstance(img, sitk.Image):
        raise DataError(f"Expected a SimpleITK image for the {what}, got {type(img).__name__}.")
    if img.GetDimension() != 3:
        raise DataError(f"Only 3D images are supported: the {what} is {img.GetDimension()}D.")


def _require_scalar_image(img: sitk.Image, what: str) -> None:
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            f"The {what} has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a single-component (scalar) volume is required."
        )


def _check_array_matches(array_zyx: np.ndarray, geometry: Geometry) -> np.ndarray:
    arr = np.asarray(array_zyx)
    if arr.ndim != 3:
        raise DataError(
            f"Expected a 3D array in (z, y, x) order, got {arr.ndim}D array of shape {arr.shape}."
        )
    expected = tuple(reversed(geometry.size))
    if arr.shape != expected:
        raise DataError(
            f"Array shape {arr.shape} (z, y, x) does not match geometry size {geometry.size} (x, y, z); "
            f"expected array shape {expected}."
        )
    return arr


def image_from_array(array_zyx: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image holding a copy of ``array_zyx`` (z, y, x) with ``geometry``.

    bool arrays become uint8 and float16 becomes float32 (SimpleITK has neither type).
    """
    arr = _check_array_matches(array_zyx, geometry)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=False)
    img.SetSpacing(geometry.spacing)
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    return img


def array_from_image(img: sitk.Image) -> tuple[np.ndarray, Geometry]:
    """The voxels of a scalar 3D image as a (z, y, x) numpy array (a copy) and its geometry."""
    _require_3d_image(img, "image")
    _require_scalar_image(img, "image")
    return sitk.GetArrayFromImage(img), Geometry.from_image(img)


def resample_label_to_reference(label: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Nearest-neighbour resampling of a label map onto the grid of ``reference``.

    Slicer users may paint a segmentation on a grid other than the image's. Voxels of the
    reference grid that fall outside the label's grid get 0 (background). The pixel type of the
    label is kept. When both grids already match (within 1e-4, see :meth:`Geometry.matches`) the
    voxels are returned unchanged, with the reference's geometry copied exactly.
    """
    _require_3d_image(label, "label")
    _require_3d_image(reference, "reference image")
    _require_scalar_image(label, "label")
    ref_geometry = Geometry.from_image(reference)
    if not Geometry.from_image(label).matches(ref_geometry):
        return ref_geometry.apply_to(label)
    return sitk.Resample(
        label,
        reference,
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0.0,
        label.GetPixelID(),
    )


# ------------------------------------------------------------------------- vtk
def _import_vtk() -> tuple[Any, Any]:
    """Import vtk and its numpy_support lazily, with a clear message when vtk is absent."""
    try:
        import vtk

        try:
            from vtk.util import numpy_support
        except ImportError:  # pragma: no cover - VTK builds without the vtk.util alias
            from vtkmodules.util import numpy_support
    except ImportError as exc:
        raise ImportError(
            "The vtk package is needed for Slicer (vtk) conversions. It is always present inside "
            "3D Slicer; outside Slicer install it with `pip install vtk` (extra 'reciprocalseg[vtk]')."
        ) from exc
    return vtk, numpy_support


def _as_4x4(matrix: Any, what: str) -> np.ndarray:
    """A float 4x4 numpy array from a numpy-like matrix or a vtkMatrix4x4 (duck-typed, no vtk import)."""
    if hasattr(matrix, "GetElement"):
        m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)
    else:
        try:
            m = np.array(matrix, dtype=float)
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"The {what} matrix must be a 4x4 array or vtkMatrix4x4, got {matrix!r}."
            ) from exc
    if m.shape != (4, 4):
        raise DataError(f"The {what} matrix must be 4x4, got shape {m.shape}.")
    if not np.all(np.isfinite(m)):
        raise DataError(f"The {what} matrix contains non-finite values:\n{m}")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise DataError(f"The {what} matrix must be affine (last row 0, 0, 0, 1), got last row {m[3]}.")
    return m


def ijk_to_ras_vtk_matrix(geometry: Geometry) -> vtk.vtkMatrix4x4:
    """Slicer's IJK-to-RAS matrix of ``geometry`` as a vtkMatrix4x4 (for ``node.SetIJKToRASMatrix``)."""
    vtk_mod, _ = _import_vtk()
    m = geometry.ijk_to_ras()
    out = vtk_mod.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r, c]))
    return out


def _check_slicer_image_data(image_data: Any) -> None:
    """Slicer requires a volume's vtkImageData to have origin 0, spacing 1 and identity direction."""
    if not hasattr(image_data, "GetDimensions") or not hasattr(image_data, "GetPointData"):
        raise DataError(f"Expected a vtkImageData, got {type(image_data).__name__}.")
    spacing = tuple(image_data.GetSpacing())
    origin = tuple(image_data.GetOrigin())
    problems = []
    if spacing != (1.0, 1.0, 1.0):
        problems.append(f"spacing {spacing}")
    if origin != (0.0, 0.0, 0.0):
        problems.append(f"origin {origin}")
    if hasattr(image_data, "GetDirectionMatrix"):  # VTK >= 9.1
        dm = image_data.GetDirectionMatrix()
        direction = np.array([[dm.GetElement(r, c) for c in range(3)] for r in range(3)])
        if not np.array_equal(direction, np.eye(3)):
            problems.append(f"direction {tuple(direction.ravel())}")
    if problems:
        raise DataError(
            "The vtkImageData has " + ", ".join(problems) + "; a Slicer volume's image data must have "
            "origin (0, 0, 0), spacing (1, 1, 1) and identity direction, with the geometry held by the "
            "IJK-to-RAS matrix."
        )


def geometry_from_vtk(image_data: vtk.vtkImageData, ijk_to_ras: vtk.vtkMatrix4x4) -> Geometry:
    """Geometry (LPS) of a Slicer volume from its vtkImageData and IJK-to-RAS matrix.

    In Slicer: ``geometry_from_vtk(node.GetImageData(), m)`` after ``node.GetIJKToRASMatrix(m)``.
    An image extent that does not start at 0 is folded into the origin (IJK are extent indices).
    """
    _check_slicer_image_data(image_data)
    dims = tuple(int(d) for d in image_data.GetDimensions())
    if any(d < 1 for d in dims):
        raise DataError(f"The vtkImageData is empty (dimensions {dims}).")
    ras = _as_4x4(ijk_to_ras, "IJK-to-RAS")
    extent = image_data.GetExtent()
    start = np.array([extent[0], extent[2], extent[4]], dtype=float)
    if np.any(start != 0):
        ras = ras.copy()
        ras[:3, 3] = ras[:3, :3] @ start + ras[:3, 3]
    return Geometry.from_ijk_to_ras(ras, dims)


def _slicer_safe_array(arr: np.ndarray) -> np.ndarray:
    """Convert types Slicer cannot show: bool -> uint8, float16 -> float32, 64-bit int -> int32."""
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize == 8:
        info = np.iinfo(np.int32)
        if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
            raise DataError(
                f"The {arr.dtype} array has values in [{arr.min()}, {arr.max()}], outside the int32 range; "
                "Slicer cannot display 64-bit integer volumes. Convert it to a smaller type first."
            )
        return arr.astype(np.int32)
    if arr.dtype.kind not in "iuf":
        raise DataError(f"Unsupported voxel type {arr.dtype} for a Slicer volume (need integer or float).")
    return arr


def vtk_image_from_array(
    array_zyx: np.ndarray, geometry: Geometry
) -> tuple[vtk.vtkImageData, vtk.vtkMatrix4x4]:
    """The Slicer representation of a volume: (vtkImageData, IJK-to-RAS vtkMatrix4x4).

    The image data has origin (0, 0, 0), spacing (1, 1, 1), dimensions ``geometry.size`` and a deep
    copy of the voxels as scalars in x-fastest order; the geometry lives in the matrix, as in a
    Slicer volume node (``node.SetAndObserveImageData(image_data); node.SetIJKToRASMatrix(m)``).
    bool becomes uint8, float16 float32, and 64-bit integers int32 (Slicer cannot render 64-bit
    integer volumes; values outside the int32 range raise DataError).
    """
    arr = _slicer_safe_array(_check_array_matches(array_zyx, geometry))
    vtk_mod, numpy_support = _import_vtk()
    flat = np.ascontiguousarray(arr).ravel()  # C order of (z, y, x): x varies fastest, as vtk expects
    scalars = numpy_support.numpy_to_vtk(
        flat, deep=True, array_type=numpy_support.get_vtk_array_type(arr.dtype)
    )
    scalars.SetNumberOfComponents(1)
    scalars.SetName("ImageScalars")
    image_data = vtk_mod.vtkImageData()
    image_data.SetDimensions(*geometry.size)
    image_data.SetOrigin(0.0, 0.0, 0.0)
    image_data.SetSpacing(1.0, 1.0, 1.0)
    image_data.GetPointData().SetScalars(scalars)
    return image_data, ijk_to_ras_vtk_matrix(geometry)


def array_from_vtk_image(image_data: vtk.vtkImageData) -> np.ndarray:
    """The scalars of a single-component vtkImageData as a (z, y, x) numpy array (a copy).

    Same axis order as ``slicer.util.arrayFromVolume``, which returns a view instead.
    """
    if not hasattr(image_data, "GetDimensions") or not hasattr(image_data, "GetPointData"):
        raise DataError(f"Expected a vtkImageData, got {type(image_data).__name__}.")
    _, numpy_support = _import_vtk()
    scalars = image_data.GetPointData().GetScalars()
    if scalars is None:
        raise DataError("The vtkImageData has no scalars (no voxel values).")
    components = scalars.GetNumberOfComponents()
    if components != 1:
        raise DataError(
            f"The vtkImageData has {components} components per voxel; a scalar volume is required."
        )
    dims = tuple(int(d) for d in image_data.GetDimensions())
    n_voxels = int(np.prod(dims))
    if scalars.GetNumberOfTuples() != n_voxels:
        raise DataError(
            f"The vtkImageData has {scalars.GetNumberOfTuples()} scalar values but dimensions {dims} "
            f"({n_voxels} voxels)."
        )
    return np.array(numpy_support.vtk_to_numpy(scalars)).reshape(tuple(reversed(dims)))
