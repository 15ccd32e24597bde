"""Training and validation transform pipelines (batchgenerators v1) at the reference's settings.

The pipelines operate on a batch dict `{"data": (B, C, *S) float32, "seg": (B, 1, *S) int}` cut
at the enlarged initial patch size, and return `{"data": (B, C, *patch) float32, "target":
[(B, 1, *scale) int16 per deep-supervision scale], ...}`. Probabilities and ranges follow the
reference (nnunet-method.md section 6); where batchgenerators v1 lacks a transform (pseudo-2D
folding, the 50/50 brightness law, masking, deep-supervision targets) it is written here. The
spatial transform (rotation, scaling) was measured to dominate the pipeline's time and is
replaced by an equivalent affine resampling that is several times faster
(`AffineSpatialTransform`; `benchmarks/data_loading.py --spatial both --profile`).

batchgenerators draws from the *global* `numpy.random` and `random` generators. To keep
randomness local (and a fixed seed reproducible no matter what else runs in the process),
callers run a pipeline inside `LocalRandomState`, which swaps a private state in and out.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import ContrastAugmentationTransform, GammaTransform
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import RemoveLabelTransform
from scipy import ndimage

from autounet.inference.cascade import foreground_one_hot
from autounet.training.augmentation_switches import SPATIAL_IMPLEMENTATIONS, check_augmentation_names

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
PREVIOUS_STAGE_SEG_CHANNEL = 1


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


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
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
            bbox = _bounding_box(indicator)
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
    bbox = _bounding_box(mask)
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


def cascade_transforms(num_classes: int, augment: bool) -> list[AbstractTransform]:
    """Step 14 of the reference pipeline: one-hot of the previous stage, corrupted when augmenting."""
    moves: list[AbstractTransform] = [MoveSegChannelToOneHotData(num_classes)]
    if augment:
        moves += [RandomBinaryMorphologyTransform(num_classes - 1), RemoveRandomComponentTransform(num_classes - 1)]
    return moves


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


def training_transforms(
    patch_size: Sequence[int],
    rotation: Rotation,
    dummy_2d: bool,
    mirror_axes: Sequence[int],
    deep_supervision_scales: Sequence[Sequence[float]] | None,
    use_mask_for_norm: Sequence[bool],
    elastic: bool = False,
    spatial_impl: str = "affine",
    cascade_num_classes: int = 0,
    disabled: Sequence[str] = (),
) -> Compose:
    """The reference's training augmentation (section 6, steps 1-14 and 16), in that order.

    `rotation` holds (min, max) radians for batchgenerators' angle_x, angle_y, angle_z; the spatial
    transform centre-crops the enlarged input patch to `patch_size` (a sample without rotation,
    scaling or deformation is only cropped, without interpolation). `spatial_impl` "affine" is
    our faster equivalent of batchgenerators' SpatialTransform, which "batchgenerators" selects
    (and which elastic deformation always uses). `cascade_num_classes` K > 0 means "seg" carries
    the previous stage's segmentation as channel 1, which step 14 turns into K-1 data channels.
    `disabled` names augmentations (AUGMENTATION_NAMES) to leave out, for ablations; a disabled
    "spatial" still centre-crops the enlarged patch to `patch_size`.
    """
    patch_size = [int(p) for p in patch_size]
    off = set(check_augmentation_names(disabled))
    if spatial_impl not in SPATIAL_IMPLEMENTATIONS:
        raise ValueError(f"spatial_impl must be 'affine' or 'batchgenerators', got {spatial_impl!r}")
    transforms: list[AbstractTransform] = []
    if dummy_2d:
        transforms.append(Convert3DTo2DTransform())
        spatial_patch = patch_size[1:]
    else:
        spatial_patch = patch_size
    p_rotation, p_scale = (0.0, 0.0) if "spatial" in off else (P_ROTATION, P_SCALE)
    if elastic or spatial_impl == "batchgenerators":
        transforms.append(batchgenerators_spatial(spatial_patch, rotation, elastic and "spatial" not in off,
                                                  p_rotation, p_scale))
    else:
        transforms.append(AffineSpatialTransform(spatial_patch, rotation, p_rotation, SCALE_RANGE, p_scale))
    if dummy_2d:
        transforms.append(Convert2DTo3DTransform())
    intensity: list[tuple[str, AbstractTransform]] = [
        ("noise", GaussianNoiseTransform(noise_variance=NOISE_SIGMA, p_per_sample=P_NOISE, per_channel=False)),
        ("blur", GaussianBlurTransform(BLUR_SIGMA, different_sigma_per_channel=True, different_sigma_per_axis=True,
                                       p_per_sample=P_BLUR, p_per_channel=P_BLUR_PER_CHANNEL)),
        ("brightness", MultiplicativeBrightnessTransform(BRIGHTNESS_RANGE, p_per_sample=P_BRIGHTNESS)),
        ("contrast", ContrastAugmentationTransform(CONTRAST_RANGE, preserve_range=True, per_channel=True,
                                                   p_per_sample=P_CONTRAST)),
        ("low_resolution", SimulateLowResolutionTransform(
            zoom_range=LOW_RES_ZOOM, per_channel=True, p_per_channel=P_LOW_RES_PER_CHANNEL, order_downsample=0,
            order_upsample=1, p_per_sample=P_LOW_RES, ignore_axes=(0,) if dummy_2d else None)),
        ("gamma_inverted", GammaTransform(GAMMA_RANGE, invert_image=True, per_channel=True, retain_stats=True,
                                          p_per_sample=P_GAMMA_INVERTED)),
        ("gamma", GammaTransform(GAMMA_RANGE, invert_image=False, per_channel=True, retain_stats=True,
                                 p_per_sample=P_GAMMA)),
    ]
    transforms += [t for name, t in intensity if name not in off]
    if mirror_axes and "mirror" not in off:
        transforms.append(MirrorTransform(tuple(mirror_axes)))
    masked = [c for c, use in enumerate(use_mask_for_norm) if use]
    if masked:
        transforms.append(MaskOutsideNonzeroTransform(masked))
    transforms.append(RemoveLabelTransform(-1, 0))
    if cascade_num_classes:
        transforms += cascade_transforms(cascade_num_classes, augment=True)
    transforms.append(DeepSupervisionTargetsTransform(deep_supervision_scales))
    return Compose(transforms)


def batchgenerators_spatial(
    patch_size: Sequence[int],
    rotation: Rotation,
    elastic: bool,
    p_rotation: float = P_ROTATION,
    p_scale: float = P_SCALE,
) -> SpatialTransform:
    """batchgenerators' SpatialTransform at the reference settings (used for elastic deformation)."""
    return SpatialTransform(
        list(patch_size),
        patch_center_dist_from_border=0,
        do_elastic_deform=elastic, alpha=ELASTIC_ALPHA, sigma=ELASTIC_SIGMA,
        do_rotation=True, angle_x=rotation[0], angle_y=rotation[1], angle_z=rotation[2], p_rot_per_axis=1,
        do_scale=True, scale=SCALE_RANGE,
        border_mode_data="constant", border_cval_data=0, order_data=1,
        border_mode_seg="constant", border_cval_seg=-1, order_seg=1,
        random_crop=False,
        p_el_per_sample=P_ELASTIC, p_scale_per_sample=p_scale, p_rot_per_sample=p_rotation,
        independent_scale_for_each_axis=False,
    )


def validation_transforms(deep_supervision_scales: Sequence[Sequence[float]] | None,
                          cascade_num_classes: int = 0) -> Compose:
    """Only the label bookkeeping (reference steps 13, 14 and 16): no augmentation on validation patches."""
    cascade = cascade_transforms(cascade_num_classes, augment=False) if cascade_num_classes else []
    return Compose([RemoveLabelTransform(-1, 0), *cascade, DeepSupervisionTargetsTransform(deep_supervision_scales)])
