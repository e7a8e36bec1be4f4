"""Reading and writing volumes (SimpleITK), voxel-grid geometry, case discovery and case IDs.

Supported inputs: NRRD (``.nrrd``, ``.nhdr``), NIfTI (``.nii``, ``.nii.gz``), MetaImage
(``.mha``, ``.mhd``) and DICOM series (a folder). Every problem with an input file is
reported as a :class:`~reciprocalseg.common.errors.DataError` whose message names the file.

Case IDs (one rule, used everywhere; see :func:`case_id_from_path`):

1. a DICOM series folder gives the folder name;
2. otherwise the file name loses its image extension (``.nii.gz`` counts as one);
3. then one trailing ``_image``, ``_label``, ``_seg`` or ``_0000`` (nnU-Net channel) is removed.

So ``ABC_image.nrrd``, ``ABC_label.nrrd``, ``ABC.nii.gz``, ``labels/ABC.nii.gz`` and
``imagesTr/ABC_0000.nii.gz`` all belong to case ``ABC``.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import math
import os
import re
import secrets
import shutil
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..common.atomic import atomic_path, atomic_write_json, fsync_dir
from ..common.errors import DataError
from ..common.file_formats import (
    IMAGE_SUFFIXES,
    LABEL_NAME_SUFFIXES,
    case_id_from_path,
    image_suffix,
    strip_image_extension,
)

# One Geometry class for the package; re-exported here because the data layer is where
# callers look for it (docs/DESIGN.md).
from ..common.geometry import Geometry
from .validation import check_image

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_NAME_SUFFIXES",
    "Case",
    "ForeignDataFile",
    "Geometry",
    "TooManyVoxels",
    "case_id_from_path",
    "check_data_file",
    "check_nifti_complete",
    "check_voxel_count",
    "dicom_series_ids",
    "discover_cases",
    "image_suffix",
    "load_case_list",
    "read_image",
    "read_list_file",
    "require_labels",
    "write_case_list",
    "write_image",
]

# Formats whose header and voxel data live in two files (written specially, see write_image).
_DETACHED_SUFFIXES = (".nhdr", ".mhd")


# --------------------------------------------------------------------------- case IDs


def _is_label_name(path: Path) -> bool:
    return strip_image_extension(path.name).lower().endswith(LABEL_NAME_SUFFIXES)


# --------------------------------------------------------------------------- reading / writing


def _itk_reason(exc: Exception) -> str:
    """The useful part of an ITK exception (drop the 'Exception thrown in ... .cxx:123:' noise)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Exception thrown in") and ".cxx:" not in ln[:200]]
    text = " ".join(lines) or str(exc).strip()
    text = re.sub(r"\b\w+ImageIO\(0x[0-9a-f]+\):\s*", "", text)
    # ITK appends a stale errno ("Reason: No such file or directory") to read errors of files
    # that do exist; it misleads more than it helps.
    text = re.sub(r"\s*Reason: No such file or directory", "", text)
    return text if len(text) <= 300 else text[:300] + "..."


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    # GDCM prints warnings to stderr for every folder that holds no DICOM; we report ourselves.
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def dicom_series_ids(folder: str | os.PathLike[str]) -> tuple[str, ...]:
    """The DICOM series instance UIDs found directly in ``folder`` (empty if none)."""
    with _quiet_itk():
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def _read_dicom_series(folder: Path, series_id: str | None, max_voxels: int | None = None) -> sitk.Image:
    ids = dicom_series_ids(folder)
    if not ids:
        raise DataError(
            f"{folder}: is a folder but holds no readable DICOM series; point to an image file "
            f"({', '.join(IMAGE_SUFFIXES)}) or to a folder with one DICOM series."
        )
    if series_id is None:
        if len(ids) > 1:
            raise DataError(
                f"{folder}: holds {len(ids)} DICOM series ({', '.join(ids)}); pick one with "
                "read_image(path, series_id=...) or move each series into its own folder."
            )
        series_id = ids[0]
    elif series_id not in ids:
        raise DataError(f"{folder}: has no DICOM series {series_id!r}; it holds: {', '.join(ids)}.")
    with _quiet_itk():
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        if max_voxels is not None:
            slice_size = _declared_size(Path(files[0]))
            check_voxel_count((*slice_size[:2], len(files), *slice_size[3:]), max_voxels, str(folder))
        return reader.Execute()
    except RuntimeError as exc:
        raise DataError(f"{folder}: cannot read DICOM series {series_id}: {_itk_reason(exc)}") from exc


