"""Pseudo Dice: the cheap per-epoch proxy of validation, from random validation patches.

TP/FP/FN are summed per class over every validation patch of an epoch (not averaged per
patch), so small structures count by their voxels, as in the anchor; the real validation on
whole cases comes at the end of the fold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
import torch

from autounet.planners.plans import Plans
from autounet.training.loss import mask_ignored, region_targets


def class_names(plans: Plans) -> list[str]:
    """Names of the pseudo-Dice columns: the regions, or the foreground classes in index order."""
    return plans.output_names


def confusion_counts(logits: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """(3, K-1) TP/FP/FN per foreground class of the argmax prediction; -1 and ignore voxels are skipped."""
    pred = logits.argmax(1)
    tgt = mask_ignored(target, ignore_index)[:, 0].long()
    valid = tgt >= 0
    counts = torch.zeros((3, num_classes - 1), dtype=torch.float64, device=logits.device)
    for c in range(1, num_classes):
        p = (pred == c) & valid
        g = tgt == c
        counts[0, c - 1] = (p & g).sum()
        counts[1, c - 1] = (p & ~g).sum()
        counts[2, c - 1] = (~p & g).sum()
    return counts


def region_confusion_counts(logits: torch.Tensor, target: torch.Tensor, index_to_regions: torch.Tensor,
                            ignore_index: int | None = None) -> torch.Tensor:
    """(3, R) TP/FP/FN per region: predicted where the region's sigmoid exceeds 0.5 (logit > 0)."""
    regions, valid = region_targets(target, torch.as_tensor(index_to_regions, dtype=torch.bool), ignore_index)
    truth = regions.bool()
    pred = (logits > 0) & valid
    axes = [0, *range(2, pred.ndim)]
    return torch.stack([(pred & truth).sum(axes), (pred & ~truth).sum(axes), (~pred & truth).sum(axes)]).double()


def dice_from_counts(counts: torch.Tensor) -> list[float]:
    """2TP / (2TP + FP + FN) per class; NaN where a class was neither predicted nor present."""
    tp, fp, fn = counts.double().cpu()
    denom = 2 * tp + fp + fn
    return [float(2 * t / d) if d > 0 else float("nan") for t, d in zip(tp, denom)]


def nan_mean(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")
