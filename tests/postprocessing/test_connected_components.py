"""Connected-component cleanup on tiny label maps."""

from __future__ import annotations

import numpy as np
import pytest

from autounet.postprocessing.connected_components import (
    keep_largest_component_of_label,
    keep_largest_foreground_component,
    largest_component_mask,
)


def _two_blobs() -> np.ndarray:
    """Large blob of labels 1 and 2 touching each other, plus a separate 2-voxel blob of label 1."""
    seg = np.zeros((3, 8, 8), np.uint8)
    seg[1, 1:4, 1:3] = 1
    seg[1, 1:4, 3:5] = 2  # touches label 1: same foreground component
    seg[1, 6, 6:8] = 1  # separate, small
    return seg


def test_largest_foreground_component_removes_only_the_small_blob():
    seg = _two_blobs()
    before = seg.copy()
    out = keep_largest_foreground_component(seg)
    expected = seg.copy()
    expected[1, 6, 6:8] = 0
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(seg, before)  # input untouched
    assert out.dtype == seg.dtype


def test_full_connectivity_joins_voxels_touching_at_a_corner():
    seg = np.zeros((3, 3, 3), np.int16)
    seg[0, 0, 0] = 5
    seg[1, 1, 1] = 5
    seg[2, 2, 2] = 7
    np.testing.assert_array_equal(keep_largest_foreground_component(seg), seg)
    np.testing.assert_array_equal(keep_largest_component_of_label(seg, 5), seg)


def test_keep_largest_component_of_label_leaves_other_labels():
    seg = np.zeros((1, 6, 9), np.uint8)
    seg[0, 0, 0:3] = 1  # 3 voxels
    seg[0, 4, 0:5] = 1  # 5 voxels: kept
    seg[0, 0, 7] = 2  # label 2 has two components and must be untouched
    seg[0, 5, 8] = 2
    out = keep_largest_component_of_label(seg, 1)
    expected = seg.copy()
    expected[0, 0, 0:3] = 0
    np.testing.assert_array_equal(out, expected)


def test_equal_sizes_keep_the_first_component_and_empty_stays_empty():
    mask = np.zeros((1, 1, 5), bool)
    mask[0, 0, [0, 4]] = True
    np.testing.assert_array_equal(largest_component_mask(mask)[0, 0], [True, False, False, False, False])
    empty = np.zeros((2, 2, 2), np.uint8)
    np.testing.assert_array_equal(keep_largest_foreground_component(empty), empty)
    np.testing.assert_array_equal(keep_largest_component_of_label(empty, 3), empty)


def test_background_label_is_refused():
    with pytest.raises(ValueError, match="background"):
        keep_largest_component_of_label(np.zeros((2, 2, 2), np.uint8), 0)