class TooManyVoxels(DataError):
    """An image whose header declares more voxels than the caller allows (checked before reading)."""


class ForeignDataFile(DataError):
    """An image header that names a data file outside the header's own file (or folder)."""


# NRRD and MetaImage headers are a few hundred bytes, but neither teem nor MetaIO limits their
# length: a field past the part we scan would be honoured by ITK and missed by us. So the whole
# header is scanned, and a header that does not end within this many bytes is refused.
_MAX_HEADER_BYTES = 1 << 20
_NRRD_DATA_FILE = re.compile(rb"^\s*data ?file\s*:(?!=)\s*(.*?)\s*$", re.IGNORECASE)
_META_DATA_FILE = re.compile(rb"^\s*ElementDataFile\s*[=:]\s*(.*?)\s*$")
# teem ends a header line at LF, CRLF or a lone CR; MetaIO ends a value at LF only.
_NRRD_LINE_END = re.compile(rb"\r\n|\r|\n")


def _header_lines(path: Path) -> tuple[str, list[bytes]]:
    """``(kind, header lines)`` of a NRRD (``"nrrd"``) or MetaImage (``"meta"``) file, else ``("", [])``.

    Raises DataError when such a header does not end within ``_MAX_HEADER_BYTES``.
    """
    with open(path, "rb") as f:
        head = f.read(_MAX_HEADER_BYTES)
        truncated = bool(f.read(1))
    if head.startswith(b"NRRD"):
        lines = _NRRD_LINE_END.split(head)
        # The header ends at the first empty line; attached data follows it. When the file goes
        # on past what was read, the last piece may be a cut line: it does not count.
        complete = lines[:-1] if truncated else lines
        for i, line in enumerate(complete):
            if not line:
                return "nrrd", complete[:i]
        if truncated:
            raise _header_too_long(path, "NRRD")
        return "nrrd", complete
    if b"ElementDataFile" in head or image_suffix(path) in (".mha", ".mhd"):
        lines = head.split(b"\n")
        complete = lines[:-1] if truncated else lines
        for i, line in enumerate(complete):
            if _META_DATA_FILE.match(line):
                return "meta", complete[: i + 1]  # ElementDataFile is the header's last field
        if truncated:
            raise _header_too_long(path, "MetaImage")
    return "", []


def _header_too_long(path: Path, kind: str) -> DataError:
    return DataError(
        f"{path}: the {kind} header does not end within the first {_MAX_HEADER_BYTES // 2**20} MiB; "
        "such a header is not accepted (a real one is a few kB): re-save the image."
    )


def check_data_file(path: str | os.PathLike[str], attached_only: bool = False) -> None:
    """Refuse a NRRD/MetaImage header whose voxel data would come from another file.

    Allowed: data in the file itself (``.nrrd``, ``.mha`` with ``ElementDataFile = LOCAL``) and,
    unless ``attached_only``, a detached header (``.nhdr``/``.mhd``) naming one file by bare name
    in the header's own folder. Refused, with a DataError naming the field: absolute paths,
    ``..``, sub-folders, file lists and patterns. This keeps an image from reading, for
    instance, ``/etc/passwd`` as its voxels.
    """
    p = Path(path)
    kind, lines = _header_lines(p)
    pattern = _NRRD_DATA_FILE if kind == "nrrd" else _META_DATA_FILE
    field = "data file" if kind == "nrrd" else "ElementDataFile"
    for line in lines:
        m = pattern.match(line)
        if not m:
            continue
        value = m.group(1).decode("latin-1")
        if kind == "meta" and value.upper() == "LOCAL":
            continue
        if attached_only:
            raise ForeignDataFile(
                f"{p}: the header's {field!r} field points to another file ({value!r}); upload a "
                "single-file image (.nrrd, .nii, .nii.gz, .mha) whose voxels are in the file itself."
            )
        name = Path(value)
        if (
            value.upper().startswith("LIST")
            or " " in value
            or "%" in value
            or name.name != value
            or value in (".", "..")
        ):
            raise ForeignDataFile(
                f"{p}: the header's {field!r} field ({value!r}) names data outside the header's own "
                "folder (or a list of files); only one data file next to the header is accepted."
            )
        data = p.parent / value
        if not data.is_file():
            raise DataError(f"{p}: the data file {value!r} named by the header's {field!r} field is missing.")
        if data.resolve().parent != p.resolve().parent:
            raise ForeignDataFile(
                f"{p}: the data file {value!r} named by the header's {field!r} field is a link to "
                "another folder; only a data file next to the header is accepted."
            )


