"""Per-channel segmentation losses with class-balanced weighting."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def class_balanced_weight(target: torch.Tensor, clip: float = 0.05) -> torch.Tensor:
    """Per-voxel weights that balance positives against negatives, per sample and channel.

    With positive fraction p clipped to [clip, 1 - clip], the minority class gets weight
    majority / minority (at most (1 - clip) / clip) and the other class 1.

    Args:
        target: float (N, C, Z, Y, X) in [0, 1].

    Returns:
        float (N, C, Z, Y, X), >= 1.
    """
    p = target.mean(dim=(2, 3, 4), keepdim=True).clamp(clip, 1.0 - clip)
    pos_weight = torch.where(p < 0.5, (1.0 - p) / p, torch.ones_like(p))
    neg_weight = torch.where(p > 0.5, p / (1.0 - p), torch.ones_like(p))
    return torch.where(target > 0.5, pos_weight, neg_weight)


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per sample and channel, averaged. Shapes (N, C, Z, Y, X)."""
    dims = (2, 3, 4)
    intersection = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * intersection + eps) / (total + eps)).mean()


class BCEDiceLoss(nn.Module):
    """(Class-weighted) BCE-with-logits plus soft Dice, applied to every channel.

    Args:
        bce_weight: factor of the BCE term.
        dice_weight: factor of the Dice term (0 disables it).
        class_balance: weight BCE voxels with :func:`class_balanced_weight`.
    """

    def __init__(
        self, bce_weight: float = 1.0, dice_weight: float = 1.0, class_balance: bool = True
    ) -> None:
        super().__init__()
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.class_balance = class_balance

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits, target: float (N, C, Z, Y, X); target in [0, 1]. Returns a scalar."""
        if logits.shape != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ: "
                "model.out_channels must equal the number of target channels"
            )
        logits = logits.float()
        weight = class_balanced_weight(target) if self.class_balance else None
        loss = self.bce_weight * F.binary_cross_entropy_with_logits(logits, target, weight=weight)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(torch.sigmoid(logits), target)
        return loss
