"""Refine a case from strokes: a copy of a real (tiny) trained model adapts to strokes on a phantom."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from reciprocalseg.common.errors import CancelledError, DataError, ReciprocalSegError
from reciprocalseg.common.file_formats import UNANNOTATED
from reciprocalseg.config import make_config
from reciprocalseg.data.io import Case, read_image
from reciprocalseg.data.phantom import write_phantom_cohort
from reciprocalseg.data.preprocess import preprocess_image
from reciprocalseg.inference.sliding_window import load_model, predict_image, sliding_window_probabilities
from reciprocalseg.refine.adapt import CASE_FEATURES, REPLAY_FEATURES, _stroke_boxes, refine_case, refine_loss
from reciprocalseg.refine.features import WindowFeatures
from reciprocalseg.refine.settings import CPU_SETTINGS, GPU_SETTINGS, RefineSettings, default_refine_settings
from reciprocalseg.training.losses import supervised_loss
from reciprocalseg.training.runner import train


def tiny_config():
    return make_config(
        "demo",
        patch_size=(16, 16, 16),
        n_filters=4,
        supervised_iterations=6,
        reciprocal_iterations=0,
        checkpoint_every=100,
        device="cpu",
        supervised_batch=2,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[Case], Case]:
    """A tiny supervised round on two phantoms, and a third phantom case it has not seen."""
    root = tmp_path_factory.mktemp("refine")
    cases = write_phantom_cohort(root / "cohort", 3, seed=5, shape_zyx=(24, 24, 24))
    result = train(tiny_config(), cases[:2], [], root / "run")
    return result.teacher, cases[:2], cases[2]


@pytest.fixture(autouse=True)
def no_cached_case():
    """Each test starts without the last case's features or adapted copy (module-level caches)."""
    CASE_FEATURES.clear()
    REPLAY_FEATURES.clear()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stroke_map(image: sitk.Image, painted: dict[int, np.ndarray]) -> sitk.Image:
    """A stroke map on `image`'s grid: 255 everywhere but the given voxels ((n, 3) z, y, x) of each value."""
    array = np.full(image.GetSize()[::-1], UNANNOTATED, np.uint8)
    for value, voxels in painted.items():
        array[tuple(voxels.T)] = value
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def wrong_region(truth: np.ndarray, predicted: np.ndarray, cls: int, size: int = 40) -> np.ndarray:
    """Up to `size` voxels of class `cls` that the model labels otherwise, around their middle one."""
    wrong = np.argwhere((truth == cls) & (predicted != cls))
    assert len(wrong), "the tiny model labels every voxel of the class right; pick another case"
    middle = wrong[np.argmin(np.abs(wrong - np.median(wrong, axis=0)).sum(axis=1))]
    order = np.argsort(np.abs(wrong - middle).sum(axis=1), kind="stable")
    return wrong[order[:size]]


def fast(**changes) -> RefineSettings:
    """No time pressure in tests: the cap on steps decides (the time limit has its own tests)."""
    values = dict(max_seconds=1e6, max_iterations=25, lr=1e-2, replay_batch=1, replay_crops=2)
    values.update(changes)
    return RefineSettings(**values)


def test_strokes_move_the_prediction_toward_their_class_and_leave_the_model_file(trained) -> None:
    model_file, labelled, case = trained
    image, truth = read_image(case.image), sitk.GetArrayFromImage(read_image(case.label))
    before = sitk.GetArrayFromImage(predict_image(load_model(model_file, "cpu"), image).labels)
    region = wrong_region(truth, before, 1)
    background = np.argwhere((truth == 0) & (before == 0))[:10]  # a background stroke, right already
    strokes = stroke_map(image, {1: region, 0: background})
    bytes_before = digest(model_file)

    result = refine_case(
        model_file, image, strokes, replay=labelled, settings=fast(paste_strokes=False), device="cpu"
    )

    after = sitk.GetArrayFromImage(result.labels)
    assert digest(model_file) == bytes_before
    assert result.labels.GetPixelID() == sitk.sitkUInt8
    assert result.labels.GetSize() == image.GetSize() and result.labels.GetOrigin() == image.GetOrigin()
    hits_before = int(np.sum(before[tuple(region.T)] == 1))
    hits_after = int(np.sum(after[tuple(region.T)] == 1))
    assert hits_after > hits_before + len(region) // 2, (hits_before, hits_after)
    assert result.stroke_agreement > 0.5
    assert result.iterations == 25 and result.stopped_by == "iterations"
    assert result.losses[-1] < result.losses[0]
    assert result.strokes == 2 and result.annotated_voxels == len(region) + len(background)
    assert result.model_meta["n_classes"] == 2
    assert sorted(result.replay_cases) == sorted(c.case_id for c in labelled)
    # The same model file, loaded again, predicts as before: nothing of the copy leaked into it.
    again = sitk.GetArrayFromImage(predict_image(load_model(model_file, "cpu"), image).labels)
    np.testing.assert_array_equal(again, before)