# Where a NIfTI's voxels start: 352 bytes plus header extensions, a few kB in practice.
_MAX_NIFTI_OFFSET = 1 << 24


def _nifti_layout(head: bytes) -> tuple[int, int] | None:
    """``(voxel offset, voxel bytes)`` of a single-file NIfTI-1/2, from its header.

    None when ``head`` is no such header, the header names a separate ``.img`` file, or its
    dimensions are invalid (ITK's own message then says what is wrong).
    """
    for endian in "<>":
        if len(head) >= 348 and struct.unpack_from(endian + "i", head)[0] == 348:
            if head[344:347] != b"n+1":
                return None
            dims: tuple[int, ...] = struct.unpack_from(endian + "8h", head, 40)
            bitpix = struct.unpack_from(endian + "h", head, 72)[0]
            offset = int(struct.unpack_from(endian + "f", head, 108)[0])
        elif len(head) >= 540 and struct.unpack_from(endian + "i", head)[0] == 540:
            if head[4:7] != b"n+2":
                return None
            bitpix = struct.unpack_from(endian + "h", head, 14)[0]
            dims = struct.unpack_from(endian + "8q", head, 16)
            offset = struct.unpack_from(endian + "q", head, 168)[0]
        else:
            continue
        n = dims[0]
        if not 1 <= n <= 7 or bitpix <= 0 or any(d < 1 for d in dims[1 : n + 1]):
            return None
        return offset, math.prod(dims[1 : n + 1]) * bitpix // 8
    return None


def check_nifti_complete(path: str | os.PathLike[str]) -> None:
    """Refuse a NIfTI file that holds less voxel data than its header declares.

    ITK's NIfTI reader fills what is missing with zeros, so an interrupted copy or download
    would pass as a scan (or label) whose end is blank. A ``.nii`` is measured by its size; a
    ``.nii.gz`` is decompressed as a stream (never held in memory), up to 1 MiB past the
    declared size.
    """
    p = Path(path)
    compressed = p.name.lower().endswith(".gz")
    opener = gzip.open if compressed else open
    have = 0
    try:
        with opener(p, "rb") as f:
            head = f.read(540)
            layout = _nifti_layout(head)
            if layout is None:
                return
            offset, voxel_bytes = layout
            if not 0 <= offset <= _MAX_NIFTI_OFFSET:
                # Reading up to such an offset inside a .nii.gz could inflate gigabytes.
                raise DataError(
                    f"{p}: the header puts the voxels at byte {offset:,} (vox_offset); a NIfTI file's "
                    f"voxels start within its first {_MAX_NIFTI_OFFSET // 2**20} MiB: the file is corrupt."
                )
            needed = offset + voxel_bytes
            have = len(head) if compressed else p.stat().st_size
            while compressed and have <= needed + (1 << 20) and (chunk := f.read(1 << 20)):
                have += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{p}: the compressed data is truncated or corrupt ({exc}); the copy or download was "
            "probably interrupted: copy the file again."
        ) from None
    except OSError as exc:
        raise DataError(f"{p}: cannot read the file: {exc.strerror or exc}") from None
    if have < needed:
        raise DataError(
            f"{p}: the file is truncated: its header declares {needed:,} bytes (header and voxels) but "
            f"it holds {have:,}; the copy or download was probably interrupted: copy the file again."
        )


