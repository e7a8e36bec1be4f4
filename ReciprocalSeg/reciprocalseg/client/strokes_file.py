"""A strokes array written as a NRRD file on a case's grid, with the standard library only.

``Client.refine`` takes a (z, y, x) integer array as well as a file; the client runs in 3D
Slicer's process, which must not load SimpleITK (tests/client/test_light_imports.py), so the
array is written here: a NRRD header in LPS with the case's geometry (as ``GET /cases/{id}``
reports it: size, spacing, origin and direction cosines, x/y/z) and the voxels gzip-compressed,
x fastest (numpy's C order of a (z, y, x) array). The service reads it with ITK and checks it is
on the case's grid, as any upload.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any


def nrrd_header(geometry: dict[str, Any]) -> str:
    """The header of a uint8 NRRD on ``geometry`` (``size``, ``spacing``, ``origin``,
    ``direction``: 9 cosines, row-major, each column an axis)."""
    size, spacing = geometry["size"], geometry["spacing"]
    d = geometry["direction"]
    axes = [tuple(d[3 * row + axis] * spacing[axis] for row in range(3)) for axis in range(3)]
    vector = lambda v: "(" + ",".join(repr(float(x)) for x in v) + ")"  # noqa: E731
    return (
        "NRRD0004\n"
        "type: uint8\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        f"sizes: {' '.join(str(int(n)) for n in size)}\n"
        f"space directions: {' '.join(vector(a) for a in axes)}\n"
        "kinds: domain domain domain\n"
        "encoding: gzip\n"
        f"space origin: {vector(geometry['origin'])}\n"
        "\n"
    )


def write_strokes(array: Any, geometry: dict[str, Any], path: Path) -> Path:
    """Write ``array`` ((z, y, x) integers in 0..255) as a NRRD on ``geometry``; ValueError when its
    shape is not the case's or a value does not fit a byte."""
    import numpy as np  # the caller's array is numpy already

    voxels = np.asarray(array)
    expected = tuple(int(n) for n in reversed(geometry["size"]))
    if voxels.shape != expected:
        raise ValueError(f"the strokes array has shape {voxels.shape} (z, y, x); the case is {expected}")
    if not np.issubdtype(voxels.dtype, np.integer) and not np.array_equal(voxels, np.rint(voxels)):
        raise ValueError("the strokes hold non-integer values; a strokes map holds whole class numbers")
    if voxels.size and (voxels.min() < 0 or voxels.max() > 255):
        raise ValueError("the strokes hold values outside 0..255 (255 not painted, 0 background, k class k)")
    data = np.ascontiguousarray(voxels.astype(np.uint8)).tobytes()
    path.write_bytes(nrrd_header(geometry).encode("ascii") + gzip.compress(data, compresslevel=1))
    return path
