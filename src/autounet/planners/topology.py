"""U-Net topology from a spacing and a patch size (reference section 3.4).

Each stage halves the eligible axes until the bottleneck edge would drop below
`min_feature_edge`. An axis is only pooled while its current spacing is less than twice
the finest eligible spacing, so coarse axes of anisotropic data wait until the fine axes
have caught up; likewise its kernel stays 1 (1x3x3 kernels) until its spacing is within 2x
of the finest. This keeps the physical receptive field roughly isotropic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from autounet.errors import PlansError
from autounet.planners.plans import NetworkPlan

MIN_FEATURE_EDGE = 4
BASE_FEATURES = 32
MAX_FEATURES_3D = 320
MAX_FEATURES_2D = 512
RESENC_BLOCKS = (1, 3, 4, 6)
ARCHITECTURES = ("plain_unet", "resenc_unet")


@dataclass(frozen=True)
class Topology:
    """Kernel sizes and strides per stage; `patch_size` is padded to the total stride."""

    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    patch_size: list[int]
    n_stages: int
    shape_per_stage: list[list[int]]

    @property
    def divisor(self) -> list[int]:
        """Total stride per axis: every patch edge must be a multiple of it."""
        return [math.prod(s[a] for s in self.strides) for a in range(len(self.patch_size))]


def plan_topology(
    spacing: Sequence[float],
    patch_size: Sequence[int],
    min_feature_edge: int = MIN_FEATURE_EDGE,
    max_stages: int | None = None,
) -> Topology:
    """Kernel sizes, strides and the padded patch for one configuration.

    Loop: eligible axes have a current size >= 2 x `min_feature_edge` and a current spacing
    < 2 x the finest eligible spacing; a lone eligible axis additionally needs a size >=
    3 x `min_feature_edge`. Before pooling, an axis's kernel becomes 3 once its spacing is
    < 2 x the finest current spacing (and stays 3). Pooled axes double their spacing and
    halve their size (ceil). Stage 0 has stride 1; the bottleneck kernel is 3 everywhere.
    """
    dims = len(spacing)
    if len(patch_size) != dims or dims not in (2, 3):
        raise ValueError(f"spacing {list(spacing)} and patch {list(patch_size)} must both have 2 or 3 axes")
    cur_spacing = [float(s) for s in spacing]
    cur_size = [int(s) for s in patch_size]
    kernel = [1] * dims
    strides: list[list[int]] = [[1] * dims]
    kernels: list[list[int]] = []
    n_pool = [0] * dims
    while max_stages is None or len(strides) < max_stages:
        eligible = [a for a in range(dims) if cur_size[a] >= 2 * min_feature_edge]
        if not eligible:
            break
        finest = min(cur_spacing[a] for a in eligible)
        eligible = [a for a in eligible if cur_spacing[a] / finest < 2]
        if len(eligible) == 1 and cur_size[eligible[0]] < 3 * min_feature_edge:
            break
        finest_all = min(cur_spacing)
        for a in range(dims):
            if kernel[a] != 3 and cur_spacing[a] / finest_all < 2:
                kernel[a] = 3
        stride = [1] * dims
        for a in eligible:
            stride[a] = 2
            n_pool[a] += 1
            cur_spacing[a] *= 2
            cur_size[a] = math.ceil(cur_size[a] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dims)
    divisor = [2**n for n in n_pool]
    padded = [math.ceil(int(p) / d) * d for p, d in zip(patch_size, divisor)]
    shapes: list[list[int]] = []
    shape = list(padded)
    for stride in strides:
        shape = [s // st for s, st in zip(shape, stride)]
        shapes.append(list(shape))
    return Topology(kernel_sizes=kernels, strides=strides, patch_size=padded,
                    n_stages=len(strides), shape_per_stage=shapes)


def features_per_stage(n_stages: int, dims: int) -> list[int]:
    """32 doubling per stage, capped at 320 (3D) or 512 (2D)."""
    cap = MAX_FEATURES_3D if dims == 3 else MAX_FEATURES_2D
    return [min(BASE_FEATURES * 2**s, cap) for s in range(n_stages)]


def network_plan(topology: Topology, architecture: str = "plain_unet") -> NetworkPlan:
    """NetworkPlan for `architecture` on `topology`.

    plain_unet: 2 conv blocks per encoder and decoder stage. resenc_unet: residual blocks
    (1, 3, 4, 6, 6, ...) per encoder stage, 1 conv block per decoder stage.
    `n_conv_decoder[i]` belongs to the i-th decoder stage counted from the bottleneck up.
    """
    n = topology.n_stages
    dims = len(topology.patch_size)
    if architecture == "plain_unet":
        enc = [2] * n
        dec = [2] * (n - 1)
    elif architecture == "resenc_unet":
        enc = [RESENC_BLOCKS[s] if s < len(RESENC_BLOCKS) else RESENC_BLOCKS[-1] for s in range(n)]
        dec = [1] * (n - 1)
    else:
        raise PlansError(f"architecture '{architecture}' is unknown; use one of {list(ARCHITECTURES)}")
    return NetworkPlan(
        architecture=architecture,
        features_per_stage=features_per_stage(n, dims),
        kernel_sizes=[list(k) for k in topology.kernel_sizes],
        strides=[list(s) for s in topology.strides],
        n_conv_encoder=enc,
        n_conv_decoder=dec,
    )
