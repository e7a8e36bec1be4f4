"""Uploaded and registered files: saving an upload within the size limit, reading it safely.

An upload is streamed into the workspace's ``tmp/`` folder (same file system, so nothing else
sees it and start-up removes leftovers) and read from there. Only single-file formats are
accepted: a detached header (``.nhdr``/``.mhd``, or a ``.nrrd``/``.mha`` whose header names a
separate data file) would make the service read a file the user did not send.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import UploadFile

from reciprocalseg.common.errors import DataError

from .errors import Invalid, TooLarge
from .workspace import Workspace, check_scan


def safe_filename(name: str | None) -> str:
    """The last component of a client-supplied file name (never used as a path by itself)."""
    name = (name or "").replace("\\", "/")
    base = PurePosixPath(name).name
    return base[:255] or "upload"


def too_large_msg(limit: int) -> str:
    return f"request too large: the upload limit is {limit / 2**20:.1f} MiB (serve --max-upload-mb)"


def save_upload(ws: Workspace, file: UploadFile, suffix: str, limit: int) -> Path:
    """Stream an upload to a fresh file in ``tmp/``; 413 (and nothing kept) past ``limit`` bytes."""
    tmp = ws.new_tmp_path(suffix)
    size = 0
    try:
        with open(tmp, "wb") as out:
            while chunk := file.file.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(too_large_msg(limit))
                out.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def read_upload(tmp: Path, filename: str, max_voxels: int | None = None) -> Any:
    """Read an uploaded image, translating errors to 422 messages naming the client's file name."""
    from reciprocalseg.data.io import read_image

    if tmp.stat().st_size == 0:
        raise Invalid(f"{filename}: the uploaded file is empty")
    try:
        img = read_image(tmp, max_voxels=max_voxels, attached_only=True)
        check_scan(img, filename)
    except DataError as exc:
        raise _as_api_error(exc, str(tmp), filename) from None
    return img


def _as_api_error(exc: DataError, tmp: str, filename: str) -> Exception:
    from reciprocalseg.data.io import TooManyVoxels

    message = str(exc).replace(tmp, filename)
    return TooLarge(message) if isinstance(exc, TooManyVoxels) else Invalid(message)


def looks_like_dicom_folder(folder: Path, max_files: int = 200) -> bool:
    """Whether a folder holds at least one DICOM Part 10 file (checks a few files' ``DICM`` marker)."""
    try:
        for i, f in enumerate(folder.iterdir()):
            if i >= max_files:
                break
            try:
                if f.is_file() and f.stat().st_size >= 132:
                    with open(f, "rb") as fh:
                        fh.seek(128)
                        if fh.read(4) == b"DICM":
                            return True
            except OSError:
                continue
    except OSError:
        return False
    return False
