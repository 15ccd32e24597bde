"""Integrity check of a task before any heavy work: every problem, every file, in one report.

Why collect instead of failing fast: a user fixing a data set wants the full list at once,
not one problem per (possibly long) run. Nothing is written anywhere; the check only reads.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autounet.errors import ImageReadError, IntegrityError
from autounet.io.geometry import Geometry
from autounet.io.images import DIRECTION_ATOL, compare_grids, count_nonfinite, read_image, read_label, split_channel_suffix
from autounet.task.dataset import CaseFiles, TaskDataset, visible_files
from autounet.core.parallel import run_parallel

log = logging.getLogger(__name__)

_MAX_LISTED_VALUES = 10
#: A label whose origin is off by more than this fraction of a voxel from its image's is refused.
LABEL_ORIGIN_VOXELS = 0.01
#: A case whose resampled size differs from the median case's by more than this factor per axis is refused.
OUTLIER_FACTOR = 10.0


@dataclass
class IntegrityReport:
    """Problems that block the pipeline (`errors`) and ones that are only suspicious (`warnings`)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class _CaseJob:
    """Everything a worker needs to check one training case (picklable)."""

    case: CaseFiles
    layout: str
    channel_names: dict[str, str]
    label_values: tuple[int, ...]
    max_read_bytes: int | None = None
    accept_label_geometry: bool = False
    nifti_transform: str | None = None


@dataclass
class _CaseResult:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    num_channels: int | None = None
    grid_file: Path | None = None
    label_values: tuple[int, ...] = ()
    spacing_zyx: tuple[float, ...] | None = None
    shape_zyx: tuple[int, ...] | None = None


def check_task(task: TaskDataset, num_workers: int = 0, show_progress: bool = True,
               max_read_bytes: int | None = None, accept_label_geometry: bool = False,
               nifti_transform: str | None = None) -> IntegrityReport:
    """Check every training case (and that listed test files exist); collect all problems.

    `max_read_bytes`: a file that needs more memory to read is refused from its header alone.
    """
    report = IntegrityReport()
    if not task.training:
        report.errors.append(
            f"{task.dataset_json}: the task has no training cases; add image/label pairs to imagesTr and labelsTr"
            + (" and list them under 'training'" if task.layout == "msd" else "")
        )
        return report
    if task.layout == "nnunet":
        report.errors.extend(_undeclared_channel_files(task))
    jobs = [_CaseJob(c, task.layout, task.channel_names, tuple(task.allowed_label_values), max_read_bytes,
                     accept_label_geometry, nifti_transform) for c in task.training]
    results = run_parallel(
        check_case, jobs, [c.case_id for c in task.training], num_workers, desc="integrity check",
        show_progress=show_progress and len(jobs) > 1,
    )
    for res in results:
        report.errors.extend(res.errors)
        report.warnings.extend(res.warnings)
    report.errors.extend(_channel_count_consistency(task, results))
    report.errors.extend(_no_foreground_at_all(task, results))
    report.warnings.extend(_labels_never_present(task, results))
    report.warnings.extend(_files_outside_task(task))
    report.errors.extend(spacing_outliers([(r.grid_file, r.spacing_zyx, r.shape_zyx) for r in results
                                           if r.spacing_zyx is not None and r.shape_zyx is not None]))
    for case in task.test:
        for p in case.images:
            if not (p.is_file() or p.is_dir()):  # a folder: a DICOM series
                report.errors.append(
                    f"{p}: test image of case '{case.case_id}' is missing; "
                    "add the file or remove the case from the test list"
                )
    return report


def verify_task(task: TaskDataset, num_workers: int = 0, show_progress: bool = True,
                max_read_bytes: int | None = None, accept_label_geometry: bool = False,
                nifti_transform: str | None = None) -> IntegrityReport:
    """Run check_task, log its warnings, and raise IntegrityError listing every error."""
    report = check_task(task, num_workers=num_workers, show_progress=show_progress, max_read_bytes=max_read_bytes,
                        accept_label_geometry=accept_label_geometry, nifti_transform=nifti_transform)
    for w in report.warnings:
        log.warning("%s", w)
    if report.errors:
        raise IntegrityError(report.errors)
    return report


