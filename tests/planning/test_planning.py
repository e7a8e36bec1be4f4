"""The dataset fingerprint and the `auto` plan on synthetic cohorts: anisotropic, multi-class, CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from reciprocalseg.config import make_config
from reciprocalseg.data.io import Case
from reciprocalseg.data.preprocess import Preprocessing, normalize_intensity
from reciprocalseg.model.vnet import build_model
from reciprocalseg.planning.fingerprint import (
    CaseFingerprint,
    combine,
    compute_fingerprint,
    read_case_fingerprint,
)
from reciprocalseg.planning.planner import Plan, plan_for_run, plan_from_fingerprint, planned_config


def _write(path: Path, array: np.ndarray, spacing: tuple[float, float, float]) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _cohort(
    folder: Path,
    n_labeled: int,
    n_unlabeled: int,
    shape_zyx: tuple[int, int, int],
    spacing_xyz: tuple[float, float, float],
    classes: int = 1,
    ct: bool = False,
    seed: int = 0,
) -> tuple[list[Case], list[Case]]:
    """Scans with `classes` boxes of different intensity; CT scans in HU (air -1000 around a body)."""
    rng = np.random.default_rng(seed)
    labeled, unlabeled = [], []
    for i in range(n_labeled + n_unlabeled):
        label = np.zeros(shape_zyx, np.uint8)
        z, y, x = shape_zyx
        for c in range(1, classes + 1):  # side-by-side boxes along x, class c in box c
            x0 = (c - 1) * x // (classes + 1) + 2
            label[z // 4 : 3 * z // 4, y // 4 : 3 * y // 4, x0 : x0 + max(2, x // (classes + 2))] = c
        if ct:
            image = np.full(shape_zyx, -1000.0, np.float32)
            image[:, 2:-2, 2:-2] = 40.0  # soft tissue
            image += label.astype(np.float32) * 150.0
        else:
            image = 100.0 + label.astype(np.float32) * 50.0
        image = image + rng.normal(0, 10, shape_zyx).astype(np.float32)
        img = _write(folder / f"c{i:02d}_image.nrrd", image.astype(np.float32), spacing_xyz)
        if i < n_labeled:
            labeled.append(
                Case(f"c{i:02d}", img, _write(folder / f"c{i:02d}_label.nrrd", label, spacing_xyz))
            )
        else:
            unlabeled.append(Case(f"c{i:02d}", img, None))
    return labeled, unlabeled


def test_anisotropic_cohort_keeps_slices_coarse_and_does_not_halve_the_thin_axis(tmp_path: Path) -> None:
    # Cardiac-like: 10 mm slices, 1.5 mm in plane, 10 slices of 96x96.
    labeled, unlabeled = _cohort(tmp_path, 3, 4, (10, 96, 96), (1.5, 1.5, 10.0), classes=3)
    fp = compute_fingerprint(labeled, unlabeled)
    assert fp.anisotropic and fp.anisotropy == pytest.approx(10 / 1.5)
    assert sorted(fp.classes) == [1, 2, 3]
    plan = plan_from_fingerprint(fp, "cpu")
    strides = plan.values["downsampling"]
    z_halvings = sum(level[2] == 2 for level in strides)
    xy_halvings = sum(level[0] == 2 for level in strides)
    # The slice axis keeps its resolution until the in-plane spacing has caught up (1.5 -> 6 mm).
    assert strides[0][2] == 1 and strides[1][2] == 1
    assert z_halvings < xy_halvings
    x, y, z = plan.values["patch_size"]
    assert z % 16 != 0 and z % (2**z_halvings) == 0
    assert plan.values["n_classes"] == 4
    config = planned_config(plan)
    config.validate()
    # The network takes that crop (not a multiple of 16 along z), forwards and backwards.
    model = build_model(config.n_classes, config.n_filters, strides=config.strides_zyx)
    crop = torch.randn(2, 1, z, y, x, requires_grad=True)
    out = model(crop)
    assert out.shape == (2, 4, z, y, x)
    out.mean().backward()
    assert crop.grad is not None and torch.isfinite(crop.grad).all()


def test_thick_slices_target_the_tenth_percentile_of_slice_spacing(tmp_path: Path) -> None:
    labeled, _ = _cohort(tmp_path, 3, 0, (8, 64, 64), (1.0, 1.0, 10.0))
    (tmp_path / "thin").mkdir()
    thin = _cohort(tmp_path / "thin", 0, 2, (16, 64, 64), (1.0, 1.0, 5.0))[1]
    fp = compute_fingerprint(labeled, thin)
    assert fp.median_spacing[2] == pytest.approx(10.0)
    plan = plan_from_fingerprint(fp, "cpu")
    spacing = plan.values["target_spacing"]
    # Not the median (10 mm): the 10th percentile of the slice spacings, so the 5 mm cases keep theirs.
    assert spacing[2] == pytest.approx(5.0)
    assert spacing[0] == pytest.approx(1.0) and spacing[1] == pytest.approx(1.0)


def test_isotropic_multiclass_mri_plan_zscore_and_class_crops(tmp_path: Path) -> None:
    labeled, unlabeled = _cohort(tmp_path, 2, 3, (36, 50, 36), (1.0, 1.0, 1.0), classes=2)
    fp = compute_fingerprint(labeled, unlabeled)
    assert fp.modality == "MRI" and not fp.anisotropic
    assert set(fp.classes) == {1, 2} and all(s.cases == 2 for s in fp.classes.values())
    plan = plan_from_fingerprint(fp, "cpu")
    assert plan.values["target_spacing"] is None  # every case has the median spacing
    assert plan.values["intensity"] == "zscore"
    assert plan.values["class_crop_share"] == pytest.approx(1 / 3)
    assert plan.values["patch_size"] == [40, 56, 40]  # nnU-Net's hippocampus crop for this size
    assert plan.values["downsampling"][3] == [1, 1, 1]  # too small to halve a fourth time
    # A small crop, but on a CPU the batch stays 2+2 (4): there a doubled batch costs double time.
    assert (plan.values["supervised_batch"], plan.values["batch_labeled"]) == (4, 2)


def test_ct_cohort_gets_dataset_clip_and_zscore(tmp_path: Path) -> None:
    labeled, unlabeled = _cohort(tmp_path, 2, 2, (24, 48, 48), (0.8, 0.8, 2.0), ct=True)
    fp = compute_fingerprint(labeled, unlabeled)
    assert fp.modality == "CT"
    plan = plan_from_fingerprint(fp, "cpu")
    assert plan.values["intensity"] == "ct_dataset"
    lo, hi = plan.values["intensity_clip"]
    mean, std = plan.values["intensity_mean_std"]
    assert lo < 190 < hi and 150 < mean < 230 and std > 0  # foreground is ~190 HU
    prep = Preprocessing.from_config(planned_config(plan))
    air = normalize_intensity(np.full((2, 2, 2), -1000.0), prep)
    assert np.allclose(air, (lo - mean) / std)  # clipped to the dataset's low percentile first


def test_plan_is_data_written_beside_the_run_and_overridable(tmp_path: Path) -> None:
    labeled, unlabeled = _cohort(tmp_path, 2, 2, (24, 40, 40), (1.0, 1.0, 1.0))
    plan = plan_for_run(tmp_path / "run", labeled, unlabeled, "cpu")
    config = planned_config(plan, {"n_filters": 4, "patch_size": (32, 32, 32), "seed": None})
    assert config.n_filters == 4 and config.patch_size == (32, 32, 32)
    assert plan.overrides == {"n_filters": 4, "patch_size": [32, 32, 32]}
    plan.save(tmp_path / "run" / "plan.json")
    again = plan_for_run(tmp_path / "run", [], [], "cpu")  # read back, not recomputed
    assert again.to_dict() == Plan.load(tmp_path / "run" / "plan.json").to_dict()
    assert "overridden" in again.describe()


def test_paper_preset_is_unchanged() -> None:
    paper = make_config("paper")
    assert paper.class_crop_share == 0 and paper.downsampling == ((2, 2, 2),) * 4
    assert paper.patch_size == (112, 112, 80) and paper.minutes is None


def test_crop_not_matching_the_strides_is_refused() -> None:
    from reciprocalseg.common.errors import ReciprocalSegError

    with pytest.raises(ReciprocalSegError, match="multiple of"):
        make_config(
            "auto", patch_size=(40, 40, 12), downsampling=((2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 1))
        )
    make_config("auto", patch_size=(48, 48, 12), downsampling=((2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2)))


def test_a_warm_started_round_keeps_the_previous_runs_network(tmp_path: Path) -> None:
    """New cases may plan another crop or strides; the warm start must still fit the weights."""
    from reciprocalseg.planning.final_plan import keep_architecture

    labeled, unlabeled = _cohort(tmp_path, 2, 2, (24, 40, 40), (1.0, 1.0, 1.0))
    plan = plan_for_run(None, labeled, unlabeled, "cpu")
    previous = make_config("auto", patch_size=(64, 64, 48), n_filters=8)
    (tmp_path / "round1").mkdir()
    (tmp_path / "round1" / "config.json").write_text(previous.to_json())
    assert plan.values["patch_size"] != [64, 64, 48]
    keep_architecture(plan, tmp_path / "round1" / "config.json")
    config = planned_config(plan)
    assert config.patch_size == (64, 64, 48) and config.downsampling == previous.downsampling
    assert "warm-start" in plan.reasons["patch_size"]


def test_case_records_combine_into_the_cohorts_fingerprint(tmp_path: Path) -> None:
    """The service stores one record per case and combines them: the same fingerprint as the CLI's."""
    labeled, unlabeled = _cohort(tmp_path, 2, 2, (24, 48, 48), (0.8, 0.8, 2.0), classes=2, ct=True)
    records = [CaseFingerprint.from_dict(read_case_fingerprint(c).to_dict()) for c in labeled + unlabeled]
    combined = combine(records[:2], records[2:])
    assert combined == compute_fingerprint(labeled, unlabeled)
    assert combined.modality == "CT" and set(combined.classes) == {1, 2}
    assert records[2].label is None and records[0].label.foreground is not None


