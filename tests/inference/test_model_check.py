"""Model files are untrusted: a file that cannot work is refused when loaded, naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reciprocalseg.common.errors import ReciprocalSegError
from reciprocalseg.config import make_config
from reciprocalseg.inference.model_check import (
    build_network,
    check_inference_meta,
    checked_network,
    network_description,
    weights_nbytes,
)
from reciprocalseg.inference.sliding_window import load_model
from reciprocalseg.model.vnet import build_model
from reciprocalseg.training.checkpoint import model_meta, save_model


def _model(**overrides: object) -> tuple[dict, dict]:
    config = make_config("demo", n_filters=2, **overrides)
    torch.manual_seed(0)
    module = build_model(
        config.n_classes, config.n_filters, config.normalization, config.dropout, config.strides_zyx
    )
    return model_meta(config), module.state_dict()


def test_a_sound_model_is_built_loaded_and_run() -> None:
    meta, state = _model()
    module = checked_network({"meta": meta, "state_dict": state}, "x")
    assert not module.training
    assert torch.equal(module.state_dict()["head.weight"], state["head.weight"])


def test_a_sound_multi_channel_model_passes_the_forward_check() -> None:
    """The tiny input has the network's channels (a two-channel round's bundle was refused at
    import: "a forward pass fails ... expected input to have 2 channels, but got 1")."""
    config = make_config("demo", n_filters=2, channels=({"name": "T2"}, {"name": "ADC"}))
    torch.manual_seed(0)
    module = build_model(
        config.n_classes, config.n_filters, config.normalization, config.dropout, config.strides_zyx, 2
    )
    checked = checked_network({"meta": model_meta(config), "state_dict": module.state_dict()}, "x")
    assert checked.state_dict()["enc1.0.weight"].shape[1] == 2


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m, s: s.update({"head.weight": torch.zeros(2, 1, 1, 1, 1)}), "head.weight"),
        (lambda m, s: s.pop("head.bias"), "missing head.bias"),
        (lambda m, s: s.update({"extra.weight": torch.zeros(1)}), "unexpected extra.weight"),
        (lambda m, s: s.update({"head.bias": torch.zeros(2, dtype=torch.int64)}), "head.bias"),
        (lambda m, s: m.update({"strides": [[3, 3, 3]] * 4}), "strides"),
        (lambda m, s: m.update({"n_filters": 10_000}), "n_filters"),
        (lambda m, s: m.update({"n_classes": "two"}), "n_classes"),
        (lambda m, s: m.update({"normalization": "magic"}), "normalization"),
        (lambda m, s: m.update({"patch_size": [47, 48, 32]}), "patch_size"),
        (lambda m, s: m.update({"patch_size": [4096, 4096, 4096]}), "patch_size"),
        (lambda m, s: m.update({"inference_overlap": 0.999}), "inference_overlap"),
        (lambda m, s: m.pop("preprocessing"), "preprocessing"),
        (lambda m, s: s["enc1.0.weight"].view(-1).__setitem__(0, float("nan")), "NaN or infinite"),
    ],
)
def test_an_unusable_model_is_refused_naming_the_problem(change, words: str) -> None:  # noqa: ANN001
    meta, state = _model()
    change(meta, state)
    with pytest.raises(ReciprocalSegError, match="x: ") as err:
        checked_network({"meta": meta, "state_dict": state}, "x")
    assert words in str(err.value)


def test_load_model_refuses_non_finite_weights_and_wrong_shapes(tmp_path: Path) -> None:
    """What `predict`, `export-onnx` and the service's predictor load through (issue 23: NaN
    weights predicted background everywhere, exit 0)."""
    config = make_config("demo", n_filters=2)
    module = build_model(config.n_classes, config.n_filters, config.normalization, config.dropout)
    with torch.no_grad():
        module.head.bias.fill_(float("nan"))
    save_model(module, config, tmp_path / "nan.pt")
    with pytest.raises(ReciprocalSegError, match="NaN or infinite weights"):
        load_model(tmp_path / "nan.pt", "cpu")
    other = make_config("demo", n_filters=2, n_classes=3)
    save_model(build_model(3, 2, other.normalization, other.dropout), config, tmp_path / "shape.pt")
    with pytest.raises(ReciprocalSegError, match="do not fit the network"):
        load_model(tmp_path / "shape.pt", "cpu")


def test_building_takes_the_file_tensors_without_initialising_new_ones() -> None:
    meta, state = _model()
    module = build_network(meta, state, "x")
    assert module.head.weight.data_ptr() == state["head.weight"].data_ptr()


def test_the_weight_bytes_of_a_described_network_are_counted_without_building_it() -> None:
    meta, state = _model()
    expected = sum(t.numel() * t.element_size() for t in state.values())
    assert weights_nbytes(network_description(meta, "x")) == expected
    check_inference_meta(meta, "x")