def _declared_size(path: Path) -> tuple[int, ...]:
    """The size a file's header declares (x, y, z[, components]), read without reading any voxel."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    components = int(reader.GetNumberOfComponents())
    return tuple(int(v) for v in reader.GetSize()) + ((components,) if components > 1 else ())


def check_voxel_count(size: Sequence[int], max_voxels: int, source: str) -> None:
    """Raise TooManyVoxels when ``size`` (x, y, z[, components]) holds more than ``max_voxels`` values."""
    count = 1
    for v in size:
        count *= int(v)
    if count > max_voxels:
        raise TooManyVoxels(
            f"{source}: the header declares {' x '.join(str(v) for v in size)} = {count:,} voxels, more "
            f"than the limit of {max_voxels:,} (serve --max-voxels); crop or downsample the image, or "
            "raise the limit."
        )


def read_image(
    path: str | os.PathLike[str],
    series_id: str | None = None,
    max_voxels: int | None = None,
    attached_only: bool = False,
) -> sitk.Image:
    """Read a 3D scalar volume from a NRRD/NIfTI/MetaImage file or a DICOM series folder.

    ``series_id`` picks one series when a DICOM folder holds several. Raises DataError
    naming the file when it is missing, unreadable, of an unsupported type, 2D, empty,
    multi-component or holds NaN/infinite values, and when its header names a data file
    elsewhere (see :func:`check_data_file`; ``attached_only`` refuses every separate data
    file). With ``max_voxels``, the size the header declares is checked before any voxel is
    read (:class:`TooManyVoxels`), so a small compressed file cannot expand into gigabytes.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found.")
    if p.is_dir():
        img = _read_dicom_series(p, series_id, max_voxels)
    else:
        if image_suffix(p) is None:
            raise DataError(
                f"{p}: unsupported file type; supported are {', '.join(IMAGE_SUFFIXES)} "
                "and DICOM series folders (pass the folder, not a single .dcm file)."
            )
        check_data_file(p, attached_only=attached_only)
        try:
            if max_voxels is not None:
                check_voxel_count(_declared_size(p), max_voxels, str(p))
            if image_suffix(p) in (".nii", ".nii.gz"):
                check_nifti_complete(p)
            img = sitk.ReadImage(str(p))
        except RuntimeError as exc:
            reason = _itk_reason(exc)
            raise DataError(f"{p}: cannot read the image (corrupt or truncated?): {reason}") from exc
    check_image(img, str(p))
    return img


def write_image(img: sitk.Image, path: str | os.PathLike[str]) -> None:
    """Write ``img`` atomically with compression; the format follows the extension.

    For two-file formats (``.mhd``/``.nhdr``) the data file is renamed into place before
    the header, so a header never points at missing or partial data.
    """
    target = Path(path)
    suffix = image_suffix(target)
    if suffix is None:
        raise DataError(f"{target}: cannot write this file type; use one of {', '.join(IMAGE_SUFFIXES)}.")
    try:
        if suffix in _DETACHED_SUFFIXES:
            _write_detached(img, target)
            return
        with atomic_path(target) as tmp:
            sitk.WriteImage(img, str(tmp), useCompression=True)
    except RuntimeError as exc:  # ITK reports a failed write without an errno
        raise _write_error(img, target, exc) from None


def _write_error(img: sitk.Image, target: Path, exc: RuntimeError) -> Exception:
    """OSError(ENOSPC) when the target's file system has less room than the image, else DataError.

    ITK's own text names its build paths and hides the cause; free space is what usually ran out.
    """
    needed = img.GetNumberOfPixels() * img.GetSizeOfPixelComponent() * img.GetNumberOfComponentsPerPixel()
    try:
        free = shutil.disk_usage(target.parent).free
    except OSError:
        free = None
    if free is not None and free < needed:
        return OSError(errno.ENOSPC, f"no space left to write {target.name} ({free} bytes free)", str(target))
    if not os.access(target.parent, os.W_OK):  # a folder we may not write: not the image's fault
        code = errno.EROFS if _read_only(target.parent) else errno.EACCES
        return OSError(code, os.strerror(code), str(target))
    return DataError(f"{target}: cannot write the image: {_itk_reason(exc)}")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


def _write_detached(img: sitk.Image, target: Path) -> None:
    # The header stores the data file's name, so both must be written under their final
    # names: write them into a private temporary folder, then rename data first, header last.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = target.parent / f".{target.name}.tmp-{secrets.token_hex(6)}"
    tmp_dir.mkdir()
    try:
        sitk.WriteImage(img, str(tmp_dir / target.name), useCompression=True)
        produced = sorted(tmp_dir.iterdir(), key=lambda f: f.name == target.name)  # header last
        for f in produced:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for f in produced:
            os.replace(f, target.parent / f.name)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One case: an image (file or DICOM folder) and, if labelled, its label map."""

    case_id: str
    image: Path
    label: Path | None = None

    def __post_init__(self) -> None:
        # Accept str paths from callers / JSON; store Path objects.
        object.__setattr__(self, "image", Path(self.image))
        if self.label is not None:
            object.__setattr__(self, "label", Path(self.label))


def _looks_like_dicom_folder(folder: Path) -> bool:
    # Cheap pre-filter before asking GDCM (which parses every file): a DICOM folder holds
    # visible files that are not one of our image formats.
    try:
        has_candidates = any(
            f.is_file() and not f.name.startswith(".") and image_suffix(f) is None for f in folder.iterdir()
        )
    except OSError:
        return False
    return has_candidates and bool(dicom_series_ids(folder))


def _scan(folder: Path, include_dicom_dirs: bool) -> list[Path]:
    """Visible image files (and, optionally, DICOM series sub-folders) directly in ``folder``."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):  # hidden files, our own atomic-write temporaries
            continue
        if entry.is_file() and image_suffix(entry) is not None:
            found.append(entry)
        elif entry.is_dir() and include_dicom_dirs and _looks_like_dicom_folder(entry):
            found.append(entry)
    return found


