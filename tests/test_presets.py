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


def _pseudo_labels(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    model.train()
    with torch.no_grad():
        return model(batch).argmax(dim=1)


@pytest.mark.parametrize("preset", SMALL_PRESETS)
def test_small_presets_give_repeatable_train_mode_pseudo_labels(preset: str) -> None:
    assert SMALL_PRESETS, "expected presets with fewer than 16 filters (lite, demo)"
    config = make_config(preset)
    torch.manual_seed(0)
    model = build_model(config.n_classes, config.n_filters, config.normalization, config.dropout)
    batch = torch.randn(2, 1, 32, 32, 32)
    first, second = _pseudo_labels(model, batch), _pseudo_labels(model, batch)
    assert torch.equal(first, second), f"{preset}: pseudo labels differ between two train-mode passes"


def test_channel_dropout_is_what_makes_them_differ() -> None:
    """The check above can fail: the same 8-filter network with the paper's dropout does."""
    config = make_config("lite")
    torch.manual_seed(0)
    model = build_model(config.n_classes, config.n_filters, config.normalization, dropout=True)
    batch = torch.randn(2, 1, 32, 32, 32)
    first, second = _pseudo_labels(model, batch), _pseudo_labels(model, batch)
    assert (first != second).float().mean() > 0.05
