"""Post-processing of predicted label maps.

Only largest-connected-component filtering, the usual clean-up for single-organ targets such as the
left atrium: the network's stray false-positive islands are removed, the main structure is kept.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from ..common.errors import DataError

__all__ = ["largest_connected_component"]


def _present_labels(labels: np.ndarray) -> list[int | float]:
    """Labels present in the array; bincount is O(n) where np.unique sorts a whole scan."""
    if labels.size and np.issubdtype(labels.dtype, np.integer):
        lo, hi = int(labels.min()), int(labels.max())
        if lo >= 0 and hi < 1 << 16:
            return np.flatnonzero(np.bincount(labels.ravel(), minlength=1)).tolist()
    return np.unique(labels).tolist()


def largest_connected_component(
    labels: np.ndarray, classes: Iterable[int] | None = None, connectivity: int = 3
) -> np.ndarray:
    """Keep, per class, only its largest connected component; removed voxels become background (0).

    ``classes``: labels to filter (default: every non-zero label present); other labels are left as
    they are. ``connectivity`` is scipy's: 1 = faces (6-neighbourhood in 3D), 2 = faces + edges (18),
    3 = faces + edges + corners (26). Components are found per class, so touching voxels of two
    different classes never join. Ties between equally large components keep the one met first in
    array order, so the result is deterministic. Returns a new array of the same dtype and shape.
    """
    labels = np.asarray(labels)
    if not 1 <= connectivity <= max(labels.ndim, 1):
        raise DataError(
            f"connectivity must be between 1 and {labels.ndim} for a {labels.ndim}-D array, "
            f"got {connectivity}."
        )
    out = labels.copy()
    if classes is None:
        wanted = [c for c in _present_labels(labels) if c != 0]
    else:
        wanted = [int(c) for c in classes if int(c) != 0]  # background is never "a component"
    structure = ndimage.generate_binary_structure(labels.ndim, connectivity)
    for c in wanted:
        mask = labels == c
        # Label only the class's bounding box: far less memory than an int32 map of a whole scan.
        found = ndimage.find_objects(mask.view(np.uint8), max_label=1)
        if not found or found[0] is None:
            continue  # class absent
        box = found[0]
        sub = mask[box]
        components, n = ndimage.label(sub, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0  # background of the box
        keep = int(np.argmax(sizes))  # first maximum: lowest label = first met in array order
        drop = sub & (components != keep)
        out_box = out[box]  # a view: writing into it edits `out`
        out_box[drop] = 0
    return out
