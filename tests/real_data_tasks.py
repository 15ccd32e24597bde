"""Small MSD-layout tasks built on the fly from the real images in `../shared/data`.

None of the real sets is a training set of its own (one or two cases each), so every builder
takes one or two real image/label pairs, crops and subsamples them so that a whole
plan-and-preprocess run takes a few seconds, and adds flipped or cropped copies until the
task has four training cases. The files are written with SimpleITK (not with autounet's own
writer) in the format the real data came in where that matters (NRRD for pyradiomics), into a
temporary folder: nothing from the real data is ever written into the repository.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ImagePair = tuple[sitk.Image, sitk.Image]


@dataclass(frozen=True)
class RealTask:
    """A task written from real data: where it lies and what the test may expect of it."""

    root: Path
    modality: str
    label_values: list[int]
    ending: str
    case_ids: list[str]
    anisotropic: bool
    how: str

    def image_path(self, case_id: str) -> Path:
        return self.root / "imagesTr" / f"{case_id}{self.ending}"

    def label_path(self, case_id: str) -> Path:
        return self.root / "labelsTr" / f"{case_id}{self.ending}"


def flipped(pair: ImagePair, axes: tuple[bool, bool, bool]) -> ImagePair:
    """Mirror image and label alike along the given (x, y, z) index axes; the grid stays the same."""
    image, label = pair
    return sitk.Flip(image, list(axes)), sitk.Flip(label, list(axes))


def cropped(pair: ImagePair, box_xyz: tuple[slice, slice, slice]) -> ImagePair:
    """Crop (and subsample, where a slice has a step) image and label alike; origin and spacing follow."""
    image, label = pair
    return image[box_xyz], label[box_xyz]


def box_around_label(label: sitk.Image, size_xy: int, size_z: int | None = None) -> tuple[slice, slice, slice]:
    """A (x, y, z) index box of `size_xy` in-plane (and `size_z` slices, None: all) centred on the labelled voxels."""
    coords = np.argwhere(sitk.GetArrayViewFromImage(label) > 0)  # (z, y, x)
    centre = (coords.min(axis=0) + coords.max(axis=0)) // 2
    size = label.GetSize()

    def window(axis_xyz: int, centre_index: int, width: int) -> slice:
        start = int(np.clip(centre_index - width // 2, 0, max(size[axis_xyz] - width, 0)))
        return slice(start, min(start + width, size[axis_xyz]))

    z = slice(0, size[2]) if size_z is None else window(2, int(centre[0]), size_z)
    return window(0, int(centre[2]), size_xy), window(1, int(centre[1]), size_xy), z


def write_msd_task(
    root: Path,
    pairs: list[ImagePair],
    modality: str,
    label_names: dict[int, str],
    ending: str,
    *,
    anisotropic: bool,
    how: str,
) -> RealTask:
    """Write `pairs` as training cases `case_000..` of an MSD task, labels cast to uint8/uint16."""
    case_ids = [f"case_{i:03d}" for i in range(len(pairs))]
    task = RealTask(root, modality, sorted(label_names), ending, case_ids, anisotropic, how)
    for case_id, (image, label) in zip(case_ids, pairs):
        task.image_path(case_id).parent.mkdir(parents=True, exist_ok=True)
        task.label_path(case_id).parent.mkdir(parents=True, exist_ok=True)
        pixel = sitk.sitkUInt8 if max(label_names) < 256 else sitk.sitkUInt16
        sitk.WriteImage(image, str(task.image_path(case_id)), True)
        sitk.WriteImage(sitk.Cast(label, pixel), str(task.label_path(case_id)), True)
    dataset = {
        "name": root.name.split("_", 1)[-1],
        "description": "built from ../shared/data by tests/real_data_tasks.py",
        "tensorImageSize": "3D",
        "modality": {"0": modality},
        "labels": {str(v): name for v, name in sorted(label_names.items())},
        "numTraining": len(pairs),
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/{c}{ending}", "label": f"./labelsTr/{c}{ending}"} for c in case_ids
        ],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    return task


def _read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def _values_in(pairs: list[ImagePair]) -> list[int]:
    values: set[int] = set()
    for _, label in pairs:
        values.update(int(v) for v in np.unique(sitk.GetArrayViewFromImage(label)))
    return sorted(values | {0})


def sct_t2s_task(data: Path, root: Path) -> RealTask:
    """Spinal-cord T2* (9x54x49, 0.5x0.5x7.5 mm): cord = 1 with the grey matter nested in it = 2."""
    folder = data / "sct-testing-data" / "t2s"
    image = _read(folder / "t2s.nii.gz")
    cord = sitk.GetArrayFromImage(_read(folder / "t2s_seg.nii.gz")) > 0
    grey = sitk.GetArrayFromImage(_read(folder / "t2s_gmseg_manual.nii.gz")) > 0
    seg = np.where(grey, 2, np.where(cord, 1, 0)).astype(np.uint8)
    label = sitk.GetImageFromArray(seg)
    label.CopyInformation(image)
    base = (image, label)
    pairs = [base, flipped(base, (True, False, False)), flipped(base, (False, True, False)),
             cropped(base, (slice(4, 46), slice(6, 50), slice(0, 9)))]
    return write_msd_task(root, pairs, "T2star", {0: "background", 1: "cord", 2: "grey_matter"}, ".nii.gz",
                          anisotropic=True, how="t2s with cord+grey-matter labels, x/y flips and a crop")


def pyradiomics_brain_task(data: Path, root: Path) -> RealTask:
    """Two brain MR (0.78x0.78x6.5 mm, NRRD): 96x96 around the lesion, every 2nd in-plane voxel, plus flips."""
    folder = data / "pyradiomics-testcases"
    pairs = []
    for name in ("brain1", "brain2"):
        image, label = _read(folder / f"{name}_image.nrrd"), _read(folder / f"{name}_label.nrrd")
        x, y, z = box_around_label(label, 96)
        pairs.append(cropped((image, label), (slice(x.start, x.stop, 2), slice(y.start, y.stop, 2), z)))
    pairs += [flipped(pairs[0], (True, False, False)), flipped(pairs[1], (False, True, False))]
    return write_msd_task(root, pairs, "MR", {0: "background", 1: "lesion"}, ".nrrd",
                          anisotropic=True, how="brain1/brain2 cropped around the lesion, subsampled 2x in-plane, flipped")


def pyradiomics_lung_ct_task(data: Path, root: Path) -> RealTask:
    """Two lung CT in HU (0.57-0.63 x 5 mm, NRRD): 64x64x12 around the lesion at full resolution, plus flips."""
    folder = data / "pyradiomics-testcases"
    pairs = []
    for name in ("lung1", "lung2"):
        image, label = _read(folder / f"{name}_image.nrrd"), _read(folder / f"{name}_label.nrrd")
        pairs.append(cropped((image, label), box_around_label(label, 64, 12)))
    pairs += [flipped(pairs[0], (True, False, False)), flipped(pairs[1], (False, True, False))]
    return write_msd_task(root, pairs, "CT", {0: "background", 1: "lesion"}, ".nrrd",
                          anisotropic=True, how="lung1/lung2 cropped to 64x64x12 around the lesion, flipped")


def dcmqi_ct_task(data: Path, root: Path) -> RealTask:
    """Three-slice CT read as a DICOM series; liver = 1, spine = 2, heart = 3 (heart wins where it overlaps the liver).

    The label maps are NRRD on the same 512x512x3 grid as the series (checked); every 4th
    in-plane voxel is kept (3.2 mm), plus flips and a crop.
    """
    folder = data / "dcmqi-ct3slice"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder / "ct-3slice")))
    image = reader.Execute()
    seg = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    for value, organ in ((1, "liver"), (2, "spine"), (3, "heart")):
        mask = _read(folder / f"{organ}_seg.nrrd")
        if mask.GetSize() != image.GetSize():
            raise ValueError(f"{organ}_seg.nrrd: size {mask.GetSize()} differs from the series {image.GetSize()}")
        seg[sitk.GetArrayViewFromImage(mask) > 0] = value
    label = sitk.GetImageFromArray(seg)
    label.CopyInformation(image)
    base = cropped((image, label), (slice(0, 512, 4), slice(0, 512, 4), slice(0, 3)))
    pairs = [base, flipped(base, (True, False, False)), flipped(base, (False, True, False)),
             cropped(base, (slice(16, 112), slice(8, 120), slice(0, 3)))]
    return write_msd_task(root, pairs, "CT", {0: "background", 1: "liver", 2: "spine", 3: "heart"}, ".nii.gz",
                          anisotropic=False, how="DICOM series + NRRD label maps, 4x subsampled in-plane, flips, crop")


def totalsegmentator_ct_task(data: Path, root: Path) -> RealTask:
    """Small CT at 3 mm with TotalSegmentator's labels (ids up to 117, many absent): two subsampling phases, flips.

    Every 2nd voxel per axis (6 mm) starting at offset 0 and at offset 1 gives two different
    cases; the declared labels are exactly the values left in the four label maps.
    """
    folder = data / "totalsegmentator-reference"
    full = (_read(folder / "example_ct_sm.nii.gz"), _read(folder / "example_seg.nii.gz"))
    even = cropped(full, (slice(0, None, 2), slice(0, None, 2), slice(0, None, 2)))
    odd = cropped(full, (slice(1, None, 2), slice(1, None, 2), slice(1, None, 2)))
    pairs = [even, odd, flipped(even, (True, False, False)), flipped(odd, (False, True, False))]
    values = _values_in(pairs)
    names = {v: ("background" if v == 0 else f"structure_{v}") for v in values}
    return write_msd_task(root, pairs, "CT", names, ".nii.gz",
                          anisotropic=False, how="CT + 41-class labels subsampled 2x at two phases, flipped")


REAL_TASK_BUILDERS: dict[str, Callable[[Path, Path], RealTask]] = {
    "sct-t2s": sct_t2s_task,
    "pyradiomics-brain-mr": pyradiomics_brain_task,
    "pyradiomics-lung-ct": pyradiomics_lung_ct_task,
    "dcmqi-ct3slice": dcmqi_ct_task,
    "totalsegmentator-ct": totalsegmentator_ct_task,
}
