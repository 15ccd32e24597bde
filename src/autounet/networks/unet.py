"""U-Net built from a `NetworkPlan`, for 2D and 3D from one code path.

The encoder turns the input into one feature map per resolution stage; the decoder walks
back up with transposed convolutions (kernel = stride), concatenates the encoder's skip
feature, applies a few convolutions and, at every resolution, a 1x1 segmentation head.
With `deep_supervision` on, forward returns the logits of every head (full resolution
first) for the deep-supervision loss; off, only the full-resolution head runs.

`UNetBase` holds what every variant shares (decoder, optional blocks, input checks,
feature-map accounting, summary repr); a variant only supplies its encoder stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import ClassVar

import torch
from torch import nn

from autounet.errors import PlansError
from autounet.networks.attention import ATTENTION_GATE, SE, AttentionGate, SqueezeExcitation, validate_blocks
from autounet.networks.blocks import (
    NetworkOps,
    SpatialSize,
    StackedConvs,
    format_axes,
    ops_for_dims,
    parameter_count,
)
from autounet.networks.feature_maps import CONCAT, HEAD, TRANSPOSED_CONV, FeatureMap, proxy_size
from autounet.networks.init import initialize_network
from autounet.networks.description import NetworkPlan


class UNetEncoder(nn.Module):
    """An optional stem, then one module per resolution stage (each reports its sizes).

    `forward` returns every stage's output (the skips; the last one is the bottleneck).
    With `se` on, a squeeze-and-excitation block follows each stage.
    """

    def __init__(self, stages: Sequence[nn.Module], channels: Sequence[int], conv_op: type[nn.Module],
                 stem: nn.Module | None = None, se: bool = False) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.channels = list(channels)
        self.se = nn.ModuleList([SqueezeExcitation(conv_op, c) for c in channels]) if se else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.stem is not None:
            x = self.stem(x)
        skips = []
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if self.se is not None:
                x = self.se[s](x)
            skips.append(x)
        return skips

    def output_sizes(self, input_size: Sequence[int]) -> list[SpatialSize]:
        size = tuple(input_size) if self.stem is None else self.stem.output_size(input_size)
        sizes = []
        for stage in self.stages:
            size = stage.output_size(size)
            sizes.append(size)
        return sizes

    def feature_maps(self, input_size: Sequence[int]) -> list[FeatureMap]:
        maps: list[FeatureMap] = []
        size = tuple(input_size)
        if self.stem is not None:
            maps += self.stem.feature_maps(size)
            size = self.stem.output_size(size)
        for s, stage in enumerate(self.stages):
            maps += stage.feature_maps(size)
            size = stage.output_size(size)
            if self.se is not None:
                maps += self.se[s].feature_maps(size)
        return maps

    def feature_map_size(self, input_size: Sequence[int]) -> int:
        return proxy_size(self.feature_maps(input_size))


class UNetDecoder(nn.Module):
    """Transposed conv up, (gated) skip concatenation, convs, and a seg head per resolution.

    Module lists are indexed by the resolution they produce (0 = full resolution), like
    the plan's per-stage lists. `n_conv_decoder` is in execution order (the anchor's
    convention, shared with planners.memory): entry 0 is the stage right after the
    bottleneck, the last entry the full-resolution stage.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[Sequence[int]],
                 kernel_sizes: Sequence[Sequence[int]], n_conv_decoder: Sequence[int], num_classes: int,
                 ops: NetworkOps, attention_gate: bool = False) -> None:
        super().__init__()
        n = len(channels)
        self.num_classes = num_classes
        self.channels = list(channels)
        self.upsample = nn.ModuleList([
            ops.transposed_conv(channels[i + 1], channels[i], strides[i + 1], strides[i + 1])
            for i in range(n - 1)
        ])
        self.gates = nn.ModuleList([
            AttentionGate(ops.conv, channels[i], channels[i + 1], strides[i + 1]) for i in range(n - 1)
        ]) if attention_gate else None
        self.convs = nn.ModuleList([
            StackedConvs(n_conv_decoder[n - 2 - i], ops.conv, 2 * channels[i], channels[i], kernel_sizes[i])
            for i in range(n - 1)
        ])
        # A single-stage network has no decoder stage but still needs its segmentation head.
        self.heads = nn.ModuleList([ops.conv(channels[i], num_classes, 1) for i in range(max(n - 1, 1))])

    def forward(self, skips: Sequence[torch.Tensor], deep_supervision: bool) -> list[torch.Tensor]:
        """Logits per head, full resolution first (only the full-resolution one without deep supervision)."""
        x = skips[-1]
        if not self.convs:
            return [self.heads[0](x)]
        outputs: list[torch.Tensor] = []
        for i in reversed(range(len(self.convs))):
            skip = skips[i] if self.gates is None else self.gates[i](skips[i], x)
            x = self.convs[i](torch.cat((self.upsample[i](x), skip), dim=1))
            if deep_supervision or i == 0:
                outputs.append(self.heads[i](x))
        return outputs[::-1]

    def feature_maps(self, skip_sizes: Sequence[SpatialSize], deep_supervision: bool) -> list[FeatureMap]:
        """Per stage, bottleneck upwards: transposed conv, gate, concatenation, convs and the head
        when it runs, given the encoder's output sizes."""
        if not self.convs:
            return [FeatureMap(HEAD, self.num_classes, prod(skip_sizes[0]), parameter_count(self.heads[0]))]
        maps: list[FeatureMap] = []
        for i in reversed(range(len(self.convs))):
            voxels = prod(skip_sizes[i])
            maps.append(FeatureMap(TRANSPOSED_CONV, self.channels[i], voxels, parameter_count(self.upsample[i])))
            if self.gates is not None:
                maps += self.gates[i].feature_maps(skip_sizes[i + 1], skip_sizes[i])
            maps.append(FeatureMap(CONCAT, 2 * self.channels[i], voxels))
            maps += self.convs[i].feature_maps(skip_sizes[i])
            if deep_supervision or i == 0:
                maps.append(FeatureMap(HEAD, self.num_classes, voxels, parameter_count(self.heads[i])))
        return maps

    def feature_map_size(self, skip_sizes: Sequence[SpatialSize], deep_supervision: bool) -> int:
        """Transposed convs, gates, convs and the heads that run, given the encoder's output sizes."""
        return proxy_size(self.feature_maps(skip_sizes, deep_supervision))


