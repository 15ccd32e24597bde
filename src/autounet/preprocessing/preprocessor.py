"""Turn a raw case into network input: transpose, crop, normalize, resample, index labels.

`preprocess_case` is the single definition of that mapping; training preprocessing and
prediction both call it, so a model always sees data prepared exactly the way it was
trained on. `preprocess_task` runs it over a task's training cases in worker processes and
stores the results through `CaseStore`, resumably.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autounet.errors import DatasetError
from autounet.io.geometry import Geometry
from autounet.io.images import read_channels, read_label, write_label
from autounet.core.parallel import run_parallel
from autounet.core.workspace import Workspace
from autounet.planners.plans import Plans
from autounet.preprocessing.case_properties import CaseProperties
from autounet.preprocessing.case_store import CaseStore
from autounet.preprocessing.cropping import OUTSIDE_MASK, crop_to_nonzero
from autounet.preprocessing.data_folders import read_stamp, stamp_matches, write_stamp
from autounet.preprocessing.normalization import normalize
from autounet.preprocessing.resampling import compute_new_shape, resample_data, resample_segmentation

if TYPE_CHECKING:
    from autounet.task.dataset import CaseFiles, TaskDataset

log = logging.getLogger(__name__)

DEFAULT_SEED = 1234
MAX_LOCATIONS_PER_CLASS = 10_000
MIN_LOCATION_FRACTION = 0.01
GT_FOLDER = "gt_segmentations"


def label_values_to_indices(seg: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Map label values (as on disk) to class indices 0..K-1 (int16); -1 stays -1.

    Raises DatasetError listing any value that is not a declared label.
    """
    values = np.asarray(sorted(label_values))
    index = np.searchsorted(values, seg).clip(0, len(values) - 1)
    known = values[index] == seg
    outside = seg == OUTSIDE_MASK
    bad = ~(known | outside)
    if bad.any():
        undeclared = sorted({v.item() for v in np.unique(seg[bad])})
        raise DatasetError(
            f"label value(s) {undeclared[:10]} are not declared in dataset.json 'labels' "
            f"(declared: {values.tolist()}); declare them or fix the label map"
        )
    out = index.astype(np.int16)
    out[outside] = OUTSIDE_MASK
    return out


def sample_class_locations(
    seg: np.ndarray,
    num_classes: int,
    seed: int = DEFAULT_SEED,
    max_per_class: int = MAX_LOCATIONS_PER_CLASS,
    min_fraction: float = MIN_LOCATION_FRACTION,
) -> dict[int, np.ndarray]:
    """Seeded sample of voxel coordinates (int32 (n, ndim)) per foreground class index 1..K-1.

    min(max_per_class, n) voxels, but at least `min_fraction` of the class's voxels, drawn
    without replacement; the training loader picks oversampled patch centres from these
    instead of scanning the whole segmentation every time.
    """
    rng = np.random.default_rng(seed)
    flat = seg.reshape(-1)
    locations: dict[int, np.ndarray] = {}
    for c in range(1, num_classes):
        where = np.flatnonzero(flat == c)
        n = where.size
        k = max(min(max_per_class, n), int(np.ceil(n * min_fraction)))
        chosen = np.sort(rng.choice(where, size=k, replace=False)) if k < n else where
        coords = np.stack(np.unravel_index(chosen, seg.shape), axis=1) if k else np.zeros((0, seg.ndim))
        locations[c] = coords.astype(np.int32)
    return locations


def resampling_bytes(new_shape: Sequence[int], channels: int) -> int:
    """Peak bytes of resampling one case to `new_shape`: the float32 output and about two float32
    intermediates per channel, plus the label map's interpolation buffers."""
    return int(np.prod(new_shape, dtype=np.float64)) * (12 * channels + 12)


def check_resampling_budget(case_id: str, shape: Sequence[int], spacing: Sequence[float], new_shape: Sequence[int],
                            target_spacing: Sequence[float], channels: int, max_bytes: int | None) -> None:
    """Refuse, before it starts, a resampling that would need more than `max_bytes` (None: no limit)."""
    need = resampling_bytes(new_shape, channels)
    if max_bytes is not None and need > max_bytes:
        raise DatasetError(
            f"case {case_id or '?'}: resampling {list(shape)} voxels at spacing {list(spacing)} mm to "
            f"{list(target_spacing)} mm gives {list(new_shape)} voxels and needs about {need / 1024**3:.1f} GiB, "
            f"more than the {max_bytes / 1024**3:.2f} GiB one case may use; check the spacing in its header"
        )


