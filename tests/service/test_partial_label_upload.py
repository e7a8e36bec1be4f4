"""Partial labels through a real service: upload, storage, the case listing, and a training round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from service_helpers import TRAIN_FAST

from reciprocalseg.client import ServiceError
from reciprocalseg.common.file_formats import UNANNOTATED
from reciprocalseg.data.io import write_image


def _partial_label(full_label: Path, out: Path, slices: slice) -> np.ndarray:
    """The label annotated on `slices` (axial) only, 255 elsewhere, written to `out`."""
    label = sitk.ReadImage(str(full_label))
    array = np.full(sitk.GetArrayFromImage(label).shape, UNANNOTATED, np.uint8)
    array[slices] = sitk.GetArrayFromImage(label)[slices]
    partial = sitk.GetImageFromArray(array)
    partial.CopyInformation(label)
    write_image(partial, out)
    return array


def test_partial_label_upload_listing_and_training(service, phantoms, tmp_path: Path) -> None:
    c = service.client
    for case in phantoms[:4]:
        c.add_case(case.image)
    c.put_label(phantoms[0].case_id, phantoms[0].label)  # a full label
    uploaded = _partial_label(phantoms[1].label, tmp_path / "partial.nrrd", slice(12, 16))
    version = c.put_label(phantoms[1].case_id, tmp_path / "partial.nrrd", author="scribbler")
    assert version.kind == "submitted" and 0 < version.annotated_fraction < 1
    assert c.label_history(phantoms[0].case_id).versions[0].annotated_fraction == 1.0

    # Kept as uploaded: every voxel, 255 included, on the case's grid.
    stored = sitk.ReadImage(str(c.get_label(phantoms[1].case_id, tmp_path / "back.nrrd")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(stored), uploaded)
    assert sitk.GetArrayFromImage(stored).dtype == np.uint8
    original = sitk.ReadImage(str(phantoms[1].image))
    assert stored.GetSpacing() == pytest.approx(original.GetSpacing())

    cases = {x.id: x for x in c.list_cases()}
    expected_fraction = float(np.mean(uploaded != UNANNOTATED))
    assert (cases["phantom_000"].annotation, cases["phantom_000"].annotated_fraction) == ("full", 1.0)
    assert cases["phantom_001"].annotation == "partial"
    assert cases["phantom_001"].annotated_fraction == pytest.approx(expected_fraction)
    assert (cases["phantom_002"].annotation, cases["phantom_002"].annotated_fraction) == ("none", 0.0)
    one = c.get_case("phantom_001")
    assert one.annotation == "partial" and one.annotated_fraction == pytest.approx(expected_fraction)
    # 255 is no class: the workspace still has background + 1 class.
    assert c.settings()["n_classes"] == 2

    # A value that is neither a class nor 255 is still refused once the class count is fixed.
    c.set_n_classes(2)
    bad = sitk.ReadImage(str(tmp_path / "partial.nrrd"))
    array = sitk.GetArrayFromImage(bad)
    array[13, 0, 0] = 7
    wrong = sitk.GetImageFromArray(array)
    wrong.CopyInformation(bad)
    write_image(wrong, tmp_path / "wrong.nrrd")
    with pytest.raises(ServiceError) as err:
        c.put_label(phantoms[1].case_id, tmp_path / "wrong.nrrd")
    assert err.value.status_code == 422 and "7" in err.value.message
    assert c.get_case("phantom_001").annotation == "partial"  # the stored version is untouched

    # A round trains on the full and the partial label; the student's scans are the two
    # unlabelled cases and the partially labelled one.
    st = c.start_training(**TRAIN_FAST, warm_start=False)
    assert st.n_labeled == 2 and st.n_unlabeled == 3
    st = c.wait_for_training(poll=0.5, timeout=600)
    assert st.state == "completed", st.message
    events = c.training_events(since=0).events
    assert [e.get("partial") for e in events if e["event"] == "preprocessed"] == [1]


def test_partial_labels_alone_give_the_student_its_scans(service, phantoms, tmp_path: Path) -> None:
    """No case without a label: the partially labelled one is the student's unlabelled scan, so
    a reciprocal round starts (it was refused as "no unlabelled case")."""
    c = service.client
    for case in phantoms[:2]:
        c.add_case(case.image)
    c.put_label(phantoms[0].case_id, phantoms[0].label)
    _partial_label(phantoms[1].label, tmp_path / "partial.nrrd", slice(10, 14))
    c.put_label(phantoms[1].case_id, tmp_path / "partial.nrrd")
    st = c.start_training(**TRAIN_FAST, warm_start=False)
    assert (st.n_labeled, st.n_unlabeled) == (2, 1)
    st = c.wait_for_training(poll=0.5, timeout=600)
    assert st.state == "completed", st.message
    phases = {e.get("phase") for e in c.training_events(since=0).events}
    assert "reciprocal" in phases
