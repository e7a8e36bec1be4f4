"""Atomic file writes: write to a temporary file next to the target, fsync, then rename.

Every write of user data or model state (images, labels, checkpoints, manifests, run
files) goes through here, so a crash, a full disk or a killed process never leaves a
half-written file under the final name: readers see either the old file or the new one.

The temporary file lives in the *same directory* as the target because ``os.replace``
is only atomic within one file system. It keeps the target's suffix (``.nii.gz``,
``.nrrd``, ``.pt``...) because writers such as SimpleITK pick the format from the
extension.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "full_suffix",
    "fsync_dir",
]

# Compression suffixes that belong to the format suffix before them (".nii.gz").
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


def full_suffix(path: str | os.PathLike[str]) -> str:
    """The file's format suffix, including a compression suffix: ``a.nii.gz`` -> ``.nii.gz``."""
    suffixes = Path(path).suffixes
    if not suffixes:
        return ""
    if suffixes[-1].lower() in _COMPRESSION_SUFFIXES and len(suffixes) >= 2:
        return "".join(suffixes[-2:])
    return suffixes[-1]


def _fsync_file(path: Path) -> None:
    # Opening read-only is enough to flush the data the writer (SimpleITK, torch) wrote.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush a directory entry (the rename) to disk; a no-op where the OS does not allow it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _temp_name(target: Path) -> Path:
    suffix = full_suffix(target)
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    # Hidden (leading dot) so that folder scans such as discover_cases skip it.
    return target.with_name(f".{stem}.tmp-{secrets.token_hex(6)}{suffix}")


# Windows refuses to rename over a file another process has open (a reader such as the service
# loading a training checkpoint, an antivirus scan): retry for a while instead of failing the write.
_WINDOWS = os.name == "nt"
_REPLACE_RETRIES = 100
_REPLACE_WAIT_S = 0.02


def _replace(tmp: Path, target: Path) -> None:
    for attempt in range(_REPLACE_RETRIES):
        try:
            os.replace(tmp, target)
            return
        except PermissionError:
            if not _WINDOWS or attempt == _REPLACE_RETRIES - 1:
                raise
            time.sleep(_REPLACE_WAIT_S)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The body must create the file at the yielded path (e.g. ``sitk.WriteImage(img, str(tmp))``
    or ``torch.save(obj, tmp)``). On normal exit the file is fsynced, renamed onto ``path``
    and the directory fsynced. If the body raises, the temporary file is removed and
    ``path`` is left untouched. Missing parent directories are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    while tmp.exists():  # practically never; keeps us from clobbering a stranger's file
        tmp = _temp_name(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file {tmp} for {target}")
        _fsync_file(tmp)
        _replace(tmp, target)
    except BaseException:
        # BaseException too: a KeyboardInterrupt mid-write must not leave temp files behind.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (UTF-8 by default, newlines untranslated)."""
    atomic_write_bytes(path, text.encode(encoding))


def _json_default(obj: Any) -> Any:
    # Paths and numpy scalars/arrays show up in configs and manifests; write them plainly.
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (indented, trailing newline) to ``path`` atomically.

    ``Path`` objects and numpy values are converted; anything else not JSON-serialisable
    raises ``TypeError`` before the target is touched.
    """
    text = json.dumps(obj, indent=indent, default=_json_default) + "\n"
    atomic_write_text(path, text)
