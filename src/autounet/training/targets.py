"""What a training target of class indices means for a task, and so which loss and pseudo Dice apply.

Targets always hold class indices (the label values in order, then the ignore label's index); a
region task reads them through a class-to-region table. Trainer code asks this one object instead
of branching on regions and ignore labels itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autounet.planners.plans import Plans
from autounet.task.labels import region_index_table
from autounet.training.loss import DiceCELoss, RegionDiceBCELoss
from autounet.training.pseudo_dice import confusion_counts, region_confusion_counts


@dataclass(frozen=True)
class TargetMeaning:
    """How to read a training target of class indices: which index is the ignore label (the last,
    after the classes) and, for a region task, which regions each index belongs to."""

    num_outputs: int
    ignore_index: int | None = None
    region_table: torch.Tensor | None = None

    @classmethod
    def from_plans(cls, plans: Plans) -> TargetMeaning:
        table = (torch.from_numpy(region_index_table(plans.label_values, plans.region_values))
                 if plans.has_regions else None)
        return cls(plans.num_outputs, plans.ignore_index, table)

    def loss(self, batch_dice: bool) -> nn.Module:
        """Dice + BCE per region for a region task, else Dice + cross-entropy over the classes."""
        if self.region_table is not None:
            return RegionDiceBCELoss(self.region_table, batch_dice=batch_dice, ignore_index=self.ignore_index)
        return DiceCELoss(batch_dice=batch_dice, ignore_index=self.ignore_index)

    def confusion_counts(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(3, outputs) TP/FP/FN of one validation batch, per region or per foreground class."""
        if self.region_table is not None:
            return region_confusion_counts(logits, target, self.region_table, self.ignore_index)
        return confusion_counts(logits, target, self.num_outputs, self.ignore_index)
