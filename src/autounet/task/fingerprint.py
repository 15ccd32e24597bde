"""Dataset fingerprint: what the planner needs to know about a task (reference section 2).

Per case: planning spacing, shape, the bounding box of the nonzero region and the shape
after cropping to it, voxels per label. Per channel: foreground intensity statistics from a
bounded, seeded sample of foreground voxels (so memory stays bounded on large tasks and the
result does not depend on the number of workers). Stored as fingerprint.json.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autounet.errors import PlansError
from autounet.io.atomic import read_json, write_json
from autounet.io.geometry import Geometry
from autounet.io.json_schema import from_dict, to_dict
from autounet.task.labels import Region

if TYPE_CHECKING:
    from autounet.task.dataset import CaseFiles, TaskDataset

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
DEFAULT_SEED = 1234
#: foreground intensity samples per channel over the whole task (split evenly over the cases)
DEFAULT_SAMPLE_BUDGET = 10_000_000
#: a 2D case's singleton axis gets this factor x its largest in-plane spacing, so it is planned as "coarsest"
SINGLETON_SPACING_FACTOR = 999.0


@dataclass
class IntensityProperties:
    """Foreground intensity statistics of one channel over the whole training set."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass
class CaseFingerprint:
    """One training case. Per-axis values are in array order (z, y, x); `bbox` is half-open."""

    case_id: str
    spacing: list[float]
    shape: list[int]
    shape_after_crop: list[int]
    bbox: list[list[int]]
    label_voxel_counts: dict[str, int]
    relative_size_after_crop: float

    def validate(self, where: str) -> None:
        for key in ("spacing", "shape", "shape_after_crop", "bbox"):
            if len(getattr(self, key)) != 3:
                raise PlansError(f"{where}.{key}: needs 3 entries (z, y, x), got {getattr(self, key)}")
        if any(s <= 0 for s in self.spacing):
            raise PlansError(f"{where}.spacing: must be positive, got {self.spacing}")


@dataclass
class Fingerprint:
    """The whole task's fingerprint (fingerprint.json)."""

    task: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    is_2d: bool
    cases: list[CaseFingerprint]
    intensity_properties: dict[str, IntensityProperties]
    median_relative_size_after_crop: float
    num_samples_per_channel: int
    seed: int
    file_ending: str = ".nii.gz"
    version: int = FINGERPRINT_VERSION
    regions: list[Region] | None = None
    regions_class_order: list[int] | None = None
    ignore_label: int | None = None

    @property
    def spacings(self) -> list[list[float]]:
        return [c.spacing for c in self.cases]

    @property
    def shapes_after_crop(self) -> list[list[int]]:
        return [c.shape_after_crop for c in self.cases]

    def validate(self, where: str) -> None:
        if self.version != FINGERPRINT_VERSION:
            raise PlansError(f"{where}.version: {self.version} is not supported; rerun with --clean")
        if not self.cases:
            raise PlansError(f"{where}.cases: empty; the fingerprint needs at least one training case")
        missing = sorted(set(self.channel_names) - set(self.intensity_properties))
        if missing:
            raise PlansError(f"{where}.intensity_properties: no statistics for channel(s) {missing}; rerun with --clean")


@dataclass
class _WorkItem:
    """Picklable job for one case (worker processes are spawned)."""

    case: CaseFiles
    seed: tuple[int, int]
    max_samples: int
    max_read_bytes: int | None = None
    nifti_transform: str | None = None
    ignore_label: int | None = None


def planning_spacing(geometry: Geometry, shape_zyx: tuple[int, ...]) -> list[float]:
    """Spacing in (z, y, x); a 2D case's singleton axis is made 999x coarser than the others."""
    spacing = [float(s) for s in geometry.spacing_zyx]
    if not geometry.is_2d:
        return spacing
    singleton = next((a for a, n in enumerate(shape_zyx) if n == 1), 0)
    others = [s for a, s in enumerate(spacing) if a != singleton]
    spacing[singleton] = SINGLETON_SPACING_FACTOR * max(others)
    return spacing