def test_pasted_strokes_override_the_adapted_prediction(trained) -> None:
    model_file, _, case = trained
    image = read_image(case.image)
    voxels = np.array([[12, 12, 12], [12, 12, 13]])
    strokes = stroke_map(image, {1: voxels})
    result = refine_case(model_file, image, strokes, settings=fast(max_iterations=1), device="cpu")
    assert np.all(sitk.GetArrayFromImage(result.labels)[tuple(voxels.T)] == 1)
    assert result.replay_cases == []


def test_the_loss_counts_painted_voxels_only() -> None:
    torch.manual_seed(0)
    labels = torch.full((2, 8, 8, 8), UNANNOTATED, dtype=torch.int64)
    labels[0, 2:4, 2:4, 2:4] = 1
    labels[1, 5, 5, 2:6] = 0
    replay_labels = torch.randint(0, 2, (1, 8, 8, 8))  # a replay crop: fully labelled
    logits = torch.randn(2, 2, 8, 8, 8, requires_grad=True)
    replay_logits = torch.randn(1, 2, 8, 8, 8)
    loss = refine_loss(logits, labels, replay_logits, replay_labels, replay_weight=0.25)
    loss.backward()
    unpainted = (labels == UNANNOTATED)[:, None].expand(-1, 2, -1, -1, -1)
    assert torch.all(logits.grad[unpainted] == 0)
    assert torch.any(logits.grad[~unpainted] != 0)
    # Other logits where nothing is painted: the same loss.
    changed = logits.detach().clone()
    changed[unpainted] = torch.randn(int(unpainted.sum()))
    assert torch.allclose(refine_loss(changed, labels, replay_logits, replay_labels, 0.25), loss.detach())
    # The strokes are not diluted by the replay crop's many voxels: a fixed mix of two means.
    expected = 0.75 * supervised_loss(logits, labels) + 0.25 * supervised_loss(replay_logits, replay_labels)
    assert torch.allclose(loss, expected)
    assert torch.allclose(refine_loss(logits, labels), supervised_loss(logits, labels))


def test_cached_features_with_the_tail_unchanged_give_inference_probabilities(trained) -> None:
    model_file, _, case = trained
    model = load_model(model_file, "cpu")
    volume = preprocess_image(read_image(case.image), model.preprocessing)
    windows = WindowFeatures.compute(model, volume)
    assert len(windows.corners) == 8  # a 24^3 case in 16^3 windows at half overlap: 2 per axis
    cached = windows.probabilities(model.module.tail, batch=3)
    np.testing.assert_allclose(cached, sliding_window_probabilities(model, volume), atol=1e-5)


def test_each_stroke_gets_a_small_box_in_the_window_where_it_lies_deepest(trained) -> None:
    model_file, _, case = trained
    model = load_model(model_file, "cpu")
    windows = WindowFeatures.compute(model, preprocess_image(read_image(case.image), model.preprocessing))
    working = np.full((24, 24, 24), UNANNOTATED, np.uint8)
    working[1, 2, 2:5] = 1  # near a corner: only the first window holds it
    working[12, 12, 11:14] = 0  # in the middle: every window holds it; the deepest one is chosen
    boxes = _stroke_boxes(windows, working)
    assert [tuple(y.shape[1:]) for y in boxes.labels] == [(3, 3, 5), (3, 3, 5)]  # a voxel around each
    background, line = boxes.labels
    assert int((background == 0).sum()) == 3 and int((line == 1).sum()) == 3
    assert int((background != UNANNOTATED).sum()) == 3 and int((line != UNANNOTATED).sum()) == 3
    # The line's box is cut from window 0 (corner (0, 0, 0)) at the line's own place.
    np.testing.assert_array_equal(boxes.features[1][0].numpy(), windows.features[0][:, 0:3, 1:4, 1:6].numpy())


class StepClock:
    """A clock that moves only when the refine asks whether to cancel, once per step."""

    def __init__(self, seconds_per_step: float) -> None:
        self.now, self.per_step, self.asked = 100.0, seconds_per_step, 0

    def __call__(self) -> float:
        return self.now

    def cancel(self) -> bool:
        self.asked += 1
        self.now += self.per_step
        return False


