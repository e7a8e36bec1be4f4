"""Partial labels (255 = unannotated): validation, masked losses, crops, the training pool, statistics."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from reciprocalseg.common.errors import DataError, ReciprocalSegError, TrainingError
from reciprocalseg.common.file_formats import UNANNOTATED
from reciprocalseg.data.annotation import annotated_fraction, annotation_kind, any_partial_label
from reciprocalseg.data.gpu_sampler import DeviceCases
from reciprocalseg.data.io import Case, read_image, write_image
from reciprocalseg.data.phantom import write_phantom_cohort
from reciprocalseg.data.preprocess import Preprocessing, preprocess_label
from reciprocalseg.data.sampling import (
    CachedCase,
    CropStream,
    annotated_locations,
    cache_case,
    class_locations,
    labeled_case_weights,
    partially_labeled,
)
from reciprocalseg.data.validation import check_label, infer_n_classes, largest_class
from reciprocalseg.model.vnet import build_model
from reciprocalseg.planning.fingerprint import compute_fingerprint
from reciprocalseg.training.collapse import labeled_fractions
from reciprocalseg.training.events import read_events
from reciprocalseg.training.losses import cross_entropy, soft_dice_loss, supervised_loss
from reciprocalseg.training.runner import Trainer, train

SRC = "/data/case7_label.nrrd"


def _image(shape=(6, 7, 8)) -> sitk.Image:
    img = sitk.GetImageFromArray(np.random.default_rng(0).random(shape).astype(np.float32))
    img.SetSpacing((0.8, 0.8, 2.0))
    return img


def _on(image: sitk.Image, array: np.ndarray) -> sitk.Image:
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(image)
    return label


def _partial(label: np.ndarray, keep_z: slice) -> np.ndarray:
    """The label annotated on the slices `keep_z` only (255 elsewhere)."""
    out = np.full_like(label, UNANNOTATED)
    out[keep_z] = label[keep_z]
    return out


# --------------------------------------------------------------------------- validation


def test_validation_keeps_255_and_still_refuses_other_values() -> None:
    image = _image()
    array = np.full((6, 7, 8), UNANNOTATED, np.uint8)
    array[2, 1:4, 1:4] = 0
    array[2, 2, 2] = 2
    kept = check_label(_on(image, array), image, SRC, n_classes=2)  # 3 classes: labels 0..2
    np.testing.assert_array_equal(kept, array)  # 255 kept as it is
    only_background = np.where(array == 2, 0, array).astype(np.uint8)
    np.testing.assert_array_equal(check_label(_on(image, only_background), image, SRC, 2), only_background)

    array[3, 3, 3] = 7
    with pytest.raises(DataError, match=r"values 7 but the configured number of classes is 3") as err:
        check_label(_on(image, array), image, SRC, n_classes=2)
    assert "Set n_classes to 8" in str(err.value)  # 255 is not counted as a class
    with pytest.raises(DataError, match="every voxel of the label is 255"):
        check_label(_on(image, np.full((6, 7, 8), 255, np.uint8)), image, SRC)


def test_class_count_inference_ignores_255() -> None:
    partial = np.array([[0, 2, 255, 255]], np.uint8)
    assert largest_class(partial) == 2
    assert largest_class(np.array([0, 255])) == 0
    assert infer_n_classes([largest_class(partial), largest_class(np.array([0, 1]))]) == 2
    assert infer_n_classes([partial]) == 2
    assert annotation_kind(partial) == "partial" and annotated_fraction(partial) == 0.5
    assert annotation_kind(np.array([0, 1])) == "full" and annotation_kind(None) == "none"


def test_resampling_keeps_255_and_thin_annotations() -> None:
    image = _image((8, 8, 8))
    array = np.full((8, 8, 8), UNANNOTATED, np.uint8)
    array[:, :4] = 0
    array[:, :2, :2] = 1
    finer = preprocess_label(_on(image, array), Preprocessing(target_spacing=(0.4, 0.4, 1.0)))
    assert set(np.unique(finer).tolist()) == {0, 1, UNANNOTATED}
    # Grid voxels at the scan's edge (outside it) are unannotated, not background, in a partial label.
    assert (finer[:, 9:] == UNANNOTATED).all() and (finer[:-1, :7, :-1] != UNANNOTATED).all()
    assert (finer[-1] == UNANNOTATED).all()  # the last slice of the finer grid lies outside the scan
    full = preprocess_label(
        _on(image, np.where(array == UNANNOTATED, 0, array).astype(np.uint8)),
        Preprocessing(target_spacing=(0.4, 0.4, 1.0)),
    )
    assert UNANNOTATED not in full

    # Strokes on one slice survive a grid twice as coarse, whichever slice they are on (nearest
    # neighbour samples every other slice and would drop them).
    for z in (3, 4):
        stroke = np.full((8, 8, 8), UNANNOTATED, np.uint8)
        stroke[z, 3:5, 1:7] = 1  # a thin stroke on the structure
        stroke[z, 0] = stroke[z, 7] = 0  # background strokes away from it
        coarse = preprocess_label(_on(image, stroke), Preprocessing(target_spacing=(1.6, 1.6, 4.0)))
        assert coarse.shape == (4, 4, 4)
        assert {0, 1} <= set(np.unique(coarse).tolist()), z
        # Only the coarse slices whose footprint (source slices 2k-1..2k+1) reaches the stroke.
        annotated_slices = sorted(set(np.nonzero(coarse != UNANNOTATED)[0].tolist()))
        assert annotated_slices == [k for k in range(4) if abs(2 * k - z) <= 1], z


def test_a_partial_label_is_cached_voxel_for_voxel_without_resampling(tmp_path: Path) -> None:
    image = _image((8, 8, 8))
    write_image(image, tmp_path / "c_image.nrrd")
    array = np.full((8, 8, 8), UNANNOTATED, np.uint8)
    array[0, 0, 0], array[5, 2, 3] = 1, 0
    write_image(_on(image, array), tmp_path / "c_label.nrrd")
    case = Case("c", tmp_path / "c_image.nrrd", tmp_path / "c_label.nrrd")
    cached = cache_case(case, Preprocessing(), tmp_path / "cache", 2)
    np.testing.assert_array_equal(np.load(cached.label), array)


# --------------------------------------------------------------------------- losses


def _masked_batch(seed: int = 0, n_classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, n_classes, 4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, n_classes, (2, 4, 5, 6), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.6] = UNANNOTATED
    return logits, labels


def _annotated_rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(voxels, classes) logits and their labels at the annotated voxels only."""
    flat = logits.movedim(1, -1).reshape(-1, logits.shape[1])
    keep = labels.reshape(-1) != UNANNOTATED
    return flat[keep], labels.reshape(-1)[keep]


