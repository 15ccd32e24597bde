"""Where the sliding window's tiles go and how each is weighted: numpy only, no torch.

`sliding_window` (torch) and the ONNX reference runner (`autounet.onnx_runner`, which must
run without torch) place and weight tiles through these functions, so both cover a case
the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from math import ceil

import numpy as np

from autounet.inference.gaussian import DEFAULT_SIGMA_SCALE, DEFAULT_VALUE_SCALING, gaussian_importance_map

#: Smallest tile weight relative to the Gaussian's peak (keeps half-precision sums accurate).
WEIGHT_FLOOR = 1e-3


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[list[int]]:
    """Tile start positions per axis.

    Per axis, ceil((size - patch) / (patch * step_size)) + 1 positions, spread evenly from 0
    to size - patch and rounded; a single position 0 where the image is not larger than the
    patch (the caller pads it to the patch size).
    """
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if len(image_size) != len(patch_size):
        raise ValueError(f"image size {list(image_size)} and patch size {list(patch_size)} differ in length")
    steps = []
    for size, patch in zip(image_size, patch_size):
        if size <= patch:
            steps.append([0])
            continue
        n = ceil((size - patch) / (patch * step_size)) + 1
        stride = (size - patch) / (n - 1)
        steps.append([int(round(stride * i)) for i in range(n)])
    return steps


def mirror_subsets(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the mirror axes, the empty one (no flip) first."""
    axes = sorted(set(int(a) for a in mirror_axes))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def tile_weights(patch_size: Sequence[int], use_gaussian: bool = True, sigma_scale: float = DEFAULT_SIGMA_SCALE,
                 value_scaling: float = DEFAULT_VALUE_SCALING, floor: float = WEIGHT_FLOOR) -> np.ndarray:
    """float32 weights of one tile: the Gaussian floored at `floor` of its peak, or ones.

    The Gaussian's corners fall to ~1e-10 of its peak in every dimension count; in a half
    precision buffer logits times such weights keep almost no significant bits, so the
    weights are floored (in either precision, for identical results).
    """
    if not use_gaussian:
        return np.ones([int(p) for p in patch_size], dtype=np.float32)
    gauss = gaussian_importance_map(patch_size, sigma_scale, value_scaling, dtype=np.float32)
    return np.maximum(gauss, np.float32(floor) * gauss.max())