def preprocess_case(
    image: np.ndarray,
    seg: np.ndarray | None,
    geometry: Geometry,
    plans: Plans,
    configuration: str,
    rng_seed: int = DEFAULT_SEED,
    case_id: str = "",
    max_bytes: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, CaseProperties, dict[int, np.ndarray]]:
    """Preprocess one case for `configuration`; identical at training and prediction time.

    `image` is (C, Z, Y, X) as read, `seg` (Z, Y, X) holds label values as on disk or is
    None at prediction time. Steps: float32, transpose_forward, crop to nonzero, normalize,
    resample to the configuration's spacing (a 2D configuration keeps transposed axis 0
    and resamples only in-plane), label values to class indices, class location sampling.
    Returns (data float32 (C, z, y, x), seg int16 (z, y, x) or None, properties,
    class locations per foreground index (empty without seg)).
    """
    cfg = plans.configuration(configuration)
    if image.ndim != 4:
        raise DatasetError(f"case {case_id or '?'}: image must be (C, Z, Y, X), got shape {image.shape}")
    if image.shape[0] != plans.num_channels:
        raise DatasetError(
            f"case {case_id or '?'}: has {image.shape[0]} channel(s) but the plans expect "
            f"{plans.num_channels} ({', '.join(plans.channel_names.values())}); give every channel file"
        )
    if seg is not None and seg.shape != image.shape[1:]:
        raise DatasetError(
            f"case {case_id or '?'}: label shape {seg.shape} differs from image shape {image.shape[1:]}"
        )
    forward = list(plans.transpose_forward)
    data = np.asarray(image, dtype=np.float32).transpose([0] + [a + 1 for a in forward])
    seg_t = None if seg is None else np.asarray(seg).transpose(forward)
    spacing = [float(geometry.spacing_zyx[a]) for a in forward]
    shape_before_crop = [int(n) for n in data.shape[1:]]

    data, seg_c, bbox = crop_to_nonzero(data, seg_t)
    shape_after_crop = [int(n) for n in data.shape[1:]]
    data = normalize(data, seg_c >= 0, cfg.normalization, cfg.use_mask_for_norm,
                     plans.foreground_intensity_properties)

    if cfg.dims == 2:
        target_spacing = [spacing[0], *(float(s) for s in cfg.spacing)]
        separate_axis: int | None = 0
    else:
        target_spacing = [float(s) for s in cfg.spacing]
        separate_axis = None
    new_shape = compute_new_shape(shape_after_crop, spacing, target_spacing)
    check_resampling_budget(case_id, shape_after_crop, spacing, new_shape, target_spacing, data.shape[0], max_bytes)
    rs = cfg.resampling
    data = resample_data(data, new_shape, spacing, target_spacing, order=rs.order_data, order_z=rs.order_z,
                         threshold=rs.anisotropy_threshold, force_separate_axis=separate_axis)

    seg_out: np.ndarray | None = None
    locations: dict[int, np.ndarray] = {}
    if seg is not None:
        indices = label_values_to_indices(seg_c, plans.annotated_label_values)  # ignore -> index K
        seg_out = resample_segmentation(indices, new_shape, spacing, target_spacing, order=rs.order_seg,
                                        order_z=rs.order_z, threshold=rs.anisotropy_threshold,
                                        force_separate_axis=separate_axis)
        locations = sample_class_locations(seg_out, plans.num_classes, seed=rng_seed)

    props = CaseProperties(
        case_id=case_id,
        geometry=geometry,
        shape_before_crop=shape_before_crop,
        bbox=bbox,
        shape_after_crop=shape_after_crop,
        spacing=spacing,
        target_spacing=target_spacing,
        shape_after_resample=[int(n) for n in new_shape],
    )
    return data, seg_out, props, locations


