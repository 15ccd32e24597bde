"""Plain and residual-encoder U-Nets: shapes, deep supervision, sizes, init, errors, repr."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from autounet.errors import PlansError
from autounet.networks.residual import ResidualBlock, ResidualEncoderUNet
from autounet.networks.unet import PlainUNet, UNetBase
from autounet.planners.plans import NetworkPlan

NETWORKS = {"plain_unet": PlainUNet, "resenc_unet": ResidualEncoderUNet}
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

PlanFactory = Callable[..., NetworkPlan]


def build(plan: NetworkPlan, in_channels: int = 2, num_classes: int = 3, deep_supervision: bool = True) -> UNetBase:
    return NETWORKS[plan.architecture](plan, in_channels, num_classes, deep_supervision)


def measured_feature_map_size(model: nn.Module, x: torch.Tensor) -> int:
    """Sum of output elements of every conv that actually ran, per sample, via forward hooks."""
    total = 0

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        total += output[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, CONV_TYPES)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("architecture", list(NETWORKS))
@pytest.mark.parametrize(("dims", "anisotropic", "patch", "low_res"), [
    (3, False, (16, 16, 16), [(16, 16, 16), (8, 8, 8)]),
    (3, True, (16, 16, 16), [(16, 16, 16), (16, 8, 8)]),
    (2, False, (32, 32), [(32, 32), (16, 16)]),
    (2, True, (32, 32), [(32, 32), (32, 16)]),
])
def test_deep_supervision_outputs_full_resolution_first(architecture: str, dims: int, anisotropic: bool,
                                                         patch: tuple[int, ...], low_res: list[tuple[int, ...]],
                                                         make_plan: PlanFactory) -> None:
    model = build(make_plan(architecture, dims, anisotropic))
    out = model(torch.randn(2, 2, *patch))
    assert isinstance(out, list) and len(out) == 2  # n_stages - 1
    assert [tuple(o.shape) for o in out] == [(2, 3, *size) for size in low_res]


@pytest.mark.parametrize("architecture", list(NETWORKS))
def test_without_deep_supervision_only_the_full_resolution_head_runs(architecture: str, make_plan: PlanFactory) -> None:
    torch.manual_seed(0)
    model = build(make_plan(architecture, 3, anisotropic=True))
    model.eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        all_heads = model(x)
    calls: list[int] = []
    model.decoder.heads[1].register_forward_hook(lambda *_: calls.append(1))
    model.deep_supervision = False
    with torch.no_grad():
        single = model(x)
    assert isinstance(single, torch.Tensor)
    assert torch.equal(single, all_heads[0])
    assert calls == []


def test_feature_map_size_hand_computed_plain_two_stages() -> None:
    plan = NetworkPlan("plain_unet", [2, 4], [[3, 3], [3, 3]], [[1, 1], [2, 2]], [2, 2], [1])
    model = PlainUNet(plan, in_channels=1, num_classes=3)
    # encoder: 2 convs x 2ch x 64 + 2 convs x 4ch x 16 = 256 + 128
    # decoder: transposed conv 2ch x 64 + 1 conv 2ch x 64 + head 3 x 64 = 128 + 128 + 192
    assert model.feature_map_size([8, 8]) == 256 + 128 + 128 + 128 + 192


def test_feature_map_size_hand_computed_resenc_two_stages() -> None:
    plan = NetworkPlan("resenc_unet", [2, 4], [[3, 3], [3, 3]], [[1, 1], [2, 2]], [1, 1], [1])
    model = ResidualEncoderUNet(plan, in_channels=1, num_classes=3)
    # stem 2x64; stage 0 block (no projection) 2 x 2x64; stage 1 block: 2 convs + projection, 3 x 4x16
    # decoder: transposed conv 2x64, conv 2x64, head 3x64
    assert model.feature_map_size([8, 8]) == 128 + 256 + 192 + 128 + 128 + 192


def test_feature_map_size_counts_only_the_heads_that_run(make_plan: PlanFactory) -> None:
    model = build(make_plan("plain_unet", 2), num_classes=3)
    with_ds = model.feature_map_size([32, 32])
    model.deep_supervision = False
    assert with_ds - model.feature_map_size([32, 32]) == 3 * 16 * 16


@pytest.mark.parametrize("architecture", list(NETWORKS))
@pytest.mark.parametrize("blocks", [[], ["se"], ["attention_gate"], ["se", "attention_gate"]])
@pytest.mark.parametrize("dims", [2, 3])
def test_feature_map_size_equals_what_the_convs_produce(architecture: str, blocks: list[str], dims: int,
                                                       make_plan: PlanFactory) -> None:
    model = build(make_plan(architecture, dims, anisotropic=True, blocks=blocks))
    patch = (16,) * dims
    assert model.feature_map_size(patch) == measured_feature_map_size(model, torch.randn(1, 2, *patch))


@pytest.mark.parametrize("architecture", list(NETWORKS))
@pytest.mark.parametrize("blocks", [[], ["se", "attention_gate"]])
@pytest.mark.parametrize(("dims", "patch"), [(3, [16, 16, 16]), (2, [32, 32])])
def test_the_planner_memory_model_reads_the_network_own_feature_maps(architecture: str, blocks: list[str],
                                                                    dims: int, patch: list[int],
                                                                    make_plan: PlanFactory) -> None:
    """The planner asks the blocks (built shape-only) instead of modelling the U-Net again: same
    maps as the real network, the same proxy, and parameters that sum to the network's own."""
    from autounet.planners import memory

    plan = make_plan(architecture, dims, anisotropic=True, blocks=blocks)
    model = build(plan, in_channels=2, num_classes=3, deep_supervision=True)
    assert memory.network_feature_maps(plan, patch, 2, 3) == model.feature_maps(patch)
    assert model.feature_map_size(patch) == memory.feature_map_voxels(plan, patch, 2, 3)
    assert memory.parameter_count(plan, 2, 3) == model.num_parameters()


