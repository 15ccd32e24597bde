"""Optional blocks switched on by name in `network.blocks` of the plans, for ablations.

- "se": squeeze-and-excitation (Hu et al. 2018) after every encoder stage: a per-channel
  gate computed from the stage's globally pooled features.
- "attention_gate": additive attention gate (Oktay et al. 2018) on every skip connection:
  the coarser decoder feature decides which skip voxels pass to the decoder.

Both only *add* modules; with the block off the network is exactly the plain one, so a
pair of plans that differ only in `blocks` is a clean ablation.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
import torch.nn.functional as F
from torch import nn

from autounet.errors import PlansError
from autounet.networks.blocks import as_tuple, dims_of, parameter_count
from autounet.networks.feature_maps import GATE_CONV, GATED, FeatureMap, proxy_size

SE = "se"
ATTENTION_GATE = "attention_gate"
BLOCK_NAMES: tuple[str, ...] = (ATTENTION_GATE, SE)

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def validate_blocks(blocks: Sequence[str], where: str = "network.blocks") -> frozenset[str]:
    """Check block names from the plans; unknown or repeated names raise PlansError."""
    seen: set[str] = set()
    for name in blocks:
        if name not in BLOCK_NAMES:
            raise PlansError(f"{where}: unknown block '{name}'; valid names are {list(BLOCK_NAMES)}")
        if name in seen:
            raise PlansError(f"{where}: block '{name}' is listed twice; list it once")
        seen.add(name)
    return frozenset(seen)


def se_hidden_channels(channels: int, reduction: int = 16, min_width: int = 8) -> int:
    """Width of the SE bottleneck: channels / reduction, but never below `min_width` (nor above channels)."""
    return min(channels, max(channels // reduction, min_width))


class SqueezeExcitation(nn.Module):
    """x * sigmoid(W2 relu(W1 avgpool(x))), with 1x1 convs so it works for any dims."""

    def __init__(self, conv_op: type[nn.Module], channels: int, reduction: int = 16, min_width: int = 8) -> None:
        super().__init__()
        self.channels = channels
        self.hidden = se_hidden_channels(channels, reduction, min_width)
        self.squeeze = conv_op(channels, self.hidden, 1)
        self.excite = conv_op(self.hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
        weights = torch.sigmoid(self.excite(F.relu(self.squeeze(pooled))))
        return x * weights

    def feature_maps(self, input_size: Sequence[int]) -> list[FeatureMap]:
        """Both 1x1 convs act on the pooled single voxel; the scaled features are full size."""
        return [FeatureMap(GATE_CONV, self.hidden, 1, parameter_count(self.squeeze)),
                FeatureMap(GATE_CONV, self.channels, 1, parameter_count(self.excite)),
                FeatureMap(GATED, self.channels, prod(input_size))]

    def feature_map_size(self, input_size: Sequence[int]) -> int:
        return proxy_size(self.feature_maps(input_size))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}"


class AttentionGate(nn.Module):
    """Additive attention on a skip connection, gated by the coarser decoder feature.

    The skip is brought to the gating resolution by a strided conv (kernel = stride), the
    gating feature by a 1x1 conv; their sum passes ReLU, a 1-channel 1x1 conv and a sigmoid,
    and the coefficient map is interpolated back to the skip's grid to scale the skip.
    """

    def __init__(self, conv_op: type[nn.Module], skip_channels: int, gating_channels: int,
                 stride: int | Sequence[int], inter_channels: int | None = None) -> None:
        super().__init__()
        dims = dims_of(conv_op)
        self.stride = as_tuple(stride, dims, "stride")
        self.inter_channels = inter_channels or max(skip_channels // 2, 1)
        self.theta_skip = conv_op(skip_channels, self.inter_channels, self.stride, self.stride, bias=False)
        self.phi_gating = conv_op(gating_channels, self.inter_channels, 1)
        self.psi = conv_op(self.inter_channels, 1, 1)
        self.mode = _INTERPOLATION[dims]

    def forward(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        joint = F.relu(self.theta_skip(skip) + self.phi_gating(gating))
        alpha = torch.sigmoid(self.psi(joint))
        alpha = F.interpolate(alpha, size=skip.shape[2:], mode=self.mode, align_corners=False)
        return skip * alpha

    def feature_maps(self, gating_size: Sequence[int], skip_size: Sequence[int] | None = None) -> list[FeatureMap]:
        """theta and phi (inter channels) and psi (1 channel), all at the gating resolution, then
        the coefficient upsampled to and the skip scaled on the skip's grid."""
        voxels = prod(gating_size)
        skip_voxels = prod(skip_size) if skip_size is not None else prod(g * s for g, s in zip(gating_size, self.stride))
        return [FeatureMap(GATE_CONV, self.inter_channels, voxels, parameter_count(self.theta_skip)),
                FeatureMap(GATE_CONV, self.inter_channels, voxels, parameter_count(self.phi_gating)),
                FeatureMap(GATE_CONV, 1, voxels, parameter_count(self.psi)),
                FeatureMap(GATED, 1, skip_voxels),
                FeatureMap(GATED, self.theta_skip.in_channels, skip_voxels)]

    def feature_map_size(self, gating_size: Sequence[int]) -> int:
        """theta and phi (inter channels) and psi (1 channel), all at the gating resolution."""
        return proxy_size(self.feature_maps(gating_size))

    def extra_repr(self) -> str:
        return f"inter_channels={self.inter_channels}, stride={list(self.stride)}"
