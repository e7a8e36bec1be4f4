"""Sliding-window inference: exactness against a whole-volume forward, grids, disagreement."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from reciprocalseg.config import make_config
from reciprocalseg.data.preprocess import Preprocessing, preprocess_image
from reciprocalseg.inference.sliding_window import (
    LoadedModel,
    TeacherStudentPredictor,
    disagreement,
    gaussian_weights,
    predict_image,
    sliding_window_probabilities,
    window_starts,
)
from reciprocalseg.model.vnet import build_model
from reciprocalseg.training.checkpoint import model_meta, save_model


class PointwiseNet(nn.Module):
    """Output at a voxel depends only on that voxel: sliding windows must reproduce it exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 3, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0, 0.5]).view(3, 1, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 0.2, -0.1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _pointwise_model(patch_xyz=(16, 16, 16)) -> LoadedModel:
    meta = model_meta(make_config("demo", n_classes=3, patch_size=patch_xyz))
    return LoadedModel(PointwiseNet().eval(), meta, torch.device("cpu"))


def test_window_starts_cover_the_volume_and_end_flush() -> None:
    assert window_starts(10, 16, 8) == [0]
    assert window_starts(40, 16, 8) == [0, 8, 16, 24]
    starts = window_starts(41, 16, 8)
    assert starts[-1] == 41 - 16 and starts[0] == 0
    covered = np.zeros(41, bool)
    for s in starts:
        covered[s : s + 16] = True
    assert covered.all()


def test_gaussian_weights_peak_in_the_centre_and_stay_positive() -> None:
    w = gaussian_weights((16, 16, 16))
    assert float(w.max()) == pytest.approx(1.0) and float(w.min()) > 0
    assert float(w[8, 8, 8]) > float(w[0, 0, 0])


@pytest.mark.parametrize("mode", ["gaussian", "uniform", "paper"])
def test_sliding_window_equals_whole_volume_forward(mode: str) -> None:
    model = _pointwise_model()
    volume = np.random.default_rng(0).normal(size=(21, 37, 30)).astype(np.float32)
    expected = torch.softmax(model.module(torch.from_numpy(volume)[None, None]), 1)[0].detach().numpy()
    if mode == "paper":
        probs = sliding_window_probabilities(model, volume, paper_stride=True)
    else:
        probs = sliding_window_probabilities(model, volume, overlap=0.5, weighting=mode, batch_size=3)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def test_volume_smaller_than_patch_is_padded_and_cropped_back() -> None:
    model = _pointwise_model((32, 32, 32))
    volume = np.random.default_rng(1).normal(size=(10, 20, 12)).astype(np.float32)
    probs = sliding_window_probabilities(model, volume)
    assert probs.shape == (3, 10, 20, 12)
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)


def _scan(size=(30, 26, 20), spacing=(0.8, 0.9, 1.7)) -> sitk.Image:
    array = np.random.default_rng(2).normal(size=size[::-1]).astype(np.float32)
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin((10.0, -4.0, 3.5))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return img


def test_prediction_comes_back_on_the_scans_own_grid() -> None:
    img = _scan()
    model = _pointwise_model()
    pred = predict_image(model, img, return_probabilities=True)
    assert pred.labels.GetSize() == img.GetSize()
    assert pred.labels.GetSpacing() == img.GetSpacing() and pred.labels.GetOrigin() == img.GetOrigin()
    assert pred.labels.GetDirection() == img.GetDirection()
    # No resampling: the label map is the voxel-wise argmax of the pointwise model on the normalised scan.
    volume = preprocess_image(img, Preprocessing())
    expected = model.module(torch.from_numpy(volume)[None, None])[0].argmax(0).numpy()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(pred.labels), expected)


def test_resampled_prediction_is_restored_to_the_original_grid() -> None:
    img = _scan()
    meta = model_meta(
        make_config("demo", n_classes=3, patch_size=(16, 16, 16), target_spacing=(1.5, 1.5, 1.5))
    )
    model = LoadedModel(PointwiseNet().eval(), meta, torch.device("cpu"))
    pred = predict_image(model, img, return_probabilities=True)
    assert pred.labels.GetSize() == img.GetSize() and pred.labels.GetOrigin() == img.GetOrigin()
    assert pred.probabilities.shape == (3, *img.GetSize()[::-1])
    # The coarse-grid prediction still agrees with the fine-grid one on most voxels.
    fine = predict_image(_pointwise_model(), img)
    agree = np.mean(sitk.GetArrayFromImage(pred.labels) == sitk.GetArrayFromImage(fine.labels))
    assert agree > 0.5


def test_disagreement_map_and_score() -> None:
    p = np.zeros((2, 4, 4, 4), np.float32)
    p[1] = 1.0
    same, score = disagreement(p, p)
    assert score == 0.0 and float(same.max()) == 0.0
    q = p[::-1].copy()
    full, score = disagreement(p, q)
    assert score == pytest.approx(1.0) and float(full.min()) == pytest.approx(1.0)
    bg = np.zeros_like(p)
    bg[0] = 1.0
    none, score = disagreement(bg, bg)
    assert score == 0.0


def test_teacher_student_predictor_from_model_files(tmp_path) -> None:
    cfg = make_config("demo", patch_size=(16, 16, 16), n_filters=4)
    torch.manual_seed(0)
    for name in ("teacher", "student"):
        save_model(build_model(2, 4, "batchnorm", True), cfg, tmp_path / f"{name}.pt")
    predictor = TeacherStudentPredictor(tmp_path / "teacher.pt", tmp_path / "student.pt", device="cpu")
    img = _scan()
    out = predictor.predict(img)
    for result in (out.teacher, out.student, out.disagreement):
        assert result.GetSize() == img.GetSize() and result.GetOrigin() == img.GetOrigin()
    assert out.disagreement.GetPixelID() == sitk.sitkFloat32
    assert 0.0 <= out.score <= 1.0
    # Two differently initialised networks disagree somewhere.
    assert float(sitk.GetArrayFromImage(out.disagreement).max()) > 0