def test_the_feature_maps_name_every_tensor_a_stage_keeps(make_plan: PlanFactory) -> None:
    """Hand-counted maps of a 2-stage residual network at 8x8: stem, residual blocks (with the
    pooled shortcut and projection of the strided one), then the decoder stage."""
    from autounet.networks.description import NetworkPlan

    plan = NetworkPlan("resenc_unet", [4, 8], [[3, 3], [3, 3]], [[1, 1], [2, 2]], [1, 1], [1])
    maps = [(m.kind, m.channels, m.voxels) for m in build(plan, in_channels=1, num_classes=2).feature_maps([8, 8])]
    assert maps == [
        ("conv_block", 4, 64),  # stem
        ("conv_block", 4, 64), ("conv_block", 4, 64), ("residual_sum", 4, 64),  # stage 0: identity shortcut
        ("conv_block", 8, 16), ("conv_block", 8, 16),  # stage 1, strided
        ("pool", 4, 16), ("projection", 8, 16), ("residual_sum", 8, 16),
        ("transposed_conv", 4, 64), ("concat", 8, 64), ("conv_block", 4, 64), ("head", 2, 64),
    ]


@pytest.mark.parametrize("architecture", list(NETWORKS))
def test_backward_reaches_every_parameter(architecture: str, make_plan: PlanFactory) -> None:
    model = build(make_plan(architecture, 2, blocks=["se", "attention_gate"]))
    out = model(torch.randn(2, 2, 32, 32))
    sum(o.float().pow(2).mean() for o in out).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_kaiming_normal_init_with_zero_biases() -> None:
    torch.manual_seed(0)
    plan = NetworkPlan("plain_unet", [32, 64], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [2, 2], [2])
    model = PlainUNet(plan, 1, 2)
    conv = model.decoder.convs[0][0].conv  # 64 -> 32 channels, 3x3x3: fan_in 1728
    expected_std = math.sqrt(2.0 / (1 + 0.01**2) / (64 * 27))
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    assert abs(conv.weight.mean().item()) < 0.1 * expected_std
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.modules() if isinstance(m, CONV_TYPES))


