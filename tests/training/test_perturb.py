"""The student's perturbed view of unlabelled crops (training/perturb.py)."""

from __future__ import annotations

import pytest
import torch

from reciprocalseg.common.errors import ReciprocalSegError
from reciprocalseg.config import make_config
from reciprocalseg.training.perturb import IntensityPerturbation


def _batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 1, 12, 10, 8, generator=torch.Generator().manual_seed(seed))


def test_same_seed_same_view_and_other_seeds_differ() -> None:
    x = _batch()
    a, b = IntensityPerturbation(0.5, seed=7)(x), IntensityPerturbation(0.5, seed=7)(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, IntensityPerturbation(0.5, seed=8)(x))
    assert a.shape == x.shape and a.dtype == x.dtype


def test_every_crop_changes_at_p_1_and_none_at_tiny_p() -> None:
    x = _batch(1)
    changed = (IntensityPerturbation(1.0, seed=3)(x) - x).abs().amax(dim=(1, 2, 3, 4))
    assert bool((changed > 0.05).all()), changed
    # Unselected transforms are the identity (up to float round-off in the gamma step).
    torch.testing.assert_close(IntensityPerturbation(1e-12, seed=3)(x), x, rtol=0, atol=1e-5)


def test_remap_keeps_intensity_order() -> None:
    """Brightness, contrast (clipped to the crop's range) and gamma are monotone per crop, so
    the view is the same anatomy voxel for voxel: the teacher's pseudo labels stay aligned."""
    x = _batch(2)
    y = IntensityPerturbation(1.0, seed=4).remap(x)
    for crop_x, crop_y in zip(x, y, strict=True):
        order = crop_x.flatten().argsort()
        assert bool((crop_y.flatten()[order].diff() >= -1e-6).all())
    assert not torch.allclose(x, y, atol=0.05)


def test_bad_probability_is_refused_by_name() -> None:
    with pytest.raises(ReciprocalSegError, match="unlabeled_student_aug"):
        make_config("demo", unlabeled_student_aug=1.5)
    assert make_config("paper").unlabeled_student_aug == 0.0  # off in the paper's recipe
