"""Class-centred crops: a share of labelled crops shows a small class that uniform crops rarely see."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from reciprocalseg.data.gpu_sampler import DeviceCases
from reciprocalseg.data.sampling import CachedCase, CropStream, class_locations

PATCH = (16, 16, 16)
DRAWS = 600


def _case(folder: Path) -> CachedCase:
    """64^3: a large class 1 block, and class 2 a 3^3 box in a corner (0.01% of the voxels)."""
    label = np.zeros((64, 64, 64), np.uint8)
    label[20:44, 20:44, 20:44] = 1
    label[2:5, 58:61, 3:6] = 2
    image = label.astype(np.float32)
    np.save(folder / "img.npy", image)
    np.save(folder / "lab.npy", label)
    return CachedCase("small", folder / "img.npy", folder / "lab.npy")


def _share_with_class_2_cpu(case: CachedCase, share: float) -> float:
    stream = CropStream([case], PATCH, seed=3, class_share=share)
    crops = [lab for _, lab in itertools.islice(iter(stream), DRAWS)]
    return float(np.mean([bool((lab == 2).any()) for lab in crops]))


def _share_with_class_2_device(case: CachedCase, share: float) -> float:
    cases = DeviceCases([case], "cpu", class_share=share)
    generator = torch.Generator().manual_seed(3)
    _, labels = cases.sample(PATCH, DRAWS, generator)
    return float((labels == 2).flatten(1).any(dim=1).float().mean())


@pytest.mark.parametrize("share_of", [_share_with_class_2_cpu, _share_with_class_2_device])
def test_a_third_of_crops_centred_on_a_random_class(tmp_path: Path, share_of) -> None:  # type: ignore[no-untyped-def]
    case = _case(tmp_path)
    uniform = share_of(case, 0.0)
    centred = share_of(case, 1 / 3)
    # Uniform crops hold the corner box in about 2% of draws ((16+3-1)^3 of 49^3 start positions,
    # fewer at the edge); a third of crops centred on one of 2 classes puts it in ~1/6 of them.
    assert uniform < 0.05
    assert 0.11 < centred < 0.25


def test_class_locations_sample_each_present_class() -> None:
    label = np.zeros((10, 10, 10), np.uint8)
    label[1, 2, 3] = 2
    label[5:, 5:, 5:] = 1
    locations = class_locations(label, per_class=20)
    assert sorted(locations) == [1, 2]
    assert locations[2].tolist() == [[1, 2, 3]]
    assert len(locations[1]) == 20 and (label[tuple(locations[1].T)] == 1).all()


def test_share_zero_draws_the_papers_crops(tmp_path: Path) -> None:
    """Off (the paper's setting) changes no random draw: the same seed gives the same crops."""
    case = _case(tmp_path)
    plain = CropStream([case], PATCH, seed=5)
    off = CropStream([case], PATCH, seed=5, class_share=0.0)
    for (a, la), (b, lb) in itertools.islice(zip(iter(plain), iter(off), strict=True), 20):
        assert torch.equal(a, b) and torch.equal(la, lb)
