"""Segmentation losses: soft Dice + cross-entropy (classes) or + binary cross-entropy (regions),
summed over deep-supervision outputs.

Targets are class indices of shape (B, 1, *spatial); voxels labelled -1 (padding) and, for a
task with an ignore label, voxels of the ignore index are left out of both terms: they change
neither the loss nor its gradients. Losses are computed in float32 even under autocast,
because the Dice sums overflow/underflow in float16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -1


def mask_ignored(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Class-index targets with the task's ignore index turned into IGNORE_INDEX (-1)."""
    if ignore_index is None:
        return target
    return torch.where(target == ignore_index, torch.full_like(target, IGNORE_INDEX), target)


def _one_hot(target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, *S) indices -> (B, K, *S) float one-hot and a (B, 1, *S) valid mask."""
    idx = target.long()
    valid = idx != IGNORE_INDEX
    safe = torch.where(valid, idx, torch.zeros_like(idx))
    onehot = torch.zeros((idx.shape[0], num_classes, *idx.shape[2:]), device=idx.device, dtype=torch.float32)
    onehot.scatter_(1, safe, 1.0)
    return onehot * valid, valid


def soft_dice(probs: torch.Tensor, targets: torch.Tensor, batch_dice: bool, smooth: float) -> torch.Tensor:
    """Soft Dice per channel (and per sample unless `batch_dice` pools the batch) of (B, C, *S) maps."""
    axes = [0, *range(2, probs.ndim)] if batch_dice else list(range(2, probs.ndim))
    intersection = (probs * targets).sum(axes)
    denominator = probs.sum(axes) + targets.sum(axes)
    return (2.0 * intersection + smooth) / torch.clamp(denominator + smooth, min=1e-8)


def region_targets(target: torch.Tensor, index_to_regions: torch.Tensor,
                   ignore_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, *S) class indices -> (B, R, *S) region targets (zero where not valid) and the (B, 1, *S)
    valid mask (neither padding nor the ignore label); `index_to_regions` is the (K, R) table."""
    idx = mask_ignored(target, ignore_index).long()
    valid = idx >= 0
    safe = idx.clamp(min=0, max=index_to_regions.shape[0] - 1)[:, 0]
    regions = index_to_regions.to(target.device)[safe]  # (B, *S, R)
    return regions.movedim(-1, 1) * valid, valid


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
        return 1.0 - soft_dice(probs, onehot, self.batch_dice, self.smooth).mean()


class DiceCELoss(nn.Module):
    """Soft Dice + cross-entropy with weights 1:1 (the reference's label-mode loss)."""

    def __init__(self, batch_dice: bool = False, smooth: float = 1e-5, weight_dice: float = 1.0,
                 weight_ce: float = 1.0, ignore_index: int | None = None) -> None:
        super().__init__()
        self.dice = SoftDiceLoss(batch_dice=batch_dice, smooth=smooth)
        self.weight_dice = weight_dice
        self.weight_ce = weight_ce
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = mask_ignored(target, self.ignore_index)
        idx = target[:, 0].long()
        if bool((idx != IGNORE_INDEX).any()):
            ce = F.cross_entropy(logits.float(), idx, ignore_index=IGNORE_INDEX)
        else:
            ce = logits.float().sum() * 0.0  # nothing to learn from, but keep the graph connected
        return self.weight_dice * self.dice(logits, target) + self.weight_ce * ce


class RegionDiceBCELoss(nn.Module):
    """Soft Dice + binary cross-entropy per region, on one sigmoid output per region (weights 1:1).

    Regions overlap, so each output is its own two-class problem; `index_to_regions` (K, R) says
    which regions each class index of the target belongs to. Dice is taken over every region
    (there is no background output); ignored voxels count in neither term.
    """

    def __init__(self, index_to_regions: torch.Tensor, batch_dice: bool = False, smooth: float = 1e-5,
                 ignore_index: int | None = None) -> None:
        super().__init__()
        self.register_buffer("table", torch.as_tensor(index_to_regions, dtype=torch.float32), persistent=False)
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        regions, valid = region_targets(target, self.table, self.ignore_index)
        weight = valid.float().expand_as(logits)
        count = weight.sum()
        if count > 0:
            bce = (F.binary_cross_entropy_with_logits(logits, regions, reduction="none") * weight).sum() / count
        else:
            bce = logits.sum() * 0.0  # nothing to learn from, but keep the graph connected
        probs = torch.sigmoid(logits) * weight
        return (1.0 - soft_dice(probs, regions, self.batch_dice, self.smooth).mean()) + bce


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
