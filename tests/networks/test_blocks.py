"""Building blocks: operator selection, sizes reported vs produced, feature-map accounting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autounet.networks.blocks import ConvNormAct, StackedConvs, as_tuple, conv_output_size, dims_of, ops_for_dims


def test_ops_for_dims_picks_the_matching_operator_classes() -> None:
    assert tuple(ops_for_dims(2)) == (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.Dropout2d)
    conv, tconv, norm, dropout = ops_for_dims(3)
    assert (conv, tconv, norm, dropout) == (nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d, nn.Dropout3d)
    assert dims_of(nn.Conv3d) == 3 and dims_of(nn.ConvTranspose2d) == 2


def test_ops_for_dims_rejects_unsupported_dims() -> None:
    with pytest.raises(ValueError, match="1, 2 or 3"):
        ops_for_dims(4)
    with pytest.raises(ValueError, match="not a torch"):
        dims_of(nn.Linear)


def test_as_tuple_broadcasts_scalars_and_checks_length() -> None:
    assert as_tuple(3, 3, "k") == (3, 3, 3)
    assert as_tuple([1, 3, 3], 3, "k") == (1, 3, 3)
    with pytest.raises(ValueError, match="kernel: needs 3 entries"):
        as_tuple([3, 3], 3, "kernel")


def test_conv_output_size_follows_torch_formula() -> None:
    # (n + 2p - k) // s + 1: 7 -> 4 with k3 p1 s2; 5 -> 5 with k3 p1 s1; 6 -> 3 with k1 p0 s2
    assert conv_output_size([7, 5, 6], [3, 3, 1], [2, 1, 2], [1, 1, 0]) == (4, 5, 3)


def test_conv_norm_act_defaults_match_the_anchor() -> None:
    block = ConvNormAct(nn.Conv3d, 2, 4, 3)
    assert isinstance(block.norm, nn.InstanceNorm3d)
    assert block.norm.eps == 1e-5 and block.norm.affine
    assert isinstance(block.nonlin, nn.LeakyReLU)
    assert block.nonlin.negative_slope == 0.01 and block.nonlin.inplace
    assert block.conv.bias is not None
    assert block.conv.padding == (1, 1, 1)


def test_conv_norm_act_without_nonlin_and_bias() -> None:
    block = ConvNormAct(nn.Conv2d, 2, 4, [1, 3], nonlin=None, conv_bias=False)
    assert isinstance(block.nonlin, nn.Identity)
    assert block.conv.bias is None
    assert block.conv.padding == (0, 1)
    assert "Conv2d(2->4, k=1x3, s=1x1), InstanceNorm2d" == repr(block)


@pytest.mark.parametrize(("size", "kernel", "stride"), [
    ((8, 8, 8), 3, 2),
    ((5, 7, 9), 3, 2),
    ((4, 8, 8), [1, 3, 3], [1, 2, 2]),
])
def test_conv_norm_act_reports_the_size_it_produces(size: tuple[int, ...], kernel: object, stride: object) -> None:
    block = ConvNormAct(nn.Conv3d, 1, 4, kernel, stride)
    out = block(torch.randn(1, 1, *size))
    assert tuple(out.shape[2:]) == block.output_size(size)
    assert block.feature_map_size(size) == out[0].numel()


def test_conv_norm_act_feature_map_size_hand_computed() -> None:
    # 4 output channels on an 8^3 input with stride 2 -> 4 x 4^3 = 256
    assert ConvNormAct(nn.Conv3d, 2, 4, 3, 2).feature_map_size((8, 8, 8)) == 256


def test_stacked_convs_first_conv_carries_the_stride() -> None:
    stack = StackedConvs(3, nn.Conv2d, 1, 4, 3, first_stride=2)
    assert [block.stride for block in stack] == [(2, 2), (1, 1), (1, 1)]
    assert [block.in_channels for block in stack] == [1, 4, 4]
    assert stack.output_size((8, 8)) == (4, 4)
    # three convs, each 4 channels x 4x4 voxels
    assert stack.feature_map_size((8, 8)) == 3 * 4 * 16
    assert tuple(stack(torch.randn(2, 1, 8, 8)).shape) == (2, 4, 4, 4)


def test_stacked_convs_needs_at_least_one_conv() -> None:
    with pytest.raises(ValueError, match="at least one"):
        StackedConvs(0, nn.Conv2d, 1, 4, 3)