def check_case(job: _CaseJob) -> _CaseResult:
    """All checks of one training case; top-level so that worker processes can run it."""
    res = _CaseResult()
    case = job.case
    missing = [p for p in job.case.images if not _present(p)]  # other non-files get the reader's message
    for p in missing:
        if job.layout == "nnunet":
            _, channel = split_channel_suffix(p.name.split(".")[0])
            res.errors.append(
                f"{p}: channel {channel} file of case '{case.case_id}' is missing; add it "
                f"(every case needs all {len(job.channel_names)} channel(s) of channel_names)"
            )
        else:
            res.errors.append(
                f"{p}: listed in dataset.json for case '{case.case_id}' but missing; "
                "add the file or remove the case from 'training'"
            )
    if case.label is None:
        res.errors.append(
            f"case '{case.case_id}' ({case.images[0]}): no label file given; add a 'label' entry and the label map"
        )
    elif not _present(case.label):
        res.errors.append(
            f"{case.label}: label of training case '{case.case_id}' is missing; "
            "add the label map or remove the case"
        )

    grid: Geometry | None = None
    grid_file: Path | None = None
    total_channels = 0
    split_needed = False
    for p in case.images:
        if p in missing:
            continue
        try:
            data, geometry = read_image(p, job.max_read_bytes, job.nifti_transform)
        except ImageReadError as exc:
            res.errors.append(str(exc))
            continue
        channels = data.shape[0]
        total_channels += channels
        if job.layout == "nnunet" and channels != 1:
            split_needed = True  # reported here; the case's channel count would only repeat it
            res.errors.append(
                f"{p}: is 4D ({channels} volumes) where a 3D channel file is expected; "
                "split it into one 3D file per channel (_0000, _0001, ...)"
            )
        try:
            bad = count_nonfinite(p, data)
        except ImageReadError as exc:
            res.errors.append(str(exc))
            continue
        if bad:
            res.errors.append(f"{p}: contains {bad} NaN/inf voxel(s); replace them (e.g. with 0) and re-export")
        if grid is None:
            grid, grid_file = geometry, p
        else:
            _compare(res, grid, grid_file, geometry, p, "channel file")
    if not missing and not split_needed and grid is not None and total_channels:
        res.num_channels = total_channels
    if grid is not None:
        res.grid_file, res.spacing_zyx, res.shape_zyx = grid_file, tuple(grid.spacing_zyx), tuple(grid.shape)

    if case.label is not None and _present(case.label):
        _check_label(job, res, case.label, grid, grid_file)
    return res


def _check_label(job: _CaseJob, res: _CaseResult, label: Path, grid: Geometry | None, grid_file: Path | None) -> None:
    """Values, dtype and placement of a case's label map against its image grid."""
    try:
        seg, label_geometry = read_label(label, job.max_read_bytes, job.nifti_transform)
    except ImageReadError as exc:
        res.errors.append(str(exc))
        return
    values = np.unique(seg)
    try:
        res.errors.extend(_label_value_problems(label, seg, values, job.label_values))
    except ImageReadError as exc:
        res.errors.append(str(exc))
    if seg.dtype.kind in "iub":
        res.label_values = tuple(int(v) for v in values.tolist())
    if grid is not None:
        _compare(res, grid, grid_file, label_geometry, label, "label")
        if not job.accept_label_geometry:
            res.errors.extend(_label_placement(grid, grid_file, label_geometry, label))


def _compare(res: _CaseResult, ref: Geometry, ref_file: Path | None, other: Geometry, path: Path, what: str) -> None:
    hard, soft = compare_grids(ref, other)
    ref_name = ref_file.name if ref_file is not None else "the image"
    if hard:
        res.errors.append(
            f"{path}: {what} {hard} of image {ref_name}; {what}s must lie on the image's grid - "
            "resample or re-export it"
        )
    if soft:
        res.warnings.append(f"{path}: {what} {soft} from image {ref_name}; the image's grid is used")


