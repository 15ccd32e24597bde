"""Cropping to the nonzero region: mask, half-open boxes, -1 marking, pasting back."""

from __future__ import annotations

import numpy as np
import pytest

from autounet.preprocessing.cropping import bounding_box, crop_to_nonzero, nonzero_mask, paste_into


def _image_with_block() -> np.ndarray:
    """Two channels on a 4x5x6 grid; channel 0 nonzero in [1:3, 1:4, 2:5), channel 1 at (3, 4, 5)."""
    image = np.zeros((2, 4, 5, 6), dtype=np.float32)
    image[0, 1:3, 1:4, 2:5] = 7.0
    image[1, 3, 4, 5] = -2.0
    return image


def test_nonzero_mask_is_union_over_channels_with_holes_filled() -> None:
    image = np.zeros((1, 5, 5, 5), dtype=np.float32)
    image[0, 1:4, 1:4, 1:4] = 1.0
    image[0, 2, 2, 2] = 0.0  # a hole inside the body
    mask = nonzero_mask(image)
    assert mask[2, 2, 2]
    assert mask.sum() == 27

    two = _image_with_block()
    assert nonzero_mask(two).sum() == 2 * 3 * 3 + 1


def test_bounding_box_is_half_open_and_whole_image_when_empty() -> None:
    mask = np.zeros((4, 5, 6), dtype=bool)
    mask[1, 2, 3] = True
    mask[2, 4, 5] = True
    assert bounding_box(mask) == [[1, 3], [2, 5], [3, 6]]
    assert bounding_box(np.zeros((4, 5, 6), dtype=bool)) == [[0, 4], [0, 5], [0, 6]]


def test_crop_marks_background_outside_mask_as_minus_one() -> None:
    image = _image_with_block()
    seg = np.zeros((4, 5, 6), dtype=np.uint8)
    seg[1, 1, 2] = 5  # label inside the mask
    seg[3, 1, 5] = 5  # label outside the mask (inside the box): must be kept
    image_c, seg_c, bbox = crop_to_nonzero(image, seg)
    assert bbox == [[1, 4], [1, 5], [2, 6]]
    assert image_c.shape == (2, 3, 4, 4)
    assert seg_c.dtype.kind == "i"
    assert seg_c[0, 0, 0] == 5
    assert seg_c[2, 0, 3] == 5
    assert seg_c[2, 3, 3] == 0  # the channel-1 voxel at (3, 4, 5)
    assert seg_c[0, 0, 3] == -1  # (1, 1, 5): outside channel 0's block
    assert seg_c[0, 1, 1] == 0  # (1, 2, 3): inside
    assert (seg_c == -1).sum() == 3 * 4 * 4 - (2 * 3 * 3 + 1) - 1


def test_crop_without_seg_returns_mask_seg() -> None:
    image = _image_with_block()
    _, seg_c, _ = crop_to_nonzero(image, None)
    assert set(np.unique(seg_c).tolist()) == {-1, 0}
    assert (seg_c == 0).sum() == 2 * 3 * 3 + 1


def test_crop_of_empty_image_keeps_everything() -> None:
    image = np.zeros((1, 2, 3, 4), dtype=np.float32)
    image_c, seg_c, bbox = crop_to_nonzero(image, None)
    assert bbox == [[0, 2], [0, 3], [0, 4]]
    assert image_c.shape == image.shape[:1] + (2, 3, 4)
    assert (seg_c == -1).all()


def test_crop_rejects_mismatched_seg() -> None:
    with pytest.raises(ValueError, match="differs"):
        crop_to_nonzero(np.ones((1, 2, 3, 4)), np.zeros((2, 3, 5)))


def test_paste_into_inverts_crop_including_channel_axis() -> None:
    image = _image_with_block()
    image_c, _, bbox = crop_to_nonzero(image)
    restored = paste_into(image.shape, bbox, image_c, fill=0)
    np.testing.assert_array_equal(restored, image)

    labels = paste_into((4, 5, 6), bbox, np.ones((3, 4, 4), dtype=np.uint8), fill=9)
    assert labels[0, 0, 0] == 9 and labels[1, 1, 2] == 1 and labels.sum() == 48 + 9 * (120 - 48)

    with pytest.raises(ValueError, match="cannot paste"):
        paste_into((4, 5, 6), bbox, np.ones((2, 2, 2)))
