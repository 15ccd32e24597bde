"""Helpers that make the demo tasks CPU-sized for tests that train (importable: conftest puts tests/ on sys.path)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from autounet.io.images import read_image, read_label, write_image, write_label


def subsample_task(task_dir: Path, factor: int = 2) -> None:
    """Keep every `factor`-th voxel of each image and label map, spacing scaled to match.

    The first voxel and the direction stay, so the grid keeps its position and orientation;
    image and labels are subsampled identically, so they still line up voxel for voxel.
    """
    step = (slice(None, None, factor),) * 3
    for image_path in sorted(task_dir.glob("images*/*.nii.gz")):
        label_path = task_dir / image_path.parent.name.replace("images", "labels") / image_path.name
        image, geometry = read_image(image_path)
        small = image[0][step]
        small_geometry = dataclasses.replace(geometry, spacing=tuple(s * factor for s in geometry.spacing),
                                             shape=small.shape)
        write_image(small, small_geometry, image_path)
        if label_path.is_file():
            seg, _ = read_label(label_path)
            write_label(seg[step], small_geometry, label_path)
