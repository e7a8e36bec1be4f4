"""Per-structure QA (reciprocalseg.evaluation.qa) on arrays whose answers are known by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.common.errors import DataError
from reciprocalseg.evaluation.qa import (
    UNANNOTATED,
    ReferenceRanges,
    disagreement_fractions,
    measure_structures,
    predicts_only_background,
    reference_ranges,
    reference_ranges_from_files,
    structure_qa,
    write_qa,
)


def _labels(shape=(20, 20, 20)) -> np.ndarray:
    return np.zeros(shape, np.uint8)


def test_volume_in_ml_uses_the_spacing_and_pieces_count_26_connected_components() -> None:
    a = _labels()
    a[2:6, 2:6, 2:6] = 1  # 64 voxels
    a[10:12, 10:12, 10:12] = 1  # 8 voxels, apart: a second piece
    a[12, 12, 12] = 1  # touches the second only at a corner: same piece (26-neighbourhood)
    a[15:17, 2:4, 2:4] = 2  # 8 voxels
    out = measure_structures(a, (0.5, 2.0, 3.0), n_classes=4)  # 3 mm^3 per voxel
    assert out[1] == (pytest.approx(73 * 3.0 / 1000), 2)
    assert out[2] == (pytest.approx(8 * 3.0 / 1000), 1)
    assert out[3] == (0.0, 0)
    with pytest.raises(DataError, match="spacing"):
        measure_structures(a, (1.0, 0.0, 1.0), 2)


def test_disagreement_is_one_minus_jaccard_per_class_and_zero_when_neither_has_it() -> None:
    t, s = _labels(), _labels()
    t[0:4, 0:4, 0:4] = 1  # 64
    s[0:4, 0:4, 2:6] = 1  # 64, overlap 32: union 96
    s[10, 10, 10] = 2
    out = disagreement_fractions(t, s, n_classes=4)
    assert out[1] == pytest.approx(1 - 32 / 96)
    assert out[2] == 1.0
    assert out[3] == 0.0


def test_flags_compare_with_the_labelled_ranges_widened_by_the_margin() -> None:
    refs = []
    for size in (4, 5, 6):  # volumes 64, 125, 216 voxels of 1 mm^3; one piece each
        a = _labels()
        a[:size, :size, :size] = 1
        refs.append((a, (1.0, 1.0, 1.0)))
    partial = _labels()
    partial[:] = UNANNOTATED
    partial[:2, :2, :2] = 1
    ranges = reference_ranges([*refs, (partial, (1.0, 1.0, 1.0))], n_classes=2, margin=0.25)
    assert ranges.cases == 3 and ranges.partial_skipped == 1
    assert ranges.classes[1].volume_ml_min == pytest.approx(0.064)
    assert ranges.classes[1].volume_ml_max == pytest.approx(0.216)
    assert ReferenceRanges.from_dict(ranges.to_dict()) == ranges

    def flags_of(array: np.ndarray) -> list[str]:
        (row,) = structure_qa("c", {"m": array}, (1.0, 1.0, 1.0), 2, ranges)
        return row.flags

    inside = _labels()
    inside[:4, :4, :3] = 1  # 48 voxels: below 64 but within 25 %
    assert flags_of(inside) == []
    small = _labels()
    small[:3, :3, :3] = 1  # 27 < 0.75 * 64
    assert flags_of(small) == ["volume_low"]
    big = _labels()
    big[:7, :7, :7] = 1  # 343 > 1.25 * 216 = 270
    assert flags_of(big) == ["volume_high"]
    split = _labels()
    split[:4, :4, :4] = 1
    split[10:13, 10:13, 10:13] = 1  # 91 voxels in range, but two pieces
    assert flags_of(split) == ["more_pieces"]
    assert flags_of(_labels()) == ["empty"]
    assert structure_qa("c", {"m": split}, (1.0, 1.0, 1.0), 2)[0].flags == []  # no reference: no flag


def test_two_networks_fill_in_the_disagreement_and_flag_a_high_one() -> None:
    t, s = _labels(), _labels()
    t[:4, :4, :4] = 1
    s[:4, :4, :1] = 1  # 16 of the 64 agree: 75 % disagreement
    rows = structure_qa("c", {"teacher": t, "student": s}, (1.0, 1.0, 1.0), 2)
    assert [(r.model, r.disagreement) for r in rows] == [("teacher", 0.75), ("student", 0.75)]
    assert all(r.flags == ["high_disagreement"] for r in rows)


def test_predicts_only_background() -> None:
    some = _labels()
    some[3, 3, 3] = 2
    assert predicts_only_background([_labels(), _labels()])
    assert not predicts_only_background([_labels(), some])
    assert not predicts_only_background([])  # nothing predicted: nothing to say


def test_reference_from_files_and_written_qa(tmp_path: Path) -> None:
    a = _labels()
    a[:4, :4, :4] = 1
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((2.0, 1.0, 1.0))
    sitk.WriteImage(img, str(tmp_path / "c1.nrrd"))
    ranges = reference_ranges_from_files([tmp_path / "c1.nrrd"], n_classes=2)
    assert ranges.classes[1].volume_ml_max == pytest.approx(0.128)
    rows = structure_qa("c1", {"student": a}, (2.0, 1.0, 1.0), 2, ranges)
    json_path, csv_path = write_qa(rows, ranges, tmp_path / "out")
    text = csv_path.read_text().splitlines()
    assert text[0] == "case_id,model,label,volume_ml,pieces,disagreement,flags,notes"
    assert text[1].startswith("c1,student,1,0.128,1,,")
    assert json_path.exists()
