"""A seeded synthetic task with the traits of real data, small enough to generate in seconds.

Why synthetic: the quick start and the tests need a task that exercises what real data does
(two nested foreground classes, varied shapes and spacings, non-identity directions, zero
background outside a body) without shipping or downloading anything. The contrast is set so
that a small U-Net learns it within minutes on a CPU, while the class intensities overlap
(texture, noise, a bias field, a per-case scale) so that voxel-wise thresholds stay imperfect.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from autounet.errors import DatasetError
from autounet.io.atomic import atomic_path, write_json
from autounet.io.geometry import Geometry
from autounet.io.images import (
    file_ending,
    image_channel_count,
    read_image,
    read_label,
    write_image,
    write_label,
)
from autounet.task.dataset import TaskDataset, load_task, task_id_from_name

log = logging.getLogger(__name__)

DEMO_LABELS = {"0": "background", "1": "organ", "2": "lesion"}
DEMO_IGNORE = 3
"""The ignore value of a sparse demo task: above every label, as nnU-Net requires."""
_MEANS = {"body": 100.0, "organ": 165.0, "lesion": 235.0}

# Signed permutation matrices (row-major, SimpleITK order) plus one oblique rotation: the
# direction cosines real scanners write (RAS/LPS flips, coronal/sagittal acquisitions).
_C, _S = float(np.cos(np.deg2rad(15.0))), float(np.sin(np.deg2rad(15.0)))
_DIRECTIONS_3D: tuple[tuple[float, ...], ...] = (
    (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0),
    (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0),
    (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0),
    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
)
# In 2D the singleton (z) axis must stay the third axis, so only in-plane flips and swaps.
_DIRECTIONS_2D: tuple[tuple[float, ...], ...] = (
    (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0),
    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
)


@dataclass(frozen=True)
class DemoCase:
    """One synthetic case: int16 image (Z, Y, X), uint8 labels (Z, Y, X) and its grid."""

    image: np.ndarray
    seg: np.ndarray
    geometry: Geometry


def make_demo_case(rng: np.random.Generator, two_d: bool = False) -> DemoCase:
    """Draw one case: body ellipsoid, an irregular organ inside it, a lesion inside the organ."""
    if two_d:
        shape = (1, int(rng.integers(64, 97)), int(rng.integers(64, 97)))
        spacing_zyx = (1.0, float(rng.uniform(0.9, 1.3)), float(rng.uniform(0.9, 1.3)))
        direction = _DIRECTIONS_2D[int(rng.integers(len(_DIRECTIONS_2D)))]
    else:
        shape = (int(rng.integers(24, 41)), int(rng.integers(40, 61)), int(rng.integers(40, 61)))
        inplane = float(rng.uniform(0.9, 1.3))
        spacing_zyx = (float(rng.uniform(1.5, 2.5)), inplane, inplane * float(rng.uniform(0.95, 1.05)))
        direction = _DIRECTIONS_3D[int(rng.integers(len(_DIRECTIONS_3D)))]
    spacing = np.array(spacing_zyx)
    active = np.array([s > 1 for s in shape])  # the singleton axis of 2D data takes no part
    coords = [(np.arange(n) - (n - 1) / 2.0) * sp for n, sp in zip(shape, spacing)]
    grid = np.meshgrid(*coords, indexing="ij")
    extent = np.array(shape) * spacing

    body_axes = extent / 2.0 * rng.uniform(0.82, 0.95, size=3)
    body = _ellipsoid(grid, np.zeros(3), body_axes, active) <= 1.0

    sigma_vox = np.where(active, 4.0 / spacing * spacing.min(), 0.0)
    wobble = _smooth_noise(rng, shape, sigma_vox)
    organ_axes = body_axes * rng.uniform(0.5, 0.65, size=3)
    organ_center = np.where(active, body_axes * rng.uniform(-0.18, 0.18, size=3), 0.0)
    organ = (_ellipsoid(grid, organ_center, organ_axes, active) <= 1.0 + 0.25 * wobble) & body
    # neighbourhood over the active axes only: eroding across a singleton axis would empty 2D masks
    structure = ndimage.generate_binary_structure(3, 1)[tuple(slice(None) if a else slice(1, 2) for a in active)]
    organ = ndimage.binary_opening(organ, structure) if organ.sum() > 50 else organ

    core = ndimage.binary_erosion(organ, structure)
    if not core.any():
        core = organ
    lesion = np.zeros(shape, dtype=bool)
    for _ in range(20):  # a few draws until the lesion lands inside the organ's core
        lesion_r = float(np.min(organ_axes[active])) * rng.uniform(0.5, 0.68)
        lesion_center = organ_center + np.where(active, organ_axes * rng.uniform(-0.25, 0.25, size=3), 0.0)
        lesion = (_ellipsoid(grid, lesion_center, np.full(3, lesion_r), active) <= 1.0) & core
        if lesion.sum() >= 8:
            break

    seg = np.zeros(shape, dtype=np.uint8)
    seg[organ] = 1
    seg[lesion] = 2

    mean = np.where(lesion, _MEANS["lesion"], np.where(organ, _MEANS["organ"], _MEANS["body"]))
    texture = 18.0 * _smooth_noise(rng, shape, np.where(active, 1.0, 0.0))
    white = rng.normal(0.0, 10.0, size=shape)
    bias = 1.0 + 0.12 * _smooth_noise(rng, shape, np.where(active, 12.0, 0.0))
    scale = rng.uniform(0.8, 1.25)
    image = (mean + texture + white) * bias * scale
    image = np.where(body, np.clip(image, 1.0, None), 0.0)

    origin = tuple(float(v) for v in rng.uniform(-120.0, 120.0, size=3))
    geometry = Geometry(
        spacing=(spacing_zyx[2], spacing_zyx[1], spacing_zyx[0]),
        origin=origin,  # type: ignore[arg-type]
        direction=direction,
        shape=shape,
        file_dim=3,
        is_2d=two_d,
    )
    return DemoCase(image=np.round(image).astype(np.int16), seg=seg, geometry=geometry)


def _ellipsoid(grid: list[np.ndarray], center: np.ndarray, axes: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Normalised squared radius sum(((x - c) / a)^2) over the active axes."""
    r = np.zeros(grid[0].shape)
    for g, c, a, on in zip(grid, center, axes, active):
        if on:
            r += ((g - c) / a) ** 2
    return r


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: np.ndarray) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=tuple(float(s) for s in sigma), mode="reflect")
    std = float(noise.std())
    return noise / std if std > 0 else noise


