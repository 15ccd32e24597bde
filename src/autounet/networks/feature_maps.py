"""What a network produces for one sample, as its blocks report it (no torch needed to read it).

Every block lists the tensors it produces (`feature_maps(input_size)`): their kind, channels,
voxels, and the parameters of the module that produced them. The planner's memory model
prices these in bytes, and the anchor's unit-less proxy sums the convolution outputs. Kept
apart from the blocks so that planning can read the kinds without importing torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: Kinds of feature map a block can report. The memory model decides how many bytes each kind
#: keeps alive in training; the blocks only say what they produce.
CONV_BLOCK = "conv_block"  # conv -> norm (-> activation): the conv output and the norm output
PROJECTION = "projection"  # a residual shortcut's 1x1 conv -> norm
TRANSPOSED_CONV = "transposed_conv"  # upsampling; consumed by the concatenation that follows
CONCAT = "concat"  # upsampled features joined with the skip
RESIDUAL_SUM = "residual_sum"  # residual branch + shortcut (the in-place activation reuses it)
POOL = "pool"  # the average-pooled shortcut input of a strided projection
HEAD = "head"  # segmentation logits
GATE_CONV = "gate_conv"  # the bare convs inside SE and attention gates
GATED = "gated"  # features scaled by an SE or attention coefficient
#: What the anchor's unit-less size proxy sums: every convolution's output.
PROXY_KINDS = frozenset({CONV_BLOCK, PROJECTION, TRANSPOSED_CONV, HEAD, GATE_CONV})


@dataclass(frozen=True)
class FeatureMap:
    """One tensor a module produces for one sample: what kind, its channels and voxels, and the
    parameters of the module that produced it (so the parameters of a network sum up too)."""

    kind: str
    channels: int
    voxels: int
    parameters: int = 0

    @property
    def elements(self) -> int:
        return self.channels * self.voxels


def proxy_size(maps: Iterable[FeatureMap]) -> int:
    """The anchor's size proxy: channels x voxels summed over every convolution output."""
    return sum(m.elements for m in maps if m.kind in PROXY_KINDS)