def test_the_time_limit_stops_before_a_step_would_pass_it(trained) -> None:
    model_file, _, case = trained
    image = read_image(case.image)
    strokes = stroke_map(image, {1: np.array([[12, 12, 12]])})
    CASE_FEATURES.clear()  # the last prediction's time, measured on another clock, would be reserved
    clock = StepClock(2.0)
    settings = fast(max_seconds=10.0, max_iterations=100)
    result = refine_case(
        model_file, image, strokes, settings=settings, device="cpu", clock=clock, cancel=clock.cancel
    )
    # Steps end at 2, 4, 6, 8, 10 s: after the fifth, another would end at 12 > 10.
    assert result.iterations == 5 and clock.asked == 5
    assert result.stopped_by == "time" and result.seconds == pytest.approx(10.0)
    # A limit too short for any step: min_iterations decides (one by default).
    short = fast(max_seconds=1.0, max_iterations=100)
    clock = StepClock(2.0)
    one = refine_case(
        model_file, image, strokes, settings=short, device="cpu", clock=clock, cancel=clock.cancel
    )
    assert one.iterations == 1 and one.seconds == pytest.approx(2.0)
    clock = StepClock(2.0)
    three = short.replace(min_iterations=3)
    assert (
        refine_case(
            model_file, image, strokes, settings=three, device="cpu", clock=clock, cancel=clock.cancel
        ).iterations
        == 3
    )


def test_cancel_stops_the_refine(trained) -> None:
    model_file, _, case = trained
    image = read_image(case.image)
    strokes = stroke_map(image, {1: np.array([[12, 12, 12]])})
    with pytest.raises(CancelledError, match="cancelled after 0 step"):
        refine_case(model_file, image, strokes, settings=fast(), device="cpu", cancel=lambda: True)


def test_bad_input_is_refused_with_the_problem_named(trained, tmp_path: Path) -> None:
    model_file, labelled, case = trained
    image = read_image(case.image)
    before = digest(model_file)
    one = np.array([[12, 12, 12]])

    def refused(match: str, image=image, strokes=None, **kwargs) -> None:
        with pytest.raises(DataError, match=match):
            refine_case(model_file, image, strokes or stroke_map(image, {1: one}), device="cpu", **kwargs)

    refused("no strokes", strokes=stroke_map(image, {}))
    refused("class\\(es\\) 3", strokes=stroke_map(image, {3: one}))
    shifted = stroke_map(image, {1: one})
    shifted.SetOrigin(tuple(o + 5.0 for o in image.GetOrigin()))
    refused("not on the case's voxel grid: origin differs", strokes=shifted)
    smaller = sitk.Image([20, 24, 24], sitk.sitkUInt8) + UNANNOTATED
    smaller.SetSpacing(image.GetSpacing())
    smaller.SetOrigin(image.GetOrigin())
    refused("not on the case's voxel grid: size differs", strokes=smaller)
    floats = sitk.Cast(stroke_map(image, {1: one}), sitk.sitkFloat32)
    floats[0, 0, 0] = float("nan")
    refused("NaN or infinite", strokes=floats)
    floats[0, 0, 0] = 0.5
    refused("non-integer", strokes=floats)
    nan_image = sitk.Cast(image, sitk.sitkFloat32)
    nan_image[3, 3, 3] = float("inf")
    refused("NaN or infinite", image=nan_image, strokes=stroke_map(nan_image, {1: one}))
    refused("replay cases need labels; phantom_000", replay=[Case(labelled[0].case_id, labelled[0].image)])
    refused("lr must be a positive number", settings=fast(lr=float("nan")))
    assert digest(model_file) == before


def test_a_model_with_nonfinite_weights_is_refused(trained, tmp_path: Path) -> None:
    model_file, _, case = trained
    data = torch.load(model_file, weights_only=True)
    name = next(k for k, v in data["state_dict"].items() if v.is_floating_point())
    data["state_dict"][name].view(-1)[0] = float("nan")
    broken = tmp_path / "broken.pt"
    torch.save(data, broken)
    image = read_image(case.image)
    with pytest.raises(ReciprocalSegError, match="NaN or infinite weights"):
        refine_case(broken, image, stroke_map(image, {1: np.array([[1, 1, 1]])}), device="cpu")


def test_replay_crops_come_from_the_cache_folder(trained, tmp_path: Path) -> None:
    model_file, labelled, case = trained
    image = read_image(case.image)
    strokes = stroke_map(image, {1: np.array([[12, 12, 12]])})
    cache = tmp_path / "cache"
    settings = fast(max_iterations=2, replay_cases=1)
    result = refine_case(
        model_file, image, strokes, replay=labelled, settings=settings, device="cpu", cache_dir=cache
    )
    assert len(result.replay_cases) == 1
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == 2 and all(name.startswith(result.replay_cases[0]) for name in cached)
    # The same seed replays the same case from the same cached files.
    again = refine_case(
        model_file, image, strokes, replay=labelled, settings=settings, device="cpu", cache_dir=cache
    )
    assert again.replay_cases == result.replay_cases and sorted(p.name for p in cache.iterdir()) == cached


