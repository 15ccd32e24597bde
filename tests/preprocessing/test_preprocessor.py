"""preprocess_case end to end, class location sampling, and resumable preprocess_task."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from autounet.errors import DatasetError, WorkerError
from autounet.io.geometry import Geometry
from autounet.io.images import read_label, write_image, write_label
from autounet.task.dataset import CaseFiles, TaskDataset
from autounet.core.workspace import Workspace
from autounet.planners.plans import Plans
from autounet.preprocessing.case_store import CaseStore
from autounet.preprocessing.preprocessor import (
    label_values_to_indices,
    preprocess_case,
    preprocess_task,
    sample_class_locations,
)

LABELS = {"background": 0, "liver": 5, "tumour": 117}
# (x, y, z) spacing as SimpleITK reports it: 2 mm slices
GEOMETRY = Geometry(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), shape=(6, 8, 10))


def _synthetic_case() -> tuple[np.ndarray, np.ndarray]:
    """(1, 6, 8, 10) image, body block Z 1:5, Y 2:7, X 3:9 at 14 (one corner voxel 0); labels 5 | 117 along X."""
    image = np.zeros((1, 6, 8, 10), dtype=np.int16)
    image[0, 1:5, 2:7, 3:9] = 14
    image[0, 1, 2, 3] = 0  # a corner voxel of the body is background -> outside the mask
    seg = np.zeros((6, 8, 10), dtype=np.uint8)
    seg[1:5, 2:7, 3:6] = 5
    seg[1:5, 2:7, 6:9] = 117
    seg[1, 2, 3] = 0
    return image, seg


@pytest.fixture
def ct_plans(make_plans: Callable[..., Plans]) -> Callable[..., Plans]:
    """One CT channel, labels 0/5/117, transpose_forward [2, 0, 1]: arrays become (X, Z, Y), spacing (1, 2, 1)."""
    return functools.partial(make_plans, labels=LABELS, transpose_forward=[2, 0, 1], normalization=["ct"])


def test_preprocess_case_transposes_crops_normalizes_resamples_and_indexes_labels(
    ct_plans: Callable[..., Plans]
) -> None:
    image, seg = _synthetic_case()
    plans = ct_plans(spacing_3d=[1.0, 1.0, 1.0])
    data, seg_idx, props, locations = preprocess_case(image, seg, GEOMETRY, plans, "3d_fullres", case_id="c1")

    assert props.case_id == "c1"
    assert props.shape_before_crop == [10, 6, 8]
    assert props.bbox == [[3, 9], [1, 5], [2, 7]]
    assert props.shape_after_crop == [6, 4, 5]
    assert props.spacing == [1.0, 2.0, 1.0]
    assert props.target_spacing == [1.0, 1.0, 1.0]
    assert props.shape_after_resample == [6, 8, 5]
    assert data.shape == (1, 6, 8, 5) and data.dtype == np.float32
    assert seg_idx is not None and seg_idx.shape == (6, 8, 5) and seg_idx.dtype == np.int16

    # CT: 14 is inside [4, 16] -> (14 - 10) / 2 = 2; away from the zero corner voxel nothing else changes
    np.testing.assert_allclose(data[0, 3:], 2.0, atol=1e-5)
    # labels 5 -> 1 on X 3:6 (transposed axis 0, not resampled), 117 -> 2 on X 6:9
    assert set(np.unique(seg_idx[:3]).tolist()) == {-1, 1}
    assert (seg_idx[3:] == 2).all()
    # the corner voxel (outside the mask) is -1; upsampling Z by 2 with linear one-hot keeps it on 2 voxels
    assert (seg_idx == -1).sum() == 2 and seg_idx[0, 0, 0] == -1 and seg_idx[0, 1, 0] == -1

    assert sorted(locations) == [1, 2]
    assert len(locations[1]) == (seg_idx == 1).sum()  # fewer than 10000 voxels: all of them
    assert (seg_idx[tuple(locations[2].T)] == 2).all()


def test_prediction_path_gives_identical_data_without_seg(ct_plans: Callable[..., Plans]) -> None:
    image, seg = _synthetic_case()
    plans = ct_plans(spacing_3d=[1.0, 1.0, 1.0])
    with_seg = preprocess_case(image, seg, GEOMETRY, plans, "3d_fullres")
    without = preprocess_case(image, None, GEOMETRY, plans, "3d_fullres")
    np.testing.assert_array_equal(with_seg[0], without[0])
    assert without[1] is None and without[3] == {}
    assert without[2] == with_seg[2]


def test_masked_zscore_uses_the_nonzero_region(make_plans: Callable[..., Plans]) -> None:
    image, seg = _synthetic_case()
    image = image.astype(np.float32)
    image[0, 1:5, 2:7, 3:9] = np.random.default_rng(0).normal(50, 5, size=(4, 5, 6))
    plans = make_plans(labels=LABELS, normalization=["zscore"], use_mask=[True])
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    data, seg_idx, _, _ = preprocess_case(image, seg, geometry, plans, "3d_fullres")
    inside = seg_idx >= 0
    assert (data[0][~inside] == 0).all()
    assert abs(float(data[0][inside].mean())) < 1e-4 and abs(float(data[0][inside].std()) - 1) < 1e-4


def test_2d_configuration_resamples_only_in_plane(ct_plans: Callable[..., Plans]) -> None:
    image, seg = _synthetic_case()
    plans = ct_plans(spacing_2d=[0.5, 1.0])
    data, seg_idx, props, _ = preprocess_case(image, seg, GEOMETRY, plans, "2d")
    # transposed spacing (1, 2, 1) -> target (1 kept, 0.5, 1); crop (6, 4, 5) -> (6, 16, 5)
    assert props.target_spacing == [1.0, 0.5, 1.0]
    assert data.shape == (1, 6, 16, 5) and seg_idx is not None and seg_idx.shape == (6, 16, 5)


def test_undeclared_label_and_wrong_channel_count_are_dataset_errors(ct_plans: Callable[..., Plans]) -> None:
    image, seg = _synthetic_case()
    seg[2, 3, 4] = 7
    plans = ct_plans()
    with pytest.raises(DatasetError, match=r"\[7\].*not declared"):
        preprocess_case(image, seg, GEOMETRY, plans, "3d_fullres", case_id="c1")
    with pytest.raises(DatasetError, match="2 channel"):
        preprocess_case(np.concatenate([image, image]), None, GEOMETRY, plans, "3d_fullres")


def test_label_values_to_indices_keeps_minus_one() -> None:
    seg = np.array([-1, 0, 5, 117, 5])
    np.testing.assert_array_equal(label_values_to_indices(seg, [0, 117, 5]), [-1, 0, 1, 2, 1])


def test_class_location_counts_follow_min_10000_and_1_percent() -> None:
    seg = np.full((50, 200, 200), 2, dtype=np.int16)  # 2,000,000 voxels
    flat = seg.reshape(-1)
    flat[:20_000] = 1
    flat[-50:] = 4
    locations = sample_class_locations(seg, num_classes=5, seed=7)
    assert len(locations[1]) == 10_000  # min(10000, 20000); 1 % would only be 200
    assert len(locations[2]) == 19_800  # 1 % of 1,979,950 (rounded up) exceeds 10000
    assert locations[3].shape == (0, 3)
    assert len(locations[4]) == 50
    for c, coords in locations.items():
        assert coords.dtype == np.int32
        assert (seg[tuple(coords.T)] == c).all()
        assert len(np.unique(coords, axis=0)) == len(coords)  # without replacement
    again = sample_class_locations(seg, num_classes=5, seed=7)
    np.testing.assert_array_equal(again[1], locations[1])
    assert not np.array_equal(sample_class_locations(seg, num_classes=5, seed=8)[1], locations[1])


# --- preprocess_task ------------------------------------------------------------------------


def _write_task(root: Path, n: int = 3) -> TaskDataset:
    """A tiny MSD-style task of shifted copies of the synthetic case."""
    image, seg = _synthetic_case()
    cases = []
    for i in range(n):
        img_path = root / "imagesTr" / f"case_{i}.nii.gz"
        lab_path = root / "labelsTr" / f"case_{i}.nii.gz"
        img_path.parent.mkdir(parents=True, exist_ok=True)
        lab_path.parent.mkdir(parents=True, exist_ok=True)
        write_image(np.roll(image[0], i, axis=2), GEOMETRY, img_path)
        write_label(np.roll(seg, i, axis=2), GEOMETRY, lab_path)
        cases.append(CaseFiles(case_id=f"case_{i}", images=[img_path], label=lab_path))
    return TaskDataset(
        name="Task99_Test", root=root, layout="msd", channel_names={"0": "CT"}, labels=LABELS,
        file_ending=".nii.gz", training=cases,
    )


def test_preprocess_task_writes_each_data_identifier_once_and_reference_labels(
    tmp_path: Path, ct_plans: Callable[..., Plans]
) -> None:
    task = _write_task(tmp_path / "raw")
    ws = Workspace(tmp_path / "ws")
    plans = ct_plans(cascade=True)
    configurations = ["3d_fullres", "3d_cascade_fullres", "2d"]
    preprocess_task(ws, task, plans, configurations, num_workers=0, show_progress=False)
    root = ws.preprocessed(task.name)
    assert sorted(p.name for p in root.iterdir()) == ["2d", "3d_fullres", "gt_segmentations"]
    store = CaseStore(root / "3d_fullres")
    assert store.case_ids() == ["case_0", "case_1", "case_2"]
    data, seg, props = store.load("case_1")
    assert data.shape == (1, 6, 8, 5) and set(np.unique(seg).tolist()) <= {-1, 0, 1, 2}
    assert props.case_id == "case_1"
    ref, geometry = read_label(root / "gt_segmentations" / "case_1.nii.gz")
    np.testing.assert_array_equal(ref, np.roll(_synthetic_case()[1], 1, axis=2))
    assert geometry.spacing == GEOMETRY.spacing


def test_preprocess_task_resumes_without_rewriting_finished_cases(
    tmp_path: Path, ct_plans: Callable[..., Plans]
) -> None:
    task = _write_task(tmp_path / "raw")
    ws = Workspace(tmp_path / "ws")
    plans = ct_plans()
    preprocess_task(ws, task, plans, ["3d_fullres"], num_workers=0, show_progress=False)
    folder = ws.preprocessed(task.name) / "3d_fullres"
    finished = folder / "case_0.npy"
    old_ns = finished.stat().st_mtime_ns
    os.utime(finished, ns=(old_ns - 10**9, old_ns - 10**9))  # make a rewrite detectable on coarse clocks
    old_ns = finished.stat().st_mtime_ns
    (folder / "case_1.json").unlink()  # an interrupted case: arrays written, properties not
    stray = folder / ".tmp-case_1-abc.npy"
    stray.write_bytes(b"partial")
    reference = ws.preprocessed(task.name) / "gt_segmentations" / "case_0.nii.gz"
    reference.unlink()  # a finished case whose reference copy went missing gets only the copy redone

    preprocess_task(ws, task, plans, ["3d_fullres"], num_workers=0, show_progress=False)
    assert finished.stat().st_mtime_ns == old_ns
    assert reference.is_file()
    assert (folder / "case_1.json").is_file()
    assert not stray.exists()
    assert CaseStore(folder).case_ids() == ["case_0", "case_1", "case_2"]

    preprocess_task(ws, task, plans, ["3d_fullres"], num_workers=0, clean=True, show_progress=False)
    assert finished.stat().st_mtime_ns != old_ns


def test_preprocess_task_in_worker_processes_names_a_failing_case(
    tmp_path: Path, ct_plans: Callable[..., Plans]
) -> None:
    task = _write_task(tmp_path / "raw", n=2)
    ws = Workspace(tmp_path / "ws")
    preprocess_task(ws, task, ct_plans(), ["3d_fullres"], num_workers=2, show_progress=False)
    assert CaseStore(ws.preprocessed(task.name) / "3d_fullres").case_ids() == ["case_0", "case_1"]

    bad = _write_task(tmp_path / "raw2", n=2)
    bad_seg = np.zeros((6, 8, 10), dtype=np.uint8)
    bad_seg[2, 3, 4] = 9  # undeclared label value
    write_label(bad_seg, GEOMETRY, bad.training[1].label)
    # inline (num_workers=0) raises the same WorkerError as a worker process, without a second pool start-up
    with pytest.raises(WorkerError, match=r"case_1 \(3d_fullres\): .*case_1.nii.gz: label value\(s\) \[9\] are not declared"):
        preprocess_task(Workspace(tmp_path / "ws2"), bad, ct_plans(), ["3d_fullres"], num_workers=0,
                        show_progress=False)


SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def test_real_ct_with_many_non_contiguous_labels_maps_back_exactly(make_plans: Callable[..., Plans]) -> None:
    """totalsegmentator-reference small CT (3 mm, ids up to 117): without resampling, indices map back."""
    folder = SHARED_DATA / "totalsegmentator-reference"
    if not (folder / "example_seg.nii.gz").is_file():
        pytest.skip(f"real data not available at {folder}")
    from autounet.io.images import read_image

    image, geometry = read_image(folder / "example_ct_sm.nii.gz")
    seg, _ = read_label(folder / "example_seg.nii.gz")
    values = sorted(int(v) for v in np.unique(seg))
    labels = {("background" if v == 0 else f"class_{v}"): v for v in values}
    plans = make_plans(labels=labels, transpose_forward=[2, 1, 0], normalization=["ct"],
                       spacing_3d=[float(geometry.spacing_zyx[a]) for a in (2, 1, 0)])
    data, seg_idx, props, locations = preprocess_case(image, seg, geometry, plans, "3d_fullres")
    assert seg_idx is not None and props.shape_after_resample == props.shape_after_crop
    assert sorted(locations) == list(range(1, len(values)))
    # indices -> label values, paste into the full grid, transpose back: the original label map
    restored = np.asarray(values)[np.maximum(seg_idx, 0)]
    full = np.zeros(props.shape_before_crop, dtype=restored.dtype)
    box = tuple(slice(a, b) for a, b in props.bbox)
    full[box] = restored
    np.testing.assert_array_equal(full.transpose(plans.transpose_backward), seg)
    assert np.isfinite(data).all() and data.min() >= -3.0 - 1e-5 and data.max() <= 3.0 + 1e-5


def test_the_ignore_label_becomes_the_index_after_the_classes_and_is_never_sampled() -> None:
    """Preprocessing maps `ignore` (the highest value) to index K; foreground sampling sees 1..K-1 only."""
    seg = np.array([[[0, 5, 5, 9, 9, 9, 117, 117]]])  # classes 0, 5, 9; 117 is the ignore value
    indices = label_values_to_indices(seg, [0, 5, 9] + [117])  # Plans.annotated_label_values
    assert indices.ravel().tolist() == [0, 1, 1, 2, 2, 2, 3, 3]
    locations = sample_class_locations(indices, num_classes=3, seed=0)
    assert 3 not in locations
    assert {k: len(v) for k, v in locations.items() if len(v)} == {1: 2, 2: 3}