def test_masked_cross_entropy_is_the_loss_of_the_annotated_voxels() -> None:
    logits, labels = _masked_batch()
    loss = cross_entropy(logits, labels)
    rows, targets = _annotated_rows(logits, labels)
    expected = -torch.log_softmax(rows, dim=1).gather(1, targets[:, None]).mean()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    (grad,) = torch.autograd.grad(loss, logits)
    unannotated = (labels == UNANNOTATED)[:, None].expand_as(grad)
    assert torch.count_nonzero(grad[unannotated]) == 0
    assert torch.count_nonzero(grad[~unannotated]) > 0


def test_masked_dice_is_the_dice_of_the_annotated_voxels() -> None:
    logits, labels = _masked_batch(1)
    loss = soft_dice_loss(logits, labels)
    rows, targets = _annotated_rows(logits, labels)
    probs, smooth = torch.softmax(rows, dim=1), 1e-5
    per_class = []
    for c in (1, 2):
        p, y = probs[:, c], (targets == c).double()
        per_class.append(1 - (2 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth))
    assert float(loss.detach()) == pytest.approx(float(torch.stack(per_class).mean().detach()), rel=1e-12)
    (grad,) = torch.autograd.grad(supervised_loss(logits, labels), logits)
    unannotated = (labels == UNANNOTATED)[:, None].expand_as(grad)
    assert torch.count_nonzero(grad[unannotated]) == 0


def test_full_labels_give_the_unmasked_losses_bit_for_bit() -> None:
    logits, labels = _masked_batch(2)
    labels = labels.clamp(max=2)  # no 255 left
    probs = torch.softmax(logits.float(), dim=1)
    unmasked_dice = torch.stack(
        [
            1
            - (2 * (probs[:, c] * (labels == c).float()).sum() + 1e-5)
            / (probs[:, c].sum() + (labels == c).float().sum() + 1e-5)
            for c in (1, 2)
        ]
    ).mean()
    assert torch.equal(cross_entropy(logits.float(), labels), F.cross_entropy(logits.float(), labels))
    assert torch.equal(soft_dice_loss(logits.float(), labels), unmasked_dice)