def files_by_case_id(folder: str | os.PathLike[str], what: str = "files") -> dict[str, Path]:
    """Image files directly in ``folder`` keyed by case ID (e.g. a folder holding only labels)."""
    return _by_id(_scan(Path(folder), include_dicom_dirs=False), what)


def _by_id(paths: Iterable[Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in paths:
        cid = case_id_from_path(p)
        if cid in out:
            raise DataError(
                f"duplicate case ID {cid!r}: {out[cid]} and {p} are both {what} of the same case. "
                "Keep one of them (IDs come from file names without extension and without "
                "_image/_label/_seg/_0000)."
            )
        out[cid] = p
    return out


def discover_cases(
    images_dir: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str] | None = None,
) -> list[Case]:
    """Find the cases in a folder, sorted by case ID.

    Images are the image files directly in ``images_dir`` plus its DICOM series sub-folders.
    Without ``labels_dir``, files named ``<ID>_label.<ext>`` / ``<ID>_seg.<ext>`` in
    ``images_dir`` are the labels (the ``<ID>_image.nrrd`` / ``<ID>_label.nrrd`` layout);
    with ``labels_dir``, its image files are the labels, matched by case ID (nnU-Net's
    ``imagesTr``/``labelsTr`` layout). Images without a label get ``label=None``
    (see :func:`require_labels`). Raises DataError for a missing folder, a folder without
    images, a label without an image, and duplicate case IDs.
    """
    img_dir = Path(images_dir)
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: image folder not found.")
    entries = _scan(img_dir, include_dicom_dirs=True)
    image_paths = [p for p in entries if not (p.is_file() and _is_label_name(p))]
    label_paths = [p for p in entries if p.is_file() and _is_label_name(p)]
    if labels_dir is not None:
        lab_dir = Path(labels_dir)
        if not lab_dir.is_dir():
            raise DataError(f"{lab_dir}: label folder not found.")
        if lab_dir.resolve() != img_dir.resolve():
            label_paths += _scan(lab_dir, include_dicom_dirs=False)
    images = _by_id(image_paths, "images")
    labels = _by_id(label_paths, "labels")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        listed = ", ".join(str(labels[c]) for c in orphans[:10])
        more = f" (and {len(orphans) - 10} more)" if len(orphans) > 10 else ""
        raise DataError(
            f"label without an image: {listed}{more}. Add the image (same case ID, e.g. "
            f"{orphans[0]}_image.nrrd or {orphans[0]}.nii.gz) or remove the label."
        )
    if not images:
        where = img_dir if labels_dir is None else f"{img_dir} (labels: {labels_dir})"
        raise DataError(f"no images found in {where}; supported: {', '.join(IMAGE_SUFFIXES)}, DICOM folders.")
    return [Case(cid, images[cid], labels.get(cid)) for cid in sorted(images)]


def require_labels(cases: Sequence[Case]) -> list[Case]:
    """Return ``cases`` unchanged if every case has a label; else DataError listing those without."""
    missing = [c.case_id for c in cases if c.label is None]
    if missing:
        shown = ", ".join(missing[:20]) + (f" (and {len(missing) - 20} more)" if len(missing) > 20 else "")
        raise DataError(
            f"{len(missing)} case(s) have no label: {shown}. Add <ID>_label files (or files in the "
            "label folder), or use these cases as unlabelled data."
        )
    return list(cases)


# --------------------------------------------------------------------------- manifests and lists


def _duplicates(items: Iterable[str]) -> list[str]:
    return sorted(k for k, n in Counter(items).items() if n > 1)


def _entry_path(manifest: Path, where: str, entry: dict, key: str) -> Path:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise DataError(f"{manifest}: {where} needs a {key!r} path (a non-empty string), got {value!r}.")
    p = Path(value).expanduser()
    # Relative paths are relative to the manifest, so a folder with its manifest can be moved.
    return p if p.is_absolute() else manifest.parent / p


def load_case_list(path: str | os.PathLike[str]) -> tuple[list[Case], list[Case]]:
    """Read a case manifest -> (labeled, unlabeled).

    Format: ``{"labeled": [{"id", "image", "label"}], "unlabeled": [{"id", "image"}]}``;
    ``id`` may be left out (derived from the image path), relative paths are relative to
    the manifest's folder, either list may be missing or empty. Raises DataError naming
    the manifest for bad JSON, a bad structure, missing files and duplicate IDs.
    """
    manifest = Path(path)
    try:
        text = manifest.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{manifest}: case list not found.") from None
    except OSError as exc:
        raise DataError(f"{manifest}: cannot read the case list: {exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise DataError(f"{manifest}: not valid JSON ({where}): {exc.msg}.") from exc
    if not isinstance(doc, dict):
        raise DataError(f"{manifest}: expected a JSON object with 'labeled' and 'unlabeled' lists.")
    for british, american in (("labelled", "labeled"), ("unlabelled", "unlabeled")):
        if british in doc:
            raise DataError(f"{manifest}: unknown key {british!r}; the key is spelled {american!r}.")
    result: dict[str, list[Case]] = {}
    for key in ("labeled", "unlabeled"):
        entries = doc.get(key, [])
        if not isinstance(entries, list):
            raise DataError(f"{manifest}: {key!r} must be a list of objects, got {type(entries).__name__}.")
        cases = []
        for i, entry in enumerate(entries):
            where = f"{key}[{i}]"
            if not isinstance(entry, dict):
                raise DataError(f"{manifest}: {where} must be an object like {{'id', 'image', ...}}.")
            image = _entry_path(manifest, where, entry, "image")
            label = _entry_path(manifest, where, entry, "label") if key == "labeled" else None
            cid = entry.get("id")
            if cid is None:
                cid = case_id_from_path(image)
            elif not isinstance(cid, str) or not cid.strip():
                raise DataError(f"{manifest}: {where} has an invalid 'id' {cid!r}; use a non-empty string.")
            cases.append(Case(cid, image, label))
        result[key] = cases
    labeled, unlabeled = result["labeled"], result["unlabeled"]
    dups = _duplicates(c.case_id for c in labeled + unlabeled)
    if dups:
        raise DataError(f"{manifest}: duplicate case IDs: {', '.join(dups)}. Each case may appear once.")
    missing = [
        f"{c.case_id}: {p}"
        for c in labeled + unlabeled
        for p in (c.image, c.label)
        if p is not None and not p.exists()
    ]
    if missing:
        shown = "; ".join(missing[:10]) + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else "")
        raise DataError(f"{manifest}: {len(missing)} listed file(s) not found: {shown}.")
    return labeled, unlabeled


def write_case_list(path: str | os.PathLike[str], labeled: Sequence[Case], unlabeled: Sequence[Case]) -> None:
    """Write a case manifest (atomically) that :func:`load_case_list` reads back.

    Paths are written absolute so the manifest means the same from any working folder.
    """
    bad = [c.case_id for c in labeled if c.label is None]
    if bad:
        raise DataError(f"labelled cases without a label cannot be written to {path}: {', '.join(bad)}.")
    doc = {
        "labeled": [
            {"id": c.case_id, "image": str(c.image.absolute()), "label": str(c.label.absolute())}
            for c in labeled
            if c.label is not None
        ],
        "unlabeled": [{"id": c.case_id, "image": str(c.image.absolute())} for c in unlabeled],
    }
    atomic_write_json(path, doc)


def read_list_file(path: str | os.PathLike[str]) -> list[str]:
    """Case IDs from a ``train.list``-style file: one per line; blank lines and ``#`` comments ignored."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{p}: list file not found.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read the list file: {exc}") from exc
    ids = [ln.strip() for ln in text.splitlines()]
    ids = [i for i in ids if i and not i.startswith("#")]
    dups = _duplicates(ids)
    if dups:
        raise DataError(f"{p}: case IDs listed more than once: {', '.join(dups)}.")
    return ids
