"""How prediction files are named, so that `predict` writes what `evaluate` reads.

`reciprocalseg predict` writes one label map per case and model: ``<ID>.<ext>`` when it
runs one model, ``<ID>_<model>.<ext>`` (model: teacher, student, supervised) when it runs
both networks, and ``<ID>_disagreement.<ext>`` for the disagreement map. The extension is
the input's format unless one is asked for (a DICOM series gives NRRD; a two-file
``.nhdr``/``.mhd`` input gives the same format in one file, ``.nrrd``/``.mha``).
`evaluate` reads a prediction folder by the same rule: a file whose case ID is a labelled
case is that case's prediction; otherwise ``<ID>_<model>`` is model ``<model>``'s
prediction of case ``<ID>``; disagreement maps are not label maps and are left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..common.errors import DataError
from ..data.io import IMAGE_SUFFIXES, files_by_case_id, image_suffix

MODEL_NAMES = ("teacher", "student", "supervised")
DISAGREEMENT = "disagreement"
DICOM_OUTPUT_FORMAT = ".nrrd"
# Two-file formats are written as the same format in one file: one output per case and model.
_ONE_FILE_FORMAT = {".nhdr": ".nrrd", ".mhd": ".mha"}


def output_format(image_path: str | os.PathLike[str], requested: str | None = None) -> str:
    """The extension to write a prediction of ``image_path`` with: ``requested``, else the input's."""
    if requested:
        fmt = requested if requested.startswith(".") else f".{requested}"
        if fmt.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"--format {requested}: use one of {', '.join(IMAGE_SUFFIXES)}")
        return fmt.lower()
    suffix = image_suffix(image_path)
    if suffix is None:  # a DICOM series folder
        return DICOM_OUTPUT_FORMAT
    return _ONE_FILE_FORMAT.get(suffix, suffix)


def prediction_path(out_dir: Path, case_id: str, model: str | None, fmt: str) -> Path:
    """``OUT/<ID>.<ext>`` (one model: ``model`` None) or ``OUT/<ID>_<model>.<ext>``."""
    return out_dir / (f"{case_id}{fmt}" if model is None else f"{case_id}_{model}{fmt}")


@dataclass(frozen=True)
class PredictionFile:
    case_id: str
    model: str | None  # None: the folder holds one model's predictions, named <ID>.<ext>
    path: Path


def find_predictions(
    pred_dir: Path, labelled_ids: set[str], model: str | None = None
) -> tuple[list[PredictionFile], list[Path]]:
    """The label-map predictions in ``pred_dir`` for the cases in ``labelled_ids``.

    ``model`` keeps only ``<ID>_<model>`` files. Returns the matched predictions (sorted by
    model, then case) and the image files that match no labelled case.
    """
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder not found")
    found, unmatched = [], []
    for cid, path in files_by_case_id(pred_dir, "predictions").items():
        match = _match(cid, labelled_ids)
        if match is None:
            if not cid.endswith(f"_{DISAGREEMENT}"):
                unmatched.append(path)
            continue
        case_id, which = match
        if model is None or which == model:
            found.append(PredictionFile(case_id, which, path))
    found.sort(key=lambda p: (p.model or "", p.case_id))
    return found, unmatched


def _match(cid: str, labelled_ids: set[str]) -> tuple[str, str | None] | None:
    if cid in labelled_ids:
        return cid, None
    for name in MODEL_NAMES:
        ending = f"_{name}"
        if cid.endswith(ending) and cid[: -len(ending)] in labelled_ids:
            return cid[: -len(ending)], name
    return None