def test_unannotated_voxels_are_no_class(tmp_path: Path) -> None:
    """A partial label's unannotated voxels (255) are neither a class nor foreground."""
    labeled, unlabeled = _cohort(tmp_path, 2, 1, (24, 40, 40), (1.0, 1.0, 1.0))
    label = sitk.ReadImage(str(labeled[0].label))
    array = sitk.GetArrayFromImage(label)
    array[:, :, :10] = 255
    partial = sitk.GetImageFromArray(array)
    partial.CopyInformation(label)
    sitk.WriteImage(partial, str(labeled[0].label))
    fp = compute_fingerprint(labeled, unlabeled)
    assert set(fp.classes) == {1}
    assert plan_from_fingerprint(fp, "cpu").values["n_classes"] == 2
    record = read_case_fingerprint(labeled[0])
    assert record.label.annotated == array.size - int((array == 255).sum())


def test_label_values_are_counted_in_slabs_exactly() -> None:
    from reciprocalseg.planning.fingerprint import _value_counts

    label = np.random.default_rng(0).integers(0, 4, (20, 30, 17)).astype(np.uint8)
    label[-1, -1, -3:] = 255  # the largest value only in the last slab
    assert np.array_equal(_value_counts(label, chunk=1000), np.bincount(label.ravel()))
