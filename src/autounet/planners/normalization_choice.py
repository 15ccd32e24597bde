"""Which intensity normalization each channel gets: decided here, from the data; applied by
preprocessing/normalization.py."""

from __future__ import annotations

from autounet.task.fingerprint import Fingerprint

MASK_NORM_MAX_RELATIVE_SIZE = 0.75


def normalization_scheme(channel_name: str) -> str:
    """Scheme for a channel from its name (case-insensitive): CT -> ct, nonorm/none -> none,
    rescale_to_0_1 -> rescale_0_1, anything else -> zscore."""
    name = channel_name.strip().lower()
    if name == "ct":
        return "ct"
    if name in ("nonorm", "none"):
        return "none"
    if name in ("rescale_to_0_1", "rescale_0_1"):
        return "rescale_0_1"
    return "zscore"


def choose_normalization(fingerprint: Fingerprint) -> tuple[list[str], list[bool], str]:
    """Scheme and mask flag per channel, and the reason: z-scoring inside the nonzero mask only where
    cropping to it shrank the median image (below MASK_NORM_MAX_RELATIVE_SIZE), as the reference does."""
    rel = fingerprint.median_relative_size_after_crop
    schemes: list[str] = []
    masks: list[bool] = []
    parts: list[str] = []
    for key in sorted(fingerprint.channel_names, key=int):
        name = fingerprint.channel_names[key]
        scheme = normalization_scheme(name)
        use_mask = scheme == "zscore" and rel < MASK_NORM_MAX_RELATIVE_SIZE
        schemes.append(scheme)
        masks.append(use_mask)
        parts.append(f"channel {key} ({name}): {scheme}{' inside the nonzero mask' if use_mask else ''}")
    why = (f"median relative size after crop {rel:.3g} "
           f"{'<' if rel < MASK_NORM_MAX_RELATIVE_SIZE else '>='} {MASK_NORM_MAX_RELATIVE_SIZE}")
    return schemes, masks, "; ".join(parts) + f" ({why})"
