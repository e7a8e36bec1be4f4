"""V-Net as used by UA-MT and the reciprocal learning paper.

Same layout as the published network: five resolution levels with 1-2-3-3-3 / 3-3-2-1
convolutions, strided 2x2x2 convolutions down, transposed convolutions up, additive skip
connections, and Dropout3d(0.5) after the bottleneck and before the output convolution.

The four down/up steps may halve each axis or leave it (`strides`, per level, 2 or 1 per axis):
for thick-slice scans the planner keeps the slice axis at full resolution until the in-plane
spacing has caught up with it, as nnU-Net does. A side then needs to be a multiple of 2 to the
number of halvings along its axis only (a 10-slice crop with no halving along z works).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module | None:
    if kind == "batchnorm":
        return nn.BatchNorm3d(channels)
    if kind == "groupnorm":
        # 16 groups as in the paper's code; fewer when a small network has fewer channels.
        return nn.GroupNorm(num_groups=min(16, channels), num_channels=channels)
    if kind == "instancenorm":
        return nn.InstanceNorm3d(channels)
    if kind == "none":
        return None
    raise ValueError(f"unknown normalization {kind!r}")


def _conv_norm_relu(conv: nn.Module, channels: int, norm: str) -> list[nn.Module]:
    layers = [conv]
    norm_layer = _norm(norm, channels)
    if norm_layer is not None:
        layers.append(norm_layer)
    layers.append(nn.ReLU(inplace=True))
    return layers


class ConvStage(nn.Sequential):
    """`n_convs` 3x3x3 convolutions, each followed by normalisation and ReLU."""

    def __init__(self, n_convs: int, in_ch: int, out_ch: int, norm: str) -> None:
        layers: list[nn.Module] = []
        for i in range(n_convs):
            conv = nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, kernel_size=3, padding=1)
            layers += _conv_norm_relu(conv, out_ch, norm)
        super().__init__(*layers)


Stride = tuple[int, int, int]
PAPER_STRIDES: tuple[Stride, ...] = ((2, 2, 2),) * 4


class Down(nn.Sequential):
    """Halve the resolution along the axes whose stride is 2 (kernel = stride: 2x2x2 in the paper)."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, stride: Stride = (2, 2, 2)) -> None:
        conv = nn.Conv3d(in_ch, out_ch, kernel_size=stride, stride=stride)
        super().__init__(*_conv_norm_relu(conv, out_ch, norm))


class Up(nn.Sequential):
    """Undo a `Down` with the same stride, by a transposed convolution."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, stride: Stride = (2, 2, 2)) -> None:
        conv = nn.ConvTranspose3d(in_ch, out_ch, kernel_size=stride, stride=stride)
        super().__init__(*_conv_norm_relu(conv, out_ch, norm))


def check_strides(strides: Sequence[Sequence[int]]) -> tuple[Stride, ...]:
    """Four (z, y, x) strides of 1 or 2, as tuples; a clear error otherwise."""
    out = tuple(tuple(int(v) for v in s) for s in strides)
    if len(out) != 4 or any(len(s) != 3 or any(v not in (1, 2) for v in s) for s in out):
        raise ValueError(f"strides {strides!r}: need four (z, y, x) triples of 1 or 2 (one per V-Net level)")
    return out  # type: ignore[return-value]


def size_multiple(strides: Sequence[Sequence[int]]) -> Stride:
    """What each (z, y, x) side of an input must be a multiple of: the product of its strides."""
    out = [1, 1, 1]
    for stride in check_strides(strides):
        out = [m * s for m, s in zip(out, stride, strict=True)]
    return (out[0], out[1], out[2])


class VNet(nn.Module):
    """V-Net for (N, C, D, H, W) inputs whose sides are multiples of `size_multiple(strides)`
    (16 on every axis with the paper's strides)."""

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        n_filters: int = 16,
        normalization: str = "batchnorm",
        dropout: bool = True,
        strides: Sequence[Sequence[int]] = PAPER_STRIDES,
    ) -> None:
        super().__init__()
        f, norm = n_filters, normalization
        s1, s2, s3, s4 = self.strides = check_strides(strides)
        self.enc1, self.down1 = ConvStage(1, in_channels, f, norm), Down(f, 2 * f, norm, s1)
        self.enc2, self.down2 = ConvStage(2, 2 * f, 2 * f, norm), Down(2 * f, 4 * f, norm, s2)
        self.enc3, self.down3 = ConvStage(3, 4 * f, 4 * f, norm), Down(4 * f, 8 * f, norm, s3)
        self.enc4, self.down4 = ConvStage(3, 8 * f, 8 * f, norm), Down(8 * f, 16 * f, norm, s4)
        self.bottleneck, self.up4 = ConvStage(3, 16 * f, 16 * f, norm), Up(16 * f, 8 * f, norm, s4)
        self.dec4, self.up3 = ConvStage(3, 8 * f, 8 * f, norm), Up(8 * f, 4 * f, norm, s3)
        self.dec3, self.up2 = ConvStage(3, 4 * f, 4 * f, norm), Up(4 * f, 2 * f, norm, s2)
        self.dec2, self.up1 = ConvStage(2, 2 * f, 2 * f, norm), Up(2 * f, f, norm, s1)
        self.dec1 = ConvStage(1, f, f, norm)
        self.head = nn.Conv3d(f, n_classes, kernel_size=1)
        # Dropout3d(0.5) where the paper has it: after the bottleneck and before the head.
        self.dropout = nn.Dropout3d(p=0.5) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before the last stage: the full-resolution input of `tail` (n_filters
        channels). A refine (refine/adapt.py) computes it once and adapts only the tail."""
        x1 = self.enc1(x)
        x2 = self.enc2(self.down1(x1))
        x3 = self.enc3(self.down2(x2))
        x4 = self.enc4(self.down3(x3))
        x5 = self.dropout(self.bottleneck(self.down4(x4)))
        y = self.dec4(self.up4(x5) + x4)
        y = self.dec3(self.up3(y) + x3)
        y = self.dec2(self.up2(y) + x2)
        return self.up1(y) + x1

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        """The last decoder stage and the output convolution: logits from `features`."""
        return self.head(self.dropout(self.dec1(z)))


def build_model(
    n_classes: int,
    n_filters: int = 16,
    normalization: str = "batchnorm",
    dropout: bool = True,
    strides: Sequence[Sequence[int]] | None = None,
    in_channels: int = 1,
) -> VNet:
    """A V-Net; `strides` None (as in model files from before anisotropic plans) = the paper's;
    `in_channels`: the images per case (one before multi-channel support)."""
    return VNet(in_channels, n_classes, n_filters, normalization, dropout, strides or PAPER_STRIDES)