@dataclass(frozen=True)
class _CaseJob:
    """One unit of work for a worker (picklable for spawned processes).

    `configuration`/`folder` name a preprocessing to run (None: none left to do) and
    `reference_target` a reference label copy to make (None: already there).
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path
    plans: Plans
    configuration: str | None
    folder: Path | None
    reference_target: Path | None
    seed: int = DEFAULT_SEED
    max_bytes: int | None = None
    nifti_transform: str | None = None


def _run_job(job: _CaseJob) -> None:
    """Worker entry point: copy the reference label and/or preprocess one case."""
    seg, label_geometry = read_label(job.label, job.max_bytes, job.nifti_transform)
    if job.reference_target is not None:
        write_label(seg, label_geometry, job.reference_target)
    if job.configuration is None or job.folder is None:
        return
    image, geometry = read_channels(list(job.images), job.max_bytes, job.nifti_transform)
    try:
        data, seg_out, props, locations = preprocess_case(
            image, seg, geometry, job.plans, job.configuration, rng_seed=job.seed, case_id=job.case_id,
            max_bytes=job.max_bytes,
        )
    except DatasetError as exc:
        raise DatasetError(f"{job.label}: {exc}") from exc
    if seg_out is None:
        raise DatasetError(f"{job.label}: no segmentation was produced for training case {job.case_id}")
    CaseStore(job.folder).write_case(job.case_id, data, seg_out, props, locations)


def _labelled_cases(task: TaskDataset) -> list[tuple[CaseFiles, Path]]:
    missing = [c.case_id for c in task.training if c.label is None]
    if missing:
        raise DatasetError(
            f"task {task.name}: training case(s) {missing[:5]} have no label file; "
            "add them to labelsTr or remove them from dataset.json"
        )
    return [(c, Path(c.label)) for c in task.training if c.label is not None]


def _prepare_folder(folder: Path, clean: bool, plans: Plans | None = None, configuration: str | None = None) -> None:
    """Create `folder` (emptied first with `clean`, or when it holds data preprocessed for other settings),
    drop leftovers of an interrupted run and stamp it with the preprocessing it holds."""
    if clean and folder.exists():
        log.info("clean: removing %s", folder)
        shutil.rmtree(folder)
    elif plans is not None and configuration is not None and folder.exists() \
            and not stamp_matches(folder, plans, configuration):
        log.warning("%s holds data preprocessed for other settings (the plans changed); preprocessing it again",
                    folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    CaseStore(folder).remove_temporary_files()
    if plans is not None and configuration is not None and read_stamp(folder) != plans.preprocessing_key(configuration):
        write_stamp(folder, plans, configuration)


def preprocess_task(
    workspace: Workspace,
    task: TaskDataset,
    plans: Plans,
    configurations: list[str],
    num_workers: int,
    clean: bool = False,
    show_progress: bool = True,
    max_bytes: int | None = None,
    nifti_transform: str | None = None,
) -> None:
    """Preprocess every training case of `task` for `configurations`, resumably.

    Output goes to `<workspace>/preprocessed/<task>/<data_identifier>/`; configurations that
    share a data identifier (the cascade's full-resolution stage shares 3d_fullres's data)
    are processed once. Reference labels are copied to `gt_segmentations/<case>.nii.gz` on
    their original grid. Finished cases and existing reference copies are skipped,
    leftovers of an interrupted run are removed, `clean` recomputes everything. All work
    runs in one pool of `num_workers` processes (one worker start-up for the whole task).
    """
    root = workspace.preprocessed(task.name)
    cases = _labelled_cases(task)
    gt_folder = root / GT_FOLDER
    _prepare_folder(gt_folder, clean)

    identifiers: dict[str, str] = {}
    for name in configurations:
        identifier = plans.configuration(name).data_identifier
        if identifier in identifiers:
            log.info("%s: shares the preprocessed data '%s' of %s", name, identifier, identifiers[identifier])
            continue
        identifiers[identifier] = name
        _prepare_folder(root / identifier, clean, plans, name)

    jobs: list[_CaseJob] = []
    names: list[str] = []
    for case, label in cases:
        gt_path = gt_folder / f"{case.case_id}.nii.gz"
        gt_target = None if gt_path.is_file() else gt_path
        images = tuple(Path(p) for p in case.images)
        for identifier, name in identifiers.items():
            folder = root / identifier
            if CaseStore(folder).is_finished(case.case_id):
                continue
            jobs.append(_CaseJob(case.case_id, images, label, plans, name, folder, gt_target, max_bytes=max_bytes,
                                 nifti_transform=nifti_transform))
            names.append(f"{case.case_id} ({identifier})")
            gt_target = None
        if gt_target is not None:
            jobs.append(_CaseJob(case.case_id, images, label, plans, None, None, gt_target, max_bytes=max_bytes,
                             nifti_transform=nifti_transform))
            names.append(f"{case.case_id} (reference label)")

    for identifier in identifiers:
        todo = sum(1 for j in jobs if j.folder == root / identifier)
        log.info("%s: %d of %d case(s) to preprocess (%d already finished)",
                 identifier, todo, len(cases), len(cases) - todo)
    if jobs:
        run_parallel(_run_job, jobs, names, num_workers,
                     desc=f"preprocessing {', '.join(identifiers) or 'reference labels'}",
                     show_progress=show_progress)
