"""Fixtures for the service tests: tiny phantom cases and real services on loopback (child processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_helpers import SHAPE_ZYX, Running, start_service

from reciprocalseg.data.io import Case
from reciprocalseg.data.phantom import write_phantom_cohort


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    """Six 32^3 phantom cases with labels: ``phantom_000`` ... ``phantom_005``."""
    return write_phantom_cohort(tmp_path_factory.mktemp("phantoms"), 6, seed=0, shape_zyx=SHAPE_ZYX)


@pytest.fixture
def service(tmp_path: Path, phantoms: list[Case]) -> Iterator[Running]:
    """A fresh service on an empty workspace (it may register the phantoms), stopped after the test."""
    root = str(phantoms[0].image.parent)
    run = start_service(tmp_path / "ws", device="cpu", extra_args=["--register-root", root])
    try:
        yield run
    finally:
        run.launcher.stop()
