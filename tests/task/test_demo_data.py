"""The synthetic demo task: seeded, MSD layout, and with the traits it promises."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from autounet.io.images import read_image, read_label
from autounet.task.dataset import load_task
from autounet.task.demo_data import make_demo_case, write_demo_task


def test_same_seed_gives_same_arrays_other_seed_differs() -> None:
    a = make_demo_case(np.random.default_rng([3, 1, 0]))
    b = make_demo_case(np.random.default_rng([3, 1, 0]))
    c = make_demo_case(np.random.default_rng([4, 1, 0]))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.seg, b.seg)
    assert a.geometry == b.geometry
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_written_task_is_deterministic(tmp_path: Path) -> None:
    first = write_demo_task(tmp_path / "a", num_training=2, num_test=1, seed=7)
    second = write_demo_task(tmp_path / "b", num_training=2, num_test=1, seed=7)
    for rel in ("imagesTr/demo_002.nii.gz", "labelsTr/demo_002.nii.gz", "imagesTs/demo_003.nii.gz"):
        x, gx = read_image(first / rel)
        y, gy = read_image(second / rel)
        np.testing.assert_array_equal(x, y)
        assert gx == gy
    assert (first / "dataset.json").read_text() == (second / "dataset.json").read_text()


def test_msd_dataset_json(demo_task_3d: Path) -> None:
    js = json.loads((demo_task_3d / "dataset.json").read_text())
    assert demo_task_3d.name == "Task01_Demo"
    assert js["modality"] == {"0": "MR"}
    assert js["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert js["numTraining"] == len(js["training"]) == 8
    assert js["numTest"] == len(js["test"]) == 2
    assert js["training"][0] == {"image": "./imagesTr/demo_001.nii.gz", "label": "./labelsTr/demo_001.nii.gz"}
    assert js["test"] == ["./imagesTs/demo_009.nii.gz", "./imagesTs/demo_010.nii.gz"]
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        assert (demo_task_3d / folder).is_dir()


def test_3d_traits(demo_task_3d: Path) -> None:
    task = load_task(demo_task_3d)
    shapes, spacings, directions = set(), set(), set()
    for case in task.training:
        image, geometry = read_image(case.images[0])
        assert case.label is not None
        seg, seg_geometry = read_label(case.label)
        assert seg_geometry == geometry and not geometry.is_2d
        assert set(np.unique(seg).tolist()) == {0, 1, 2}
        # the lesion is nested: every lesion voxel's neighbours are organ or lesion
        grown = ndimage.binary_dilation(seg == 2)
        assert np.all(seg[grown] > 0)
        # zero background outside the body, non-zero inside it
        assert image[0][seg > 0].min() > 0
        assert (image[0] == 0).mean() > 0.3
        assert image[0][0, 0, 0] == 0 and image[0][-1, -1, -1] == 0
        # organ and lesion intensities differ but overlap a little (not a threshold task)
        organ, lesion = image[0][seg == 1], image[0][seg == 2]
        assert lesion.mean() - organ.mean() > 1.5 * organ.std()
        assert lesion.min() < organ.max()
        assert 24 <= geometry.shape[0] <= 40 and all(40 <= n <= 60 for n in geometry.shape[1:])
        assert 1.5 <= geometry.spacing_zyx[0] <= 2.5 and 0.85 <= geometry.spacing_zyx[1] <= 1.35
        shapes.add(geometry.shape)
        spacings.add(geometry.spacing)
        directions.add(geometry.direction)
        assert any(abs(o) > 1.0 for o in geometry.origin)
    assert len(shapes) > 1 and len(spacings) > 1
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert len(directions - {identity}) >= 2


def test_2d_traits(demo_task_2d: Path) -> None:
    task = load_task(demo_task_2d)
    assert demo_task_2d.name == "Task02_Demo2D" and len(task.training) == 12
    for case in task.training[:4]:
        image, geometry = read_image(case.images[0])
        assert geometry.is_2d and geometry.shape[0] == 1 and geometry.file_dim == 3
        assert all(64 <= n <= 96 for n in geometry.shape[1:])
        assert case.label is not None
        seg, _ = read_label(case.label)
        assert set(np.unique(seg).tolist()) == {0, 1, 2}
        assert image[0][seg > 0].min() > 0 and image[0][0, 0, 0] == 0


def test_task_is_small_and_quick(tmp_path: Path) -> None:
    root = write_demo_task(tmp_path, num_training=4, num_test=0)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 4 * 250_000  # about 0.1-0.2 MB per 3D case with its label
    assert not (root / "imagesTs").exists() or not any((root / "imagesTs").iterdir())


def test_invalid_counts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_training"):
        write_demo_task(tmp_path, num_training=0)
