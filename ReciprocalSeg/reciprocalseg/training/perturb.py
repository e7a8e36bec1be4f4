"""A stronger view of the unlabelled crops for the student (opt-in; not in the paper).

Meta Pseudo Labels, FixMatch and their kin let the teacher label a weakly augmented image and
train the student on a strongly augmented view of the same image, so the student cannot just
copy the teacher. Only intensity transforms are used here: they leave every voxel where it is,
so the teacher's voxel-wise pseudo labels stay aligned with the student's input without warping
them. The transforms and their ranges are nnU-Net's default intensity augmentation
(multiplicative brightness and contrast 0.75-1.25, gamma 0.7-1.5, Gaussian noise of variance up
to 0.1), each applied to a crop with probability `p`. Written here rather than taken from a
library because it runs on the training device, on a whole batch at once, inside the step.
"""

from __future__ import annotations

import torch

_SCALE = (0.75, 1.25)
_GAMMA = (0.7, 1.5)
_NOISE_VARIANCE = 0.1


class IntensityPerturbation:
    """Callable: a batch (B, C, z, y, x) -> the same batch with random per-crop intensity changes."""

    def __init__(self, p: float, seed: int) -> None:
        if not 0 < p <= 1:
            raise ValueError(f"perturbation probability {p} must be in (0, 1]")
        self.p, self.seed = p, seed
        self._generator: torch.Generator | None = None

    def _rng(self, device: torch.device) -> torch.Generator:
        # Its own generator, so turning the perturbation on leaves every other random draw
        # (crops, dropout) as it was, and a run with the same seed perturbs the same way.
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
        return self._generator

    def _factor(
        self, n: int, low: float, high: float, like: torch.Tensor, unchanged: float = 1.0
    ) -> torch.Tensor:
        """Per-crop values in [low, high] for the crops a draw < p selects, `unchanged` elsewhere."""
        g = self._rng(like.device)
        shape = (n,) + (1,) * (like.dim() - 1)
        chosen = torch.rand(shape, generator=g, device=like.device) < self.p
        value = low + (high - low) * torch.rand(shape, generator=g, device=like.device)
        return torch.where(chosen, value, torch.full_like(value, unchanged))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.remap(x)
        variance = self._factor(x.shape[0], 0.0, _NOISE_VARIANCE, x, unchanged=0.0)
        noise = torch.randn(x.shape, generator=self._rng(x.device), device=x.device)
        return x + noise * variance.sqrt()

    def remap(self, x: torch.Tensor) -> torch.Tensor:
        """The noise-free part: a monotone intensity map per crop (brightness, contrast, gamma)."""
        n, dims = x.shape[0], tuple(range(1, x.dim()))
        x = x * self._factor(n, *_SCALE, x)  # brightness
        low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        mean = x.mean(dim=dims, keepdim=True)
        # Contrast keeps the crop's range, as nnU-Net's does, so it is not a second brightness.
        x = torch.clamp((x - mean) * self._factor(n, *_SCALE, x) + mean, low, high)
        span = (high - low).clamp_min(1e-6)
        gamma = self._factor(n, *_GAMMA, x)
        return ((x - low) / span).clamp(0, 1).pow(gamma) * span + low
