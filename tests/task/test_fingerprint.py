"""Fingerprint on tiny arrays: bounding box, crop, label counts, sampling, statistics, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autounet.errors import PlansError
from autounet.io.geometry import Geometry
from autounet.io.json_schema import to_dict
from autounet.task.dataset import CaseFiles, TaskDataset
from autounet.task.fingerprint import (
    case_fingerprint,
    extract_fingerprint,
    intensity_properties,
    load_fingerprint,
    nonzero_bbox,
    planning_spacing,
    save_fingerprint,
)

GEOM = Geometry(spacing=(0.5, 0.7, 2.0), origin=(0.0, 0.0, 0.0), shape=(4, 5, 6))


def tiny_case() -> tuple[np.ndarray, np.ndarray]:
    """2 channels (4, 5, 6); channel 0 nonzero on [1:3, 1:4, 2:5], channel 1 adds voxel (3, 4, 0)."""
    image = np.zeros((2, 4, 5, 6), np.float32)
    image[0, 1:3, 1:4, 2:5] = np.arange(18, dtype=np.float32).reshape(2, 3, 3) + 1
    image[1, 3, 4, 0] = 7.0
    seg = np.zeros((4, 5, 6), np.int16)
    seg[1, 1, 2:4] = 1  # two voxels of label 1 (channel 0 values 1, 2)
    seg[2, 3, 4] = 2  # one voxel of label 2 (channel 0 value 18)
    seg[0, 0, 0] = 1  # outside the crop box: counted, not sampled
    return image, seg


def test_bbox_is_half_open_union_over_channels() -> None:
    image, _ = tiny_case()
    assert nonzero_bbox(image) == [[1, 4], [1, 5], [0, 5]]
    assert nonzero_bbox(image[:1]) == [[1, 3], [1, 4], [2, 5]]
    assert nonzero_bbox(np.zeros((1, 2, 3, 4))) == [[0, 2], [0, 3], [0, 4]]


def test_case_fingerprint_by_hand() -> None:
    image, seg = tiny_case()
    rec, samples = case_fingerprint("c1", image[:1], seg, GEOM, np.random.default_rng(0), max_samples=100)
    assert rec.shape == [4, 5, 6]
    assert rec.bbox == [[1, 3], [1, 4], [2, 5]]
    assert rec.shape_after_crop == [2, 3, 3]
    assert rec.spacing == [2.0, 0.7, 0.5]
    assert rec.label_voxel_counts == {"0": 116, "1": 3, "2": 1}
    assert rec.relative_size_after_crop == pytest.approx(18 / 120)
    assert sorted(samples[0].tolist()) == [1.0, 2.0, 18.0]


def test_sampling_is_bounded_and_seeded() -> None:
    image, seg = tiny_case()
    seg[1:3, 1:4, 2:5] = 1  # 18 foreground voxels
    a = case_fingerprint("c", image, seg, GEOM, np.random.default_rng([5, 0]), max_samples=4)[1]
    b = case_fingerprint("c", image, seg, GEOM, np.random.default_rng([5, 0]), max_samples=4)[1]
    assert len(a) == 2 and a[0].size == 4 and a[1].size == 4
    assert np.array_equal(a[0], b[0])
    assert len(set(a[0].tolist())) == 4 and set(a[0].tolist()) <= set(range(1, 19))


def test_2d_case_gets_a_coarse_singleton_axis() -> None:
    geom = Geometry(spacing=(0.5, 0.7, 1.0), origin=(0.0, 0.0, 0.0), shape=(1, 5, 6), file_dim=2, is_2d=True)
    assert planning_spacing(geom, (1, 5, 6)) == pytest.approx([999 * 0.7, 0.7, 0.5])
    assert planning_spacing(GEOM, (4, 5, 6)) == [2.0, 0.7, 0.5]


def test_intensity_properties() -> None:
    props = intensity_properties(np.arange(1, 201, dtype=np.float32))
    assert props.mean == pytest.approx(100.5) and props.median == pytest.approx(100.5)
    assert props.min == 1.0 and props.max == 200.0
    assert props.percentile_00_5 == pytest.approx(1.995) and props.percentile_99_5 == pytest.approx(199.005)
    empty = intensity_properties(np.empty(0, np.float32))
    assert empty.std == 1.0 and empty.mean == 0.0


def _write(arr: np.ndarray, path: Path, spacing: tuple[float, float, float]) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def tiny_task(tmp_path: Path) -> TaskDataset:
    """A 4-case nnU-Net-layout task written with SimpleITK, as a TaskDataset."""
    rng = np.random.default_rng(3)
    cases = []
    for i in range(4):
        image = np.zeros((6, 8, 8), np.float32)
        image[1:5, 2:7, 1:6] = rng.normal(100, 10, (4, 5, 5)).astype(np.float32)
        seg = np.zeros((6, 8, 8), np.uint8)
        seg[2:4, 3:6, 2:5] = 1
        seg[3, 4, 3] = 2
        img_path = tmp_path / f"c{i}_0000.nii.gz"
        seg_path = tmp_path / f"c{i}.nii.gz"
        _write(image, img_path, (0.8, 0.8, 2.5 + i))
        _write(seg, seg_path, (0.8, 0.8, 2.5 + i))
        cases.append(CaseFiles(case_id=f"c{i}", images=[img_path], label=seg_path))
    return TaskDataset(name="Task98_Tiny", root=tmp_path, layout="nnunet", channel_names={"0": "MR"},
                       labels={"background": 0, "a": 1, "b": 2}, file_ending=".nii.gz", training=cases)


def test_extract_is_independent_of_worker_count(tiny_task: TaskDataset, tmp_path: Path) -> None:
    inline = extract_fingerprint(tiny_task, num_workers=0, show_progress=False, sample_budget=20)
    pooled = extract_fingerprint(tiny_task, num_workers=2, show_progress=False, sample_budget=20)
    assert to_dict(inline) == to_dict(pooled)
    for i, case in enumerate(inline.cases):  # NIfTI stores spacings as float32
        assert case.spacing == pytest.approx([2.5 + i, 0.8, 0.8], rel=1e-6)
    assert all(c.bbox == [[1, 5], [2, 7], [1, 6]] for c in inline.cases)
    assert all(c.label_voxel_counts == {"0": 366, "1": 17, "2": 1} for c in inline.cases)
    assert inline.num_samples_per_channel == 20
    assert 70 < inline.intensity_properties["0"].mean < 130
    assert not inline.is_2d and inline.median_relative_size_after_crop == pytest.approx(100 / 384)

    path = tmp_path / "out" / "fingerprint.json"
    save_fingerprint(inline, path)
    assert to_dict(load_fingerprint(path)) == to_dict(inline)


def test_load_rejects_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(PlansError, match="fingerprint not found"):
        load_fingerprint(tmp_path / "nope.json")
    bad = tmp_path / "fingerprint.json"
    bad.write_text(json.dumps({"task": "x"}))
    with pytest.raises(PlansError, match="fingerprint.json"):
        load_fingerprint(bad)
