"""Normalization schemes with hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pytest

from autounet.errors import PlansError
from autounet.planners.plans import IntensityProperties
from autounet.preprocessing.normalization import normalize

CT_PROPS = {"0": IntensityProperties(mean=10.0, std=2.0, median=10.0, min=0.0, max=20.0,
                                     percentile_00_5=4.0, percentile_99_5=16.0)}


def test_ct_clips_to_dataset_percentiles_then_global_zscore() -> None:
    image = np.array([[[[0.0, 4.0, 10.0, 16.0, 100.0]]]], dtype=np.float32)
    out = normalize(image, None, ["ct"], [False], CT_PROPS)
    # clip to [4, 16], then (x - 10) / 2
    np.testing.assert_allclose(out[0, 0, 0], [-3.0, -3.0, 0.0, 3.0, 3.0])
    assert out.dtype == np.float32


def test_ct_needs_intensity_properties() -> None:
    with pytest.raises(PlansError, match="channel '0'"):
        normalize(np.zeros((1, 1, 1, 2)), None, ["ct"], [False], {})


def test_zscore_per_image() -> None:
    image = np.array([[[[1.0, 3.0, 5.0, 7.0]]]], dtype=np.float32)  # mean 4, std sqrt(5)
    out = normalize(image, None, ["zscore"], [False], {})
    np.testing.assert_allclose(out[0, 0, 0], (np.array([1, 3, 5, 7]) - 4) / np.sqrt(5), rtol=1e-6)


def test_zscore_with_mask_uses_inside_only_and_zeroes_outside() -> None:
    image = np.array([[[[100.0, 2.0, 4.0, 100.0]]]], dtype=np.float32)
    seg = np.array([[[-1, 0, 3, -1]]])  # -1 = outside the nonzero mask
    out = normalize(image, seg, ["zscore"], [True], {})
    # inside values 2 and 4: mean 3, std 1
    np.testing.assert_allclose(out[0, 0, 0], [0.0, -1.0, 1.0, 0.0])
    # the same statistics from a boolean mask
    np.testing.assert_allclose(normalize(image, seg >= 0, ["zscore"], [True], {}), out)


def test_zscore_of_constant_image_does_not_divide_by_zero() -> None:
    out = normalize(np.full((1, 1, 2, 2), 5.0), None, ["zscore"], [False], {})
    assert np.isfinite(out).all() and np.all(out == 0)


def test_rescale_and_none_and_per_channel_schemes() -> None:
    image = np.stack([np.array([[[2.0, 4.0, 6.0]]]), np.array([[[2.0, 4.0, 6.0]]])]).astype(np.float64)
    out = normalize(image, None, ["rescale_0_1", "none"], [False, False], {})
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(out[1, 0, 0], [2.0, 4.0, 6.0])
    assert out.dtype == np.float32


def test_unknown_scheme_and_channel_count_mismatch_are_plans_errors() -> None:
    with pytest.raises(PlansError, match="normalization\\[0\\]"):
        normalize(np.zeros((1, 1, 1, 1)), None, ["fancy"], [False], {})
    with pytest.raises(PlansError, match="2 scheme"):
        normalize(np.zeros((1, 1, 1, 1)), None, ["zscore", "zscore"], [False, False], {})
