"""The augmentation transforms that batchgenerators v1 lacks or does too slowly, and the random-state swap.

`AffineSpatialTransform` replaces batchgenerators' SpatialTransform (rotation, scaling) by an
equivalent affine resampling that is several times faster (`benchmarks/data_loading.py
--spatial both --profile`). batchgenerators draws from the *global* `numpy.random` and
`random` generators; to keep randomness local (and a fixed seed reproducible no matter what
else runs in the process), callers run a pipeline inside `LocalRandomState`, which swaps a
private state in and out.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy import ndimage

from autounet.preprocessing.cascade import foreground_one_hot
from autounet.training.affine import affine_resample, affine_resample_labels, bounding_box, rotation_matrix
from autounet.training.augmentation_policy import (
    MORPHOLOGY_OPERATIONS,
    MORPHOLOGY_RADIUS,
    P_MORPHOLOGY,
    P_MORPHOLOGY_PER_LABEL,
    P_REMOVE_COMPONENT,
    P_REMOVE_COMPONENT_PER_LABEL,
    REMOVE_COMPONENT_MAX_FRACTION,
    Rotation,
)

PREVIOUS_STAGE_SEG_CHANNEL = 1
"""Where the cascade's previous-stage segmentation travels in a batch's "seg" (channel 0: the labels)."""


class LocalRandomState:
    """A private state for the global `numpy.random` and `random` generators that batchgenerators uses."""

    def __init__(self, seed: int) -> None:
        saved_np, saved_py = np.random.get_state(), random.getstate()
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self._np_state, self._py_state = np.random.get_state(), random.getstate()
        np.random.set_state(saved_np)
        random.setstate(saved_py)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the block with this state; the caller's global state is restored afterwards."""
        saved_np, saved_py = np.random.get_state(), random.getstate()
        np.random.set_state(self._np_state)
        random.setstate(self._py_state)
        try:
            yield
        finally:
            self._np_state, self._py_state = np.random.get_state(), random.getstate()
            np.random.set_state(saved_np)
            random.setstate(saved_py)


