"""Residual-encoder U-Net ("resenc_unet"): residual basic blocks in the encoder.

The anchor's stronger preset (nnU-Net ResEnc, Isensee et al. 2024): a conv stem, then per
stage `n_conv_encoder[s]` residual basic blocks (the planner gives 1, 3, 4, 6, 6, ...), and
the plain decoder with `n_conv_decoder` convs (1 per stage for this preset).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import nn

from autounet.networks.blocks import (
    DEFAULT_NONLIN_KWARGS,
    ConvNormAct,
    IntOrSeq,
    NetworkOps,
    SizedSequential,
    SpatialSize,
    as_tuple,
    avg_pool_for_dims,
    dims_of,
    format_axes,
)
from autounet.networks.feature_maps import POOL, PROJECTION, RESIDUAL_SUM, FeatureMap, proxy_size
from autounet.networks.unet import UNetBase, UNetEncoder
from autounet.networks.description import RESIDUAL_SHORTCUTS, NetworkPlan


class ResidualBlock(nn.Module):
    """conv-norm-act, conv-norm, add the shortcut, act.

    When the block changes the shape, the shortcut average-pools by the stride and then
    projects with a 1x1 conv + norm (the "ResNet-D" shortcut): unlike a strided 1x1 conv it
    does not discard three quarters of the voxels it skips over.
    """

    def __init__(self, conv_op: type[nn.Module], in_channels: int, out_channels: int,
                 kernel_size: IntOrSeq, stride: IntOrSeq = 1, shortcut: str = RESIDUAL_SHORTCUTS[0]) -> None:
        super().__init__()
        dims = dims_of(conv_op)
        stride_t = as_tuple(stride, dims, "stride")
        self.out_channels = out_channels
        self.conv1 = ConvNormAct(conv_op, in_channels, out_channels, kernel_size, stride_t)
        self.conv2 = ConvNormAct(conv_op, out_channels, out_channels, kernel_size, 1, nonlin=None)
        strided = any(s != 1 for s in stride_t)
        layers: list[nn.Module] = []
        if strided:
            layers.append(avg_pool_for_dims(dims)(stride_t, stride_t, ceil_mode=True, count_include_pad=False))
        if shortcut == "project_on_channel_change":
            # nnU-Net's BasicBlockD: no 1x1 conv when only the resolution changes; its conv has no bias
            # (the norm right after it would cancel one).
            if in_channels != out_channels:
                layers.append(ConvNormAct(conv_op, in_channels, out_channels, 1, 1, nonlin=None, conv_bias=False))
        elif in_channels != out_channels or strided:
            layers.append(ConvNormAct(conv_op, in_channels, out_channels, 1, 1, nonlin=None))
        self.projects = bool(layers)
        self.shortcut: nn.Module = nn.Sequential(*layers) if layers else nn.Identity()
        self.nonlin = nn.LeakyReLU(**DEFAULT_NONLIN_KWARGS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.conv2(self.conv1(x)) + self.shortcut(x))

    def output_size(self, input_size: Sequence[int]) -> SpatialSize:
        return self.conv1.output_size(input_size)

    def __repr__(self) -> str:
        c = self.conv1
        shortcut = "identity"
        if self.projects:
            shortcut = "+".join("1x1 conv" if isinstance(m, ConvNormAct) else "avgpool" for m in self.shortcut)
        return (f"ResidualBlock({c.in_channels}->{self.out_channels}, k={format_axes(c.kernel_size)}, "
                f"s={format_axes(c.stride)}, {type(c.norm).__name__}, shortcut={shortcut})")

    def feature_maps(self, input_size: Sequence[int]) -> list[FeatureMap]:
        """conv1, conv2, the shortcut (pooled input and projection, when present) and the sum,
        all at the output resolution."""
        out = self.output_size(input_size)
        maps = self.conv1.feature_maps(input_size) + self.conv2.feature_maps(out)
        if self.projects:
            for layer in self.shortcut:
                if isinstance(layer, ConvNormAct):
                    maps += layer.feature_maps(out, kind=PROJECTION)
                else:
                    maps.append(FeatureMap(POOL, self.conv1.in_channels, prod(out)))
        maps.append(FeatureMap(RESIDUAL_SUM, self.out_channels, prod(out)))
        return maps

    def feature_map_size(self, input_size: Sequence[int]) -> int:
        """conv1, conv2 and (when present) the projection conv, all at the output resolution."""
        return proxy_size(self.feature_maps(input_size))


class ResidualStage(SizedSequential):
    """`n` residual blocks; the first one carries the stride and the channel change."""

    def __init__(self, n: int, conv_op: type[nn.Module], in_channels: int, out_channels: int,
                 kernel_size: IntOrSeq, first_stride: IntOrSeq, shortcut: str = RESIDUAL_SHORTCUTS[0]) -> None:
        if n < 1:
            raise ValueError(f"ResidualStage needs at least one block, got n={n}")
        super().__init__(*[
            ResidualBlock(conv_op, in_channels if i == 0 else out_channels, out_channels, kernel_size,
                          first_stride if i == 0 else 1, shortcut)
            for i in range(n)
        ])


class ResidualEncoderUNet(UNetBase):
    """U-Net whose encoder stages are residual blocks (`n_conv_encoder[s]` blocks in stage s)."""

    architecture = "resenc_unet"

    def _build_encoder(self, plan: NetworkPlan, in_channels: int, ops: NetworkOps, se: bool) -> UNetEncoder:
        features = plan.features_per_stage
        stem = ConvNormAct(ops.conv, in_channels, features[0], plan.kernel_sizes[0], 1)
        stages = [
            ResidualStage(plan.n_conv_encoder[s], ops.conv, features[max(s - 1, 0)], features[s],
                          plan.kernel_sizes[s], plan.strides[s], plan.residual_shortcut)
            for s in range(plan.n_stages)
        ]
        return UNetEncoder(stages, features, ops.conv, stem=stem, se=se)

    def _after_init(self) -> None:
        """Start every residual branch at zero so each block begins as its (projected) shortcut.

        Zeroing the last norm's scale before the addition is the usual trick for training deep
        residual stacks stably from the first iteration (Goyal et al. 2017).
        """
        for module in self.modules():
            if isinstance(module, ResidualBlock):
                nn.init.zeros_(module.conv2.norm.weight)
