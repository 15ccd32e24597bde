import numpy as np
import pytest

from autounet.inference.gaussian import gaussian_importance_map


@pytest.mark.parametrize("patch", [(9, 7, 5), (8, 12), (16, 16, 8)])
def test_map_properties(patch):
    w = gaussian_importance_map(patch)
    assert w.shape == patch
    assert w.max() == pytest.approx(10.0, rel=1e-6)
    assert w.min() > 0
    centre = tuple(p // 2 for p in patch)
    assert w[centre] == w.max()
    # symmetric about the centre voxel: w[c + d] == w[c - d] along each axis
    for axis, p in enumerate(patch):
        c = p // 2
        d = min(c, p - 1 - c)
        lower = np.take(w, range(c - d, c), axis=axis)
        upper = np.flip(np.take(w, range(c + 1, c + 1 + d), axis=axis), axis=axis)
        np.testing.assert_allclose(lower, upper, rtol=1e-5)


def test_odd_patch_fully_symmetric_and_sigma():
    w = gaussian_importance_map((33,))
    np.testing.assert_allclose(w, w[::-1], rtol=1e-6)
    # sigma = 33 / 8: one sigma from the centre the weight is exp(-1/2) of the peak
    sigma = 33 / 8
    x = np.arange(33) - 16
    expected = 10 * np.exp(-(x**2) / (2 * sigma**2))
    np.testing.assert_allclose(w[12:21], expected[12:21], rtol=0.02)


def test_no_zeros_when_tails_underflow():
    w = gaussian_importance_map((64,), sigma_scale=1 / 64, dtype=np.float16)
    assert w.dtype == np.float16
    assert (w > 0).all()
    # the far tails underflow in half precision; they take the smallest nonzero weight
    assert (w == w.min()).sum() > 2
    assert w[0] == w.min() and w[-1] == w.min()


def test_cached_and_read_only():
    a = gaussian_importance_map((4, 4))
    b = gaussian_importance_map([4, 4])
    assert a is b
    with pytest.raises(ValueError):
        a[0, 0] = 1


def test_rejects_nonpositive_patch():
    with pytest.raises(ValueError):
        gaussian_importance_map((0, 4))
