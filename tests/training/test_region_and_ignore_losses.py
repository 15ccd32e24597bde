"""Region loss (Dice + BCE per sigmoid output) and the ignore label in both losses and the pseudo Dice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autounet.task.labels import region_index_table
from autounet.training.loss import DeepSupervisionLoss, DiceCELoss, RegionDiceBCELoss
from autounet.training.pseudo_dice import confusion_counts, region_confusion_counts
from autounet.training.transforms import DeepSupervisionTargetsTransform

LABEL_VALUES = [0, 1, 2]  # class indices 0..2; index 3 is the ignore label
IGNORE = 3
TABLE = torch.from_numpy(region_index_table(LABEL_VALUES, [[1, 2], [2]]))


def _losses() -> dict[str, tuple[nn.Module, int]]:
    """Each loss with the number of network outputs it expects."""
    return {
        "classes": (DiceCELoss(ignore_index=IGNORE), 3),
        "classes_batch_dice": (DiceCELoss(batch_dice=True, ignore_index=IGNORE), 3),
        "regions": (RegionDiceBCELoss(TABLE, ignore_index=IGNORE), 2),
        "regions_batch_dice": (RegionDiceBCELoss(TABLE, batch_dice=True, ignore_index=IGNORE), 2),
    }


def _target(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """(B, 1, *S) class indices with about a third of the voxels ignored."""
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, 3, size=shape)
    seg[rng.random(shape) < 0.35] = IGNORE
    return torch.from_numpy(seg[:, None].astype(np.int16))


@pytest.mark.parametrize("name", list(_losses()))
def test_ignored_voxels_change_neither_the_loss_nor_its_gradients(name: str) -> None:
    loss_fn, outputs = _losses()[name]
    target = _target((2, 6, 5, 4))
    ignored = (target == IGNORE).expand(-1, outputs, -1, -1, -1)
    logits = torch.randn(2, outputs, 6, 5, 4, requires_grad=True)
    loss = loss_fn(logits, target)
    loss.backward()
    other = logits.detach().clone()
    other[ignored] = torch.randn(int(ignored.sum())) * 50  # anything at all under the ignore label
    other.requires_grad_(True)
    other_loss = loss_fn(other, target)
    other_loss.backward()
    assert torch.allclose(loss, other_loss, atol=1e-6)
    assert torch.allclose(logits.grad, other.grad, atol=1e-7)
    assert float(logits.grad[ignored].abs().max()) == 0.0


@pytest.mark.parametrize("name", list(_losses()))
def test_with_deep_supervision_the_downsampled_ignore_mask_stays_correct(name: str) -> None:
    """Targets downsampled as training downsamples them: every scale ignores exactly its ignore voxels."""
    loss_fn, outputs = _losses()[name]
    seg = _target((2, 8, 8, 8), seed=1)
    targets = DeepSupervisionTargetsTransform([[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]])(
        seg=seg.numpy())["target"]
    targets = [torch.from_numpy(t) for t in targets]
    ds = DeepSupervisionLoss(loss_fn, [4 / 7, 2 / 7, 1 / 7])
    logits = [torch.randn(2, outputs, *t.shape[2:]) for t in targets]
    changed = []
    for out, t in zip(logits, targets):
        other = out.clone()
        mask = (t == IGNORE).expand(-1, outputs, *[-1] * (t.ndim - 2))
        other[mask] = -other[mask] * 30
        changed.append(other)
    assert any(bool((t == IGNORE).any()) for t in targets[1:])  # the low resolutions do hold ignore voxels
    assert torch.allclose(ds(logits, targets), ds(changed, targets), atol=1e-6)


def test_changing_the_image_only_under_ignore_voxels_gives_the_same_gradients() -> None:
    """A per-voxel network (1x1 convs) sees each voxel alone, so an image that differs only where the
    label is `ignore` must give exactly the same weight gradients when ignore voxels are left out."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 8, 1), nn.LeakyReLU(), nn.Conv3d(8, 2, 1))
    target = _target((2, 6, 6, 6), seed=2)
    image = torch.randn(2, 1, 6, 6, 6)
    altered = image.clone()
    altered[target == IGNORE] = torch.randn(int((target == IGNORE).sum())) * 100
    grads = []
    for x in (image, altered):
        net.zero_grad()
        RegionDiceBCELoss(TABLE, ignore_index=IGNORE)(net(x), target).backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_region_loss_is_near_zero_for_confident_correct_sigmoids() -> None:
    target = torch.tensor([[[[0, 1, 2, 2]]]])  # (1, 1, 1, 4): background, label 1, label 2 twice
    regions = TABLE[target[:, 0].long()].movedim(-1, 1).float()  # region 0 = {1, 2}, region 1 = {2}
    logits = (regions * 2 - 1) * 30
    loss = RegionDiceBCELoss(TABLE)(logits, target)
    assert float(loss) < 1e-4
    assert float(RegionDiceBCELoss(TABLE)(-logits, target)) > 1.9  # Dice 0 and a large BCE


def test_pseudo_dice_counts_skip_ignore_voxels() -> None:
    target = torch.tensor([[[[[1, 1, 3, 3, 0]]]]])  # (B, 1, Z, Y, X)
    logits = torch.zeros(1, 3, 1, 1, 5)
    logits[0, 1] = 5.0  # predicts class 1 everywhere
    counts = confusion_counts(logits, target, 3, ignore_index=IGNORE)
    assert counts[:, 0].tolist() == [2, 1, 0]  # TP 2, FP only the background voxel, not the ignored ones
    region_logits = torch.full((1, 2, 1, 1, 5), 5.0)
    region_counts = region_confusion_counts(region_logits, target, TABLE, ignore_index=IGNORE)
    assert region_counts[:, 0].tolist() == [2, 1, 0] and region_counts[:, 1].tolist() == [0, 3, 0]