def _label_placement(image: Geometry, image_file: Path | None, label: Geometry, path: Path) -> list[str]:
    """A label placed elsewhere in space than its image (origin beyond 1% of a voxel, or another
    direction) is an error: its voxels would be paired with the wrong anatomy, or it was flipped."""
    if tuple(image.shape) != tuple(label.shape):
        return []  # already reported as a shape mismatch
    shift = np.abs(np.array(label.origin) - np.array(image.origin))
    moved = bool((shift > LABEL_ORIGIN_VOXELS * np.array(image.spacing)).any())
    turned = not np.allclose(label.direction, image.direction, rtol=0.0, atol=DIRECTION_ATOL)
    if not (moved or turned):
        return []
    what = " and ".join(w for w, on in (("origin differs by " + _fmt(shift) + " mm", moved),
                                          ("direction differs", turned)) if on)
    name = image_file.name if image_file is not None else "the image"
    return [f"{path}: label lies elsewhere in space than image {name} ({what}); fix the label's header, or pass "
            f"--accept-label-geometry to use the image's grid for it"]


def spacing_outliers(cases: list[tuple[Path | None, tuple[float, ...], tuple[int, ...]]],
                     factor: float = OUTLIER_FACTOR) -> list[str]:
    """Cases whose size, resampled to the median spacing, is far outside the others' (one error each).

    Resampling is what turns a wrong spacing into a memory problem: a 100 mm case among 1 mm
    cases grows 100x per axis, a 1e-4 mm case shrinks to a voxel. A case is refused when its
    resampled voxel count differs from the median case's by more than `factor` per axis
    (factor^3 in 3D), with both numbers, so that its header can be checked. Needs 3 cases.
    """
    if len(cases) < 3:
        return []
    median_spacing = np.median(np.array([s for _, s, _ in cases]), axis=0)
    sizes = [float(np.prod(np.array(shape) * np.array(spacing) / median_spacing)) for _, spacing, shape in cases]
    typical = float(np.median(sizes))
    limit = factor ** len(median_spacing)
    errors = []
    for (path, spacing, shape), size in zip(cases, sizes):
        if typical > 0 and not 1 / limit <= size / typical <= limit:
            errors.append(
                f"{path}: spacing {_fmt(spacing)} mm (z, y, x) with shape {list(shape)} would be resampled to "
                f"about {size:.3g} voxels at the task's median spacing {_fmt(median_spacing)} mm, against "
                f"{typical:.3g} for a typical case; check the spacing in its header or remove the case"
            )
    return errors


def _fmt(values: object) -> str:
    return "x".join(f"{float(v):.4g}" for v in values)  # type: ignore[attr-defined]


def _files_outside_task(task: TaskDataset) -> list[str]:
    """Training files that resolve outside the task folder (absolute paths, symbolic links).

    The rule: they are read as they are (datasets are often assembled from links), and the
    report says so once, so that a task that silently depends on files elsewhere is visible.
    """
    root = task.root.resolve()
    outside = [p for c in task.training for p in (*c.images, *([c.label] if c.label else []))
               if p.exists() and not p.resolve().is_relative_to(root)]
    if not outside:
        return []
    return [f"{task.root}: {len(outside)} training file(s) lie outside the task folder (absolute paths or symbolic "
            f"links), e.g. {outside[0]} -> {outside[0].resolve()}; they are read where they are"]


def _present(path: Path) -> bool:
    """There is something at `path`: a broken or looping symbolic link counts, and gets the reader's message."""
    return path.exists() or path.is_symlink()


def _no_foreground_at_all(task: TaskDataset, results: list[_CaseResult]) -> list[str]:
    """Every label map is background only: there is nothing to learn, and planning would divide by zero."""
    if any(r.errors for r in results) or not all(r.label_values for r in results):
        return []
    if set().union(*(r.label_values for r in results)) - {0, task.ignore_label}:
        return []
    return [f"{task.dataset_json}: none of the {len(results)} training label maps contains a foreground label "
            f"(all voxels are 0); check that labelsTr holds the right files"]


