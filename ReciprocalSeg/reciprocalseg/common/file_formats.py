"""Which image files the package reads, which may be uploaded, and how label files are named.

One place for names that the data layer, the service and the client all use, case IDs from file
names included; standard library only, so the client (which runs in Slicer's Python without torch
or SimpleITK work) can take them too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Extensions read and written (lower case; ".nii.gz" is one extension).
IMAGE_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
# Single-file formats only: an upload is one file, so a detached header (.nhdr, .mhd) cannot come
# with its data (and must never make the service read another path).
UPLOAD_SUFFIXES: tuple[str, ...] = (".nrrd", ".nii", ".nii.gz", ".mha")
# File-name endings that mark a label map in a folder of image/label pairs.
LABEL_NAME_SUFFIXES: tuple[str, ...] = ("_label", "_seg")
# The label value of voxels a partial label leaves unannotated (never a class): losses and
# statistics skip them, and crops of partially labelled cases are centred where the annotation is.
UNANNOTATED: int = 255
# Endings stripped from a file name to get the case ID (one of them, once).
_ID_NAME_SUFFIXES: tuple[str, ...] = ("_image", "_label", "_seg", "_0000")


def image_suffix(path: str | os.PathLike[str]) -> str | None:
    """The supported image extension of ``path`` (lower case, ``.nii.gz`` whole), or None."""
    name = Path(path).name.lower()
    # Longest first so that ".nii.gz" wins over a bare ".gz" match attempt.
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def strip_image_extension(name: str) -> str:
    """``name`` without its image extension (or, unknown, whatever extension it has)."""
    suffix = image_suffix(name)
    if suffix is not None:
        return name[: -len(suffix)]
    # Unknown extension: drop it (and a compression extension after it), like ".h5" or ".dcm.gz".
    m = re.match(r"^(.+?)(\.[A-Za-z][A-Za-z0-9]{0,5})(\.(gz|bz2|xz|zst))?$", name)
    return m.group(1) if m else name


def case_id_from_path(path: str | os.PathLike[str]) -> str:
    """Case ID of an image or label path (the rule: see ``data/io.py``'s docstring).

    ``ABC_image.nrrd``, ``ABC_label.nrrd``, ``ABC.nii.gz``, ``labels/ABC.nii.gz`` -> ``ABC``;
    an existing directory (a DICOM series) -> its name.
    """
    p = Path(path)
    if p.is_dir():
        return p.name
    stem = strip_image_extension(p.name)
    lower = stem.lower()
    for ending in _ID_NAME_SUFFIXES:
        if lower.endswith(ending) and len(stem) > len(ending):
            return stem[: -len(ending)]
    return stem
