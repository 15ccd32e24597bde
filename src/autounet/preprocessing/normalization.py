"""Per-channel intensity normalization, chosen per channel by the planner.

Schemes (plans `normalization[c]`):
- "ct": CT values are physical (Hounsfield units), so one dataset-wide mapping fits every
  case: clip to the foreground 0.5/99.5 percentiles of the whole training set, then
  subtract the foreground mean and divide by the foreground std (all from the fingerprint).
- "zscore": MR and other relative intensities differ per scan, so each image is scaled by
  its own mean/std. With `use_mask` the statistics and the rescaling are restricted to the
  nonzero region and everything outside is set to 0, so a large zero background does not
  dominate the statistics.
- "rescale_0_1": per image min/max to [0, 1].
- "none": only cast to float32.
Normalization runs before resampling so that the mask still matches the image grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from autounet.errors import PlansError
from autounet.planners.plans import NORMALIZATION_SCHEMES, IntensityProperties

EPS = 1e-8


def normalize_ct(channel: np.ndarray, props: IntensityProperties) -> np.ndarray:
    """Clip to the dataset's foreground [p0.5, p99.5], then global z-score."""
    out = np.clip(channel, props.percentile_00_5, props.percentile_99_5).astype(np.float32)
    out -= np.float32(props.mean)
    out /= np.float32(max(props.std, EPS))
    return out


def normalize_zscore(channel: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-image z-score; with a mask, statistics and rescaling only inside it, 0 outside."""
    out = channel.astype(np.float32, copy=True)
    if mask is None:
        mean, std = float(out.mean(dtype=np.float64)), float(out.std(dtype=np.float64))
        out -= np.float32(mean)
        out /= np.float32(max(std, EPS))
        return out
    inside = out[mask]
    if inside.size == 0:
        out[:] = 0
        return out
    mean, std = float(inside.mean(dtype=np.float64)), float(inside.std(dtype=np.float64))
    out[mask] = (inside - np.float32(mean)) / np.float32(max(std, EPS))
    out[~mask] = 0
    return out


def normalize_rescale_0_1(channel: np.ndarray) -> np.ndarray:
    """Per-image min/max rescaling to [0, 1]."""
    out = channel.astype(np.float32, copy=True)
    lo, hi = float(out.min()), float(out.max())
    out -= np.float32(lo)
    out /= np.float32(max(hi - lo, EPS))
    return out


def normalize(
    image: np.ndarray,
    seg_mask: np.ndarray | None,
    schemes: Sequence[str],
    use_mask: Sequence[bool],
    intensity_properties: Mapping[str, IntensityProperties],
) -> np.ndarray:
    """Normalize each channel of `image` (C, ...) with its scheme; returns float32.

    `seg_mask` marks the nonzero region: a boolean mask, or a cropped segmentation where
    `>= 0` means inside (as returned by `crop_to_nonzero`). It is used only for "zscore"
    channels whose `use_mask` entry is true. `intensity_properties` is keyed by channel
    index as a string ("0", "1", ...), as in `Plans.foreground_intensity_properties`.
    """
    if len(schemes) != image.shape[0] or len(use_mask) != image.shape[0]:
        raise PlansError(
            f"plans.json: normalization has {len(schemes)} scheme(s) and use_mask_for_norm "
            f"{len(use_mask)} entries for an image with {image.shape[0]} channel(s); re-plan the task"
        )
    mask: np.ndarray | None = None
    if seg_mask is not None:
        mask = seg_mask if seg_mask.dtype == np.bool_ else seg_mask >= 0
        if mask.shape != image.shape[1:]:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[1:]}")
    out = np.empty(image.shape, dtype=np.float32)
    for c, scheme in enumerate(schemes):
        if scheme == "ct":
            props = intensity_properties.get(str(c))
            if props is None:
                raise PlansError(
                    f"plans.json: foreground_intensity_properties has no entry for channel '{c}' "
                    f"needed by CT normalization; re-plan the task"
                )
            out[c] = normalize_ct(image[c], props)
        elif scheme == "zscore":
            if use_mask[c] and mask is None:
                raise ValueError(f"channel {c}: masked z-score needs the nonzero mask")
            out[c] = normalize_zscore(image[c], mask if use_mask[c] else None)
        elif scheme == "rescale_0_1":
            out[c] = normalize_rescale_0_1(image[c])
        elif scheme == "none":
            out[c] = image[c]
        else:
            raise PlansError(
                f"plans.json: normalization[{c}] is '{scheme}'; use one of {list(NORMALIZATION_SCHEMES)}"
            )
    return out