def test_full_labels_on_a_channels_last_network_keep_the_unmasked_gradients() -> None:
    """Training runs the network channels-last: the masked Dice must still sum a full label's
    probabilities in the same order as the unmasked one, or trained weights drift from before."""
    torch.manual_seed(0)
    model = build_model(2, n_filters=4, dropout=False).to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 1, 16, 16, 16).contiguous(memory_format=torch.channels_last_3d)
    labels = (x[:, 0] > 0.5).long()

    def unmasked(logits: torch.Tensor) -> torch.Tensor:  # the loss before partial labels
        probs = torch.softmax(logits, dim=1)
        p, y = probs[:, 1], (labels == 1).float()
        dice = 1 - (2 * (p * y).sum() + 1e-5) / (p.sum() + y.sum() + 1e-5)
        return 0.5 * F.cross_entropy(logits, labels) + 0.5 * dice

    grads = []
    for loss_fn in (lambda logits: supervised_loss(logits, labels), unmasked):
        model.zero_grad()
        loss_fn(model(x)).backward()
        grads.append([q.grad.clone() for q in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_a_batch_without_annotated_voxels_gives_zero_not_nan() -> None:
    logits, labels = _masked_batch(3)
    labels = torch.full_like(labels, UNANNOTATED)
    loss = supervised_loss(logits, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert float(cross_entropy(logits, labels)) == 0.0 and torch.count_nonzero(grad) == 0


# --------------------------------------------------------------------------- crops


def _partial_cached(folder: Path) -> CachedCase:
    """48^3, annotated only on 4 slices near one end (a 2-voxel class-1 stroke among background)."""
    label = np.full((48, 48, 48), UNANNOTATED, np.uint8)
    label[2:6, 30:40, 30:40] = 0
    label[3, 34:36, 34:36] = 1
    np.save(folder / "img.npy", np.random.default_rng(0).random(label.shape).astype(np.float32))
    np.save(folder / "lab.npy", label)
    return CachedCase("partial", folder / "img.npy", folder / "lab.npy")


@pytest.mark.parametrize("class_share", [0.0, 0.5])
def test_cpu_crops_of_a_partial_case_hold_annotated_voxels(tmp_path: Path, class_share: float) -> None:
    case = _partial_cached(tmp_path)
    stream = CropStream([case], (16, 16, 16), seed=4, class_share=class_share)
    crops = [lab for _, lab in itertools.islice(iter(stream), 200)]
    assert all(bool((lab != UNANNOTATED).any()) for lab in crops)
    # Uniform crops of this case would miss the 4 annotated slices in most draws.
    uniform = CropStream([CachedCase("p", case.image, case.label)], (16, 16, 16), seed=4)
    uniform._annotated = {0: None}  # as for a full label: random windows
    missed = [not (lab != UNANNOTATED).any() for _, lab in itertools.islice(iter(uniform), 200)]
    assert np.mean(missed) > 0.5


@pytest.mark.parametrize("class_share", [0.0, 0.5])
def test_device_crops_of_a_partial_case_hold_annotated_voxels(tmp_path: Path, class_share: float) -> None:
    cases = DeviceCases([_partial_cached(tmp_path)], "cpu", class_share=class_share)
    _, labels = cases.sample((16, 16, 16), 200, torch.Generator().manual_seed(5))
    assert bool((labels != UNANNOTATED).flatten(1).any(dim=1).all())


def _full_cached(folder: Path, name: str) -> CachedCase:
    np.save(folder / f"{name}-img.npy", np.zeros((24, 24, 24), np.float32))
    np.save(folder / f"{name}-lab.npy", np.zeros((24, 24, 24), np.uint8))
    return CachedCase(name, folder / f"{name}-img.npy", folder / f"{name}-lab.npy")


def test_partial_cases_take_at_most_their_share_of_labelled_crops(tmp_path: Path) -> None:
    """1 full + 3 partial labels: uniform draws would give the partial cases 3 of 4 crops."""
    full = _full_cached(tmp_path, "full")
    partial = [_partial_cached(tmp_path)] * 3
    cases = [full, *(CachedCase(f"partial{i}", c.image, c.label) for i, c in enumerate(partial))]
    ids = {"partial0", "partial1", "partial2"}
    weights = labeled_case_weights(cases, ids, 0.5)
    assert weights == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6])
    # Uniform (None: the paper's draw sequence) when the share is not exceeded or nothing is mixed.
    assert labeled_case_weights(cases, ids, 0.75) is None
    assert labeled_case_weights(cases, set(), 0.5) is None
    assert labeled_case_weights(cases[1:], ids, 0.5) is None

    def full_share(labels: list[torch.Tensor]) -> float:
        return float(np.mean([bool((lab != UNANNOTATED).all()) for lab in labels]))

    stream = CropStream(cases, (16, 16, 16), seed=2, case_weights=weights)
    assert 0.4 < full_share([lab for _, lab in itertools.islice(iter(stream), 400)]) < 0.6
    uniform = CropStream(cases, (16, 16, 16), seed=2)
    assert full_share([lab for _, lab in itertools.islice(iter(uniform), 400)]) < 0.35
    held = DeviceCases(cases, "cpu", case_weights=weights)
    _, labels = held.sample((16, 16, 16), 400, torch.Generator().manual_seed(3))
    assert 0.4 < full_share(list(labels)) < 0.6


def test_255_is_no_class_for_class_centred_crops(tmp_path: Path) -> None:
    label = np.load(_partial_cached(tmp_path).label)
    assert sorted(class_locations(label)) == [1]
    assert annotated_locations(np.zeros((4, 4, 4), np.uint8)) is None  # full label: drawn anywhere
    where = annotated_locations(label)
    assert where is not None and (label[tuple(where.T)] != UNANNOTATED).all()


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def partial_cohort(tmp_path_factory) -> list[Case]:
    """Four phantom cases; the last two labelled on 4 axial slices only."""
    folder = tmp_path_factory.mktemp("partial")
    cases = write_phantom_cohort(folder, 4, seed=3, shape_zyx=(24, 24, 24))
    out = []
    for case in cases:
        if case.case_id in ("phantom_002", "phantom_003"):
            label = read_image(case.label)
            array = _partial(sitk.GetArrayFromImage(label), slice(10, 14))
            partial = sitk.GetImageFromArray(array)
            partial.CopyInformation(label)
            path = folder / f"{case.case_id}_partial_label.nrrd"
            write_image(partial, path)
            case = Case(case.case_id, case.image, path)
        out.append(case)
    return out


# Runs on partial labels: two iterations a phase, no class-centred crops.
PARTIAL_RUN = dict(supervised_iterations=2, reciprocal_iterations=2, class_crop_share=0.0)


def test_partial_cases_join_the_unlabelled_pool(partial_cohort, tmp_path: Path) -> None:
    cached = [cache_case(c, Preprocessing(), tmp_path / "cache", 2) for c in partial_cohort]
    pool = partially_labeled(cached)
    assert [c.case_id for c in pool] == ["phantom_002", "phantom_003"]
    assert all(c.label is None and c.image == full.image for c, full in zip(pool, cached[2:], strict=True))
    assert any_partial_label(partial_cohort) and not any_partial_label(partial_cohort[:2])


def test_training_with_partial_labels_and_no_other_unlabelled_scans(
    tiny_config, partial_cohort, tmp_path: Path
) -> None:
    """Reciprocal learning runs on partial cases alone as the student's scans; losses stay finite."""
    result = train(tiny_config(**PARTIAL_RUN), partial_cohort, [], tmp_path / "run")
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert [e["partial"] for e in events if e["event"] == "preprocessed"] == [2]
    progress = [e for e in events if e["event"] == "progress" and e["phase"] == "reciprocal"]
    assert len(progress) == 2 and all(np.isfinite(list(e["losses"].values())).all() for e in progress)
    assert result.teacher.is_file() and result.student.is_file()
    listed = json.loads((tmp_path / "run" / "cases.json").read_text())
    assert len(listed["labeled"]) == 4 and listed["unlabeled"] == []  # they stay labelled cases


def test_the_trainer_draws_partial_cases_at_most_at_their_share(
    tiny_config, partial_cohort, tmp_path: Path
) -> None:
    """2 full + 2 partial labels with partial_crop_share 0.25: the partial ones get a quarter."""
    trainer = Trainer(
        tiny_config(**PARTIAL_RUN, partial_crop_share=0.25), partial_cohort, [], tmp_path / "run"
    )
    trainer._prepare_data()
    assert trainer.labeled_weights == pytest.approx([0.375, 0.375, 0.125, 0.125])
    with pytest.raises(ReciprocalSegError, match="partial_crop_share"):
        tiny_config(**PARTIAL_RUN, partial_crop_share=0.0)


def test_full_labels_without_unlabelled_scans_still_refused(
    tiny_config, partial_cohort, tmp_path: Path
) -> None:
    with pytest.raises(TrainingError, match="needs unlabelled cases"):
        Trainer(tiny_config(**PARTIAL_RUN), partial_cohort[:2], [], tmp_path / "run")


def test_class_statistics_count_annotated_voxels_only(partial_cohort) -> None:
    partial = sitk.GetArrayFromImage(read_image(partial_cohort[2].label))
    fractions = labeled_fractions([partial], 2)
    annotated = partial[partial != UNANNOTATED]
    assert fractions[1] == pytest.approx(np.mean(annotated == 1))
    assert fractions.sum() == pytest.approx(1.0)
    # With a full label at hand, strokes (far more foreground than the scan) are left out.
    full = sitk.GetArrayFromImage(read_image(partial_cohort[0].label))
    np.testing.assert_array_equal(labeled_fractions([full, partial], 2), labeled_fractions([full], 2))
    fingerprint = compute_fingerprint([partial_cohort[2]])
    assert sorted(fingerprint.classes) == [1]
    assert fingerprint.classes[1].median_fraction == pytest.approx(np.mean(annotated == 1))
