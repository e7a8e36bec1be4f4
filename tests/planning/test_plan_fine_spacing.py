"""The planned target spacing keeps its significant digits on finely sampled scans.

It was rounded to 4 decimals of a millimetre: a cohort sampled at 30 micrometres (or a scan whose
header gives metres) planned a target spacing of 0, which then failed as a division by zero in
training (or, after that was checked, as an invalid configuration).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.planning.fingerprint import case_fingerprint, combine
from reciprocalseg.planning.planner import plan_from_fingerprint, planned_config


def _case(spacing: tuple[float, float, float]):
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(16, 32, 32)).astype(np.float32))
    image.SetSpacing(spacing)
    label = np.zeros((16, 32, 32), np.uint8)
    label[4:10, 8:20, 8:20] = 1
    return case_fingerprint(image, label, 1)


def test_fine_spacings_are_planned_not_rounded_to_zero() -> None:
    records = [_case((3e-5, 3e-5, 6e-5)), _case((3e-5, 3e-5, 6e-5)), _case((2e-5, 2e-5, 4e-5))]
    plan = plan_from_fingerprint(combine(records, []), "cpu")
    assert plan.values["target_spacing"] == pytest.approx([3e-5, 3e-5, 6e-5], rel=1e-3)
    planned_config(plan, {})  # a valid configuration