def test_default_settings_per_device() -> None:
    assert default_refine_settings("cpu") == CPU_SETTINGS
    assert default_refine_settings(torch.device("cuda")) == GPU_SETTINGS
    for bad in (
        dict(max_seconds=0),
        dict(replay_weight=1.0),
        dict(min_iterations=500),
        dict(replay_crops=1),
    ):
        with pytest.raises(DataError, match="refine settings"):
            RefineSettings(**bad).validate()


def test_a_second_refine_of_the_case_reuses_its_features_and_continues_the_copy(trained, tmp_path) -> None:
    model_file, labelled, case = trained
    image = read_image(case.image)
    first_strokes = {1: np.array([[12, 12, 12], [12, 12, 13]])}
    CASE_FEATURES.clear()
    REPLAY_FEATURES.clear()
    settings = fast(max_iterations=5)
    hits = CASE_FEATURES.hits, REPLAY_FEATURES.hits
    first = refine_case(
        model_file, image, stroke_map(image, first_strokes), replay=labelled, settings=settings, device="cpu"
    )
    added = stroke_map(image, {**first_strokes, 0: np.array([[2, 2, 2]])})
    second = refine_case(model_file, image, added, replay=labelled, settings=settings, device="cpu")
    assert (CASE_FEATURES.hits, REPLAY_FEATURES.hits) == (hits[0] + 1, hits[1] + 1)
    assert not first.continued and second.continued
    # Without continuing, the same strokes give what a fresh copy gives (the reused features and
    # replay crops are those it would compute).
    CASE_FEATURES.clear()
    REPLAY_FEATURES.clear()
    fresh = refine_case(model_file, image, added, replay=labelled, settings=settings, device="cpu")
    again = refine_case(
        model_file,
        image,
        added,
        replay=labelled,
        settings=settings.replace(continue_last=False),
        device="cpu",
    )
    assert not fresh.continued and not again.continued and again.losses == fresh.losses
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.labels), sitk.GetArrayFromImage(fresh.labels))
    # A stroke taken back (or changed): a fresh copy of the round's model.
    assert not refine_case(
        model_file, image, stroke_map(image, first_strokes), settings=settings, device="cpu"
    ).continued
    # Another model file (a new round) or another scan: computed afresh.
    hits = CASE_FEATURES.hits
    copy = tmp_path / "teacher.pt"
    copy.write_bytes(model_file.read_bytes())
    assert not refine_case(copy, image, added, settings=settings, device="cpu").continued
    other = sitk.Cast(image, sitk.sitkFloat32) * 1.5
    refine_case(
        model_file, other, stroke_map(other, {1: np.array([[12, 12, 12]])}), settings=settings, device="cpu"
    )
    assert CASE_FEATURES.hits == hits


def test_beyond_the_reach_of_the_strokes_the_rounds_prediction_stays(trained) -> None:
    """A stroke moved the prediction far from where it was painted (a left-atrium scan lost its
    whole atrium to one stroke): beyond `reach_mm` the refined map is the round's prediction."""
    from reciprocalseg.refine.reach import within_reach

    model_file, labelled, case = trained
    image, truth = read_image(case.image), sitk.GetArrayFromImage(read_image(case.label))
    before = sitk.GetArrayFromImage(predict_image(load_model(model_file, "cpu"), image).labels)
    strokes = stroke_map(image, {1: wrong_region(truth, before, 1, size=8)})
    spacing_zyx = tuple(float(v) for v in image.GetSpacing()[::-1])
    stroked = sitk.GetArrayFromImage(strokes) != UNANNOTATED
    far = ~within_reach(stroked, spacing_zyx, 3.0)

    free = refine_case(
        model_file, image, strokes, replay=labelled, settings=fast(reach_mm=None), device="cpu"
    )
    CASE_FEATURES.clear()
    kept = refine_case(model_file, image, strokes, replay=labelled, settings=fast(reach_mm=3.0), device="cpu")

    unbounded, bounded = sitk.GetArrayFromImage(free.labels), sitk.GetArrayFromImage(kept.labels)
    assert np.any(unbounded[far] != before[far])  # the copy does change the scan far away
    np.testing.assert_array_equal(bounded[far], before[far])  # the refine keeps it there
    np.testing.assert_array_equal(bounded[~far], unbounded[~far])  # and near the strokes, the copy's
