"""Target spacing (median, 10th-percentile anisotropy rule) and transposition, by hand."""

from __future__ import annotations

import pytest

from autounet.planners.spacing import target_spacing, transpose_order


def test_isotropic_data_uses_per_axis_median() -> None:
    spacings = [[1.0, 0.9, 0.9], [1.2, 1.0, 1.0], [0.8, 1.1, 1.1]]
    shapes = [[100, 100, 100]] * 3
    spacing, reason = target_spacing(spacings, shapes)
    assert spacing == pytest.approx([1.0, 1.0, 1.0])
    assert "median" in reason


def test_anisotropic_axis_takes_10th_percentile() -> None:
    # median z = 5 > 3 x 0.8 and median z size 20 x 3 = 60 < 300: anisotropic.
    # 10th percentile of [1.5, 4, 5 x 8] (linear): 1.5 + 0.9 x (4 - 1.5) = 3.75
    spacings = [[1.5, 0.8, 0.8], [4.0, 0.8, 0.8]] + [[5.0, 0.8, 0.8]] * 8
    shapes = [[20, 300, 300]] * 10
    spacing, reason = target_spacing(spacings, shapes)
    assert spacing == pytest.approx([3.75, 0.8, 0.8])
    assert "anisotropic" in reason and "3.75" in reason


def test_anisotropic_percentile_is_clamped_above_in_plane_spacing() -> None:
    # median z 7 > 3 x 2; 10th percentile of [1, 1, 7, 7, 7] is 1 < 2 -> 2 + 1e-5
    spacings = [[1.0, 2.0, 2.0]] * 2 + [[7.0, 2.0, 2.0]] * 3
    shapes = [[10, 100, 100]] * 5
    spacing, reason = target_spacing(spacings, shapes)
    assert spacing == pytest.approx([2.00001, 2.0, 2.0], abs=1e-9)
    assert "clamped" in reason


def test_coarse_but_not_thin_axis_keeps_the_median() -> None:
    # z spacing 5 > 3 x 1, but 100 slices x 3 >= 100: not anisotropic by the size test
    spacings = [[5.0, 1.0, 1.0], [4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
    shapes = [[100, 100, 100]] * 3
    spacing, reason = target_spacing(spacings, shapes)
    assert spacing == pytest.approx([5.0, 1.0, 1.0])
    assert "not thin" in reason


def test_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        target_spacing([[1.0, 1.0, 1.0]], [[1, 1]])
    with pytest.raises(ValueError):
        target_spacing([], [])


@pytest.mark.parametrize(
    ("spacing", "forward", "backward"),
    [
        ([3.0, 1.0, 1.0], [0, 1, 2], [0, 1, 2]),
        ([1.0, 5.0, 1.0], [1, 0, 2], [1, 0, 2]),
        ([1.0, 1.0, 3.0], [2, 0, 1], [1, 2, 0]),
        ([2.0, 2.0, 1.0], [0, 1, 2], [0, 1, 2]),  # tie: the first coarsest axis stays first
        ([1.0, 2.0, 2.0], [1, 0, 2], [1, 0, 2]),
    ],
)
def test_transpose_order_moves_coarsest_axis_first(spacing: list[float], forward: list[int],
                                                   backward: list[int]) -> None:
    fwd, bwd = transpose_order(spacing)
    assert fwd == forward
    assert bwd == backward
    assert [fwd[b] for b in bwd] == [0, 1, 2]
