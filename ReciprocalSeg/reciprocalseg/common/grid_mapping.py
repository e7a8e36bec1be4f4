"""Moving a voxel array from one voxel grid to another: exactly when the two grids share their
voxel centres, by nearest neighbour otherwise.

Two grids *share a lattice* when every voxel centre of one is a voxel centre of the other: the
index map between them is a signed permutation of the axes plus an integer offset. That covers
the same grid, axis flips, axis permutations, and crops or pads of a grid. 3D Slicer reads a
file whose grid is left-handed (a radiological LAS NIfTI, an oblique NRRD with a reversed k
axis) as a right-handed grid with the k axis reversed; a label painted there must reach the
service on the grid the file had, voxel for voxel. Such maps are copies (transposes, flips and
slices), never interpolation.

Grids that do not share a lattice (rotated, another spacing) are *genuinely different*: callers
either resample with nearest neighbour (``resample_nearest``, SimpleITK) or refuse with the
differences (``Geometry.matches``).

Arrays are numpy in SimpleITK order (k, j, i); grids are :class:`Geometry` (LPS, sizes x, y, z).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from reciprocalseg.common.errors import DataError
from reciprocalseg.common.geometry import Geometry, image_from_array

# Largest distance (in voxels) of a mapped index from an integer, or of a mapped axis from a
# signed unit axis, for two grids to share a lattice: header round-off (NIfTI stores float32)
# stays far below it, a genuine shift of a tenth of a voxel does not.
LATTICE_TOLERANCE = 1e-3

__all__ = [
    "LATTICE_TOLERANCE",
    "LatticeMap",
    "array_on_grid",
    "lattice_map",
    "resample_nearest",
    "right_handed",
    "same_voxels",
]


@dataclass(frozen=True)
class LatticeMap:
    """``target index = matrix @ source index + offset`` (indices i, j, k); ``matrix`` is a signed
    permutation (one +1 or -1 per row and column), ``offset`` integers."""

    matrix: tuple[tuple[int, int, int], ...]
    offset: tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        return self.matrix == ((1, 0, 0), (0, 1, 0), (0, 0, 1)) and self.offset == (0, 0, 0)

    def apply(self, array_kji: np.ndarray, target_size: tuple, fill: float = 0) -> np.ndarray:
        """The source voxels placed on the target grid (size x, y, z); target voxels no source
        voxel lands on get ``fill``, source voxels landing outside the target are dropped."""
        source = np.asarray(array_kji).transpose(2, 1, 0)  # (i, j, k)
        axes, signs = [], []
        for row in self.matrix:
            column = next(c for c in range(3) if row[c])
            axes.append(column)
            signs.append(row[column])
        moved = source.transpose(axes)
        flips = tuple(r for r in range(3) if signs[r] < 0)
        if flips:
            moved = np.flip(moved, axis=flips)
        # After the flip, moved[u] is source index n-1-u along a flipped axis: target = u + start.
        starts = [
            self.offset[r] if signs[r] > 0 else self.offset[r] - (source.shape[axes[r]] - 1) for r in range(3)
        ]
        out = np.full(tuple(int(n) for n in target_size), fill, dtype=source.dtype)
        target_slices, source_slices = [], []
        for r in range(3):
            low, high = max(starts[r], 0), min(starts[r] + moved.shape[r], out.shape[r])
            if high <= low:
                return out.transpose(2, 1, 0)  # no overlap: nothing lands on the target
            target_slices.append(slice(low, high))
            source_slices.append(slice(low - starts[r], high - starts[r]))
        out[tuple(target_slices)] = moved[tuple(source_slices)]
        return out.transpose(2, 1, 0)


def lattice_map(
    source: Geometry, target: Geometry, tolerance: float = LATTICE_TOLERANCE
) -> LatticeMap | None:
    """The exact index map from ``source`` to ``target`` when they share a lattice, else None."""
    to_target = np.linalg.inv(target.ijk_to_lps()) @ source.ijk_to_lps()
    linear, offset = to_target[:3, :3], to_target[:3, 3]
    matrix = np.rint(linear)
    if not np.allclose(linear, matrix, rtol=0.0, atol=tolerance):
        return None
    if not (np.abs(matrix).sum(axis=0) == 1).all() or not (np.abs(matrix).sum(axis=1) == 1).all():
        return None
    if not np.allclose(offset, np.rint(offset), rtol=0.0, atol=tolerance):
        return None
    return LatticeMap(
        matrix=tuple(tuple(int(v) for v in row) for row in matrix),
        offset=tuple(int(v) for v in np.rint(offset)),
    )


def same_voxels(source: Geometry, target: Geometry) -> bool:
    """Whether the two grids have exactly the same voxel centres (in any index order)."""
    mapping = lattice_map(source, target)
    if mapping is None:
        return False
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in source.size]))).T
    mapped = np.array(mapping.matrix) @ corners + np.array(mapping.offset)[:, None]
    return bool((mapped.min(axis=1) == 0).all() and (mapped.max(axis=1) == np.subtract(target.size, 1)).all())


def right_handed(grid: Geometry) -> Geometry:
    """The grid 3D Slicer gives a volume read from a file on ``grid``: ``grid`` itself when its
    i, j, k axes are right-handed, else the same voxels with the k axis reversed (origin on the
    last slice). Slicer's reader does this by default (vtkMRMLVolumeArchetypeStorageNode's
    ForceRightHandedIJKCoordinateSystem, vtkMRMLVolumeNode::SetIJKCoordinateSystemToRightHanded:
    Libs/MRML/Core, v5.10.0 and v5.12.3), so a volume saved with a scene and read back has it too."""
    if np.linalg.det(grid.direction_matrix()) >= 0:
        return grid
    m = grid.ijk_to_lps()
    origin = m[:3, 3] + (grid.size[2] - 1) * m[:3, 2]
    direction = grid.direction_matrix().copy()
    direction[:, 2] *= -1
    return Geometry(grid.size, grid.spacing, tuple(origin), tuple(direction.ravel()))


def resample_nearest(
    array_kji: np.ndarray, source: Geometry, target: Geometry, fill: float = 0
) -> np.ndarray:
    """Nearest-neighbour resampling of ``array_kji`` (on ``source``) onto ``target`` (SimpleITK);
    target voxels outside the source grid get ``fill``. The voxel type is kept."""
    image = image_from_array(array_kji, source)
    reference = sitk.Image([int(n) for n in target.size], image.GetPixelID())
    reference.SetSpacing(target.spacing)
    reference.SetOrigin(target.origin)
    reference.SetDirection(target.direction)
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, float(fill))
    return sitk.GetArrayFromImage(resampled)


def array_on_grid(
    array_kji: np.ndarray,
    source: Geometry,
    target: Geometry,
    fill: float = 0,
    resample: bool = True,
    what: str = "The label",
) -> np.ndarray:
    """``array_kji`` (on ``source``) on ``target``: an exact copy when the grids share a lattice;
    otherwise nearest-neighbour resampling, or with ``resample=False`` a DataError that names the
    differences."""
    mapping = lattice_map(source, target)
    if mapping is not None:
        if mapping.is_identity and source.size == target.size:
            return np.asarray(array_kji)
        return mapping.apply(array_kji, target.size, fill)
    if not resample:
        raise DataError(
            f"{what} is on a grid that does not share voxel centres with the target grid ("
            + "; ".join(source.matches(target))
            + "), and it is not resampled."
        )
    return resample_nearest(array_kji, source, target, fill)
