"""Shared fixtures: where the real left-atrium data lives, and skip reasons."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LA_DIR = Path(os.environ.get("RECIPROCALSEG_LA_DIR", REPO.parent / "shared" / "data" / "la"))


@pytest.fixture(scope="session")
def la_dir() -> Path:
    if not (LA_DIR / "train.list").exists():
        pytest.skip(
            f"real left-atrium data not found at {LA_DIR} (set RECIPROCALSEG_LA_DIR or place ../shared)"
        )
    return LA_DIR
