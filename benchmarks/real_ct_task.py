"""Write a small real-CT task for `predict.py --task-dir`: TotalSegmentator's reference CT, 41 classes.

../shared/data/totalsegmentator-reference holds one CT at 3 mm with a 41-class label map. Taking
every second voxel at offset 0 and at offset 1 gives two different cases; flips of them give
six cases in MSD layout (enough for fold 0 of a five-fold split). The label ids (up to 117) are
renumbered 0..40 because nnU-Net v2 trains only consecutive labels (its loss fails on id 86 of
41 classes); autounet takes either.

    python benchmarks/real_ct_task.py --shared ../shared/data --out /tmp/Task76_TotalCt
    python benchmarks/predict.py --task-dir /tmp/Task76_TotalCt --nnunet-dataset-id 976 \\
        --input-case ../shared/data/pyradiomics-testcases/lung1_image.nrrd --nnunet-python ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _subsampled(image: sitk.Image, offset: int) -> sitk.Image:
    return image[offset::2, offset::2, offset::2]


def _flipped(image: sitk.Image, axes: tuple[bool, bool, bool]) -> sitk.Image:
    return sitk.Flip(image, list(axes))


def write_task(shared: Path, out: Path) -> int:
    """Write the task into `out`; returns the number of classes (background included)."""
    folder = shared / "totalsegmentator-reference"
    ct = sitk.ReadImage(str(folder / "example_ct_sm.nii.gz"))
    seg = sitk.ReadImage(str(folder / "example_seg.nii.gz"))
    flips = [(False, False, False), (False, False, False), (True, False, False), (False, True, False),
             (False, False, True), (True, True, False)]
    pairs = [(_flipped(_subsampled(ct, i % 2), f), _flipped(_subsampled(seg, i % 2), f)) for i, f in enumerate(flips)]
    values = sorted(set().union(*(np.unique(sitk.GetArrayViewFromImage(s)).tolist() for _, s in pairs)))
    lut = np.zeros(max(values) + 1, dtype=np.uint8)
    lut[values] = np.arange(len(values))
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for i, (image, label) in enumerate(pairs):
        case = f"case_{i:03d}"
        relabelled = sitk.GetImageFromArray(lut[sitk.GetArrayFromImage(label)])
        relabelled.CopyInformation(label)
        sitk.WriteImage(image, str(out / "imagesTr" / f"{case}.nii.gz"), True)
        sitk.WriteImage(relabelled, str(out / "labelsTr" / f"{case}.nii.gz"), True)
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    dataset = {"name": out.name.split("_", 1)[-1], "tensorImageSize": "3D", "modality": {"0": "CT"},
               "labels": {str(i): "background" if v == 0 else f"structure_{v}" for i, v in enumerate(values)},
               "numTraining": len(training), "numTest": 0, "training": training, "test": []}
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2), encoding="utf-8")
    return len(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    parser.add_argument("--out", type=Path, required=True, help="task folder to write (MSD layout)")
    args = parser.parse_args(argv)
    n = write_task(args.shared, args.out)
    print(f"{args.out}: 6 CT cases, {n} classes (labels renumbered 0..{n - 1})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