def test_same_seed_gives_same_weights(make_plan: PlanFactory) -> None:
    plan = make_plan("plain_unet", 2)
    torch.manual_seed(3)
    a = PlainUNet(plan, 1, 2).state_dict()
    torch.manual_seed(3)
    b = PlainUNet(plan, 1, 2).state_dict()
    torch.manual_seed(4)
    c = PlainUNet(plan, 1, 2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.stages.0.0.conv.weight"], c["encoder.stages.0.0.conv.weight"])


def test_decoder_conv_counts_are_listed_from_the_bottleneck_up(make_plan: PlanFactory) -> None:
    plan = make_plan("plain_unet", 2)
    plan.n_conv_decoder = [1, 3]  # stage after the bottleneck: 1 conv; full resolution: 3 convs
    model = PlainUNet(plan, 1, 2)
    assert [len(stage) for stage in model.decoder.convs] == [3, 1]  # indexed by resolution


def test_resenc_blocks_per_stage_and_projections(make_plan: PlanFactory) -> None:
    plan = make_plan("resenc_unet", 3)
    plan.n_conv_encoder = [1, 3, 2]
    model = ResidualEncoderUNet(plan, 1, 2)
    stages = model.encoder.stages
    assert [len(stage) for stage in stages] == [1, 3, 2]
    assert [[block.projects for block in stage] for stage in stages] == [[False], [True, False, False], [True, False]]
    # the residual branch starts at zero, so every block starts as its shortcut
    assert all(torch.count_nonzero(m.conv2.norm.weight) == 0 for m in model.modules() if isinstance(m, ResidualBlock))


def test_single_stage_network_still_segments() -> None:
    plan = NetworkPlan("plain_unet", [4], [[3, 3]], [[1, 1]], [2], [])
    model = PlainUNet(plan, 1, 3)
    out = model(torch.randn(1, 1, 8, 8))
    assert [tuple(o.shape) for o in out] == [(1, 3, 8, 8)]
    assert model.feature_map_size([8, 8]) == 2 * 4 * 64 + 3 * 64


def test_input_not_divisible_by_total_stride_is_refused(make_plan: PlanFactory) -> None:
    model = build(make_plan("plain_unet", 2, anisotropic=True))  # total stride [2, 4]
    with pytest.raises(ValueError, match=r"not divisible by the total stride \[2, 4\] on axes \[1\]"):
        model(torch.randn(1, 2, 32, 30))
    with pytest.raises(ValueError, match="expects input"):
        model(torch.randn(1, 1, 32, 32))


def test_invalid_plans_raise_plans_error_naming_the_key(make_plan: PlanFactory) -> None:
    plan = make_plan("plain_unet", 2)
    plan.n_conv_decoder = [2]
    with pytest.raises(PlansError, match="network.n_conv_decoder"):
        PlainUNet(plan, 1, 2)
    plan = make_plan("plain_unet", 2)
    plan.strides[0] = [2, 2]
    with pytest.raises(PlansError, match=r"network.strides\[0\]"):
        PlainUNet(plan, 1, 2)


@pytest.mark.parametrize("architecture", list(NETWORKS))
def test_print_shows_the_topology_and_parameter_count(architecture: str, make_plan: PlanFactory) -> None:
    model = build(make_plan(architecture, 3, anisotropic=True, blocks=["se"]))
    text = repr(model)
    n_params = sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == n_params
    assert f"parameters={n_params:,}" in text
    assert f"architecture={architecture}, 3D, in_channels=2, num_classes=3" in text
    lines = text.splitlines()
    header = lines.index("  stage  features  kernel  stride  encoder  decoder")
    assert lines[header + 1].split() == ["0", "4", "1x3x3", "1x1x1", str(model.plan.n_conv_encoder[0]),
                                         str(model.plan.n_conv_decoder[1])]
    assert lines[header + 3].split()[-1] == "-"  # the bottleneck has no decoder stage
    assert "Conv3d(2->4, k=1x3x3, s=1x1x1)" in text


def test_num_parameters_trainable_only(make_plan: PlanFactory) -> None:
    model = build(make_plan("plain_unet", 2))
    total = model.num_parameters()
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    assert model.num_parameters(trainable_only=True) == total - sum(p.numel() for p in model.encoder.parameters())