class AffineSpatialTransform(AbstractTransform):
    """Rotation and scaling with a centre crop, as one affine resampling per array (scipy).

    Same parameters and random laws as batchgenerators' SpatialTransform with random_crop=False
    and no elastic deformation (rotation with p per sample, angles per axis; one scale factor
    from U(lo, 1) or U(1, hi) with equal chance), but 3-5x faster per rotated sample
    (`benchmarks/data_loading.py --compare-spatial`): batchgenerators builds and rotates a
    float64 coordinate grid per sample and interpolates every label over the whole patch with
    map_coordinates, while an affine resampling computes coordinates on the fly and each label
    is interpolated only where it can appear.
    Images are interpolated linearly with 0 outside; labels as in `affine_resample_labels`.
    A sample drawn without rotation and scaling is only cropped, like batchgenerators does.
    """

    def __init__(
        self,
        patch_size: Sequence[int],
        rotation: Rotation,
        p_rotation: float,
        scale_range: tuple[float, float],
        p_scale: float,
        seg_outside: int = -1,
    ) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        self.rotation = rotation
        self.p_rotation = p_rotation
        self.scale_range = scale_range
        self.p_scale = p_scale
        self.seg_outside = seg_outside

    def draw_matrix(self) -> np.ndarray | None:
        """The random output-to-input matrix of one sample, or None for a plain crop."""
        dims = len(self.patch_size)
        matrix = None
        if np.random.uniform() < self.p_rotation:
            n_angles = 3 if dims == 3 else 1
            angles = [np.random.uniform(lo, hi) for lo, hi in self.rotation[:n_angles]]
            matrix = rotation_matrix(angles)
        if np.random.uniform() < self.p_scale:
            lo, hi = self.scale_range
            if np.random.random() < 0.5 and lo < 1:
                factor = np.random.uniform(lo, 1.0)
            else:
                factor = np.random.uniform(max(lo, 1.0), hi)
            matrix = (np.eye(dims) if matrix is None else matrix) * factor
        return matrix

    def __call__(self, **batch: Any) -> dict[str, Any]:
        data, seg = batch["data"], batch.get("seg")
        in_shape = np.array(data.shape[2:])
        out_shape = np.array(self.patch_size)
        out_data = np.empty((*data.shape[:2], *self.patch_size), dtype=np.float32)
        out_seg = None if seg is None else np.empty((*seg.shape[:2], *self.patch_size), dtype=np.int16)
        crop = tuple(slice((i - o) // 2, (i - o) // 2 + o) for i, o in zip(in_shape, out_shape))
        for b in range(data.shape[0]):
            matrix = self.draw_matrix()
            if matrix is None:
                out_data[b] = data[(b, slice(None), *crop)]
                if out_seg is not None:
                    out_seg[b] = seg[(b, slice(None), *crop)]
                continue
            offset = (in_shape - 1) / 2.0 - matrix @ ((out_shape - 1) / 2.0)
            for c in range(data.shape[1]):
                out_data[b, c] = affine_resample(data[b, c], matrix, offset, self.patch_size)
            if out_seg is not None:
                for c in range(seg.shape[1]):
                    out_seg[b, c] = affine_resample_labels(seg[b, c], matrix, offset, self.patch_size,
                                                           self.seg_outside)
        batch["data"] = out_data
        if out_seg is not None:
            batch["seg"] = out_seg
        return batch


class Convert3DTo2DTransform(AbstractTransform):
    """Fold the first spatial axis into the channels so that the spatial transform works in-plane.

    Used for anisotropic 3D patches ("dummy 2D"): rotating across thick slices would interpolate
    between slices that are far apart.
    """

    def __call__(self, **batch: Any) -> dict[str, Any]:
        for key in ("data", "seg"):
            arr = batch.get(key)
            if arr is None:
                continue
            b, c, z = arr.shape[:3]
            batch[f"_shape_before_2d_{key}"] = arr.shape
            batch[key] = arr.reshape(b, c * z, *arr.shape[3:])
        return batch


class Convert2DTo3DTransform(AbstractTransform):
    """Undo Convert3DTo2DTransform after the spatial transform (in-plane size may have changed)."""

    def __call__(self, **batch: Any) -> dict[str, Any]:
        for key in ("data", "seg"):
            shape = batch.pop(f"_shape_before_2d_{key}", None)
            if shape is None:
                continue
            arr = batch[key]
            batch[key] = arr.reshape(shape[0], shape[1], shape[2], *arr.shape[2:])
        return batch


class MultiplicativeBrightnessTransform(AbstractTransform):
    """Scale each channel by a factor from U(lo, 1) or U(1, hi) with equal chance (reference law).

    batchgenerators' BrightnessMultiplicativeTransform draws U(lo, hi), which brightens more
    often than it darkens when hi - 1 > 1 - lo; the reference draws each side half the time.
    """

    def __init__(self, multiplier_range: tuple[float, float], p_per_sample: float) -> None:
        self.multiplier_range = multiplier_range
        self.p_per_sample = p_per_sample

    def __call__(self, **batch: Any) -> dict[str, Any]:
        data = batch["data"]
        lo, hi = self.multiplier_range
        for b in range(data.shape[0]):
            if np.random.uniform() < self.p_per_sample:
                for c in range(data.shape[1]):
                    factor = np.random.uniform(lo, 1.0) if np.random.uniform() < 0.5 else np.random.uniform(1.0, hi)
                    data[b, c] *= factor
        return batch


class MaskOutsideNonzeroTransform(AbstractTransform):
    """Set image channels normalised within the nonzero mask to 0 where the seg is -1 (outside it)."""

    def __init__(self, channels: Sequence[int]) -> None:
        self.channels = list(channels)

    def __call__(self, **batch: Any) -> dict[str, Any]:
        data, seg = batch["data"], batch["seg"]
        outside = seg[:, 0] < 0
        for c in self.channels:
            data[:, c][outside] = 0
        return batch


class DeepSupervisionTargetsTransform(AbstractTransform):
    """Replace "seg" by "target": the seg resampled (nearest-exact) to each output scale, int16.

    Nearest-exact picks for output voxel i the input voxel floor((i + 0.5) * n_in / n_out), the
    voxel whose centre the output voxel's centre falls in; for integer factors that is the
    voxel at the centre of each block, which keeps thin structures from shifting.
    """

    def __init__(self, scales: Sequence[Sequence[float]] | None) -> None:
        self.scales = [list(s) for s in scales] if scales else None

    def __call__(self, **batch: Any) -> dict[str, Any]:
        seg = np.asarray(batch.pop("seg"))
        spatial = seg.shape[2:]
        scales = self.scales or [[1.0] * len(spatial)]
        targets = []
        for scale in scales:
            if len(scale) != len(spatial):
                raise ValueError(f"deep-supervision scale {scale} does not match a {len(spatial)}D patch")
            targets.append(downsample_seg_nearest(seg, scaled_shape(spatial, scale)).astype(np.int16, copy=False))
        batch["target"] = targets
        return batch


class MoveSegChannelToOneHotData(AbstractTransform):
    """Cascade: take the previous stage's segmentation out of "seg" and append its one-hot to "data".

    The previous stage's prediction travels as an extra seg channel up to here, so the spatial
    transform resamples it as a label map (per-label linear, then argmax: it stays a clean
    segmentation, as at inference), mirroring flips it with the target, and the intensity
    transforms never touch it. Appended after the image channels: classes 1..K-1.
    """

    def __init__(self, num_classes: int, channel: int = PREVIOUS_STAGE_SEG_CHANNEL) -> None:
        if num_classes < 2:
            raise ValueError(f"the cascade needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.channel = channel

    def __call__(self, **batch: Any) -> dict[str, Any]:
        seg = batch["seg"]
        previous = seg[:, self.channel]
        onehot = np.stack([foreground_one_hot(p, self.num_classes) for p in previous])
        batch["data"] = np.concatenate([batch["data"], onehot], axis=1)
        batch["seg"] = np.delete(seg, self.channel, axis=1)
        return batch


def binary_morphology(mask: np.ndarray, operation: str, radius: float) -> np.ndarray:
    """Dilate, erode, open or close a boolean mask with a Euclidean ball of `radius` voxels.

    Through distance transforms instead of a structuring element, so the cost does not grow
    with the radius; only the mask's bounding box (plus the radius) is processed. Voxels beyond
    the array count as background, as in scipy's binary_erosion.
    """
    if operation not in MORPHOLOGY_OPERATIONS:
        raise ValueError(f"operation must be one of {MORPHOLOGY_OPERATIONS}, got {operation!r}")
    mask = np.asarray(mask, dtype=bool)
    bbox = bounding_box(mask)
    if bbox is None:
        return mask.copy()
    margin = int(np.ceil(radius)) + 1
    box = tuple(slice(max(0, int(lo) - margin), min(n, int(hi) + margin + 1))
                for lo, hi, n in zip(bbox[0], bbox[1], mask.shape))
    region = mask[box]

    def dilate(m: np.ndarray) -> np.ndarray:
        if m.all() or not m.any():  # the transform of an array without zeros is undefined
            return m.copy()
        return ndimage.distance_transform_edt(~m) <= radius

    def erode(m: np.ndarray) -> np.ndarray:
        padded = np.pad(m, 1, constant_values=False)
        return (ndimage.distance_transform_edt(padded) > radius)[(slice(1, -1),) * m.ndim]

    steps = {"dilate": (dilate,), "erode": (erode,), "open": (erode, dilate), "close": (dilate, erode)}[operation]
    for step in steps:
        region = step(region)
    out = np.zeros_like(mask)
    out[box] = region
    return out


def remove_random_component(mask: np.ndarray, max_fraction: float) -> np.ndarray:
    """The mask without one of its connected components (face connectivity), chosen uniformly
    (global numpy.random, see LocalRandomState) among those covering at most `max_fraction` of
    the array; unchanged if there is none."""
    labelled, n = ndimage.label(mask)
    if n == 0:
        return np.asarray(mask, dtype=bool).copy()
    sizes = np.bincount(labelled.ravel())[1:]
    candidates = np.flatnonzero(sizes <= max_fraction * mask.size) + 1
    out = np.asarray(mask, dtype=bool).copy()
    if candidates.size:
        out[labelled == candidates[np.random.randint(candidates.size)]] = False
    return out


class RandomBinaryMorphologyTransform(AbstractTransform):
    """Cascade: per sample with p, per label with p_per_label, dilate/erode/open/close the label's
    one-hot channel (one of the last `num_channels`) with a random ball radius; voxels the label
    gains are removed from the other labels so the channels stay a one-hot encoding."""

    def __init__(self, num_channels: int, p_per_sample: float = P_MORPHOLOGY,
                 p_per_label: float = P_MORPHOLOGY_PER_LABEL, radius: tuple[int, int] = MORPHOLOGY_RADIUS) -> None:
        self.num_channels = num_channels
        self.p_per_sample = p_per_sample
        self.p_per_label = p_per_label
        self.radius = radius

    def __call__(self, **batch: Any) -> dict[str, Any]:
        data = batch["data"]
        first = data.shape[1] - self.num_channels
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p_per_sample:
                continue
            for c in np.random.permutation(self.num_channels) + first:
                if np.random.uniform() >= self.p_per_label:
                    continue
                operation = MORPHOLOGY_OPERATIONS[np.random.randint(len(MORPHOLOGY_OPERATIONS))]
                radius = np.random.randint(self.radius[0], self.radius[1] + 1)
                result = binary_morphology(data[b, c] > 0.5, operation, radius)
                data[b, c] = result
                others = [o for o in range(first, data.shape[1]) if o != c]
                if others:
                    data[b, others] *= ~result
        return batch


class RemoveRandomComponentTransform(AbstractTransform):
    """Cascade: per sample with p, per label with p_per_label, delete one connected component of the
    label's one-hot channel (one of the last `num_channels`) unless every component is too large."""

    def __init__(self, num_channels: int, p_per_sample: float = P_REMOVE_COMPONENT,
                 p_per_label: float = P_REMOVE_COMPONENT_PER_LABEL,
                 max_fraction: float = REMOVE_COMPONENT_MAX_FRACTION) -> None:
        self.num_channels = num_channels
        self.p_per_sample = p_per_sample
        self.p_per_label = p_per_label
        self.max_fraction = max_fraction

    def __call__(self, **batch: Any) -> dict[str, Any]:
        data = batch["data"]
        first = data.shape[1] - self.num_channels
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p_per_sample:
                continue
            for c in range(first, data.shape[1]):
                if np.random.uniform() < self.p_per_label:
                    data[b, c] = remove_random_component(data[b, c] > 0.5, self.max_fraction)
        return batch


def scaled_shape(shape: Sequence[int], scale: Sequence[float]) -> tuple[int, ...]:
    """Spatial shape of a deep-supervision output: each side times its scale, rounded, at least 1."""
    return tuple(max(1, int(round(n * s))) for n, s in zip(shape, scale))


def downsample_seg_nearest(seg: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Nearest-exact resampling of the trailing spatial axes of `seg` to `out_shape`."""
    spatial = seg.shape[-len(out_shape):]
    if tuple(spatial) == tuple(out_shape):
        return seg
    index: list[Any] = [slice(None)] * (seg.ndim - len(out_shape))
    for axis, (n_in, n_out) in enumerate(zip(spatial, out_shape)):
        idx = np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.intp)
        shape = [1] * len(out_shape)
        shape[axis] = n_out
        index.append(np.minimum(idx, n_in - 1).reshape(shape))
    return seg[tuple(index)]
