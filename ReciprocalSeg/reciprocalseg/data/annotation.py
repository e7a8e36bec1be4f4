"""Partial labels: which voxels of a label map are annotated.

A label map may leave voxels unannotated (the value `UNANNOTATED`, 255): a few scribbled or
corrected slices teach the teacher without a whole volume drawn. 255 is never a class; losses
and class statistics count annotated voxels only, and a partially labelled case also serves as
an unlabelled scan for the student (see docs/DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from ..common.file_formats import UNANNOTATED
from .io import Case, read_image

__all__ = [
    "UNANNOTATED",
    "annotated_fraction",
    "annotated_mask",
    "annotation_kind",
    "any_partial_label",
    "is_partial",
]


def annotated_mask(label: np.ndarray) -> np.ndarray:
    """Boolean array: True where the voxel carries a class (background included)."""
    return np.asarray(label) != UNANNOTATED


def is_partial(label: np.ndarray) -> bool:
    """Whether some voxel of ``label`` is unannotated."""
    return bool(np.any(np.asarray(label) == UNANNOTATED))


def annotated_fraction(label: np.ndarray) -> float:
    """Fraction of the voxels that are annotated (1.0 for a full label)."""
    array = np.asarray(label)
    if not array.size:
        return 0.0
    return float(np.count_nonzero(array != UNANNOTATED)) / array.size


def annotation_kind(label: np.ndarray | None) -> str:
    """ "full", "partial" or "none" (no label, or a label with no annotated voxel)."""
    if label is None:
        return "none"
    fraction = annotated_fraction(label)
    if fraction == 0.0:
        return "none"
    return "full" if fraction == 1.0 else "partial"


def any_partial_label(cases: Sequence[Case]) -> bool:
    """Whether any of the cases' label files leaves voxels unannotated (reads them all)."""
    for case in cases:
        if case.label is not None and is_partial(sitk.GetArrayFromImage(read_image(case.label))):
            return True
    return False
