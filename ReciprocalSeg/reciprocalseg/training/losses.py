"""Losses: cross-entropy (both phases) and the UA-MT soft Dice (supervised recipe).

Partial labels: voxels labelled `UNANNOTATED` (255) count in neither loss. CE averages over the
annotated voxels (``ignore_index``); Dice sums over them only. A full label gives the unmasked
arithmetic bit for bit (``ignore_index`` skips nothing, and Dice takes the plain sums).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common.file_formats import UNANNOTATED


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Upcast half/bf16 to fp32 (reductions under autocast), leave fp32/fp64 alone."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean voxel-wise cross-entropy over the annotated voxels, in fp32 even under autocast.

    A batch without any annotated voxel gives 0 (with a zero gradient), not 0/0: the samplers
    centre crops of partial cases on annotated voxels, so this is only a guard.
    """
    labels = labels.long()
    loss = F.cross_entropy(at_least_fp32(logits), labels, ignore_index=UNANNOTATED)
    # No host synchronisation: where() picks 0 on the device when nothing is annotated (the
    # backward of the ignored voxels is exactly 0, so no NaN flows back either).
    annotated = (labels != UNANNOTATED).any()
    return torch.where(annotated, loss, torch.zeros_like(loss))


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - soft Dice of the softmax over the annotated voxels, averaged over the foreground classes.

    With two classes and a full label this is UA-MT's `dice_loss(softmax[:, 1], label == 1)`:
    one Dice over the whole batch, (2 * intersection + smooth) / (sum p + sum y + smooth).
    """
    probs = torch.softmax(at_least_fp32(logits), dim=1)
    unannotated = labels == UNANNOTATED
    annotated = (~unannotated).to(probs.dtype)
    partial = unannotated.any()
    n_classes = probs.shape[1]
    losses = []
    for c in range(1, n_classes):
        p, y = probs[:, c], (labels == c).float()
        intersection = (p * y).sum()  # y is 0 where unannotated: no mask needed
        # sum p over the annotated voxels. A full label takes the plain sum: p * mask sums in
        # another memory order (the network's output is channels-last), which changes the last bits
        # and, amplified over iterations, the trained weights. where() needs no host sync, and
        # the branch it does not take gets an exact zero gradient.
        p_sum = torch.where(partial, (p * annotated).sum(), p.sum())
        losses.append(1 - (2 * intersection + smooth) / (p_sum + y.sum() + smooth))
    return torch.stack(losses).mean()


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The UA-MT supervised recipe: 0.5 * CE + 0.5 * Dice (both over the annotated voxels)."""
    return 0.5 * cross_entropy(logits, labels) + 0.5 * soft_dice_loss(logits, labels)
