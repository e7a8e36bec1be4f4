"""Refine a case with two images (issue 24, item 4): a tiny real two-channel model adapts to strokes
painted on a two-channel phantom, replaying labelled two-channel cases, and the service's replay
cases carry every channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from reciprocalseg.common.errors import DataError
from reciprocalseg.common.file_formats import UNANNOTATED
from reciprocalseg.config import make_config, with_channels
from reciprocalseg.data.channels import read_case_image
from reciprocalseg.data.phantom_channels import write_channel_phantom_cohort
from reciprocalseg.inference.sliding_window import load_model, predict_image
from reciprocalseg.refine.adapt import CASE_FEATURES, REPLAY_FEATURES, refine_case
from reciprocalseg.refine.settings import RefineSettings
from reciprocalseg.training.runner import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny supervised round on two two-channel phantoms (T2, ADC) and a third case it has not seen."""
    root = tmp_path_factory.mktemp("refine-channels")
    cases = write_channel_phantom_cohort(root / "data", 3, seed=4, shape_zyx=(24, 24, 24))
    config = make_config(
        "demo",
        patch_size=(16, 16, 16),
        n_filters=4,
        supervised_iterations=6,
        reciprocal_iterations=0,
        checkpoint_every=100,
        device="cpu",
        supervised_batch=2,
    )
    result = train(with_channels(config, ["T2", "ADC"]), cases[:2], [], root / "run")
    return result.teacher, cases[:2], cases[2]


@pytest.fixture(autouse=True)
def no_cached_case():
    CASE_FEATURES.clear()
    REPLAY_FEATURES.clear()


def test_a_two_channel_case_is_refined_from_its_strokes(trained) -> None:
    model_file, labelled, case = trained
    image = read_case_image(case)  # a vector image, one component per channel
    assert image.GetNumberOfComponentsPerPixel() == 2
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
    before = sitk.GetArrayFromImage(predict_image(load_model(model_file, "cpu"), image).labels)
    wrong = np.argwhere((truth == 1) & (before != 1))
    region = wrong[: min(len(wrong), 40)] if len(wrong) else np.argwhere(truth == 1)[:40]
    strokes_array = np.full(truth.shape, UNANNOTATED, np.uint8)
    strokes_array[tuple(region.T)] = 1
    strokes_array[tuple(np.argwhere(truth == 0)[:10].T)] = 0
    strokes = sitk.GetImageFromArray(strokes_array)
    strokes.CopyInformation(image)
    settings = RefineSettings(
        max_seconds=1e6,
        max_iterations=25,
        lr=1e-2,
        replay_batch=1,
        replay_crops=2,
        replay_weight=0.5,  # 25 steps of a tiny model: the strokes need their half of the loss
        paste_strokes=False,
    )

    result = refine_case(model_file, image, strokes, replay=labelled, settings=settings, device="cpu")

    after = sitk.GetArrayFromImage(result.labels)
    assert result.labels.GetNumberOfComponentsPerPixel() == 1 and result.labels.GetSize() == image.GetSize()
    assert result.labels.GetOrigin() == image.GetOrigin()
    assert result.replay_cases and result.iterations == 25
    assert result.losses[-1] < result.losses[0]
    assert int(np.sum(after[tuple(region.T)] == 1)) > int(np.sum(before[tuple(region.T)] == 1)) or np.all(
        after[tuple(region.T)] == 1
    )
    assert result.stroke_agreement > 0.5

    # One channel of the case is not what the model takes: said, not a shape error.
    channel0 = sitk.VectorIndexSelectionCast(image, 0)
    with pytest.raises(DataError, match="1 channel\\(s\\) but the model takes 2"):
        refine_case(model_file, channel0, strokes, settings=settings, device="cpu")
    # A non-finite voxel in channel 1 is refused naming the channel.
    arrays = [sitk.GetArrayFromImage(sitk.VectorIndexSelectionCast(image, k)) for k in range(2)]
    arrays[1][3, 3, 3] = np.nan
    channels = [sitk.GetImageFromArray(a) for a in arrays]
    for c in channels:
        c.CopyInformation(channel0)
    with pytest.raises(DataError, match="channel 1"):
        refine_case(model_file, sitk.Compose(channels), strokes, settings=settings, device="cpu")


def test_the_services_replay_cases_carry_every_channel(tmp_path: Path) -> None:
    """The service refines a two-channel case with its other labelled cases replayed: each must come
    with both its channels (a replay case of channel 0 alone cannot go through a two-channel model)."""
    pytest.importorskip("fastapi")
    from reciprocalseg.data.channels import case_channel_count, read_case_channels
    from reciprocalseg.data.io import read_image
    from reciprocalseg.service.refinement import Refinements
    from reciprocalseg.service.workspace import Workspace

    cases = write_channel_phantom_cohort(tmp_path / "data", 3, seed=6, shape_zyx=(24, 24, 24))
    ws = Workspace(tmp_path / "ws")
    for case in cases:
        t2, adc = read_case_channels(case)
        ws.add_case(t2, case.case_id, "test", channels={"T2": t2, "ADC": adc})
    for case in cases[1:]:
        ws.add_label(case.case_id, read_image(case.label), max_value=1)
    refinements = Refinements(ws, fingerprints=None, auto_retrain=None)  # only its replay list is asked

    replay = refinements._replay(cases[0].case_id)

    assert [c.case_id for c in replay] == [c.case_id for c in cases[1:]]
    for got in replay:
        assert case_channel_count(got) == 2 and got.label is not None
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(read_case_image(got)),
            sitk.GetArrayFromImage(read_case_image(next(c for c in cases if c.case_id == got.case_id))),
        )
