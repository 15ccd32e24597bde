"""Write a small learning task (MSD layout) from one real labelled volume, for `convergence.py --task`.

../shared/data holds only one real training set (the hippocampus subset). To compare the learning of
both tools on other anatomy, modality and normalization, this script turns one of the
TotalSegmentator reference volumes (a CT in Hounsfield units, or an MR) into a population of cases:
each case is the volume rotated about the body axis (+-`--rotation` degrees), scaled by
1 +- `--scale`, cropped to 75-90 % of its extent at a random offset, and given its own noise (CT) or
intensity scale and noise (MR, whose intensities have no unit). The `--classes` largest structures
are kept (renumbered 1..k, consecutive as nnU-Net wants); every other label becomes background.

What this measures: how fast both tools fit real anatomy with real intensity statistics. Cases of
one task share one patient, so the fold's validation Dice is a fitting measure, not a
generalisation measure; the hippocampus subset remains the generalisation check.

    python benchmarks/learning_task.py --source ct --out /tmp/Task71_CtOrgans
    python benchmarks/convergence.py --task /tmp/Task71_CtOrgans --nnunet-dataset-id 971 ...
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SOURCES = {
    "ct": ("example_ct_sm.nii.gz", "example_seg.nii.gz", "CT"),
    "mr": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "MRI"),
}


@dataclass(frozen=True)
class CaseDraw:
    """The random parameters of one case, drawn apart from applying them (so a test can fix them)."""

    rotation_deg: float
    scale: float
    crop_fraction: tuple[float, float, float]
    crop_offset: tuple[float, float, float]
    intensity_scale: float
    noise_std: float


def largest_labels(label: np.ndarray, count: int) -> list[int]:
    """The `count` foreground values with the most voxels, largest first."""
    values, counts = np.unique(label[label > 0], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [int(values[i]) for i in order[:count]]


def relabel(label: np.ndarray, kept: list[int]) -> np.ndarray:
    """Kept values become 1..k in the given order; everything else background."""
    lut = np.zeros(int(label.max()) + 1, dtype=np.uint8)
    for new, old in enumerate(kept, start=1):
        lut[old] = new
    return lut[label]


def draw_case(rng: np.random.Generator, modality: str, rotation: float, scale: float) -> CaseDraw:
    fraction = tuple(float(f) for f in rng.uniform(0.75, 0.9, size=3))
    return CaseDraw(
        rotation_deg=float(rng.uniform(-rotation, rotation)),
        scale=float(rng.uniform(1 - scale, 1 + scale)),
        crop_fraction=fraction,  # type: ignore[arg-type]
        crop_offset=tuple(float(o) for o in rng.uniform(0, 1, size=3)),  # type: ignore[arg-type]
        intensity_scale=1.0 if modality == "CT" else float(math.exp(rng.uniform(-1.5, 1.5))),
        noise_std=float(rng.uniform(5, 20)) if modality == "CT" else float(rng.uniform(0.01, 0.04)),
    )


def make_case(image: sitk.Image, label: sitk.Image, draw: CaseDraw, modality: str,
              rng: np.random.Generator) -> tuple[sitk.Image, sitk.Image]:
    """Apply one draw: a similarity transform about the volume's centre, a crop, intensity changes."""
    size = np.array(image.GetSize())
    spacing = np.array(image.GetSpacing())
    centre = image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist())
    transform = sitk.Similarity3DTransform()
    transform.SetCenter(centre)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    axis = direction[:, 2]  # the slice axis: rotate in-plane, as patients lie differently
    transform.SetRotation(axis.tolist(), math.radians(draw.rotation_deg))
    transform.SetScale(draw.scale)
    out_size = np.maximum(np.round(size * np.array(draw.crop_fraction)).astype(int), 8)
    start = np.floor((size - out_size) * np.array(draw.crop_offset)).astype(int)
    origin = image.TransformIndexToPhysicalPoint(start.tolist())
    reference = sitk.Image([int(s) for s in out_size], sitk.sitkUInt8)
    reference.SetSpacing(spacing.tolist())
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(origin)
    background = float(sitk.GetArrayViewFromImage(image).min())
    moved = sitk.Resample(image, reference, transform, sitk.sitkLinear, background, sitk.sitkFloat32)
    moved_label = sitk.Resample(label, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    values = sitk.GetArrayFromImage(moved).astype(np.float64)
    if modality == "CT":
        values = np.round(values + rng.normal(0.0, draw.noise_std, values.shape))
        out = sitk.GetImageFromArray(values.astype(np.int16))
    else:
        values = values * draw.intensity_scale
        values += rng.normal(0.0, draw.noise_std * float(values.std()), values.shape)
        out = sitk.GetImageFromArray(values.astype(np.float32))
    out.CopyInformation(moved)
    return out, moved_label


def write_task(shared: Path, out: Path, source: str = "ct", cases: int = 25, classes: int = 4,
               seed: int = 0, rotation: float = 10.0, scale: float = 0.1) -> list[int]:
    """Write the task into `out`; returns the source label values kept, in their new order 1..k."""
    image_name, label_name, modality = SOURCES[source]
    folder = shared / "totalsegmentator-reference"
    image = sitk.ReadImage(str(folder / image_name), sitk.sitkFloat32)
    label = sitk.ReadImage(str(folder / label_name))
    kept = largest_labels(sitk.GetArrayViewFromImage(label), classes)
    renumbered = sitk.GetImageFromArray(relabel(sitk.GetArrayFromImage(label), kept))
    renumbered.CopyInformation(label)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(cases):
        rng = np.random.default_rng([seed, i])
        case_image, case_label = make_case(image, renumbered, draw_case(rng, modality, rotation, scale), modality, rng)
        case = f"case_{i:03d}"
        sitk.WriteImage(case_image, str(out / "imagesTr" / f"{case}.nii.gz"), True)
        sitk.WriteImage(case_label, str(out / "labelsTr" / f"{case}.nii.gz"), True)
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    labels = {"0": "background", **{str(i): f"structure_{v}" for i, v in enumerate(kept, start=1)}}
    dataset = {"name": out.name.split("_", 1)[-1], "tensorImageSize": "3D", "modality": {"0": modality},
               "labels": labels, "numTraining": cases, "numTest": 0, "training": training, "test": [],
               "description": f"{cases} cases drawn from TotalSegmentator's {image_name} (benchmarks/learning_task.py)"}
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    parser.add_argument("--source", choices=sorted(SOURCES), default="ct")
    parser.add_argument("--out", type=Path, required=True, help="task folder to write (MSD layout)")
    parser.add_argument("--cases", type=int, default=25)
    parser.add_argument("--classes", type=int, default=4, help="keep this many of the largest structures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rotation", type=float, default=10.0, help="in-plane rotation range, degrees")
    parser.add_argument("--scale", type=float, default=0.1, help="scale range 1 +- this")
    args = parser.parse_args(argv)
    kept = write_task(args.shared, args.out, args.source, args.cases, args.classes, args.seed, args.rotation, args.scale)
    print(f"{args.out}: {args.cases} {args.source.upper()} cases, structures {kept} renumbered 1..{len(kept)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
