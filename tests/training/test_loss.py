"""Loss values checked against sums done by hand on 4-voxel examples."""

from __future__ import annotations

import math

import pytest
import torch

from autounet.training.loss import (
    DeepSupervisionLoss,
    DiceCELoss,
    SoftDiceLoss,
    deep_supervision_scales,
    deep_supervision_weights,
)

LN2 = math.log(2.0)


def _target(*values: int) -> torch.Tensor:
    return torch.tensor(values).view(1, 1, -1)


def test_uniform_prediction_dice_and_ce_by_hand() -> None:
    logits = torch.zeros(1, 2, 4)  # softmax 0.5 everywhere
    target = _target(0, 1, 1, 0)
    # foreground: intersection 0.5*2 = 1, sum(p) = 2, sum(g) = 2 -> Dice = 2/4
    assert SoftDiceLoss()(logits, target).item() == pytest.approx(0.5, abs=1e-5)
    assert DiceCELoss()(logits, target).item() == pytest.approx(0.5 + LN2, abs=1e-5)


def test_ignored_voxels_count_in_neither_term() -> None:
    logits = torch.zeros(1, 2, 4)
    logits[0, 1, 2:] = 50.0  # confident wrong-looking values on ignored voxels must not matter
    target = _target(0, 1, -1, -1)
    # valid voxels 0 and 1: intersection 0.5, sum(p) 1, sum(g) 1 -> Dice 0.5; CE ln 2
    assert DiceCELoss()(logits, target).item() == pytest.approx(0.5 + LN2, abs=1e-5)


def test_batch_dice_pools_the_sums_over_the_batch() -> None:
    logits = torch.zeros(2, 2, 4)
    target = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]]])
    # per sample: A = 1 / (2 + 2) * 2 = 0.5, B = 0 / (2 + 0) = ~0 -> mean 0.25
    assert SoftDiceLoss(batch_dice=False)(logits, target).item() == pytest.approx(0.75, abs=1e-5)
    # batch: intersection 1, sum(p) 4, sum(g) 2 -> 2/6
    assert SoftDiceLoss(batch_dice=True)(logits, target).item() == pytest.approx(1 - 1 / 3, abs=1e-5)


def test_confident_correct_prediction_has_almost_zero_loss() -> None:
    target = _target(0, 1, 2, 1)
    logits = torch.nn.functional.one_hot(target.view(-1), 3).T[None].float() * 30.0
    assert DiceCELoss()(logits, target).item() == pytest.approx(0.0, abs=1e-4)


def test_background_is_excluded_from_dice() -> None:
    # only background present and predicted: foreground Dice is (0 + s) / (0 + s) = 1 -> loss 0
    logits = torch.tensor([[[30.0, 30.0], [0.0, 0.0]]])
    assert SoftDiceLoss()(logits, _target(0, 0)).item() == pytest.approx(0.0, abs=1e-5)


def test_all_ignored_patch_gives_zero_loss_and_finite_gradient() -> None:
    logits = torch.zeros(1, 2, 4, requires_grad=True)
    loss = DiceCELoss()(logits, _target(-1, -1, -1, -1))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all()


def test_deep_supervision_weights_halve_and_drop_the_lowest() -> None:
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert deep_supervision_weights(4) == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    ddp = deep_supervision_weights(3, distributed=True)
    assert ddp[-1] > 0 and ddp == pytest.approx([2 / 3, 1 / 3, 0.0], abs=1e-5)


def test_deep_supervision_loss_is_the_weighted_sum() -> None:
    base = DiceCELoss()
    outputs = [torch.zeros(1, 2, 4), torch.zeros(1, 2, 2), torch.randn(1, 2, 1)]
    targets = [_target(0, 1, 1, 0), _target(1, 1), _target(0)]
    expected = 2 / 3 * base(outputs[0], targets[0]) + 1 / 3 * base(outputs[1], targets[1])
    value = DeepSupervisionLoss(base, deep_supervision_weights(3))(outputs, targets)
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)


def test_deep_supervision_scales_from_strides() -> None:
    strides = [[1, 1, 1], [2, 2, 1], [2, 2, 2]]
    assert deep_supervision_scales(strides) == [[1.0, 1.0, 1.0], [0.5, 0.5, 1.0]]
    assert deep_supervision_scales([[1, 1]]) == [[1.0, 1.0]]