def write_demo_task(
    out_dir: str | os.PathLike[str],
    *,
    two_d: bool = False,
    num_training: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
    name: str | None = None,
    regions: bool = False,
    sparse_every: int = 0,
) -> Path:
    """Write a synthetic MSD-layout task into `out_dir/<name>` and return that folder.

    Defaults: 3D `Task01_Demo` with 24 training + 6 test cases, 2D `Task02_Demo2D` with
    40 + 8. labelsTs is written too so that predictions on the test cases can be evaluated.
    The same seed gives the same files.

    `regions` declares the labels as two overlapping regions (the organ with its lesion, and the
    lesion), the way BraTS-style tasks are written. `sparse_every` N > 1 keeps the training labels
    of every N-th slice along the first array axis only and marks the rest with the ignore label
    (test labels stay dense, for evaluation).
    """
    if num_training is None:
        num_training = 40 if two_d else 24
    if num_test is None:
        num_test = 8 if two_d else 6
    if num_training < 1 or num_test < 0:
        raise ValueError("num_training must be >= 1 and num_test >= 0")
    if sparse_every < 0 or sparse_every == 1:
        raise ValueError("sparse_every must be 0 (dense) or at least 2")
    root = Path(out_dir) / (name or ("Task02_Demo2D" if two_d else "Task01_Demo"))
    training, test = [], []
    for index in range(num_training + num_test):
        case_id = f"demo_{index + 1:03d}"
        case = make_demo_case(np.random.default_rng([seed, index, int(two_d)]), two_d=two_d)
        split = "Tr" if index < num_training else "Ts"
        write_image(case.image, case.geometry, root / f"images{split}" / f"{case_id}.nii.gz")
        seg = case.seg if split == "Ts" else sparsify(case.seg, sparse_every)
        write_label(seg, case.geometry, root / f"labels{split}" / f"{case_id}.nii.gz")
        if split == "Tr":
            training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
        else:
            test.append(f"./imagesTs/{case_id}.nii.gz")
    write_json(root / "dataset.json", {
        "name": root.name.split("_", 1)[-1],
        "description": "Synthetic demo task: an organ with a nested lesion inside a body region",
        "reference": "autounet.task.demo_data (synthetic, seed %d)" % seed,
        "licence": "CC0-1.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "MR"},
        **demo_labels(regions, sparse_every),
        "numTraining": num_training,
        "numTest": num_test,
        "training": training,
        "test": test,
    })
    log.info("wrote demo task %s (%d training, %d test cases)", root, num_training, num_test)
    return root


