"""Patch sampling from preprocessed cases, and the batch factory that training workers run.

Per batch (reference section 5): the cases are drawn with replacement; the last third of
the batch positions is forced to contain foreground (a class present in the case is picked
uniformly, then one of its stored locations, and the patch is centred there); the other
positions are uniform random crops over a range that lets the patch stick out of the image
by up to half the enlargement. Patches are cut at the enlarged *initial* patch size (so that
rotation and scaling in the augmentation find image content in the corners) and padded with
0 (image) and -1 (seg, "outside"). Arrays are memory-mapped: only the needed slab is read.

Cascade (`previous_stage_folder`): each case's previous-stage segmentation (from the
3d_lowres run's predicted_next_stage/) is cut with the same patch (padded with 0,
background) and carried as seg channel 1 through the spatial augmentation; the transforms
turn it into K-1 one-hot data channels after the image channels (augmentation step 14).

2D configurations slice the (C, Z, Y, X) arrays along axis 0.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autounet.errors import DatasetError
from autounet.preprocessing.cascade import load_previous_stage
from autounet.core.system import available_ram_gb, cpu_count
from autounet.planners.plans import Plans
from autounet.preprocessing.case_store import CaseStore
from autounet.training.augmentation import training_transforms, validation_transforms
from autounet.training.augmentation_policy import enlarged_patch_size, get_augmentation_params
from autounet.training.batch_workers import BackgroundBatches
from autounet.training.transforms import LocalRandomState, scaled_shape

log = logging.getLogger(__name__)

DEFAULT_OVERSAMPLE_FOREGROUND = 0.33
RAM_GB_PER_WORKER = 2.5
MAX_CACHED_PREVIOUS = 8  # decompressed previous-stage segmentations kept per worker


def crop_with_padding(
    array: np.ndarray,
    start: Sequence[int],
    size: Sequence[int],
    pad_value: float,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Cut `size` voxels from `start` on the trailing axes of `array`, padding what lies outside.

    Only the in-bounds slab is read, so a memory-mapped array costs one patch of I/O. `out`
    (shape leading axes + size) receives the patch in place, e.g. one sample of a batch.
    """
    lead = array.shape[: array.ndim - len(size)]
    spatial = array.shape[array.ndim - len(size):]
    if out is None:
        out = np.empty((*lead, *size), dtype=array.dtype)
    src: list[slice] = [slice(None)] * len(lead)
    dst: list[slice] = [slice(None)] * len(lead)
    for s, n, dim in zip(start, size, spatial):
        lo, hi = max(s, 0), min(s + n, dim)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, max(lo, hi) - s))
    inner = out[tuple(dst)]
    if inner.size != out.size:
        out.fill(pad_value)
    if inner.size:
        inner[...] = array[tuple(src)]
    return out


