"""Fixtures the training tests share: a small phantom cohort and tiny run configurations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from reciprocalseg.config import TrainConfig, make_config
from reciprocalseg.data.io import Case
from reciprocalseg.data.phantom import write_phantom_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Case], list[Case]]:
    """Two labelled phantoms and three unlabelled ones (24³ voxels)."""
    cases = write_phantom_cohort(tmp_path_factory.mktemp("cohort"), 5, seed=3, shape_zyx=(24, 24, 24))
    return cases[:2], [Case(c.case_id, c.image, None) for c in cases[2:]]


def make_tiny_config(**changes: Any) -> TrainConfig:
    """The demo preset shrunk to seconds on a CPU: 16³ crops, 4 filters, 3 + 4 iterations."""
    values: dict[str, Any] = dict(
        patch_size=(16, 16, 16),
        n_filters=4,
        supervised_iterations=3,
        reciprocal_iterations=4,
        checkpoint_every=2,
        device="cpu",
        supervised_batch=2,
    )
    values.update(changes)
    return make_config("demo", **values)


@pytest.fixture
def tiny_config() -> Callable[..., TrainConfig]:
    """``tiny_config(**changes)``: a tiny run configuration with ``changes`` over it."""
    return make_tiny_config
