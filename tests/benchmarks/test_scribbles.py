"""benchmarks/scribbles.py: the simulated-scribble rule of the partial-label benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from benchmarks.scribbles import (
    UNANNOTATED,
    annotated_fraction,
    scribble_label,
    scribble_slices,
    write_scribbled_label,
)


def _two_blobs(shape=(30, 64, 64)) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    label = np.zeros(shape, dtype=np.uint8)
    label[((z - 15) / 10) ** 2 + ((y - 32) / 14) ** 2 + ((x - 20) / 9) ** 2 <= 1] = 1
    label[((z - 15) / 8) ** 2 + ((y - 32) / 10) ** 2 + ((x - 46) / 8) ** 2 <= 1] = 2
    return label


def test_strokes_lie_inside_their_class_and_the_ring_outside_every_class() -> None:
    label = _two_blobs()
    partial = scribble_label(label, slices=3)
    annotated = partial != UNANNOTATED
    assert set(np.unique(partial)) == {0, 1, 2, UNANNOTATED}
    # Every annotated voxel agrees with the ground truth: a stroke is never on the wrong side.
    assert np.array_equal(partial[annotated], label[annotated])
    assert sorted(np.flatnonzero(annotated.any(axis=(1, 2)))) == scribble_slices(label, 3)
    # Thin strokes: a few percent of the scribbled slices, far less of the volume.
    assert 0 < annotated_fraction(partial) < 0.02
    on_slices = label[annotated.any(axis=(1, 2))]
    for cls in (1, 2):
        assert 0 < (partial == cls).sum() < 0.5 * (on_slices == cls).sum()


def test_slices_spread_through_the_middle_of_the_organ() -> None:
    label = np.zeros((40, 16, 16), dtype=np.uint8)
    label[10:31, 4:12, 4:12] = 1
    picks = scribble_slices(label, 3)
    assert len(picks) == 3 and picks == sorted(picks)
    assert 10 < picks[0] < picks[-1] < 30
    assert scribble_slices(np.zeros((5, 8, 8), np.uint8), 3) == []


def test_written_file_keeps_the_geometry(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(_two_blobs())
    image.SetSpacing((0.625, 0.625, 0.625))
    image.SetOrigin((3.0, -2.0, 7.5))
    src = tmp_path / "case_label.nrrd"
    sitk.WriteImage(image, str(src))
    fraction = write_scribbled_label(src, tmp_path / "out" / "case_label.nrrd", slices=2)
    written = sitk.ReadImage(str(tmp_path / "out" / "case_label.nrrd"))
    assert written.GetSpacing() == image.GetSpacing() and written.GetOrigin() == image.GetOrigin()
    assert fraction == annotated_fraction(sitk.GetArrayFromImage(written)) > 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["case_label.nrrd"]
