"""Patch sampling: geometry helpers by hand, shapes for 3D / pseudo-2D / 2D, foreground, padding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from autounet.io.geometry import Geometry
from autounet.planners.plans import ConfigurationPlan, IntensityProperties, NetworkPlan, Plans
from autounet.preprocessing.case_properties import CaseProperties
from autounet.preprocessing.case_store import CaseStore
from autounet.training import data_loader
from autounet.training.data_loader import (
    BatchMaker,
    BatchSpec,
    PatchSampler,
    build_dataloaders,
    crop_start_range,
    crop_with_padding,
    default_num_workers,
)
from autounet.training.augmentation_policy import get_augmentation_params, enlarged_patch_size


def write_case(folder: Path, case_id: str, seg: np.ndarray, channels: int = 1, seed: int = 0) -> None:
    """One preprocessed case in the workspace layout; locations list every voxel of each class."""
    shape = seg.shape
    data = np.random.default_rng(seed).normal(size=(channels, *shape)).astype(np.float32)
    n_classes = max(int(seg.max()), 0)
    locations = {k: np.argwhere(seg == k).astype(np.int32) for k in range(1, n_classes + 1)}
    props = CaseProperties(
        case_id=case_id, geometry=Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), shape=shape),
        shape_before_crop=list(shape), bbox=[[0, s] for s in shape], shape_after_crop=list(shape),
        spacing=[1.0] * 3, target_spacing=[1.0] * 3, shape_after_resample=list(shape),
    )
    CaseStore(folder).write_case(case_id, data, seg.astype(np.int16), props, locations)


def blob_case(shape: tuple[int, int, int], corner: tuple[int, int, int], label: int = 1) -> np.ndarray:
    """Background with one 2x2x2 cube of `label` at `corner` (tiny: random patches rarely hit it)."""
    seg = np.zeros(shape, dtype=np.int16)
    z, y, x = corner
    seg[z:z + 2, y:y + 2, x:x + 2] = label
    return seg


def test_augmentation_params_3d_isotropic_anisotropic_and_2d() -> None:
    iso = get_augmentation_params((64, 128, 128))
    thirty = math.radians(30)
    assert iso.rotation == ((-thirty, thirty),) * 3 and not iso.dummy_2d and iso.mirror_axes == (0, 1, 2)
    aniso = get_augmentation_params((16, 160, 160))  # 160 / 16 = 10 > 3
    assert aniso.dummy_2d and aniso.rotation[0] == (-math.pi, math.pi) and aniso.rotation[1] == (0.0, 0.0)
    square = get_augmentation_params((128, 128))
    assert square.rotation[0] == (-math.pi, math.pi) and square.mirror_axes == (0, 1)
    long = get_augmentation_params((64, 160))  # 2.5 > 1.5
    assert long.rotation[0] == (-math.radians(15), math.radians(15))
    assert get_augmentation_params((64, 128, 128), mirror_axes=[1, 2]).mirror_axes == (1, 2)


def test_initial_patch_size_by_hand() -> None:
    iso = get_augmentation_params((64, 128, 128))
    # axes 1, 2: 128 cos30 + 128 sin30 = 174.85 (plane (1,2)); axis 0: 64 cos30 + 128 sin30 = 119.43; / 0.85
    assert enlarged_patch_size((64, 128, 128), iso.rotation) == (141, 206, 206)
    # 2D +-180 (capped at 90): the 100 x 100 square's diagonal 141.42 / 0.85 = 166.4
    assert enlarged_patch_size((100, 100), ((-math.pi, math.pi), (0, 0), (0, 0))) == (166, 166)
    aniso = get_augmentation_params((16, 160, 160))
    assert enlarged_patch_size((16, 160, 160), aniso.rotation, aniso.dummy_2d) == (16, 266, 266)


def test_crop_with_padding_reads_the_overlap_and_pads_the_rest() -> None:
    array = np.arange(20).reshape(4, 5)
    out = crop_with_padding(array, (-1, 3), (3, 4), pad_value=-1)
    np.testing.assert_array_equal(out, [[-1, -1, -1, -1], [3, 4, -1, -1], [8, 9, -1, -1]])
    channels = np.stack([array, array + 100])
    assert crop_with_padding(channels, (1, 1), (2, 2), 0).tolist() == [[[6, 7], [11, 12]], [[106, 107], [111, 112]]]


def test_crop_start_range_allows_half_the_enlargement_outside() -> None:
    assert crop_start_range((10,), (8,), (6,)) == ([-1], [3])
    assert crop_start_range((4,), (8,), (6,)) == ([-2], [-2])  # smaller than the patch: centred


def test_sampler_3d_shapes_and_foreground_positions(tmp_path: Path) -> None:
    for i in range(3):
        write_case(tmp_path, f"c{i}", blob_case((24, 40, 40), (3 + i, 30, 5)), channels=2, seed=i)
    sampler = PatchSampler(tmp_path, ["c0", "c1", "c2"], (8, 12, 12), batch_size=3,
                           initial_patch_size=(10, 16, 16), rng=0)
    assert [sampler.forced_foreground(i) for i in range(3)] == [False, False, True]  # round(3 * 0.67) = 2
    for _ in range(20):
        batch = sampler.next_batch()
        assert batch["data"].shape == (3, 2, 10, 16, 16) and batch["data"].dtype == np.float32
        assert batch["seg"].shape == (3, 1, 10, 16, 16) and batch["seg"].dtype == np.int16
        assert (batch["seg"][2] == 1).sum() == 8  # the whole blob: the patch is centred on it


def test_forced_foreground_samples_contain_the_class_in_the_target(tmp_path: Path) -> None:
    seg = blob_case((20, 48, 48), (2, 40, 3), label=1)
    seg[15:17, 5:7, 40:42] = 2
    write_case(tmp_path, "a", seg)
    write_case(tmp_path, "b", blob_case((20, 48, 48), (10, 2, 2), label=2), seed=1)
    spec = BatchSpec(folder=str(tmp_path), case_ids=("a", "b"), patch_size=(8, 16, 16), batch_size=2, augment=False)
    maker = BatchMaker(spec, seed=5)
    hit_classes = set()
    for _ in range(25):
        batch = maker.make(maker.choose_cases())
        forced = batch["target"][0][1]
        assert forced.max() >= 1
        hit_classes |= set(np.unique(forced).tolist()) - {0}
    assert hit_classes == {1, 2}  # the class is drawn among those present


def test_image_smaller_than_patch_is_centred_with_minus_one_outside(tmp_path: Path) -> None:
    seg = np.zeros((4, 6, 6), dtype=np.int16)
    seg[1, 2, 3] = 1
    write_case(tmp_path, "small", seg)
    sampler = PatchSampler(tmp_path, ["small"], (8, 8, 8), batch_size=2, rng=0)
    batch = sampler.next_batch()
    data, _, _ = CaseStore(tmp_path).load("small")
    for b in range(2):
        expected = np.full((8, 8, 8), -1)
        expected[2:6, 1:7, 1:7] = seg
        np.testing.assert_array_equal(batch["seg"][b, 0], expected)
        np.testing.assert_array_equal(batch["data"][b, :, 2:6, 1:7, 1:7], data)
        assert not batch["data"][b, :, :2].any()


def test_2d_sampler_slices_along_axis_0_and_forced_slices_hold_the_class(tmp_path: Path) -> None:
    seg = np.zeros((9, 32, 32), dtype=np.int16)
    seg[6, 20:23, 4:7] = 1  # only slice 6 has foreground
    write_case(tmp_path, "s", seg, channels=3)
    sampler = PatchSampler(tmp_path, ["s"], (16, 16), batch_size=2, initial_patch_size=(20, 20), rng=1)
    for _ in range(10):
        batch = sampler.next_batch()
        assert batch["data"].shape == (2, 3, 20, 20) and batch["seg"].shape == (2, 1, 20, 20)
        assert (batch["seg"][1] == 1).sum() == 9


@pytest.mark.parametrize(
    ("shape", "patch", "scales"),
    [
        ((24, 40, 40), (16, 24, 24), ((1, 1, 1), (0.5, 0.5, 0.5))),
        ((10, 64, 64), (4, 32, 32), ((1, 1, 1), (1, 0.5, 0.5))),  # anisotropic: dummy 2D
        ((6, 40, 40), (24, 24), ((1, 1), (0.5, 0.5), (0.25, 0.25))),
    ],
)
def test_augmented_batches_have_the_shapes_the_spec_announces(tmp_path: Path, shape, patch, scales) -> None:  # noqa: ANN001
    write_case(tmp_path, "c", blob_case(shape, (2, 5, 5)))
    spec = BatchSpec(folder=str(tmp_path), case_ids=("c",), patch_size=patch, batch_size=2,
                     deep_supervision_scales=scales, use_mask_for_norm=(True,))
    maker = spec.build(seed=0)
    data_shape, target_shapes = spec.batch_shapes()
    for _ in range(3):
        batch = maker.make(maker.choose_cases())
        assert batch["data"].shape == data_shape
        assert [t.shape for t in batch["target"]] == target_shapes
        assert batch["keys"] == ["c", "c"]


def test_batch_maker_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    for i in range(3):
        write_case(tmp_path, f"c{i}", blob_case((16, 32, 32), (4, 4, 4)), seed=i)
    spec = BatchSpec(folder=str(tmp_path), case_ids=("c0", "c1", "c2"), patch_size=(8, 16, 16), batch_size=4)
    a, b, c = spec.build(1), spec.build(1), spec.build(2)
    batches_a = [a.make(a.choose_cases()) for _ in range(3)]
    batches_b = [b.make(b.choose_cases()) for _ in range(3)]
    for x, y in zip(batches_a, batches_b):
        assert x["keys"] == y["keys"]
        np.testing.assert_array_equal(x["data"], y["data"])
    assert any(not np.array_equal(x["data"], c.make(c.choose_cases())["data"]) for x in batches_a)


def test_default_num_workers_from_cores_and_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_loader, "cpu_count", lambda: 1)
    assert default_num_workers() == 0
    monkeypatch.setattr(data_loader, "cpu_count", lambda: 8)
    monkeypatch.setattr(data_loader, "available_ram_gb", lambda: 5.5)
    assert default_num_workers() == 2  # 5.5 GB / 2.5 GB per worker
    monkeypatch.setattr(data_loader, "available_ram_gb", lambda: 1.0)
    assert default_num_workers() == 1


def _plans(patch: list[int], batch_size: int) -> Plans:
    dims = len(patch)
    network = NetworkPlan("plain_unet", [8, 16], [[3] * dims] * 2, [[1] * dims, [2] * dims], [2, 2], [2])
    cfg = ConfigurationPlan(
        name="3d_fullres", data_identifier="3d_fullres", spacing=[1.0] * dims, patch_size=patch,
        batch_size=batch_size, median_shape=[16] * dims, network=network, normalization=["zscore"],
        use_mask_for_norm=[False], batch_dice=False, estimated_memory_bytes=1,
    )
    stats = IntensityProperties(0.0, 1.0, 0.0, -1.0, 1.0, -1.0, 1.0)
    return Plans(task="T", channel_names={"0": "MR"}, labels={"background": 0, "a": 1}, transpose_forward=[0, 1, 2],
                 transpose_backward=[0, 1, 2], original_median_spacing=[1.0] * 3, original_median_shape=[16] * 3,
                 foreground_intensity_properties={"0": stats}, gpu_memory_target_gb=8.0,
                 configurations={"3d_fullres": cfg})


def test_build_dataloaders_in_process(tmp_path: Path) -> None:
    for i in range(4):
        write_case(tmp_path, f"c{i}", blob_case((16, 24, 24), (3, 3, 3)), seed=i)
    scales = [[1, 1, 1], [0.5, 0.5, 0.5]]
    train, val = build_dataloaders(tmp_path, ["c0", "c1", "c2"], ["c3"], _plans([8, 16, 16], 2), "3d_fullres",
                                   scales, num_workers=0, seed=0)
    with train, val:
        t, v = next(train), next(val)
    assert tuple(t["data"].shape) == (2, 1, 8, 16, 16) and str(t["data"].dtype) == "torch.float32"
    assert [tuple(x.shape) for x in t["target"]] == [(2, 1, 8, 16, 16), (2, 1, 4, 8, 8)]
    assert str(t["target"][0].dtype) == "torch.int64"
    assert set(t["keys"]) <= {"c0", "c1", "c2"} and v["keys"] == ["c3", "c3"]


def test_case_cache_keeps_only_the_most_recent_memory_maps_open(tmp_path: Path) -> None:
    for i in range(3):
        write_case(tmp_path, f"c{i}", blob_case((8, 8, 8), (1, 1, 1)), seed=i)
    cache = data_loader._CaseCache(tmp_path, max_open=2)
    first = cache.arrays("c0")
    cache.arrays("c1")
    assert cache.arrays("c0")[0] is first[0]  # reused while open
    cache.arrays("c2")  # evicts the least recently used: c1
    assert list(cache._arrays) == ["c0", "c2"]
    np.testing.assert_array_equal(cache.arrays("c1")[1], CaseStore(tmp_path).load("c1")[1])
