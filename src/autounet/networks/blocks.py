"""Dimension-agnostic building blocks: operators are passed as classes.

One code path builds 2D and 3D networks because every block receives its convolution,
normalisation and activation *classes* (e.g. `nn.Conv3d`, `nn.InstanceNorm3d`) rather than
hard-coding them. Every block also reports the size of the feature maps it produces
(`feature_maps`: kind, channels, voxels, parameters of every tensor it produces), which is
what the planner's memory model prices in bytes; keeping the accounting next to the layers
that create the activations keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import Any, NamedTuple

import torch
from torch import nn

from autounet.networks.feature_maps import CONV_BLOCK, FeatureMap, proxy_size

SpatialSize = tuple[int, ...]
IntOrSeq = int | Sequence[int]


class NetworkOps(NamedTuple):
    """The operator classes of one spatial dimensionality."""

    conv: type[nn.Module]
    transposed_conv: type[nn.Module]
    norm: type[nn.Module]
    dropout: type[nn.Module]


_OPS: dict[int, NetworkOps] = {
    1: NetworkOps(nn.Conv1d, nn.ConvTranspose1d, nn.InstanceNorm1d, nn.Dropout1d),
    2: NetworkOps(nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.Dropout2d),
    3: NetworkOps(nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d, nn.Dropout3d),
}
_AVG_POOL: dict[int, type[nn.Module]] = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}

#: Keyword arguments of the default normalisation (the anchor's InstanceNorm settings).
DEFAULT_NORM_KWARGS: dict[str, Any] = {"eps": 1e-5, "affine": True}
#: Keyword arguments of the default activation (torch's default LeakyReLU slope).
DEFAULT_NONLIN_KWARGS: dict[str, Any] = {"negative_slope": 0.01, "inplace": True}


def parameter_count(module: nn.Module) -> int:
    """Parameters of `module` (its submodules included); works on shape-only (meta) modules too."""
    return sum(p.numel() for p in module.parameters())


def ops_for_dims(dims: int) -> NetworkOps:
    """Operator classes (conv, transposed conv, instance norm, dropout) for 1, 2 or 3 spatial dims."""
    if dims not in _OPS:
        raise ValueError(f"networks support 1, 2 or 3 spatial dimensions, got {dims}")
    return _OPS[dims]


def dims_of(conv_op: type[nn.Module]) -> int:
    """Spatial dimensionality of a convolution class (Conv2d -> 2)."""
    for dims, ops in _OPS.items():
        if issubclass(conv_op, (ops.conv, ops.transposed_conv)):
            return dims
    raise ValueError(f"{conv_op.__name__} is not a torch 1D/2D/3D convolution class")


def avg_pool_for_dims(dims: int) -> type[nn.Module]:
    """Average pooling class for `dims` spatial dims (used by residual shortcuts)."""
    ops_for_dims(dims)
    return _AVG_POOL[dims]


def as_tuple(value: IntOrSeq, dims: int, name: str) -> SpatialSize:
    """Normalise a scalar or per-axis sequence to a tuple of `dims` ints."""
    if isinstance(value, int):
        return (value,) * dims
    out = tuple(int(v) for v in value)
    if len(out) != dims:
        raise ValueError(f"{name}: needs {dims} entries (one per spatial axis), got {list(value)}")
    return out


def conv_output_size(input_size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                     padding: Sequence[int]) -> SpatialSize:
    """Spatial output size of a convolution (torch's formula, dilation 1)."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(input_size, kernel, stride, padding))


def format_axes(values: Sequence[int]) -> str:
    """'3x3x3' style rendering of per-axis values for readable reprs."""
    return "x".join(str(v) for v in values)


class ConvNormAct(nn.Module):
    """Convolution -> normalisation -> activation, with 'same' padding (kernel // 2).

    `norm_op=None` picks the InstanceNorm matching `conv_op`; `nonlin=None` leaves the
    activation out (the second conv of a residual block adds the shortcut first).
    """

    def __init__(
        self,
        conv_op: type[nn.Module],
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        norm_op: type[nn.Module] | None = None,
        norm_kwargs: dict[str, Any] | None = None,
        nonlin: type[nn.Module] | None = nn.LeakyReLU,
        nonlin_kwargs: dict[str, Any] | None = None,
        conv_bias: bool = True,
    ) -> None:
        super().__init__()
        dims = dims_of(conv_op)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = as_tuple(kernel_size, dims, "kernel_size")
        self.stride = as_tuple(stride, dims, "stride")
        self.padding = tuple(k // 2 for k in self.kernel_size)
        self.conv = conv_op(in_channels, out_channels, self.kernel_size, self.stride, self.padding,
                            bias=conv_bias)
        norm_cls = norm_op if norm_op is not None else ops_for_dims(dims).norm
        self.norm = norm_cls(out_channels, **(DEFAULT_NORM_KWARGS if norm_kwargs is None else norm_kwargs))
        if nonlin is None:
            self.nonlin: nn.Module = nn.Identity()
        else:
            self.nonlin = nonlin(**(DEFAULT_NONLIN_KWARGS if nonlin_kwargs is None else nonlin_kwargs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.norm(self.conv(x)))

    def output_size(self, input_size: Sequence[int]) -> SpatialSize:
        return conv_output_size(input_size, self.kernel_size, self.stride, self.padding)

    def feature_maps(self, input_size: Sequence[int], kind: str = CONV_BLOCK) -> list[FeatureMap]:
        return [FeatureMap(kind, self.out_channels, prod(self.output_size(input_size)), parameter_count(self))]

    def feature_map_size(self, input_size: Sequence[int]) -> int:
        """Output channels x output voxels of the convolution (norm/act not counted)."""
        return self.out_channels * prod(self.output_size(input_size))

    def __repr__(self) -> str:
        act = "" if isinstance(self.nonlin, nn.Identity) else f", {type(self.nonlin).__name__}"
        return (f"{type(self.conv).__name__}({self.in_channels}->{self.out_channels}, "
                f"k={format_axes(self.kernel_size)}, s={format_axes(self.stride)}), "
                f"{type(self.norm).__name__}{act}")


class SizedSequential(nn.Sequential):
    """A sequence of blocks that each report `output_size` and `feature_maps`; sizes chain."""

    def output_size(self, input_size: Sequence[int]) -> SpatialSize:
        size = tuple(input_size)
        for block in self:
            size = block.output_size(size)
        return size

    def feature_maps(self, input_size: Sequence[int]) -> list[FeatureMap]:
        maps: list[FeatureMap] = []
        size = tuple(input_size)
        for block in self:
            maps += block.feature_maps(size)
            size = block.output_size(size)
        return maps

    def feature_map_size(self, input_size: Sequence[int]) -> int:
        return proxy_size(self.feature_maps(input_size))


class StackedConvs(SizedSequential):
    """`n` ConvNormAct blocks in sequence; only the first carries the stride (it downsamples)."""

    def __init__(
        self,
        n: int,
        conv_op: type[nn.Module],
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrSeq,
        first_stride: IntOrSeq = 1,
        **block_kwargs: Any,
    ) -> None:
        if n < 1:
            raise ValueError(f"StackedConvs needs at least one convolution, got n={n}")
        super().__init__(*[
            ConvNormAct(conv_op, in_channels if i == 0 else out_channels, out_channels, kernel_size,
                        first_stride if i == 0 else 1, **block_kwargs)
            for i in range(n)
        ])
        self.out_channels = out_channels
