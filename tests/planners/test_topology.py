"""Network topology: pooling, kernel sizes and patch padding, written out by hand."""

from __future__ import annotations

import pytest

from autounet.errors import PlansError
from autounet.planners.topology import features_per_stage, network_plan, plan_topology


def test_isotropic_128_cube() -> None:
    topo = plan_topology([1.0, 1.0, 1.0], [128, 128, 128])
    # 128 -> 64 -> 32 -> 16 -> 8 -> 4: five poolings, 4-voxel bottleneck
    assert topo.n_stages == 6
    assert topo.strides == [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert topo.kernel_sizes == [[3, 3, 3]] * 6
    assert topo.patch_size == [128, 128, 128]
    assert topo.shape_per_stage[-1] == [4, 4, 4]
    assert topo.divisor == [32, 32, 32]


def test_anisotropic_thick_slices() -> None:
    # spacing 3 x 0.7 x 0.7: in-plane pools twice alone (0.7 -> 1.4 -> 2.8) with 1x3x3 kernels;
    # then z (3 < 2 x 2.8) joins and gets kernel 3; z stops at 5 (< 8), in-plane pools once more.
    topo = plan_topology([3.0, 0.7, 0.7], [40, 256, 256])
    assert topo.strides == [
        [1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2],
    ]
    assert topo.kernel_sizes == [
        [1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3],
    ]
    assert topo.patch_size == [40, 256, 256]
    assert topo.shape_per_stage == [
        [40, 256, 256], [40, 128, 128], [40, 64, 64], [20, 32, 32], [10, 16, 16], [5, 8, 8], [5, 4, 4],
    ]


def test_patch_is_padded_to_total_stride() -> None:
    # 100 -> 50 -> 25 -> 13 -> 7 (stop, 7 < 8): 4 poolings, divisor 16, 100 -> 112
    topo = plan_topology([1.0, 1.0, 1.0], [100, 100, 100])
    assert topo.n_stages == 5
    assert topo.patch_size == [112, 112, 112]
    assert all(p % d == 0 for p, d in zip(topo.patch_size, topo.divisor))


def test_lone_axis_needs_three_times_the_min_edge() -> None:
    # 2D 40 x 10: both pool (20 x 5); axis 0 alone at 20 >= 12 pools again; at 10 < 12 it stops
    topo = plan_topology([1.0, 1.0], [40, 10])
    assert topo.strides == [[1, 1], [2, 2], [2, 1]]
    assert topo.kernel_sizes == [[3, 3], [3, 3], [3, 3]]
    assert topo.patch_size == [40, 10]


def test_max_stages_caps_the_depth() -> None:
    topo = plan_topology([1.0, 1.0, 1.0], [128, 128, 128], max_stages=3)
    assert topo.n_stages == 3
    assert topo.kernel_sizes[-1] == [3, 3, 3]


def test_features_are_capped() -> None:
    assert features_per_stage(7, 3) == [32, 64, 128, 256, 320, 320, 320]
    assert features_per_stage(8, 2) == [32, 64, 128, 256, 512, 512, 512, 512]


def test_network_plans_per_architecture() -> None:
    topo = plan_topology([1.0, 1.0, 1.0], [128, 128, 128])
    plain = network_plan(topo, "plain_unet")
    assert plain.n_conv_encoder == [2] * 6 and plain.n_conv_decoder == [2] * 5
    res = network_plan(topo, "resenc_unet")
    assert res.n_conv_encoder == [1, 3, 4, 6, 6, 6] and res.n_conv_decoder == [1] * 5
    plain.validate("test")
    with pytest.raises(PlansError, match="architecture 'vit'"):
        network_plan(topo, "vit")
