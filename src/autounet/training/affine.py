"""Affine maths of the spatial augmentation: rotation matrices, the source box a rotated and scaled
patch reads from, and resampling of images and label maps through one affine map.

Pure functions on arrays, tested by hand; `transforms.AffineSpatialTransform` draws the
parameters and calls them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """Rotation by angles[0] in the plane of axes (1, 2), then (0, 2), then (0, 1); 2D: one angle."""
    if len(angles) == 1:
        c, s = np.cos(angles[0]), np.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    matrix = np.eye(3)
    for angle, (i, j) in zip(angles, [(1, 2), (0, 2), (0, 1)]):
        c, s = np.cos(angle), np.sin(angle)
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        matrix = matrix @ r
    return matrix


def source_box(
    matrix: np.ndarray, offset: np.ndarray, out_shape: Sequence[int], in_shape: Sequence[int]
) -> tuple[slice, ...]:
    """The part of the input that an affine resampling to `out_shape` reads (plus the linear neighbour).

    An affine map sends the output box to a parallelepiped whose extremes are the images of the
    box corners; cropping the input to it first makes the per-label work proportional to the
    region actually sampled, not to the enlarged patch.
    """
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in out_shape], indexing="ij")).reshape(len(out_shape), -1)
    mapped = matrix @ corners + offset[:, None]
    lo = np.clip(np.floor(mapped.min(axis=1)).astype(int), 0, np.asarray(in_shape))
    hi = np.minimum(np.floor(mapped.max(axis=1)).astype(int) + 2, np.asarray(in_shape))
    return tuple(slice(int(a), int(max(a, b))) for a, b in zip(lo, hi))


def affine_resample(
    image: np.ndarray, matrix: np.ndarray, offset: np.ndarray, out_shape: Sequence[int], cval: float = 0.0
) -> np.ndarray:
    """Linear resampling `out[p] = image(matrix @ p + offset)`, `cval` outside, float32."""
    box = source_box(matrix, offset, out_shape, image.shape)
    if any(b.stop <= b.start for b in box):
        return np.full(tuple(out_shape), cval, dtype=np.float32)
    shifted = offset - np.array([b.start for b in box])
    return ndimage.affine_transform(image[box], matrix, shifted, output_shape=tuple(out_shape), output=np.float32,
                                    order=1, mode="constant", cval=cval, prefilter=False)


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive (low, high) corner of the True voxels of `mask`, or None if there are none."""
    lows, highs = [], []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        lows.append(hits[0])
        highs.append(hits[-1])
    return np.array(lows), np.array(highs)


def _output_box(matrix: np.ndarray, offset: np.ndarray, low: np.ndarray, high: np.ndarray,
                out_shape: Sequence[int]) -> tuple[slice, ...]:
    """Output voxels whose source coordinate (matrix @ p + offset) can fall inside [low, high]."""
    inverse = np.linalg.inv(matrix)
    corners = np.array(np.meshgrid(*[[lo, hi] for lo, hi in zip(low, high)], indexing="ij")).reshape(len(low), -1)
    mapped = inverse @ (corners - offset[:, None])
    lo = np.clip(np.floor(mapped.min(axis=1)).astype(int), 0, np.asarray(out_shape))
    hi = np.clip(np.ceil(mapped.max(axis=1)).astype(int) + 1, 0, np.asarray(out_shape))
    return tuple(slice(int(a), int(max(a, b))) for a, b in zip(lo, hi))


def affine_resample_labels(
    seg: np.ndarray, matrix: np.ndarray, offset: np.ndarray, out_shape: Sequence[int], outside: int
) -> np.ndarray:
    """Resample a label map by linear interpolation of each label's indicator, then argmax.

    Label `outside` also fills what lies beyond the input. The most frequent label's weight is
    1 minus the others' (linear weights sum to one), which saves one interpolation, and every
    other label is interpolated only over the output box its (dilated) bounding box maps to:
    beyond it, none of a voxel's linear neighbours holds the label. Ties keep the most
    frequent label.
    """
    out_shape = tuple(int(n) for n in out_shape)
    box = source_box(matrix, offset, out_shape, seg.shape)
    if any(b.stop <= b.start for b in box):
        return np.full(out_shape, outside, dtype=np.int16)
    region = seg[box]
    shifted = offset - np.array([b.start for b in box])
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in out_shape], indexing="ij")).reshape(len(out_shape), -1)
    mapped = matrix @ corners + offset[:, None]
    reaches_outside = bool((mapped < 0).any() or (mapped > (np.array(seg.shape) - 1)[:, None]).any())
    counts = np.bincount(region.ravel().astype(np.int64) - outside)
    present = [int(v) + outside for v in np.flatnonzero(counts)]
    implicit = int(np.argmax(counts)) + outside
    if outside not in present and reaches_outside:
        present.append(outside)
    result = np.full(out_shape, implicit, dtype=np.int16)
    rest = np.ones(out_shape, dtype=np.float32)
    weights: list[tuple[int, tuple[slice, ...], np.ndarray]] = []
    for label in present:
        if label == implicit:
            continue
        indicator = region == label
        if label == outside and reaches_outside:
            sub: tuple[slice, ...] = tuple(slice(0, n) for n in out_shape)
        else:
            bbox = bounding_box(indicator)
            if bbox is None:
                continue
            sub = _output_box(matrix, shifted, bbox[0] - 1, bbox[1] + 1, out_shape)
            if any(b.stop <= b.start for b in sub):
                continue
        start = np.array([b.start for b in sub])
        w = ndimage.affine_transform(indicator.view(np.uint8), matrix, shifted + matrix @ start,
                                     output_shape=tuple(b.stop - b.start for b in sub), output=np.float32, order=1,
                                     mode="constant", cval=1.0 if label == outside else 0.0, prefilter=False)
        rest[sub] -= w
        weights.append((label, sub, w))
    best = rest
    for label, sub, w in weights:
        current = best[sub]
        wins = w > current
        result[sub][wins] = label
        best[sub] = np.where(wins, w, current)
    return result