def demo_labels(regions: bool, sparse_every: int) -> dict[str, object]:
    """The dataset.json label entries of a demo task (classes or regions, with or without ignore)."""
    if not regions:
        labels: dict[str, object] = dict(DEMO_LABELS)
        if sparse_every:
            labels[str(DEMO_IGNORE)] = "ignore"
        return {"labels": labels}
    named: dict[str, object] = {"background": 0, "organ_with_lesion": [1, 2], "lesion": [2]}
    if sparse_every:
        named["ignore"] = DEMO_IGNORE
    return {"labels": named, "regions_class_order": [1, 2]}


def sparsify(seg: np.ndarray, every: int, ignore: int = DEMO_IGNORE) -> np.ndarray:
    """Keep the labels of every `every`-th slice along the first axis longer than one voxel (rows
    of a 2D image), in phase with the middle slice; every other voxel becomes the ignore label.
    0 keeps the map dense."""
    if not every:
        return seg
    axis = next((a for a, n in enumerate(seg.shape) if n > 1), 0)
    out = np.full_like(seg, ignore)
    phase = (seg.shape[axis] // 2) % every
    kept = (slice(None),) * axis + (slice(phase, None, every),)
    out[kept] = seg[kept]
    return out


def convert_msd_to_nnunet(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], dataset_id: int | None = None
) -> Path:
    """Write an MSD-layout task in nnU-Net v2 layout (`dst/Dataset0NN_Name`) and return that folder.

    4D images are split into one `_XXXX` file per channel on the same grid; 3D `.nii.gz`
    images and all labels are copied byte for byte.
    """
    task = load_task(src)
    if task.layout != "msd":
        raise DatasetError(f"{task.dataset_json}: task is already in nnU-Net layout; nothing to convert")
    task_id = dataset_id if dataset_id is not None else task_id_from_name(task.name)
    if task_id is None:
        raise DatasetError(f"{task.root}: cannot tell the task id from the folder name; pass dataset_id")
    short_name = task.name.split("_", 1)[1] if "_" in task.name else task.name
    out = Path(dst) / f"Dataset{task_id:03d}_{short_name}"
    for cases, split in ((task.training, "Tr"), (task.test, "Ts")):
        for case in cases:
            _write_channel_files(case.images[0], out / f"images{split}", case.case_id)
            if case.label is not None:
                _copy(case.label, out / f"labels{split}" / f"{case.case_id}.nii.gz")
    write_json(out / "dataset.json", _nnunet_json(task, short_name))
    return out


def _nnunet_json(task: TaskDataset, short_name: str) -> dict[str, object]:
    labels: dict[str, object] = ({"background": 0, **{r.name: list(r.values) for r in task.regions}} if task.regions
                                 else dict(task.labels))
    if task.ignore_label is not None:
        labels["ignore"] = task.ignore_label
    return {
        "name": short_name,
        "channel_names": dict(task.channel_names),
        "labels": labels,
        **({"regions_class_order": list(task.regions_class_order or [])} if task.regions else {}),
        "numTraining": len(task.training),
        "file_ending": ".nii.gz",
    }


def _write_channel_files(image: Path, folder: Path, case_id: str) -> None:
    if file_ending(image.name) == ".nii.gz" and image_channel_count(image) == 1:
        _copy(image, folder / f"{case_id}_0000.nii.gz")
        return
    data, geometry = read_image(image)
    for c, channel in enumerate(data):
        write_image(channel, geometry, folder / f"{case_id}_{c:04d}.nii.gz")


def _copy(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise DatasetError(f"{src}: listed in dataset.json but missing; add the file before converting")
    if file_ending(src.name) != ".nii.gz":
        seg, geometry = read_label(src)
        write_label(seg, geometry, dst)
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
