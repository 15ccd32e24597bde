"""Gaussian importance weighting of sliding-window tiles.

Predictions near a tile's border see less context than those at its centre and are less
reliable; weighting each tile's logits by a Gaussian centred on the tile makes overlapping
tiles blend smoothly and lets the centre of each tile dominate.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

DEFAULT_SIGMA_SCALE = 1.0 / 8
DEFAULT_VALUE_SCALING = 10.0


def gaussian_importance_map(
    patch_size: Sequence[int],
    sigma_scale: float = DEFAULT_SIGMA_SCALE,
    value_scaling: float = DEFAULT_VALUE_SCALING,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Weights of shape `patch_size`: a centred Gaussian with sigma = patch * sigma_scale per axis.

    The map is scaled to a maximum of `value_scaling` and has no zeros (zeros are replaced by
    the smallest nonzero weight) so that every voxel of a tile contributes and the final
    division by the summed weights never divides by zero. The result is cached and returned
    read-only; copy it before modifying.
    """
    key = (tuple(int(p) for p in patch_size), float(sigma_scale), float(value_scaling), np.dtype(dtype).str)
    if any(p < 1 for p in key[0]):
        raise ValueError(f"patch size must be positive, got {list(patch_size)}")
    return _cached_map(*key)


@lru_cache(maxsize=16)
def _cached_map(patch_size: tuple[int, ...], sigma_scale: float, value_scaling: float, dtype: str) -> np.ndarray:
    delta = np.zeros(patch_size, dtype=np.float64)
    delta[tuple(p // 2 for p in patch_size)] = 1.0
    sigmas = [p * sigma_scale for p in patch_size]
    weights = gaussian_filter(delta, sigmas, mode="constant", cval=0.0)
    weights *= value_scaling / weights.max()
    weights = weights.astype(np.dtype(dtype))
    nonzero = weights[weights > 0]
    weights[weights == 0] = nonzero.min()
    weights.setflags(write=False)
    return weights
