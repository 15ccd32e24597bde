"""Augmentation: hand-checked geometry of the affine spatial transform, label bookkeeping, pipelines."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from autounet.errors import AutounetError
from autounet.training.transforms import (
    AffineSpatialTransform,
    Convert2DTo3DTransform,
    Convert3DTo2DTransform,
    DeepSupervisionTargetsTransform,
    LocalRandomState,
    MaskOutsideNonzeroTransform,
    MultiplicativeBrightnessTransform,
    downsample_seg_nearest,
)
from autounet.training.affine import affine_resample, affine_resample_labels, rotation_matrix
from autounet.training.augmentation import training_transforms, validation_transforms
from autounet.training.augmentation_switches import AUGMENTATION_NAMES

NO_ROTATION = ((0.0, 0.0), (0.0, 0.0), (0.0, 0.0))
ROT_3D = tuple((-math.radians(30), math.radians(30)) for _ in range(3))


def _run(transform, seed: int = 0, **batch):  # noqa: ANN001, ANN202 - thin test helper
    with LocalRandomState(seed).active():
        return transform(**batch)


def test_rotation_by_90_degrees_matches_rot90() -> None:
    image = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    seg = (np.arange(25).reshape(1, 1, 5, 5) % 3).astype(np.int16)
    quarter = (math.pi / 2, math.pi / 2)
    t = AffineSpatialTransform((5, 5), (quarter, (0, 0), (0, 0)), p_rotation=1.0, scale_range=(1, 1), p_scale=0.0)
    out = _run(t, data=image.copy(), seg=seg.copy())
    # out[i, j] = in[4 - j, i]: a clockwise quarter turn
    np.testing.assert_allclose(out["data"][0, 0], np.rot90(image[0, 0], -1), atol=1e-4)
    np.testing.assert_array_equal(out["seg"][0, 0], np.rot90(seg[0, 0], -1))


def test_scaling_by_two_samples_every_other_voxel_around_the_centre() -> None:
    image = np.arange(49, dtype=np.float32).reshape(1, 1, 7, 7)
    t = AffineSpatialTransform((3, 3), NO_ROTATION, p_rotation=0.0, scale_range=(2.0, 2.0), p_scale=1.0)
    out = _run(t, data=image.copy(), seg=None)
    # input coordinate = 2 * (o - 1) + 3 = 2 * o + 1
    np.testing.assert_allclose(out["data"][0, 0], image[0, 0, 1::2, 1::2], atol=1e-4)


def test_sample_without_rotation_or_scaling_is_a_centre_crop() -> None:
    image = np.random.default_rng(0).normal(size=(2, 1, 9, 8, 7)).astype(np.float32)
    seg = np.random.default_rng(1).integers(-1, 3, size=(2, 1, 9, 8, 7)).astype(np.int16)
    t = AffineSpatialTransform((4, 4, 4), ROT_3D, p_rotation=0.0, scale_range=(0.7, 1.4), p_scale=0.0)
    out = _run(t, data=image.copy(), seg=seg.copy())
    np.testing.assert_array_equal(out["data"], image[:, :, 2:6, 2:6, 1:5])
    np.testing.assert_array_equal(out["seg"], seg[:, :, 2:6, 2:6, 1:5])


def test_label_resampling_fills_outside_with_minus_one_and_keeps_labels() -> None:
    seg = np.array([[0, 0, 2, 2], [0, 1, 1, 2], [0, 1, 1, 2], [0, 0, 2, 2]], dtype=np.int16)
    shifted = affine_resample_labels(seg, np.eye(2), np.array([0.0, 2.0]), (4, 4), outside=-1)
    expected = np.array([[2, 2, -1, -1], [1, 2, -1, -1], [1, 2, -1, -1], [2, 2, -1, -1]])
    np.testing.assert_array_equal(shifted, expected)


def test_label_resampling_half_voxel_shift_takes_the_majority_label() -> None:
    # every output voxel lies halfway between two input columns; ties resolve to the most frequent label
    seg = np.array([[0, 0, 0, 5]], dtype=np.int16)
    out = affine_resample_labels(seg, np.eye(2), np.array([0.0, 0.5]), (1, 3), outside=-1)
    np.testing.assert_array_equal(out, [[0, 0, 0]])
    out = affine_resample_labels(seg, np.eye(2), np.array([0.0, 0.75]), (1, 3), outside=-1)
    np.testing.assert_array_equal(out, [[0, 0, 5]])


def test_downsample_seg_nearest_picks_the_voxel_under_each_output_centre() -> None:
    seg = np.arange(4 * 6).reshape(1, 1, 4, 6)
    out = downsample_seg_nearest(seg, (2, 3))
    np.testing.assert_array_equal(out[0, 0], seg[0, 0][np.ix_([1, 3], [1, 3, 5])])


def test_deep_supervision_targets_replace_seg_with_int16_per_scale() -> None:
    seg = np.zeros((2, 1, 8, 8), dtype=np.int16)
    out = DeepSupervisionTargetsTransform([[1, 1], [0.5, 0.5], [0.25, 0.25]])(seg=seg)
    assert "seg" not in out
    assert [t.shape for t in out["target"]] == [(2, 1, 8, 8), (2, 1, 4, 4), (2, 1, 2, 2)]
    assert all(t.dtype == np.int16 for t in out["target"])


def test_mask_outside_nonzero_zeroes_only_masked_channels() -> None:
    data = np.ones((1, 2, 2, 2), dtype=np.float32)
    seg = np.array([[[[-1, 0], [1, -1]]]], dtype=np.int16)
    out = MaskOutsideNonzeroTransform([1])(data=data, seg=seg)
    np.testing.assert_array_equal(out["data"][0, 0], np.ones((2, 2)))
    np.testing.assert_array_equal(out["data"][0, 1], [[0, 1], [1, 0]])


def test_brightness_draws_darker_and_brighter_halves() -> None:
    data = np.ones((400, 1, 1, 1), dtype=np.float32)
    out = _run(MultiplicativeBrightnessTransform((0.75, 1.25), p_per_sample=1.0), data=data)["data"].ravel()
    assert out.min() >= 0.75 and out.max() <= 1.25
    assert 0.4 < np.mean(out < 1.0) < 0.6


def test_3d_to_2d_folding_round_trips() -> None:
    data = np.random.default_rng(0).normal(size=(2, 3, 4, 5, 6))
    seg = np.zeros((2, 1, 4, 5, 6))
    folded = Convert3DTo2DTransform()(data=data.copy(), seg=seg.copy())
    assert folded["data"].shape == (2, 12, 5, 6) and folded["seg"].shape == (2, 4, 5, 6)
    back = Convert2DTo3DTransform()(**folded)
    np.testing.assert_array_equal(back["data"], data)
    assert back["seg"].shape == seg.shape


def _batch(shape: tuple[int, ...], channels: int = 1, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    seg = rng.integers(-1, 3, size=(batch, 1, *shape)).astype(np.int16)
    return {"data": rng.normal(size=(batch, channels, *shape)).astype(np.float32), "seg": seg}


@pytest.mark.parametrize(
    ("initial", "patch", "rotation", "dummy_2d", "mirror", "scales"),
    [
        ((20, 20, 20), (12, 12, 12), ROT_3D, False, (0, 1, 2), [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]),
        ((4, 24, 24), (4, 16, 16), ((-math.pi, math.pi), (0, 0), (0, 0)), True, (0, 1, 2), [[1, 1, 1], [1, 0.5, 0.5]]),
        ((24, 24), (16, 16), ((-math.pi, math.pi), (0, 0), (0, 0)), False, (0, 1), [[1, 1], [0.5, 0.5]]),
    ],
)
def test_training_pipeline_output_shapes(initial, patch, rotation, dummy_2d, mirror, scales) -> None:  # noqa: ANN001
    pipeline = training_transforms(patch, rotation, dummy_2d, mirror, scales, use_mask_for_norm=[True, False])
    out = _run(pipeline, seed=3, **_batch(initial, channels=2, batch=4))
    assert out["data"].shape == (4, 2, *patch) and out["data"].dtype == np.float32
    expected = [(4, 1, *(int(p * s) for p, s in zip(patch, scale))) for scale in scales]
    assert [t.shape for t in out["target"]] == expected
    assert all(t.min() >= 0 for t in out["target"])  # -1 became background


def test_batchgenerators_spatial_implementation_gives_the_same_shapes() -> None:
    pipeline = training_transforms((8, 8, 8), ROT_3D, False, (0, 1, 2), None, [False], spatial_impl="batchgenerators")
    out = _run(pipeline, **_batch((12, 12, 12)))
    assert out["data"].shape == (2, 1, 8, 8, 8) and [t.shape for t in out["target"]] == [(2, 1, 8, 8, 8)]


def test_training_pipeline_is_deterministic_for_a_seed_and_leaves_global_rng_alone() -> None:
    pipeline = training_transforms((12, 12, 12), ROT_3D, False, (0, 1, 2), None, [False])
    np.random.seed(7)
    random.seed(7)
    before = (np.random.get_state()[1].copy(), random.getstate())
    a = _run(pipeline, seed=11, **_batch((20, 20, 20), batch=8))
    b = _run(pipeline, seed=11, **_batch((20, 20, 20), batch=8))
    c = _run(pipeline, seed=12, **_batch((20, 20, 20), batch=8))
    np.testing.assert_array_equal(a["data"], b["data"])
    np.testing.assert_array_equal(a["target"][0], b["target"][0])
    assert not np.array_equal(a["data"], c["data"])
    assert np.array_equal(np.random.get_state()[1], before[0]) and random.getstate() == before[1]


def test_validation_pipeline_only_relabels_and_downsamples() -> None:
    batch = _batch((8, 8))
    data = batch["data"].copy()
    out = validation_transforms([[1, 1], [0.5, 0.5]])(**batch)
    np.testing.assert_array_equal(out["data"], data)
    assert out["target"][0].min() >= 0 and out["target"][1].shape == (2, 1, 4, 4)


def test_outside_voxels_become_the_ignore_index_where_the_task_has_one() -> None:
    """Padding and background outside the nonzero mask (-1) count as background in a densely labelled task,
    but as unannotated in a task with an ignore label (index 3 here), for training and validation alike."""
    batch = _batch((8, 8))
    outside = batch["seg"] == -1
    dense = validation_transforms(None)(**{k: v.copy() for k, v in batch.items()})["target"][0]
    sparse = validation_transforms(None, outside_label=3)(**{k: v.copy() for k, v in batch.items()})["target"][0]
    assert (dense[outside] == 0).all() and (sparse[outside] == 3).all()
    np.testing.assert_array_equal(dense[~outside], sparse[~outside])
    no_spatial = training_transforms((8, 8), ((0, 0), (0, 0), (0, 0)), False, (), None, [False],
                                     disabled=AUGMENTATION_NAMES, outside_label=3)
    target = _run(no_spatial, **{k: v.copy() for k, v in batch.items()})["target"][0]
    np.testing.assert_array_equal(target, sparse)


def test_the_loader_maps_outside_to_the_ignore_index_only_for_tasks_with_one() -> None:
    import dataclasses

    from autounet.planners.experiment_planner import plan_experiment
    from autounet.task.fingerprint import CaseFingerprint, Fingerprint, IntensityProperties
    from autounet.training.data_loader import outside_label

    props = IntensityProperties(mean=1.0, std=1.0, median=1.0, min=0.0, max=2.0, percentile_00_5=0.0,
                                percentile_99_5=2.0)
    cases = [CaseFingerprint(f"c{i}", [1.0] * 3, [32] * 3, [32] * 3, [[0, 32]] * 3, {"0": 1}, 1.0) for i in range(3)]
    fp = Fingerprint(task="Task09_X", channel_names={"0": "MR"}, labels={"background": 0, "a": 1, "b": 2},
                     is_2d=False, cases=cases, intensity_properties={"0": props}, median_relative_size_after_crop=1.0,
                     num_samples_per_channel=10, seed=0)
    assert outside_label(plan_experiment(fp, 2.0)) == 0
    assert outside_label(plan_experiment(dataclasses.replace(fp, ignore_label=7), 2.0)) == 3  # after indices 0, 1, 2


def test_resampling_entirely_outside_the_input_gives_the_outside_values() -> None:
    seg = np.ones((3, 3), dtype=np.int16)
    far = np.array([50.0, 50.0])
    np.testing.assert_array_equal(affine_resample_labels(seg, np.eye(2), far, (2, 2), outside=-1), -np.ones((2, 2)))
    np.testing.assert_array_equal(affine_resample(seg.astype(np.float32), np.eye(2), far, (2, 2)), np.zeros((2, 2)))


def _labels_by_full_interpolation(seg, matrix, offset, out_shape, outside):  # noqa: ANN001, ANN202
    """The definition, without shortcuts: every label (and 'outside') interpolated over the whole output."""
    from scipy import ndimage

    labels = sorted(set(np.unique(seg).tolist()) | {outside})
    stack = [ndimage.affine_transform((seg == v).astype(np.float64), matrix, offset, output_shape=out_shape, order=1,
                                      mode="constant", cval=1.0 if v == outside else 0.0, prefilter=False)
             for v in labels]
    return np.array(labels)[np.argmax(np.stack(stack), axis=0)], np.sort(np.stack(stack), axis=0)


@pytest.mark.parametrize("seed", range(6))
def test_label_resampling_shortcuts_match_full_per_label_interpolation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    seg = np.zeros((14, 15, 16), dtype=np.int16)
    seg[:, :2] = -1
    for label in (1, 2, 3):
        z, y, x = rng.integers(2, 11, size=3)
        seg[z:z + 3, y:y + 4, x:x + 2] = label
    angles = rng.uniform(-0.5, 0.5, size=3)
    matrix = rotation_matrix(angles) * rng.uniform(0.7, 1.4)
    out_shape = (10, 11, 12)
    offset = (np.array(seg.shape) - 1) / 2 - matrix @ ((np.array(out_shape) - 1) / 2)
    fast = affine_resample_labels(seg, matrix, offset, out_shape, outside=-1)
    full, sorted_weights = _labels_by_full_interpolation(seg, matrix, offset, out_shape, -1)
    clear = sorted_weights[-1] - sorted_weights[-2] > 1e-4  # ties may resolve either way
    np.testing.assert_array_equal(fast[clear], full[clear])
    assert clear.mean() > 0.9


def test_disabled_augmentations_are_left_out_and_names_are_checked() -> None:
    from autounet.training.transforms import AffineSpatialTransform
    from autounet.training.augmentation import MirrorTransform
    from autounet.training.settings import TrainingSettings

    full = training_transforms((8, 8, 8), ROT_3D, False, (0, 1, 2), None, [False])
    names = [type(t).__name__ for t in full.transforms]
    off = training_transforms((8, 8, 8), ROT_3D, False, (0, 1, 2), None, [False],
                              disabled=("mirror", "gamma", "gamma_inverted", "spatial"))
    off_names = [type(t).__name__ for t in off.transforms]
    assert names.count("GammaTransform") == 2 and "GammaTransform" not in off_names
    assert "MirrorTransform" in names and "MirrorTransform" not in off_names
    spatial = [t for t in off.transforms if isinstance(t, AffineSpatialTransform)][0]
    assert spatial.p_rotation == 0 and spatial.p_scale == 0  # still crops to the patch
    assert len(off_names) == len(names) - 3
    assert not any(isinstance(t, MirrorTransform) for t in off.transforms)
    with pytest.raises(ValueError, match="unknown augmentation"):
        training_transforms((8, 8, 8), ROT_3D, False, (0, 1, 2), None, [False], disabled=("rotation",))
    with pytest.raises(AutounetError, match="disabled_augmentations: unknown"):
        TrainingSettings(disabled_augmentations=["rotation"]).validate()
    with pytest.raises(AutounetError, match="spatial_augmentation must be one of"):
        TrainingSettings(spatial_augmentation="elastic").validate()
