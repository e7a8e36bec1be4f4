"""Preset choices that measurements forced (docs/DESIGN.md, "Presets").

The teacher makes its pseudo labels in train mode, as the paper does. With channel dropout over
the 8 head channels of the `lite`/`demo` networks those labels changed from draw to draw, and on
the left-atrium data the student collapsed to background (benchmarks/RESULTS.md). So in the
small presets a teacher's pseudo labels must be a function of its weights and the batch alone.
"""

from __future__ import annotations

import pytest
import torch

from reciprocalseg.config import PRESETS, make_config
from reciprocalseg.model.vnet import build_model

SMALL_PRESETS = [name for name in PRESETS if make_config(name).n_filters < 16]


def _train_mode_disagreement(n_filters: int, dropout: bool, normalization: str = "batchnorm") -> float:
    """Fraction of voxels whose pseudo label differs between two train-mode passes of one net."""
    torch.manual_seed(0)
    model = build_model(2, n_filters, normalization, dropout).train()
    batch = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        first, second = model(batch).argmax(dim=1), model(batch).argmax(dim=1)
    return float((first != second).float().mean())


def test_there_are_small_presets() -> None:
    assert SMALL_PRESETS, "expected presets with fewer than 16 filters (lite, demo)"


@pytest.mark.parametrize("preset", SMALL_PRESETS)
def test_small_presets_give_repeatable_train_mode_pseudo_labels(preset: str) -> None:
    config = make_config(preset)
    disagreement = _train_mode_disagreement(config.n_filters, config.dropout, config.normalization)
    assert disagreement == 0.0, f"{preset}: pseudo labels differ between two train-mode passes"


def test_channel_dropout_is_what_makes_them_differ() -> None:
    """The check above can fail: the same 8-filter network with the paper's dropout does."""
    assert _train_mode_disagreement(make_config("lite").n_filters, dropout=True) > 0.05
