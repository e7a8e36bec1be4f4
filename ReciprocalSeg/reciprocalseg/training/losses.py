"""Losses: cross-entropy (both phases) and the UA-MT soft Dice (supervised recipe)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Upcast half/bf16 to fp32 (reductions under autocast), leave fp32/fp64 alone."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean voxel-wise cross-entropy, computed in fp32 even under autocast."""
    return F.cross_entropy(at_least_fp32(logits), labels.long())


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - soft Dice of the softmax, averaged over the foreground classes.

    With two classes this is UA-MT's `dice_loss(softmax[:, 1], label == 1)`: one Dice over
    the whole batch, (2 * intersection + smooth) / (sum p + sum y + smooth).
    """
    probs = torch.softmax(at_least_fp32(logits), dim=1)
    n_classes = probs.shape[1]
    losses = []
    for c in range(1, n_classes):
        p, y = probs[:, c], (labels == c).float()
        intersection = (p * y).sum()
        losses.append(1 - (2 * intersection + smooth) / (p.sum() + y.sum() + smooth))
    return torch.stack(losses).mean()


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The UA-MT supervised recipe: 0.5 * CE + 0.5 * Dice."""
    return 0.5 * cross_entropy(logits, labels) + 0.5 * soft_dice_loss(logits, labels)
