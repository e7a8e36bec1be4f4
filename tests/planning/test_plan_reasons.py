"""The plan's reasons say why a value is what it is (issue 23: the crop's named the median case and
lite's voxels, not whether the case fitted or was cut)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from reciprocalseg.data.io import Case
from reciprocalseg.planning.fingerprint import compute_fingerprint
from reciprocalseg.planning.planner import CPU_CROP_VOXELS, plan_from_fingerprint


def _cases(folder: Path, shape_zyx: tuple[int, int, int], n: int = 2) -> list[Case]:
    folder.mkdir()
    out = []
    for i in range(n):
        label = np.zeros(shape_zyx, np.uint8)
        label[2:-2, 2:-2, 2:-2] = 1
        image = 100 + 50 * label.astype(np.float32) + np.random.default_rng(i).normal(0, 5, shape_zyx)
        paths = []
        for name, array in (("image", image.astype(np.float32)), ("label", label)):
            paths.append(folder / f"c{i}_{name}.nrrd")
            sitk.WriteImage(sitk.GetImageFromArray(array), str(paths[-1]))
        out.append(Case(f"c{i}", *paths))
    return out


def test_the_crop_reason_says_the_whole_case_fits(tmp_path: Path) -> None:
    plan = plan_from_fingerprint(compute_fingerprint(_cases(tmp_path / "s", (25, 37, 29)), []), "cpu")
    reason = plan.reasons["patch_size"]
    assert reason.startswith("the whole median case (29x37x25 voxels at the target spacing) fits")
    assert plan.values["patch_size"] != [29, 37, 25]  # each side a multiple of what the strides halve
    assert f"{CPU_CROP_VOXELS:,} voxels a CPU affords" in reason
    assert "rounded up to " + "x".join(map(str, plan.values["patch_size"])) in reason


def test_the_crop_reason_says_the_case_was_cut_and_to_what(tmp_path: Path) -> None:
    plan = plan_from_fingerprint(compute_fingerprint(_cases(tmp_path / "b", (72, 96, 96)), []), "cpu")
    reason = plan.reasons["patch_size"]
    assert reason.startswith("the median case (96x96x72 voxels at the target spacing) is more than")
    assert "cut, its longest physical side first, to " in reason
    assert np.prod(plan.values["patch_size"]) < 96 * 96 * 72
