"""Target spacing and axis transposition of the full-resolution configuration.

The per-axis median spacing is the natural common grid. For strongly anisotropic data
(e.g. 5 mm slices with 0.7 mm pixels) the median along the coarse axis would throw away
the finer slices of the better cases and leave very few slices per image, so that axis
takes the 10th percentile instead (the anchor's rule, reference section 3.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ANISOTROPY_THRESHOLD = 3.0
"""Spacing (or patch edge) ratio beyond which data counts as anisotropic: defined here only; the
resampling, the plans' default and the training loader's pseudo-2D switch use this value."""
ANISOTROPIC_PERCENTILE = 10.0
_CLAMP_EPSILON = 1e-5


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def target_spacing(
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    anisotropy_threshold: float = ANISOTROPY_THRESHOLD,
) -> tuple[list[float], str]:
    """Per-axis median spacing, with the 10th-percentile rule on one much coarser axis.

    `spacings` and `shapes` (shapes after cropping) are per case in the same axis order.
    The coarsest axis is treated as anisotropic only if BOTH its median spacing exceeds
    `anisotropy_threshold` x the largest other median spacing AND its median size times the
    threshold is below the smallest other median size (so thin-slab volumes, not merely
    coarse ones). Then it takes the 10th percentile of its spacings, kept just above the
    largest in-plane spacing so it remains the coarsest axis. Returns (spacing, reason).
    """
    sp = np.asarray(spacings, dtype=np.float64)
    sh = np.asarray(shapes, dtype=np.float64)
    if sp.ndim != 2 or sp.shape[0] == 0:
        raise ValueError("target_spacing needs at least one case with one spacing per axis")
    if sh.shape != sp.shape:
        raise ValueError(f"spacings {sp.shape} and shapes {sh.shape} must have the same layout")
    median_spacing = np.median(sp, axis=0)
    median_shape = np.median(sh, axis=0)
    target = median_spacing.copy()
    if sp.shape[1] < 2:
        return target.tolist(), f"per-axis median spacing {_fmt(target)}"
    worst = int(np.argmax(median_spacing))
    others = [a for a in range(sp.shape[1]) if a != worst]
    max_other_spacing = float(np.max(median_spacing[others]))
    min_other_size = float(np.min(median_shape[others]))
    coarse = median_spacing[worst] > anisotropy_threshold * max_other_spacing
    thin = median_shape[worst] * anisotropy_threshold < min_other_size
    if not (coarse and thin):
        why = "isotropic enough" if not coarse else (
            f"axis {worst} is coarse but not thin (median size {median_shape[worst]:.0f} x "
            f"{anisotropy_threshold:g} >= {min_other_size:.0f})")
        return target.tolist(), f"per-axis median spacing {_fmt(target)} ({why})"
    low = float(np.percentile(sp[:, worst], ANISOTROPIC_PERCENTILE))
    clamped = low < max_other_spacing
    if clamped:
        low = max_other_spacing + _CLAMP_EPSILON
    target[worst] = low
    reason = (
        f"anisotropic: axis {worst} median spacing {median_spacing[worst]:.4g} > {anisotropy_threshold:g} x "
        f"{max_other_spacing:.4g} and median size {median_shape[worst]:.0f} x {anisotropy_threshold:g} < "
        f"{min_other_size:.0f}, so axis {worst} uses the {ANISOTROPIC_PERCENTILE:g}th percentile "
        f"{target[worst]:.4g}{' (clamped above the in-plane spacing)' if clamped else ''}; "
        f"target {_fmt(target)}"
    )
    return target.tolist(), reason


def transpose_order(spacing: Sequence[float]) -> tuple[list[int], list[int]]:
    """(forward, backward) axis permutations that move the coarsest axis first.

    The other axes keep their order and the first of several equally coarse axes wins, so
    isotropic data is never permuted. 2D configurations slice along the new axis 0.
    """
    values = list(spacing)
    coarsest = max(range(len(values)), key=lambda a: (values[a], -a))
    forward = [coarsest] + [a for a in range(len(values)) if a != coarsest]
    backward = [forward.index(a) for a in range(len(values))]
    return forward, backward
