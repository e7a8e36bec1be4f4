"""Which image files the package reads, which may be uploaded, and how label files are named.

One place for names that the data layer, the service and the client all use; no imports, so the
client (which runs in Slicer's Python without torch or SimpleITK work) can take them too.
"""

from __future__ import annotations

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