class UNetBase(nn.Module):
    """Shared U-Net behaviour; subclasses build the encoder stages (see `_build_encoder`)."""

    architecture: ClassVar[str] = ""

    def __init__(self, network_plan: NetworkPlan, in_channels: int, num_classes: int,
                 deep_supervision: bool = True) -> None:
        super().__init__()
        # Drawn from torch's global RNG so that torch.manual_seed(...) fixes the initial weights.
        seed = int(torch.randint(0, 2**62, (1,), device="cpu").item())
        network_plan.validate("network")
        blocks = validate_blocks(network_plan.blocks)
        if any(v != 1 for v in network_plan.strides[0]):
            raise PlansError(f"network.strides[0]: is {network_plan.strides[0]}, but the first stage works at "
                             f"full resolution; set it to {[1] * network_plan.dims} and re-plan")
        self.plan = network_plan
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.dims = network_plan.dims
        self.total_stride = network_plan.total_stride()
        ops = ops_for_dims(self.dims)
        self.encoder = self._build_encoder(network_plan, in_channels, ops, se=SE in blocks)
        self.decoder = UNetDecoder(network_plan.features_per_stage, network_plan.strides,
                                   network_plan.kernel_sizes, network_plan.n_conv_decoder, num_classes, ops,
                                   attention_gate=ATTENTION_GATE in blocks)
        if not any(p.is_meta for p in self.parameters()):  # a shape-only network has nothing to draw
            initialize_network(self, seed, deferred=(SqueezeExcitation, AttentionGate))
            self._after_init()

    def _build_encoder(self, plan: NetworkPlan, in_channels: int, ops: NetworkOps, se: bool) -> UNetEncoder:
        raise NotImplementedError

    def _after_init(self) -> None:
        """Hook for variant-specific initialisation after the shared Kaiming init."""

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self._check_input(x)
        outputs = self.decoder(self.encoder(x), self.deep_supervision)
        return outputs if self.deep_supervision else outputs[0]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input (batch, {self.in_channels}, "
                             f"{self.dims} spatial axes), got shape {tuple(x.shape)}")
        bad = [a for a, (n, t) in enumerate(zip(x.shape[2:], self.total_stride)) if n % t]
        if bad:
            raise ValueError(f"{type(self).__name__}: input spatial size {tuple(x.shape[2:])} is not divisible "
                             f"by the total stride {self.total_stride} on axes {bad}; pad the input")

    def feature_maps(self, patch_size: Sequence[int]) -> list[FeatureMap]:
        """Every tensor a forward pass produces for one sample, in execution order (what the
        planner's memory model prices; with deep supervision on, every head runs)."""
        if len(patch_size) != self.dims:
            raise ValueError(f"patch_size needs {self.dims} entries, got {list(patch_size)}")
        sizes = self.encoder.output_sizes(patch_size)
        return self.encoder.feature_maps(patch_size) + self.decoder.feature_maps(sizes, self.deep_supervision)

    def feature_map_size(self, patch_size: Sequence[int]) -> int:
        """Sum over every conv, transposed conv and running seg head of channels x voxels, one sample
        (the anchor's unit-less memory proxy)."""
        return proxy_size(self.feature_maps(patch_size))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        plan = self.plan
        lines = [
            f"architecture={self.architecture}, {self.dims}D, in_channels={self.in_channels}, "
            f"num_classes={self.num_classes}, deep_supervision={self.deep_supervision}, "
            f"blocks={list(plan.blocks)}, parameters={self.num_parameters():,}",
            "stage  features  kernel  stride  encoder  decoder",
        ]
        for s in range(plan.n_stages):
            dec = str(plan.n_conv_decoder[plan.n_stages - 2 - s]) if s < plan.n_stages - 1 else "-"
            lines.append(f"{s:>5}  {plan.features_per_stage[s]:>8}  {format_axes(plan.kernel_sizes[s]):>6}  "
                         f"{format_axes(plan.strides[s]):>6}  {plan.n_conv_encoder[s]:>7}  {dec:>7}")
        return "\n".join(lines)


class PlainUNet(UNetBase):
    """The plain U-Net: each encoder stage is n conv-InstanceNorm-LeakyReLU blocks, the first strided."""

    architecture = "plain_unet"

    def _build_encoder(self, plan: NetworkPlan, in_channels: int, ops: NetworkOps, se: bool) -> UNetEncoder:
        stages = []
        channels_in = in_channels
        for s, features in enumerate(plan.features_per_stage):
            stages.append(StackedConvs(plan.n_conv_encoder[s], ops.conv, channels_in, features,
                                       plan.kernel_sizes[s], plan.strides[s]))
            channels_in = features
        return UNetEncoder(stages, plan.features_per_stage, ops.conv, se=se)
