"""Per-channel segmentation losses with class-balanced weighting.

Targets may hold NaN where they are undefined (e.g. an affinity edge that leaves the patch); every
loss here ignores those voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def class_balanced_weight(
    target: torch.Tensor, valid: torch.Tensor | None = None, clip: float = 0.05
) -> torch.Tensor:
    """Per-voxel weights that balance positives against negatives, per sample and channel.

    With positive fraction p (over the valid voxels) clipped to [clip, 1 - clip], the minority class
    gets weight majority / minority (at most (1 - clip) / clip) and the other class 1.

    Args:
        target: float (N, C, Z, Y, X) in [0, 1] (no NaN; pass ``valid`` instead).
        valid: bool (N, C, Z, Y, X) of the voxels that count, or None for all.

    Returns:
        float (N, C, Z, Y, X), >= 1 (0 where not valid).
    """
    dims = (2, 3, 4)
    if valid is None:
        p = target.mean(dim=dims, keepdim=True)
    else:
        count = valid.sum(dim=dims, keepdim=True).clamp_min(1)
        p = (target * valid).sum(dim=dims, keepdim=True) / count
    p = p.clamp(clip, 1.0 - clip)
    pos_weight = torch.where(p < 0.5, (1.0 - p) / p, torch.ones_like(p))
    neg_weight = torch.where(p > 0.5, p / (1.0 - p), torch.ones_like(p))
    weight = torch.where(target > 0.5, pos_weight, neg_weight)
    return weight if valid is None else weight * valid


def soft_dice_loss(
    probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1.0
) -> torch.Tensor:
    """1 - soft Dice per sample and channel, averaged. Shapes (N, C, Z, Y, X)."""
    dims = (2, 3, 4)
    if valid is not None:
        probs, target = probs * valid, target * valid
    intersection = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * intersection + eps) / (total + eps)).mean()


def split_undefined(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(target with NaN set to 0, bool mask of defined voxels or None when all are defined)."""
    undefined = torch.isnan(target)
    if not bool(undefined.any()):
        return target, None
    return torch.where(undefined, torch.zeros_like(target), target), ~undefined


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
        """logits, target: float (N, C, Z, Y, X); target in [0, 1] or NaN (ignored).

        Returns a scalar.
        """
        if logits.shape != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ: "
                "model.out_channels must equal the number of target channels"
            )
        logits = logits.float()
        target, valid = split_undefined(target.float())
        if self.class_balance:
            weight = class_balanced_weight(target, valid)
        else:
            weight = None if valid is None else valid.float()
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
        count = target.numel() if valid is None else int(valid.sum())
        loss = self.bce_weight * bce / max(1, count)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(torch.sigmoid(logits), target, valid)
        return loss


class ChannelGroupLoss(nn.Module):
    """A different loss per consecutive group of channels, summed.

    E.g. affinities + contour: ``ChannelGroupLoss([BCEDiceLoss(dice_weight=0), BCEDiceLoss(
    dice_weight=0.5)], sizes=[3, 1])``.

    Args:
        losses: one loss per group.
        sizes: channels per group, in channel order; they must add up to the target's channels.
    """

    def __init__(self, losses: Sequence[nn.Module], sizes: Sequence[int]) -> None:
        super().__init__()
        if len(losses) != len(sizes) or min(sizes, default=0) < 1:
            raise ValueError(f"need one positive size per loss, got {len(losses)} losses, {sizes}")
        self.losses = nn.ModuleList(losses)
        self.sizes = [int(s) for s in sizes]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape or logits.shape[1] != sum(self.sizes):
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must both have "
                f"{sum(self.sizes)} channels (groups {self.sizes})"
            )
        parts = zip(logits.split(self.sizes, 1), target.split(self.sizes, 1), strict=True)
        return sum(loss(lg, tg) for loss, (lg, tg) in zip(self.losses, parts, strict=True))


class DistanceLoss(nn.Module):
    """BCE-with-logits against a target in [0, 1] that need not be binary (BCD's normalised
    distance): lowest where sigmoid(logits) equals the target.

    Args:
        class_balance: weight voxels with :func:`class_balanced_weight` of the object voxels
            (target > 0) against the background, so that thin or few objects still count.
    """

    def __init__(self, class_balance: bool = True) -> None:
        super().__init__()
        self.class_balance = class_balance

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits, target: float (N, C, Z, Y, X); target in [0, 1] or NaN (ignored).

        Returns a scalar.
        """
        if logits.shape != target.shape:
            shapes = f"logits {tuple(logits.shape)} and target {tuple(target.shape)}"
            raise ValueError(f"{shapes} differ")
        logits = logits.float()
        target, valid = split_undefined(target.float())
        if self.class_balance:
            weight = class_balanced_weight((target > 0).float(), valid)
        else:
            weight = None if valid is None else valid.float()
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
        return bce / max(1, target.numel() if valid is None else int(valid.sum()))


class BCDLoss(nn.Module):
    """The BCD target's loss: :class:`BCEDiceLoss` on channels 0-1 (foreground, contour) plus
    ``distance_weight`` x :class:`DistanceLoss` on channel 2 (distance).

    Args:
        bce_weight, dice_weight: of the foreground and contour loss.
        class_balance: class-balanced weights in both parts.
        distance_weight: factor of the distance term.
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 0.5,
        class_balance: bool = True,
        distance_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.masks = BCEDiceLoss(bce_weight, dice_weight, class_balance)
        self.distance = DistanceLoss(class_balance)
        self.distance_weight = distance_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape or logits.shape[1] != 3:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must both have 3 "
                "channels (foreground, contour, distance): model.out_channels must be 3"
            )
        loss = self.masks(logits[:, :2], target[:, :2])
        return loss + self.distance_weight * self.distance(logits[:, 2:], target[:, 2:])