def crop_start_range(shape: Sequence[int], initial: Sequence[int], final: Sequence[int]) -> tuple[list[int], list[int]]:
    """Inclusive (lowest, highest) patch start per axis.

    The enlargement (initial - final) may hang out of the image, half on each side, so that
    after the centre crop to the final size every image voxel can be reached; an image
    smaller than the patch is centred with the padding split evenly.
    """
    lows, highs = [], []
    for n, ini, fin in zip(shape, initial, final):
        pad = max(ini - fin, ini - n, 0)
        lo = -(pad // 2)
        lows.append(lo)
        highs.append(max(lo, n + pad - pad // 2 - ini))
    return lows, highs


def load_case_arrays(store: CaseStore, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-mapped (data, seg) of a case; an unreadable file raises DatasetError naming it."""
    try:
        data, seg, _ = store.load(case_id, mmap=True)
    except (ValueError, OSError) as exc:
        raise DatasetError(
            f"{store.folder}: preprocessed case '{case_id}' cannot be read ({exc}); "
            f"run `autounet plan_and_preprocess <task>` again"
        ) from exc
    return data, seg


class _CaseCache:
    """Memory-mapped arrays (most recent cases) and foreground locations of one worker's cases.

    Each open memory map holds a file descriptor, so only the `max_open` most recently used
    cases stay open; reopening one costs a header read, far less than cutting a patch.
    """

    def __init__(self, folder: str | Path, max_open: int = 64, previous_stage_folder: str | Path | None = None
                 ) -> None:
        self.store = CaseStore(folder)
        self.max_open = max_open
        self.previous_stage_folder = Path(previous_stage_folder) if previous_stage_folder is not None else None
        self._arrays: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._previous: OrderedDict[str, np.ndarray] = OrderedDict()
        self._locations: dict[str, dict[int, np.ndarray]] = {}

    def arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        if case_id in self._arrays:
            self._arrays.move_to_end(case_id)
            return self._arrays[case_id]
        data, seg = load_case_arrays(self.store, case_id)
        if data.ndim != 4 or seg.shape != data.shape[1:]:
            raise DatasetError(
                f"{self.store.data_path(case_id)}: data {data.shape} and seg {seg.shape} are not "
                f"(C, Z, Y, X) and (Z, Y, X); run `autounet plan_and_preprocess <task>` again"
            )
        self._arrays[case_id] = (data, seg)
        if len(self._arrays) > self.max_open:
            self._arrays.popitem(last=False)
        return data, seg

    def previous(self, case_id: str) -> np.ndarray:
        """The case's previous-stage segmentation (z, y, x); compressed on disk, so a few stay decoded."""
        if self.previous_stage_folder is None:
            raise ValueError("no previous-stage folder was given")
        if case_id in self._previous:
            self._previous.move_to_end(case_id)
            return self._previous[case_id]
        seg = self.arrays(case_id)[1]
        previous = load_previous_stage(self.previous_stage_folder, case_id, expected_shape=seg.shape)
        self._previous[case_id] = previous
        if len(self._previous) > MAX_CACHED_PREVIOUS:
            self._previous.popitem(last=False)
        return previous

    def foreground(self, case_id: str) -> dict[int, np.ndarray]:
        """Locations of the classes present in the case (classes without voxels are left out)."""
        if case_id not in self._locations:
            locs = self.store.locations(case_id)
            self._locations[case_id] = {c: v for c, v in locs.items() if len(v)}
        return self._locations[case_id]


class PatchSampler:
    """Random training patches of one configuration, cut at the enlarged initial patch size."""

    def __init__(
        self,
        folder: str | Path,
        case_ids: Sequence[str],
        patch_size: Sequence[int],
        batch_size: int,
        *,
        oversample_foreground: float = DEFAULT_OVERSAMPLE_FOREGROUND,
        initial_patch_size: Sequence[int] | None = None,
        rng: np.random.Generator | int | None = None,
        previous_stage_folder: str | Path | None = None,
    ) -> None:
        if not case_ids:
            raise ValueError("PatchSampler needs at least one case")
        if len(patch_size) not in (2, 3):
            raise ValueError(f"patch_size needs 2 or 3 entries, got {list(patch_size)}")
        self.cases = _CaseCache(folder, previous_stage_folder=previous_stage_folder)
        self.has_previous_stage = previous_stage_folder is not None
        self.case_ids = list(case_ids)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.initial_size = tuple(int(p) for p in (initial_patch_size or patch_size))
        if len(self.initial_size) != len(self.patch_size) or any(
            i < p for i, p in zip(self.initial_size, self.patch_size)
        ):
            raise ValueError(f"initial patch {self.initial_size} must be at least the patch {self.patch_size}")
        self.batch_size = int(batch_size)
        self.oversample_foreground = float(oversample_foreground)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    @property
    def dims(self) -> int:
        return len(self.patch_size)

    def forced_foreground(self, index: int) -> bool:
        """Batch positions at or after round(B * (1 - oversample)) must contain foreground."""
        return index >= round(self.batch_size * (1.0 - self.oversample_foreground))

    def choose_cases(self) -> list[str]:
        """The cases of the next batch, drawn uniformly with replacement."""
        picks = self.rng.integers(0, len(self.case_ids), size=self.batch_size)
        return [self.case_ids[i] for i in picks]

    def sample(self, case_ids: Sequence[str]) -> dict[str, Any]:
        """`{"data": (B, C, *initial) float32, "seg": (B, S, *initial) int16, "keys": case_ids}`.

        S is 1, or 2 with a previous stage: channel 1 then holds its segmentation (0 outside).
        """
        channels = self.cases.arrays(case_ids[0])[0].shape[0]
        data = np.empty((len(case_ids), channels, *self.initial_size), dtype=np.float32)
        seg = np.empty((len(case_ids), 2 if self.has_previous_stage else 1, *self.initial_size), dtype=np.int16)
        for i, case_id in enumerate(case_ids):
            image, labels = self.cases.arrays(case_id)
            previous = self.cases.previous(case_id) if self.has_previous_stage else None
            self._cut(case_id, image, labels, self.forced_foreground(i), data[i], seg[i], previous)
        return {"data": data, "seg": seg, "keys": list(case_ids)}

    def next_batch(self) -> dict[str, Any]:
        return self.sample(self.choose_cases())

    def _foreground_voxel(self, case_id: str) -> np.ndarray | None:
        classes = self.cases.foreground(case_id)
        if not classes:
            log.debug("case %s has no foreground; using a random patch", case_id)
            return None
        cls = sorted(classes)[self.rng.integers(len(classes))]
        locs = classes[cls]
        return np.asarray(locs[self.rng.integers(len(locs))], dtype=np.int64)

    def _start(self, shape: Sequence[int], center: Sequence[int] | None) -> list[int]:
        lows, highs = crop_start_range(shape, self.initial_size, self.patch_size)
        if center is None:
            return [int(self.rng.integers(lo, hi + 1)) for lo, hi in zip(lows, highs)]
        return [int(min(max(c - ini // 2, lo), hi)) for c, ini, lo, hi in zip(center, self.initial_size, lows, highs)]

    def _cut(self, case_id: str, data: np.ndarray, seg: np.ndarray, force_foreground: bool,
             out_data: np.ndarray, out_seg: np.ndarray, previous: np.ndarray | None = None) -> None:
        """Cut one sample into out_data (C, *initial) and out_seg (S, *initial)."""
        if data.shape[0] != out_data.shape[0]:
            raise DatasetError(f"{self.cases.store.data_path(case_id)}: {data.shape[0]} channel(s), other cases of "
                               f"this batch have {out_data.shape[0]}; run `autounet plan_and_preprocess` again")
        voxel = self._foreground_voxel(case_id) if force_foreground else None
        if self.dims == 3:
            start = self._start(seg.shape, voxel)
            crop_with_padding(data, start, self.initial_size, 0.0, out=out_data)
            crop_with_padding(seg, start, self.initial_size, -1, out=out_seg[0])
            if previous is not None:
                crop_with_padding(previous, start, self.initial_size, 0, out=out_seg[1])
            return
        z = int(voxel[0]) if voxel is not None else int(self.rng.integers(seg.shape[0]))
        start = self._start(seg.shape[1:], None if voxel is None else voxel[1:])
        crop_with_padding(data[:, z], start, self.initial_size, 0.0, out=out_data)
        crop_with_padding(seg[z], start, self.initial_size, -1, out=out_seg[0])
        if previous is not None:
            crop_with_padding(previous[z], start, self.initial_size, 0, out=out_seg[1])


def outside_label(plans: Plans) -> int:
    """The class index for -1 (padding, background outside the nonzero mask): background, or in a task with
    an ignore label that label's index, since nothing there was annotated (sparse labels would otherwise be
    diluted by padding that counts as known background on every slice)."""
    return 0 if plans.ignore_index is None else plans.ignore_index


@dataclass(frozen=True)
class BatchSpec:
    """Everything a worker process needs to produce batches (picklable: plain values only)."""

    folder: str
    case_ids: tuple[str, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    oversample_foreground: float = DEFAULT_OVERSAMPLE_FOREGROUND
    augment: bool = True
    deep_supervision_scales: tuple[tuple[float, ...], ...] | None = None
    use_mask_for_norm: tuple[bool, ...] = ()
    mirror_axes: tuple[int, ...] | None = None
    elastic: bool = False
    spatial_impl: str = "affine"
    previous_stage_folder: str | None = None
    num_classes: int = 0
    disabled_augmentations: tuple[str, ...] = ()
    #: the class index that padding and background outside the nonzero mask (-1) become: 0, or the
    #: ignore index in tasks with an ignore label (there the padding was never annotated either)
    outside_label: int = 0

    def __post_init__(self) -> None:
        if self.previous_stage_folder is not None and self.num_classes < 2:
            raise ValueError(f"a previous-stage folder needs num_classes >= 2, got {self.num_classes}")

    @property
    def extra_channels(self) -> int:
        """One-hot channels of the previous stage's foreground classes appended to the image (cascade)."""
        return self.num_classes - 1 if self.previous_stage_folder is not None else 0

    def build(self, seed: int) -> BatchMaker:
        return BatchMaker(self, seed)

    def batch_shapes(self) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
        """Shapes of a finished batch: data (B, C [+ K-1], *patch) and one (B, 1, *scale) per output scale."""
        if not self.case_ids:
            raise ValueError("BatchSpec needs at least one case")
        data, _ = load_case_arrays(CaseStore(self.folder), self.case_ids[0])
        b = self.batch_size
        scales = self.deep_supervision_scales or (tuple(1.0 for _ in self.patch_size),)
        targets = [(b, 1, *scaled_shape(self.patch_size, scale)) for scale in scales]
        return (b, int(data.shape[0]) + self.extra_channels, *self.patch_size), targets


class BatchMaker:
    """Sampler plus transforms with their own random streams; one per worker process."""

    def __init__(self, spec: BatchSpec, seed: int) -> None:
        sampler_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
        self.spec = spec
        scales = [list(s) for s in spec.deep_supervision_scales] if spec.deep_supervision_scales else None
        cascade_classes = spec.num_classes if spec.previous_stage_folder is not None else 0
        if spec.augment:
            params = get_augmentation_params(spec.patch_size, spec.mirror_axes)
            initial = enlarged_patch_size(spec.patch_size, params.rotation, params.dummy_2d)
            self.transforms = training_transforms(
                spec.patch_size, params.rotation, params.dummy_2d, params.mirror_axes, scales,
                spec.use_mask_for_norm, elastic=spec.elastic, spatial_impl=spec.spatial_impl,
                cascade_num_classes=cascade_classes, disabled=spec.disabled_augmentations,
                outside_label=spec.outside_label,
            )
        else:
            initial = tuple(spec.patch_size)
            self.transforms = validation_transforms(scales, cascade_num_classes=cascade_classes,
                                                    outside_label=spec.outside_label)
        self.sampler = PatchSampler(
            spec.folder, spec.case_ids, spec.patch_size, spec.batch_size,
            oversample_foreground=spec.oversample_foreground, initial_patch_size=initial,
            rng=np.random.default_rng(int(sampler_seed)), previous_stage_folder=spec.previous_stage_folder,
        )
        self.random_state = LocalRandomState(int(augment_seed))

    def choose_cases(self) -> list[str]:
        return self.sampler.choose_cases()

    def make(self, case_ids: Sequence[str]) -> dict[str, Any]:
        """`{"data": (B, C, *patch) float32, "target": [(B, 1, *scale) int16], "keys": [...]}`."""
        batch = self.sampler.sample(case_ids)
        with self.random_state.active():
            out = self.transforms(**batch)
        out["data"] = np.ascontiguousarray(out["data"], dtype=np.float32)
        return {"data": out["data"], "target": [np.ascontiguousarray(t) for t in out["target"]], "keys": out["keys"]}


def default_num_workers() -> int:
    """Augmentation workers from CPU cores and free RAM (about 2.5 GB each); 0 on a single core."""
    cores = cpu_count()
    if cores <= 1:
        return 0
    ram = available_ram_gb()
    by_ram = cores if math.isnan(ram) else int(ram // RAM_GB_PER_WORKER)
    return max(1, min(cores, by_ram))


def build_dataloaders(
    folder: str | Path,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    plans: Plans,
    configuration_name: str,
    deep_supervision_scales: Sequence[Sequence[float]] | None,
    num_workers: int,
    seed: int,
    augment: bool = True,
    *,
    oversample_foreground: float = DEFAULT_OVERSAMPLE_FOREGROUND,
    pin_memory: bool = False,
    elastic: bool = False,
    previous_stage_folder: str | Path | None = None,
    spatial_impl: str = "affine",
    disabled_augmentations: Sequence[str] = (),
) -> tuple[BackgroundBatches, BackgroundBatches]:
    """(train_batches, val_batches): endless iterators of torch batches for the trainer.

    Validation patches are sampled the same way (including foreground oversampling) but not
    augmented, by about half as many workers. Call `close()` on both (or use them as context
    managers) to stop their processes. `previous_stage_folder` (cascade) appends the one-hot
    of each case's previous-stage segmentation found there to the image channels.
    `spatial_impl` and `disabled_augmentations` select ablation variants of the training
    augmentation (see `augmentation.training_transforms`).
    """
    cfg = plans.configuration(configuration_name)
    scales = tuple(tuple(float(x) for x in s) for s in deep_supervision_scales) if deep_supervision_scales else None
    common = dict(
        folder=str(folder),
        patch_size=tuple(cfg.patch_size),
        batch_size=cfg.batch_size,
        oversample_foreground=oversample_foreground,
        deep_supervision_scales=scales,
        use_mask_for_norm=tuple(cfg.use_mask_for_norm),
        mirror_axes=tuple(cfg.mirror_axes) if cfg.mirror_axes is not None else None,
        elastic=elastic,
        previous_stage_folder=str(previous_stage_folder) if previous_stage_folder is not None else None,
        num_classes=plans.num_classes,
        outside_label=outside_label(plans),
    )
    train_spec = BatchSpec(case_ids=tuple(train_ids), augment=augment, spatial_impl=spatial_impl,  # type: ignore[arg-type]
                           disabled_augmentations=tuple(disabled_augmentations), **common)
    val_spec = BatchSpec(case_ids=tuple(val_ids), augment=False, **common)  # type: ignore[arg-type]
    val_workers = max(1, num_workers // 2) if num_workers > 0 else 0
    train = BackgroundBatches(train_spec, num_workers, seed, pin_memory=pin_memory, stream=0, name="train")
    try:
        val = BackgroundBatches(val_spec, val_workers, seed, pin_memory=pin_memory, stream=1, name="validation")
    except BaseException:
        train.close()
        raise
    return train, val
