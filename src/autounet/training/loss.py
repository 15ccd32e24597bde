"""Segmentation losses: soft Dice + cross-entropy, summed over deep-supervision outputs.

Targets are class indices of shape (B, 1, *spatial); voxels labelled -1 (outside the
nonzero mask, or padding) are ignored by both terms. Losses are computed in float32 even
under autocast, because the Dice sums overflow/underflow in float16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -1


def _one_hot(target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, *S) indices -> (B, K, *S) float one-hot and a (B, 1, *S) valid mask."""
    idx = target.long()
    valid = idx != IGNORE_INDEX
    safe = torch.where(valid, idx, torch.zeros_like(idx))
    onehot = torch.zeros((idx.shape[0], num_classes, *idx.shape[2:]), device=idx.device, dtype=torch.float32)
    onehot.scatter_(1, safe, 1.0)
    return onehot * valid, valid


class SoftDiceLoss(nn.Module):
    """1 - mean foreground soft Dice of the softmax.

    `batch_dice` pools the sums over the batch before dividing (one Dice per class for the
    whole batch), which the planner chooses for data where single patches often hold no
    foreground; otherwise one Dice per sample and class is averaged.
    """

    def __init__(self, batch_dice: bool = False, smooth: float = 1e-5, include_background: bool = False) -> None:
        super().__init__()
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.include_background = include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=1)
        onehot, valid = _one_hot(target, probs.shape[1])
        probs = probs * valid
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        axes = [0, *range(2, probs.ndim)] if self.batch_dice else list(range(2, probs.ndim))
        intersection = (probs * onehot).sum(axes)
        denominator = probs.sum(axes) + onehot.sum(axes)
        dice = (2.0 * intersection + self.smooth) / torch.clamp(denominator + self.smooth, min=1e-8)
        return 1.0 - dice.mean()


class DiceCELoss(nn.Module):
    """Soft Dice + cross-entropy with weights 1:1 (the reference's label-mode loss)."""

    def __init__(self, batch_dice: bool = False, smooth: float = 1e-5, weight_dice: float = 1.0,
                 weight_ce: float = 1.0) -> None:
        super().__init__()
        self.dice = SoftDiceLoss(batch_dice=batch_dice, smooth=smooth)
        self.weight_dice = weight_dice
        self.weight_ce = weight_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        idx = target[:, 0].long()
        if bool((idx != IGNORE_INDEX).any()):
            ce = F.cross_entropy(logits.float(), idx, ignore_index=IGNORE_INDEX)
        else:
            ce = logits.float().sum() * 0.0  # nothing to learn from, but keep the graph connected
        return self.weight_dice * self.dice(logits, target) + self.weight_ce * ce


def deep_supervision_weights(num_outputs: int, distributed: bool = False) -> list[float]:
    """1, 1/2, 1/4, ... with the lowest resolution switched off, normalised to sum 1.

    Under DistributedDataParallel every parameter must receive a gradient, so the lowest
    head keeps a negligible weight (1e-6) instead of 0 there.
    """
    weights = [1.0 / 2**i for i in range(num_outputs)]
    if num_outputs > 1:
        weights[-1] = 1e-6 if distributed else 0.0
    total = sum(weights)
    return [w / total for w in weights]


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of a loss over outputs at decreasing resolution (full resolution first)."""

    def __init__(self, loss: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        self.loss = loss
        self.weights = list(weights)

    def forward(self, outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(outputs) > len(self.weights) or len(targets) < len(outputs):
            raise ValueError(f"deep supervision: {len(outputs)} outputs, {len(targets)} targets, "
                             f"{len(self.weights)} weights")
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, output, target in zip(self.weights, outputs, targets):
            if weight:
                total = total + weight * self.loss(output, target)
        return total


def deep_supervision_scales(strides: Sequence[Sequence[int]]) -> list[list[float]]:
    """Relative size of each decoder output (full resolution first), from the plan's strides.

    The network has one segmentation head per decoder stage (n_stages - 1); the output of
    stage i is downsampled by the product of the strides of stages 0..i.
    """
    scales: list[list[float]] = []
    cumulative = [1] * len(strides[0])
    for stage in strides[:-1]:
        cumulative = [c * s for c, s in zip(cumulative, stage)]
        scales.append([1.0 / c for c in cumulative])
    return scales or [[1.0] * len(strides[0])]
