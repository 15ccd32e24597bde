"""Feature-map sum and the training-memory byte model on a tiny network, by hand."""

from __future__ import annotations

import pytest

from autounet.errors import PlansError
from autounet.planners.memory import (
    DEFAULT_CONSTANTS,
    MIB,
    estimate_training_memory,
    estimate_training_memory_bytes,
    feature_map_voxels,
    max_batch_size,
    parameter_count,
)
from autounet.planners.plans import NetworkPlan


def tiny(architecture: str = "plain_unet", n_enc: list[int] | None = None, n_dec: list[int] | None = None) -> NetworkPlan:
    """2D, 2 stages: 8x8 at 32 features, 4x4 at 64 features."""
    return NetworkPlan(architecture=architecture, features_per_stage=[32, 64], kernel_sizes=[[3, 3], [3, 3]],
                       strides=[[1, 1], [2, 2]], n_conv_encoder=n_enc or [2, 2], n_conv_decoder=n_dec or [2])


def test_feature_map_voxels_plain() -> None:
    # encoder: 2 x 32 x 64 + 2 x 64 x 16; decoder: transposed 32 x 64, 2 convs 2 x 32 x 64, head 3 x 64
    assert feature_map_voxels(tiny(), [8, 8], in_channels=1, num_classes=3) == 4096 + 2048 + 2048 + 4096 + 192


def test_feature_map_voxels_residual_encoder_counts_projections() -> None:
    # stage 0: conv, conv, projection (1 -> 32 channels): 3 x 32 x 64; stage 1 (strided): 3 x 64 x 16;
    # decoder: transposed 32 x 64, 1 conv 32 x 64, head 3 x 64
    net = tiny("resenc_unet", [1, 1], [1])
    assert feature_map_voxels(net, [8, 8], 1, 3) == 6144 + 3072 + 2048 + 2048 + 192


def test_parameter_count_plain() -> None:
    # conv = cin*cout*9 + bias + 2 x cout (norm affine); transposed 64*32*4 + 32; head 32*3 + 3
    expected = (384 + 9312) + (18624 + 37056) + 8224 + (18528 + 9312) + 99
    assert parameter_count(tiny(), 1, 3) == expected == 101539


def test_byte_model_breakdown() -> None:
    b = estimate_training_memory(tiny(), [8, 8], batch_size=2, in_channels=1, num_classes=3)
    # per sample, fp16 activations: conv blocks 2 tensors x 2 B: enc 16384 + 8192, dec 16384;
    # concat 64 ch x 64 x 2 B = 8192; logits 3 x 64 x 2 B = 384
    assert b.activations == 2 * (16384 + 8192 + 16384 + 8192 + 384)
    assert b.loss == 2 * (3 * 64 * 13 + 64 * 4)
    assert b.inputs == 2 * (64 * 6)
    assert b.transient == 2 * (3 * 32 * 64 * 2)
    assert b.parameters == 101539 * 14
    assert b.allocated == b.total - DEFAULT_CONSTANTS.context_bytes
    assert b.total == estimate_training_memory_bytes(tiny(), [8, 8], 2, 1, 3)
    assert b.workspace == 256 * MIB


def test_fp32_needs_more_than_mixed_precision() -> None:
    amp = estimate_training_memory_bytes(tiny(), [8, 8], 4, 1, 3, mixed_precision=True)
    fp32 = estimate_training_memory_bytes(tiny(), [8, 8], 4, 1, 3, mixed_precision=False)
    assert fp32 > amp


def test_max_batch_size_is_exact() -> None:
    net = tiny()
    one = estimate_training_memory_bytes(net, [8, 8], 1, 1, 3)
    per = estimate_training_memory_bytes(net, [8, 8], 2, 1, 3) - one
    budget = one + 10 * per + per // 2
    bs = max_batch_size(net, [8, 8], 1, 3, budget)
    assert bs == 11
    assert estimate_training_memory_bytes(net, [8, 8], bs, 1, 3) <= budget
    assert estimate_training_memory_bytes(net, [8, 8], bs + 1, 1, 3) > budget
    assert max_batch_size(net, [8, 8], 1, 3, one - 1) == 0


def test_dimension_mismatch_is_rejected() -> None:
    with pytest.raises(PlansError, match="3 axes"):
        feature_map_voxels(tiny(), [8, 8, 8], 1, 3)


def test_the_residual_parameter_count_is_the_built_network_s() -> None:
    # stem 1->32 (288 + 32 + 64), two 32->32 convs (2 x (9216 + 96)), stage 1: 32->64 (18432 + 192),
    # 64->64 (36864 + 192), pooled 1x1 projection 32->64 (2048 + 192); transposed 64*32*4 + 32,
    # one decoder conv 64->32 (18432 + 96), head 32*3 + 3
    net = tiny("resenc_unet", [1, 1], [1])
    expected = 384 + 2 * 9312 + 18624 + 37056 + 2240 + 8224 + 18528 + 99
    assert parameter_count(net, 1, 3) == expected


def test_a_network_that_does_not_report_its_feature_maps_has_no_memory_model() -> None:
    from torch import nn

    from autounet.networks.registry import _REGISTRY, register_network

    class Opaque(nn.Module):
        def __init__(self, network_plan: NetworkPlan, in_channels: int, num_classes: int,
                     deep_supervision: bool = True) -> None:
            super().__init__()
            self.deep_supervision = deep_supervision
            self.conv = nn.Conv2d(in_channels, num_classes, 1)

    register_network("opaque_test_net")(Opaque)
    try:
        net = NetworkPlan(architecture="opaque_test_net", features_per_stage=[8], kernel_sizes=[[3, 3]],
                          strides=[[1, 1]], n_conv_encoder=[1], n_conv_decoder=[])
        with pytest.raises(PlansError, match="'opaque_test_net' does not report its feature maps"):
            estimate_training_memory_bytes(net, [8, 8], 2, 1, 3)
    finally:
        del _REGISTRY["opaque_test_net"]


def test_planning_leaves_torch_random_state_alone() -> None:
    """The planner builds networks shape-only; that must not draw from the caller's random stream."""
    import torch

    from autounet.planners import memory

    memory._shape_only_network.cache_clear()  # so that the network is really built here
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    estimate_training_memory_bytes(tiny("plain_unet", [3, 1], [1]), [8, 8], 2, 1, 3)
    assert torch.equal(torch.rand(4), expected)
