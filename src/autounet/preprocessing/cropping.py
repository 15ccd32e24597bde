"""Crop a case to the region where any channel is nonzero.

Medical images often carry a large zero background (skull-stripped brains, masked CT);
cropping it away saves memory and time in every later step. The crop box is kept (as a
half-open [start, stop) per axis) so that predictions can be pasted back onto the full grid.
Segmentation voxels that are background *and* outside the nonzero region are marked -1:
masked normalization uses that marking, and training can tell "outside the body" apart
from annotated background.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_fill_holes

OUTSIDE_MASK = -1


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Boolean (Z, Y, X) mask of voxels where any channel of `image` (C, Z, Y, X) is nonzero.

    Holes are filled so that zero-valued tissue inside the body (air in the bowel, fluid
    in the ventricles after skull stripping) stays inside the region.
    """
    if image.ndim < 2:
        raise ValueError(f"expected a channel-first image (C, ...), got shape {image.shape}")
    mask = np.any(image != 0, axis=0)
    box = bbox_slices(bounding_box(mask))
    filled = np.zeros_like(mask)
    filled[box] = binary_fill_holes(mask[box])
    return filled


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """Half-open [start, stop) per axis of the True voxels; the whole array if there are none."""
    if not mask.any():
        return [[0, int(n)] for n in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append([int(present[0]), int(present[-1]) + 1])
    return box


def bbox_slices(bbox: list[list[int]]) -> tuple[slice, ...]:
    """Slices selecting a bounding box (for the trailing len(bbox) axes of an array)."""
    return tuple(slice(start, stop) for start, stop in bbox)


def crop_to_nonzero(
    image: np.ndarray, seg: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Crop `image` (C, Z, Y, X) and `seg` (Z, Y, X) to the nonzero region of the image.

    Returns (cropped image, cropped seg, bbox). In the returned seg, voxels that are 0 and
    outside the nonzero mask are -1 (label voxels outside the mask are kept). With
    `seg=None` a seg of -1 outside / 0 inside the mask is returned, so that prediction
    can use the same masked normalization as training. The seg dtype is signed (widened
    from the input's dtype where needed) so that -1 fits.
    """
    if seg is not None and seg.shape != image.shape[1:]:
        raise ValueError(f"segmentation shape {seg.shape} differs from image shape {image.shape[1:]}")
    mask = nonzero_mask(image)
    bbox = bounding_box(mask)
    box = bbox_slices(bbox)
    image_c = image[(slice(None),) + box]
    mask_c = mask[box]
    if seg is None:
        seg_c = np.where(mask_c, 0, OUTSIDE_MASK).astype(np.int8)
    else:
        seg_c = seg[box].astype(np.result_type(seg.dtype, np.int8), copy=True)
        seg_c[(seg_c == 0) & ~mask_c] = OUTSIDE_MASK
    return image_c, seg_c, bbox


def paste_into(
    volume_shape: tuple[int, ...] | list[int],
    bbox: list[list[int]],
    cropped: np.ndarray,
    fill: float | int = 0,
) -> np.ndarray:
    """Place `cropped` at `bbox` in a new array of `volume_shape` filled with `fill`.

    The box applies to the trailing axes, so a (K, z, y, x) probability array can be
    pasted into a (K, Z, Y, X) volume with the same 3-axis box.
    """
    volume_shape = tuple(int(s) for s in volume_shape)
    box = bbox_slices(bbox)
    expected = tuple(stop - start for start, stop in bbox)
    if cropped.shape[cropped.ndim - len(box):] != expected or len(volume_shape) != cropped.ndim:
        raise ValueError(f"cannot paste an array of shape {cropped.shape} into box {bbox} of shape {volume_shape}")
    out = np.full(volume_shape, fill, dtype=cropped.dtype)
    out[(Ellipsis,) + box] = cropped
    return out
