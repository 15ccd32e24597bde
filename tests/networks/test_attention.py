"""Optional blocks: name validation, behaviour of SE and the attention gate, clean ablations."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from autounet.errors import PlansError
from autounet.networks.attention import AttentionGate, SqueezeExcitation, se_hidden_channels, validate_blocks
from autounet.networks.registry import build_network
from autounet.planners.plans import NetworkPlan

BLOCK_MODULE_PREFIX = {"se": "encoder.se.", "attention_gate": "decoder.gates."}

PlanFactory = Callable[..., NetworkPlan]


def test_validate_blocks_accepts_known_names() -> None:
    assert validate_blocks([]) == frozenset()
    assert validate_blocks(["se", "attention_gate"]) == {"se", "attention_gate"}


def test_unknown_block_names_the_key_and_the_valid_names() -> None:
    expected = r"network.blocks: unknown block 'cbam'; valid names are \['attention_gate', 'se'\]"
    with pytest.raises(PlansError, match=expected):
        validate_blocks(["se", "cbam"])
    with pytest.raises(PlansError, match="listed twice"):
        validate_blocks(["se", "se"])


@pytest.mark.parametrize("architecture", ["plain_unet", "resenc_unet"])
def test_networks_refuse_unknown_blocks(architecture: str, make_plan: PlanFactory) -> None:
    with pytest.raises(PlansError, match="network.blocks"):
        build_network(architecture, make_plan(architecture, 2, blocks=["transformer"]), 1, 2)


@pytest.mark.parametrize(("channels", "hidden"), [(4, 4), (32, 8), (64, 8), (256, 16), (320, 20)])
def test_se_width_is_channels_over_16_with_a_minimum(channels: int, hidden: int) -> None:
    assert se_hidden_channels(channels) == hidden


def test_se_scales_each_channel_by_one_factor_in_0_1() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation(nn.Conv3d, 8)
    x = torch.rand(2, 8, 4, 5, 6) + 0.5
    ratio = se(x) / x
    per_channel = ratio.flatten(2)
    assert torch.allclose(per_channel, per_channel[..., :1].expand_as(per_channel))
    assert bool(((ratio > 0) & (ratio < 1)).all())
    assert se.feature_map_size((4, 5, 6)) == 8 + 8


def test_attention_gate_keeps_the_skip_shape_and_only_attenuates() -> None:
    torch.manual_seed(0)
    gate = AttentionGate(nn.Conv3d, skip_channels=4, gating_channels=8, stride=[1, 2, 2])
    skip = torch.randn(2, 4, 4, 8, 8)
    gating = torch.randn(2, 8, 4, 4, 4)
    out = gate(skip, gating)
    assert out.shape == skip.shape
    assert bool((out.abs() <= skip.abs()).all())
    assert not torch.allclose(out, skip)
    # theta and phi (2 channels each) and psi (1 channel) at the gating grid of 64 voxels
    assert gate.feature_map_size((4, 4, 4)) == (2 + 2 + 1) * 64


@pytest.mark.parametrize("architecture", ["plain_unet", "resenc_unet"])
@pytest.mark.parametrize("block", ["se", "attention_gate"])
def test_ablation_pair_differs_only_in_the_named_block(architecture: str, block: str,
                                                       make_plan: PlanFactory) -> None:
    torch.manual_seed(0)
    without = build_network(architecture, make_plan(architecture, 3, anisotropic=True), 2, 3)
    torch.manual_seed(0)
    with_block = build_network(architecture, make_plan(architecture, 3, anisotropic=True, blocks=[block]), 2, 3)
    off, on = without.state_dict(), with_block.state_dict()
    added = set(on) - set(off)
    assert set(off) <= set(on)
    assert added and all(key.startswith(BLOCK_MODULE_PREFIX[block]) for key in added)
    # same seed: every shared layer starts from identical weights
    assert [key for key in off if not torch.equal(off[key], on[key])] == []

    # ... and the block changes the output while keeping every shape
    without.eval()
    with_block.eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        out_off, out_on = without(x), with_block(x)
    assert [o.shape for o in out_off] == [o.shape for o in out_on]
    assert not torch.allclose(out_off[0], out_on[0])