def _labels_never_present(task: TaskDataset, results: list[_CaseResult]) -> list[str]:
    """A declared foreground label that no readable training case contains: the network can never learn it."""
    read = [r for r in results if r.label_values]
    if not read:
        return []
    present = set().union(*(r.label_values for r in read))
    names = {v: k for k, v in task.labels.items()}
    return [f"{task.dataset_json}: label {value} ('{names.get(value, value)}') is declared but occurs in none of the "
            f"{len(read)} training label maps; the network will never learn it (remove it or add cases that have it)"
            for value in sorted(set(task.label_values) - present) if value != 0]


def _label_value_problems(path: Path, seg: np.ndarray, unique: np.ndarray, declared: tuple[int, ...]) -> list[str]:
    """Non-integer values and values that dataset.json does not declare (`unique`: np.unique(seg))."""
    if seg.dtype.kind == "f":
        if count_nonfinite(path, seg):
            return [f"{path}: label map contains NaN/inf values; labels must be whole numbers - re-export it"]
        fractional = seg[seg != np.round(seg)]
        if fractional.size:
            return [
                f"{path}: label map holds non-integer values (e.g. {float(fractional.flat[0]):g}); "
                "labels must be whole numbers - re-export it as an integer label map"
            ]
    values = [int(v) for v in unique.tolist()]  # Python ints: uint64 values stay exact
    undeclared = sorted(set(values) - set(declared))
    if undeclared:
        shown = ", ".join(str(v) for v in undeclared[:_MAX_LISTED_VALUES])
        more = " ..." if len(undeclared) > _MAX_LISTED_VALUES else ""
        return [
            f"{path}: label value(s) {shown}{more} are not declared in dataset.json 'labels' "
            f"(declared: {', '.join(str(v) for v in declared)}); declare them or fix the label map"
        ]
    return []


def _channel_count_consistency(task: TaskDataset, results: list[_CaseResult]) -> list[str]:
    """Every case must have the declared number of channels (MSD: counted in each 4D/3D file).

    One line per wrong channel count, naming the first such case's file and listing the other
    cases: the same mistake in every case of a task is one problem to fix, not hundreds of lines.
    """
    expected = task.num_channels
    counts = Counter(r.num_channels for r in results if r.num_channels is not None)
    others = ", ".join(f"{n} channel(s) in {k} case(s)" for n, k in sorted(counts.items()))
    wrong: dict[int, list[CaseFiles]] = {}
    for case, res in zip(task.training, results):
        if res.num_channels is not None and res.num_channels != expected:
            wrong.setdefault(res.num_channels, []).append(case)
    errors = []
    for found, cases in sorted(wrong.items()):
        first, rest = cases[0], [c.case_id for c in cases[1:]]
        also = ""
        if rest:
            listed = ", ".join(rest[:_MAX_LISTED_VALUES]) + (" ..." if len(rest) > _MAX_LISTED_VALUES else "")
            also = f", and so do {len(rest)} more case(s) ({listed})"
        errors.append(
            f"{first.images[0]}: case '{first.case_id}' has {found} channel(s) but dataset.json declares "
            f"{expected} ({', '.join(task.channel_names.values())}){also}; cases have {others} - "
            "every case needs the same channels in the same order"
        )
    return errors


def _undeclared_channel_files(task: TaskDataset) -> list[str]:
    """nnU-Net layout: channel files (or DICOM series folders) beyond channel_names (e.g. a stray _0002) are errors."""
    folder = task.root / "imagesTr"
    if not folder.is_dir():
        return []
    errors = []
    series = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]  # DICOM series folders
    for p in visible_files(folder) + sorted(series):
        if p.is_file() and not p.name.endswith(task.file_ending):
            continue
        _, channel = split_channel_suffix(p.name[: -len(task.file_ending)] if p.is_file() else p.name)
        if channel is not None and channel >= task.num_channels:
            errors.append(
                f"{p}: channel {channel} is not declared in dataset.json 'channel_names' "
                f"(declared: {task.num_channels}); remove the file or declare the channel"
            )
    return errors