def nonzero_bbox(image: np.ndarray) -> list[list[int]]:
    """Half-open bounding box (per axis [start, stop)) of the nonzero region of (C, Z, Y, X).

    The region is the union over channels of `value != 0`. Preprocessing fills holes in this
    mask (dark structures inside the body stay inside), but filling holes never moves the
    extremes of a region, so the box is computed without that costly step. An all-zero
    image keeps its full box.
    """
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return [[0, int(n)] for n in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append([int(hit[0]), int(hit[-1]) + 1])
    return box


def case_fingerprint(
    case_id: str,
    image: np.ndarray,
    seg: np.ndarray,
    geometry: Geometry,
    rng: np.random.Generator,
    max_samples: int,
    ignore_label: int | None = None,
) -> tuple[CaseFingerprint, list[np.ndarray]]:
    """Fingerprint of one case from its arrays: image (C, Z, Y, X), seg (Z, Y, X).

    Returns the record and, per channel, up to `max_samples` foreground intensities (seg > 0
    inside the crop) drawn without replacement by `rng` (all of them when there are fewer).
    Voxels of the ignore label are unannotated, not foreground, and are not sampled.
    """
    if image.ndim != 4 or seg.shape != image.shape[1:]:
        raise ValueError(f"{case_id}: image {image.shape} must be (C, Z, Y, X) and seg {seg.shape} (Z, Y, X) like it")
    bbox = nonzero_bbox(image)
    crop = tuple(slice(a, b) for a, b in bbox)
    cropped_seg = seg[crop]
    annotated = cropped_seg > 0 if ignore_label is None else (cropped_seg > 0) & (cropped_seg != ignore_label)
    foreground = np.flatnonzero(annotated)
    if foreground.size > max_samples:
        foreground = np.sort(rng.choice(foreground, size=max_samples, replace=False))
    samples = [np.ascontiguousarray(image[(c, *crop)].ravel()[foreground], dtype=np.float32)
               for c in range(image.shape[0])]
    values, counts = np.unique(seg, return_counts=True)
    shape = [int(n) for n in seg.shape]
    shape_after_crop = [b - a for a, b in bbox]
    record = CaseFingerprint(
        case_id=case_id,
        spacing=planning_spacing(geometry, tuple(shape)),
        shape=shape,
        shape_after_crop=shape_after_crop,
        bbox=bbox,
        label_voxel_counts={str(int(v)): int(n) for v, n in zip(values, counts)},
        relative_size_after_crop=float(math.prod(shape_after_crop) / max(1, math.prod(shape))),
    )
    return record, samples


def intensity_properties(samples: np.ndarray) -> IntensityProperties:
    """Statistics of one channel's pooled foreground samples; neutral values when there are none."""
    if samples.size == 0:
        return IntensityProperties(mean=0.0, std=1.0, median=0.0, min=0.0, max=0.0,
                                   percentile_00_5=0.0, percentile_99_5=0.0)
    values = samples.astype(np.float64, copy=False)
    p005, p50, p995 = np.percentile(values, [0.5, 50.0, 99.5])
    return IntensityProperties(
        mean=float(values.mean()), std=float(values.std()), median=float(p50),
        min=float(values.min()), max=float(values.max()),
        percentile_00_5=float(p005), percentile_99_5=float(p995),
    )


def _fingerprint_worker(item: _WorkItem) -> tuple[CaseFingerprint, list[np.ndarray], bool]:
    """Read one case and fingerprint it (top level so that spawned workers can import it)."""
    from autounet.io.images import read_channels, read_label

    if item.case.label is None:
        raise PlansError(f"case {item.case.case_id}: no label file; the fingerprint needs labelled training cases")
    image, geometry = read_channels(item.case.images, item.max_read_bytes, item.nifti_transform)
    seg, _ = read_label(item.case.label, item.max_read_bytes, item.nifti_transform)
    rng = np.random.default_rng(list(item.seed))
    record, samples = case_fingerprint(item.case.case_id, image, seg, geometry, rng, item.max_samples,
                                       item.ignore_label)
    return record, samples, bool(geometry.is_2d)


def extract_fingerprint(
    task: TaskDataset,
    num_workers: int,
    seed: int = DEFAULT_SEED,
    show_progress: bool = True,
    sample_budget: int = DEFAULT_SAMPLE_BUDGET,
    max_read_bytes: int | None = None,
    nifti_transform: str | None = None,
) -> Fingerprint:
    """Fingerprint every training case of `task` in parallel and pool the intensity samples.

    Case i is sampled with the seed sequence (seed, i), so the result is identical for any
    worker count.
    """
    cases = list(task.training)
    if not cases:
        raise PlansError(f"{task.root}: task has no training cases to fingerprint; add cases to imagesTr/labelsTr")
    per_case = max(1, sample_budget // len(cases))
    items = [_WorkItem(case=c, seed=(seed, i), max_samples=per_case, max_read_bytes=max_read_bytes,
                        nifti_transform=nifti_transform, ignore_label=task.ignore_label)
             for i, c in enumerate(cases)]
    from autounet.core.parallel import run_parallel

    results = run_parallel(_fingerprint_worker, items, [c.case_id for c in cases], num_workers,
                           desc="fingerprint", show_progress=show_progress)
    fingerprint = assemble_fingerprint(
        task=task.name, channel_names=dict(task.channel_names), labels=dict(task.labels),
        file_ending=task.file_ending, results=results, num_samples_per_channel=per_case * len(cases), seed=seed,
    )
    fingerprint.regions, fingerprint.regions_class_order = task.regions, task.regions_class_order
    fingerprint.ignore_label = task.ignore_label
    return fingerprint


def assemble_fingerprint(
    task: str,
    channel_names: dict[str, str],
    labels: dict[str, int],
    file_ending: str,
    results: list[tuple[CaseFingerprint, list[np.ndarray], bool]],
    num_samples_per_channel: int,
    seed: int,
) -> Fingerprint:
    """Pool per-case results (record, samples per channel, is_2d) into the task fingerprint."""
    records = [r for r, _, _ in results]
    for record, samples, _ in results:
        if len(samples) != len(channel_names):
            raise PlansError(f"case {record.case_id}: {len(samples)} image channel(s) but dataset.json declares "
                             f"{len(channel_names)}; fix channel_names/modality or the image files")
    props: dict[str, IntensityProperties] = {}
    for c, key in enumerate(sorted(channel_names, key=int)):
        pooled = np.concatenate([s[c] for _, s, _ in results]) if results else np.empty(0, np.float32)
        if pooled.size == 0:
            log.warning("task %s channel %s (%s): no foreground voxels in any label map; intensity statistics "
                        "default to mean 0, std 1", task, key, channel_names[key])
        props[key] = intensity_properties(pooled)
    is_2d = bool(results) and all(flag for _, _, flag in results)
    return Fingerprint(
        task=task,
        channel_names=channel_names,
        labels=labels,
        is_2d=is_2d,
        cases=records,
        intensity_properties=props,
        median_relative_size_after_crop=float(np.median([r.relative_size_after_crop for r in records])),
        num_samples_per_channel=int(num_samples_per_channel),
        seed=int(seed),
        file_ending=file_ending,
    )


def save_fingerprint(fingerprint: Fingerprint, path: str | Path) -> None:
    """Write fingerprint.json atomically."""
    fingerprint.validate(str(path))
    write_json(path, to_dict(fingerprint))


def load_fingerprint(path: str | Path) -> Fingerprint:
    """Load and validate fingerprint.json; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise PlansError(f"{path}: fingerprint not found; run `autounet plan_and_preprocess <task>` first")
    return from_dict(Fingerprint, read_json(path), str(path))
