"""Metric values against hand-computed examples, including anisotropic spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autounet.evaluation import metrics as m

SPACING = (3.0, 0.5, 0.7)  # (z, y, x) mm: strongly anisotropic on purpose


def test_confusion_counts_and_overlap_by_hand():
    ref = np.zeros((1, 4, 4), bool)
    pred = np.zeros((1, 4, 4), bool)
    ref[0, :2, :2] = True  # 4 voxels
    pred[0, 1:3, :2] = True  # 4 voxels, 2 overlap
    assert m.confusion_counts(ref, pred) == (2, 2, 2, 10)
    assert m.dice(ref, pred) == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))  # 0.5
    assert m.iou(ref, pred) == pytest.approx(2 / 6)


def test_both_empty_is_nan_and_empty_reference_with_prediction_is_zero():
    empty = np.zeros((2, 3, 3), bool)
    some = empty.copy()
    some[1, 1, 1] = True
    assert math.isnan(m.dice(empty, empty))
    assert math.isnan(m.iou(empty, empty))
    assert m.dice(empty, some) == 0.0
    assert m.iou(empty, some) == 0.0
    assert m.dice(some, empty) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        m.confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)))


def test_surface_of_a_solid_cube_excludes_its_interior():
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    surface = m.surface_mask(mask)
    assert surface.sum() == 27 - 1  # only the centre voxel has no background neighbour
    assert not surface[2, 2, 2]


@pytest.mark.parametrize("axis, offset", [(0, 2), (1, 3), (2, 4)])
def test_hd95_of_parallel_planes_is_offset_times_spacing(axis, offset):
    shape = (12, 10, 9)
    ref = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    index_ref = [slice(None)] * 3
    index_pred = [slice(None)] * 3
    index_ref[axis] = 1
    index_pred[axis] = 1 + offset
    ref[tuple(index_ref)] = True
    pred[tuple(index_pred)] = True
    expected = offset * SPACING[axis]
    assert m.hd95(ref, pred, SPACING) == pytest.approx(expected)
    assert m.normalized_surface_dice(ref, pred, SPACING, expected - 1e-6) == 0.0
    assert m.normalized_surface_dice(ref, pred, SPACING, expected) == 1.0


def test_diagonal_distance_uses_spacing_per_axis():
    ref = np.zeros((4, 4, 4), bool)
    pred = np.zeros((4, 4, 4), bool)
    ref[0, 0, 0] = True
    pred[1, 2, 3] = True
    expected = math.sqrt(3.0**2 + (2 * 0.5) ** 2 + (3 * 0.7) ** 2)
    d_ref, d_pred = m.surface_distances(ref, pred, SPACING)
    np.testing.assert_allclose(d_ref, [expected])
    np.testing.assert_allclose(d_pred, [expected])
    assert m.hd95(ref, pred, SPACING) == pytest.approx(expected)


def test_nsd_known_fraction_for_a_missed_plane():
    # reference: two full z-planes (at z=2 and z=8), prediction: only the first one.
    # Surfaces: 2N reference voxels (N at distance 0, N at 6 * 3 mm), N predicted voxels at 0.
    shape = (11, 4, 5)
    n = 4 * 5
    ref = np.zeros(shape, bool)
    ref[2] = True
    ref[8] = True
    pred = np.zeros(shape, bool)
    pred[2] = True
    d_ref, d_pred = m.surface_distances(ref, pred, SPACING)
    assert sorted(d_ref.tolist()) == [0.0] * n + [18.0] * n
    assert d_pred.tolist() == [0.0] * n
    assert m.normalized_surface_dice(ref, pred, SPACING, 2.0) == pytest.approx((n + n) / (2 * n + n))
    assert m.normalized_surface_dice(ref, pred, SPACING, 18.0) == 1.0
    # half of the reference->prediction distances are 18 mm, so their 95th percentile is 18 mm
    assert m.hd95(ref, pred, SPACING) == pytest.approx(18.0)


def test_hd95_ignores_the_top_five_percent_of_outliers():
    # 100 reference voxels in one x-row, prediction identical except one voxel moved far away:
    # 1 of 100 directed distances is large, so the 95th percentile stays 0.
    ref = np.zeros((1, 30, 100), bool)
    ref[0, 0, :] = True
    pred = ref.copy()
    pred[0, 0, 99] = False
    pred[0, 29, 99] = True
    assert m.hd95(ref, pred, (1.0, 1.0, 1.0)) == pytest.approx(0.0)


def test_surface_metrics_with_empty_masks():
    empty = np.zeros((3, 3, 3), bool)
    some = empty.copy()
    some[1, 1, 1] = True
    assert math.isnan(m.hd95(empty, empty, SPACING))
    assert math.isnan(m.normalized_surface_dice(empty, empty, SPACING, 1.0))
    assert m.hd95(some, empty, SPACING) == math.inf
    assert m.hd95(empty, some, SPACING) == math.inf
    assert m.normalized_surface_dice(some, empty, SPACING, 1.0) == 0.0


def test_identical_masks_touching_the_border_have_zero_distance():
    mask = np.zeros((4, 6, 6), bool)
    mask[:, :3, :] = True  # touches the image border on several sides
    assert m.hd95(mask, mask, SPACING) == 0.0
    assert m.normalized_surface_dice(mask, mask, SPACING, 0.0) == 1.0


def test_cropping_to_the_masks_does_not_change_distances():
    # the same pair placed in a small and a large image must give identical distances
    small_ref = np.zeros((6, 6, 6), bool)
    small_pred = np.zeros((6, 6, 6), bool)
    small_ref[1:4, 1:4, 1:4] = True
    small_pred[2:5, 1:5, 2:4] = True
    big_ref = np.zeros((20, 20, 20), bool)
    big_pred = np.zeros((20, 20, 20), bool)
    big_ref[7:13, 5:11, 9:15] = small_ref
    big_pred[7:13, 5:11, 9:15] = small_pred
    small = m.surface_distances(small_ref, small_pred, SPACING)
    big = m.surface_distances(big_ref, big_pred, SPACING)
    for a, b in zip(small, big):
        np.testing.assert_allclose(np.sort(a), np.sort(b))
