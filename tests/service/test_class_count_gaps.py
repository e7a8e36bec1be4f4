"""A label that would grow the class count past classes no label has is refused, not obeyed.

A workspace whose class count follows the labels grew to 255 classes from one mistaken upload: a
label holding 254 (another tool's numbering), or a scan uploaded as a label (its uint8 grey values
are all "classes", 255 "unannotated"). Every later round then trained 255 output channels (about
80x slower on the CPU), and the count could never come down: `PUT /settings` refuses a count below
what stored label versions use, and versions are never rewritten. Now such a label gets 422 naming
the missing classes and the two ways on; nothing is stored.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.client import ServiceError
from reciprocalseg.data.io import write_image


def _write(like: Path, array: np.ndarray, out: Path) -> Path:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(sitk.ReadImage(str(like)))
    write_image(image, out)
    return out


def _hashes(root: Path) -> dict[str, str]:
    skip = (".service", "tmp")
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not set(p.relative_to(root).parts) & set(skip)
    }


def test_a_label_skipping_classes_does_not_grow_the_count(service, phantoms, tmp_path: Path) -> None:
    c = service.client
    case = phantoms[0]
    c.add_case(case.image)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
    odd_slices = (np.arange(label.shape[0]) % 2)[:, None, None]
    scan = sitk.GetArrayFromImage(sitk.ReadImage(str(case.image)))
    mistakes = {
        "value 254": np.where(label > 0, 254, 0),
        "a scan as a label": np.clip(scan, 0, 255),
        "classes 1 and 3": np.where(label > 0, 1 + 2 * odd_slices, 0),
    }
    before = _hashes(service.workspace)
    for what, array in mistakes.items():
        path = _write(case.image, array, tmp_path / "bad.nrrd")
        with pytest.raises(ServiceError) as err:
            c.put_label(case.case_id, path)
        message = err.value.message
        assert err.value.status_code == 422, (what, message)
        assert "n_classes" in message and "no label has" in message, (what, message)
        assert class_count_of(c.settings()) == {"n_classes": 2, "n_classes_fixed": False}, what
    assert _hashes(service.workspace) == before

    # Consecutive new classes still grow the count; a fixed count allows the gap the user chose.
    c.put_label(
        case.case_id, _write(case.image, np.where(label > 0, 1 + odd_slices, 0), tmp_path / "two.nrrd")
    )
    assert class_count_of(c.settings()) == {"n_classes": 3, "n_classes_fixed": False}
    c.set_n_classes(6)
    c.put_label(case.case_id, _write(case.image, np.where(label > 0, 5, 0), tmp_path / "five.nrrd"))
    assert class_count_of(c.settings()) == {"n_classes": 6, "n_classes_fixed": True}


def class_count_of(settings: dict) -> dict:
    """The class-count part of GET /settings (which also carries the retrain settings)."""
    return {key: settings[key] for key in ("n_classes", "n_classes_fixed")}
