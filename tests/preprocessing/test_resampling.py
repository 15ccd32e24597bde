"""Resampling: shapes, the separate-z rule, round trips of images and label maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autounet.preprocessing.resampling import (
    compute_new_shape,
    needs_separate_z,
    resample_data,
    resample_probabilities,
    resample_segmentation,
)


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return 2.0 * np.logical_and(x, y).sum() / (x.sum() + y.sum())


def _ellipsoid_labels(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], radii: tuple[float, float] = (12.0, 6.0)
) -> np.ndarray:
    """Nested balls in physical units: label 2 (radius radii[1] mm) inside label 1 (radius radii[0] mm)."""
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    seg = np.zeros(shape, dtype=np.int16)
    seg[r < radii[0]] = 1
    seg[r < radii[1]] = 2
    return seg


def test_compute_new_shape_by_hand() -> None:
    assert compute_new_shape([8, 32, 32], [4.0, 1.0, 1.0], [1.0, 1.0, 1.0]) == [32, 32, 32]
    assert compute_new_shape([10, 11, 3], [1.0, 1.0, 1.0], [3.0, 2.0, 2.0]) == [3, 6, 2]  # 3.33, 5.5, 1.5
    assert compute_new_shape([1, 5, 5], [1.0, 1.0, 1.0], [100.0, 1.0, 1.0]) == [1, 5, 5]  # never below 1
    with pytest.raises(ValueError):
        compute_new_shape([1, 2], [1.0], [1.0])


@pytest.mark.parametrize(
    ("current", "target", "expected"),
    [
        ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), None),  # isotropic both
        ((4.0, 1.0, 1.0), (1.0, 1.0, 1.0), 0),  # current anisotropic decides
        ((1.0, 5.0, 1.0), (1.0, 1.0, 1.0), 1),
        ((3.0, 1.0, 1.0), (1.0, 1.0, 1.0), None),  # ratio exactly 3 is not above the threshold
        ((1.0, 1.0, 1.0), (1.0, 1.0, 5.0), 2),  # current isotropic: target decides
        ((4.0, 4.0, 1.0), (1.0, 1.0, 1.0), None),  # two coarse axes tie: no single slice axis
        ((4.0, 4.0, 1.0), (5.0, 1.0, 1.0), None),  # current decides even when target has one axis
        ((5.0, 1.0, 1.0), (1.0, 1.0, 6.0), 0),  # current wins over target
        ((4.0, 4.0, 4.0), (1.0, 1.0, 1.0), None),
    ],
)
def test_needs_separate_z_truth_table(current: tuple, target: tuple, expected: int | None) -> None:
    assert needs_separate_z(current, target) == expected


def test_linear_upsampling_uses_pixel_centre_alignment() -> None:
    data = np.array([0.0, 1.0], dtype=np.float32).reshape(1, 1, 1, 2)
    out = resample_data(data, [1, 1, 4], [1.0, 1.0, 1.0], [1.0, 1.0, 0.5], order=1)
    # output centres map to input coordinates -0.25, 0.25, 0.75, 1.25 (clamped to the edge)
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 0.25, 0.75, 1.0])


def test_identity_resampling_is_a_copy() -> None:
    data = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    out = resample_data(data, [2, 3, 4], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(out, data)
    assert not np.shares_memory(out, data)


def test_separate_z_upsampling_repeats_slices_along_the_coarse_axis() -> None:
    rng = np.random.default_rng(0)
    data = rng.random((1, 8, 32, 32), dtype=np.float32)
    up = resample_data(data, [32, 32, 32], [4.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert up.shape == (1, 32, 32, 32) and up.dtype == np.float32
    # nearest neighbour along z: output slices 4k..4k+3 all come from input slice k
    for k in range(8):
        for j in range(4 * k, 4 * k + 4):
            np.testing.assert_allclose(up[0, j], data[0, k], atol=1e-6)
    back = resample_data(up, [8, 32, 32], [1.0, 1.0, 1.0], [4.0, 1.0, 1.0])
    np.testing.assert_allclose(back, data, atol=1e-6)


def test_isotropic_cubic_round_trip_of_a_smooth_image() -> None:
    z, y, x = np.meshgrid(*[np.linspace(0, 1, 16)] * 3, indexing="ij")
    data = np.sin(2 * z + y) + np.cos(3 * x)
    data = data[None].astype(np.float32)
    up = resample_data(data, [32, 32, 32], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5])
    back = resample_data(up, [16, 16, 16], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0])
    assert up.shape == (1, 32, 32, 32)
    # boundary voxels see the edge clamp; compare the interior
    assert np.abs(back - data)[:, 2:-2, 2:-2, 2:-2].max() < 0.02


def test_cubic_overshoot_is_clipped_to_the_input_range() -> None:
    data = np.zeros((1, 4, 8, 8), dtype=np.float32)
    data[0, :, :, 4:] = 1.0
    out = resample_data(data, [9, 17, 17], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], order=3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert 0.0 < out[0, 4, 8, 8] < 1.0  # the edge is interpolated, not snapped


def test_anisotropic_segmentation_round_trip_keeps_labels() -> None:
    seg = _ellipsoid_labels((8, 32, 32), (4.0, 1.0, 1.0))
    seg[0] = -1  # outside-the-mask marking is a label of its own
    up = resample_segmentation(seg, [32, 32, 32], [4.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert up.shape == (32, 32, 32) and up.dtype == seg.dtype
    assert set(np.unique(up).tolist()) == {-1, 0, 1, 2}
    assert (up[:4] == -1).all() and not (up[4:] == -1).any()
    back = resample_segmentation(up, [8, 32, 32], [1.0, 1.0, 1.0], [4.0, 1.0, 1.0])
    assert back.shape == (8, 32, 32)
    for label in (1, 2):
        assert _dice(back, seg, label) > 0.9


def test_isotropic_segmentation_round_trip_with_linear_one_hot() -> None:
    # structures must span several coarse voxels: linear one-hot interpolation rounds off
    # curved boundaries, which costs small balls a noticeable share of their volume
    seg = _ellipsoid_labels((30, 30, 30), (1.0, 1.0, 1.0), radii=(13.0, 8.0))
    down = resample_segmentation(seg, [20, 20, 20], [1.0, 1.0, 1.0], [1.5, 1.5, 1.5])
    assert down.shape == (20, 20, 20)
    back = resample_segmentation(down, [30, 30, 30], [1.5, 1.5, 1.5], [1.0, 1.0, 1.0])
    for label in (1, 2):
        assert _dice(back, seg, label) > 0.9
    nearest = resample_segmentation(seg, [60, 60, 60], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], order=0)
    np.testing.assert_array_equal(nearest[::2, ::2, ::2], seg)


def test_forced_in_plane_resampling_keeps_slices_independent() -> None:
    data = np.stack([np.full((8, 8), v, dtype=np.float32) for v in (1.0, 5.0, 9.0)])[None]
    out = resample_data(data, [3, 4, 4], [1.0, 1.0, 1.0], [1.0, 2.0, 2.0], force_separate_axis=0)
    assert out.shape == (1, 3, 4, 4)
    for i, v in enumerate((1.0, 5.0, 9.0)):
        np.testing.assert_allclose(out[0, i], v, atol=1e-5)


def test_probabilities_still_sum_to_one() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 6, 10, 10))
    probs = (np.exp(logits) / np.exp(logits).sum(0, keepdims=True)).astype(np.float32)
    for current, target in (((1.0, 1.0, 1.0), (0.6, 1.3, 0.7)), ((4.0, 1.0, 1.0), (1.0, 1.0, 1.0))):
        new_shape = compute_new_shape(probs.shape[1:], current, target)
        out = resample_probabilities(probs, new_shape, current, target)
        assert out.shape == (3, *new_shape)
        np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
        assert out.min() >= 0.0


@pytest.mark.parametrize(("shape", "current", "target", "order_z"), [
    ((8, 7, 7), (5.0, 3.0, 3.0), (4.0, 0.5, 0.5), 0),    # thick slices, in-plane upsampling (an export)
    ((8, 20, 12), (5.0, 0.8, 0.8), (3.0, 1.3, 1.9), 1),  # in-plane downsampling, linear along z
    ((9, 11, 13), (1.0, 1.0, 1.0), (0.7, 1.6, 0.9), 0),  # isotropic: one trilinear resampling
])
def test_linear_probability_resampling_equals_the_scipy_path(shape, current, target, order_z) -> None:
    """Order-1 probabilities go through torch (about 10x faster on large exports); the values
    must be those of the scipy zoom used everywhere else: same coordinates, same edges."""
    from autounet.preprocessing import resampling

    probs = np.random.default_rng(4).random((3, *shape)).astype(np.float32)
    new_shape = compute_new_shape(shape, current, target)
    fast = resample_probabilities(probs, new_shape, current, target, order=1, order_z=order_z)
    axis = resampling.needs_separate_z(current, target)
    reference = np.stack([resampling._resample_volume(p, new_shape, axis, 1, order_z) for p in probs])
    assert fast.shape == reference.shape == (3, *new_shape) and fast.dtype == np.float32
    np.testing.assert_allclose(fast, reference, rtol=0, atol=2e-5)


SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def test_real_anisotropic_spinal_cord_round_trip() -> None:
    """sct-testing-data T2* (0.5 x 0.5 x 7.5 mm): cord mask to 0.5 mm isotropic and back."""
    label = SHARED_DATA / "sct-testing-data" / "t2s" / "t2s_seg.nii.gz"
    if not label.is_file():
        pytest.skip(f"real data not available at {label}")
    from autounet.io.images import read_label

    seg, geometry = read_label(label)
    spacing = geometry.spacing_zyx
    target = [min(spacing)] * 3
    assert needs_separate_z(spacing, target) == int(np.argmax(spacing))
    new_shape = compute_new_shape(seg.shape, spacing, target)
    up = resample_segmentation(seg, new_shape, spacing, target)
    assert list(up.shape) == new_shape
    # physical cord volume is kept within 1 %
    assert abs((up == 1).sum() * np.prod(target) / ((seg == 1).sum() * np.prod(spacing)) - 1) < 0.01
    back = resample_segmentation(up, seg.shape, target, spacing)
    assert _dice(back, seg, 1) > 0.95
