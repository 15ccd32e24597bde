"""The augmentation policy: what is drawn, how often and within which ranges, decided in one place.

Probabilities and ranges follow the reference (nnunet-method.md section 6). The decisions that
depend on a configuration's patch live here too: the rotation ranges, the pseudo-2D switch for
anisotropic patches, and the enlarged patch that the loader cuts so that rotation and scaling
find image content in the corners. The transforms themselves are in transforms.py; the
pipelines that chain them in augmentation.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from autounet.planners.spacing import ANISOTROPY_THRESHOLD

Rotation = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]

# Reference probabilities and ranges (nnunet-method.md section 6).
P_ROTATION = 0.2
P_SCALE = 0.2
SCALE_RANGE = (0.7, 1.4)
P_ELASTIC = 0.2
ELASTIC_ALPHA = (0.0, 900.0)
ELASTIC_SIGMA = (9.0, 13.0)
P_NOISE = 0.1
NOISE_SIGMA = (0.0, 0.1)
P_BLUR = 0.2
BLUR_SIGMA = (0.5, 1.0)
P_BLUR_PER_CHANNEL = 0.5
P_BRIGHTNESS = 0.15
BRIGHTNESS_RANGE = (0.75, 1.25)
P_CONTRAST = 0.15
CONTRAST_RANGE = (0.75, 1.25)
P_LOW_RES = 0.25
P_LOW_RES_PER_CHANNEL = 0.5
LOW_RES_ZOOM = (0.5, 1.0)
P_GAMMA_INVERTED = 0.1
P_GAMMA = 0.3
GAMMA_RANGE = (0.7, 1.5)
# Cascade only (step 14): corrupt the previous stage's one-hot so the network learns to correct it.
P_MORPHOLOGY = 0.4
P_MORPHOLOGY_PER_LABEL = 0.5
MORPHOLOGY_RADIUS = (1, 8)
MORPHOLOGY_OPERATIONS = ("dilate", "erode", "open", "close")
P_REMOVE_COMPONENT = 0.2
P_REMOVE_COMPONENT_PER_LABEL = 0.5
REMOVE_COMPONENT_MAX_FRACTION = 0.15


INITIAL_PATCH_SCALE = 0.85  # the reference enlarges by 1 / 0.85 (section 6; not the 0.7-1.4 used later)


@dataclass(frozen=True)
class AugmentationParams:
    """What the spatial augmentation needs to know about a configuration's patch."""

    rotation: Rotation
    dummy_2d: bool
    mirror_axes: tuple[int, ...]


def get_augmentation_params(patch_size: Sequence[int], mirror_axes: Sequence[int] | None = None) -> AugmentationParams:
    """Rotation ranges (radians), pseudo-2D flag and mirror axes for a 2D or 3D patch (section 6).

    3D: +-30 deg about every axis, unless the patch is anisotropic (max / first side > 3): then
    the spatial transform runs in-plane ("dummy 2D") with +-180 deg. 2D: +-15 deg for elongated
    patches (max / min side > 1.5), else +-180 deg. `mirror_axes` (from the plans) overrides
    the default of every spatial axis.
    """
    dims = len(patch_size)
    if dims not in (2, 3):
        raise ValueError(f"patch_size needs 2 or 3 entries, got {list(patch_size)}")
    none = (0.0, 0.0)
    full = (-math.pi, math.pi)
    if dims == 3:
        dummy_2d = max(patch_size) / patch_size[0] > ANISOTROPY_THRESHOLD
        if dummy_2d:
            rotation: Rotation = (full, none, none)
        else:
            r = math.radians(30)
            rotation = ((-r, r), (-r, r), (-r, r))
    else:
        dummy_2d = False
        if max(patch_size) / min(patch_size) > 1.5:
            r = math.radians(15)
            rotation = ((-r, r), none, none)
        else:
            rotation = (full, none, none)
    axes = tuple(range(dims)) if mirror_axes is None else tuple(int(a) for a in mirror_axes)
    return AugmentationParams(rotation=rotation, dummy_2d=dummy_2d, mirror_axes=axes)


def _rotated_extent(a: float, b: float, limit: float) -> float:
    """Largest extent along a's axis of an a x b rectangle rotated by any angle in [-limit, limit]."""
    peak = math.atan2(b, a)  # a*cos(t) + b*sin(t) is largest at t = atan2(b, a)
    if peak <= limit:
        return math.hypot(a, b)
    return a * math.cos(limit) + b * math.sin(limit)


def enlarged_patch_size(
    patch_size: Sequence[int],
    rotation: Rotation,
    dummy_2d: bool = False,
    scale_min: float = INITIAL_PATCH_SCALE,
) -> tuple[int, ...]:
    """Enlarged patch that contains the final patch under any allowed rotation, divided by `scale_min`.

    Each rotation (about one axis at a time, limited to 90 deg) grows the two axes of its plane
    to the bounding box of the rotated patch. In dummy-2D mode only the in-plane axes grow.
    """
    size = [float(p) for p in patch_size]
    if dummy_2d:
        inner = enlarged_patch_size(patch_size[1:], (rotation[0], (0.0, 0.0), (0.0, 0.0)), False, scale_min)
        return (int(patch_size[0]), *inner)
    # rotation[i] (batchgenerators' angle_x, _y, _z) turns the plane of these two axes:
    planes = [(0, 1)] if len(size) == 2 else [(1, 2), (0, 2), (0, 1)]
    out = list(size)
    for (i, j), rng in zip(planes, rotation):
        limit = min(max(abs(rng[0]), abs(rng[1])), math.pi / 2)
        if limit == 0:
            continue
        out[i] = max(out[i], _rotated_extent(size[i], size[j], limit))
        out[j] = max(out[j], _rotated_extent(size[j], size[i], limit))
    return tuple(int(round(o / scale_min)) for o in out)
