"""augment_batch: identity, determinism, geometry, noise."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.spec.model import Augment
from cnncli.train.augment import augment_batch, draw_params, warp_batch


def blob_batch(n=6, c=1, h=28, w=28, dtype=np.float32):
    """Bright squares well inside the field, at a different place per sample."""
    x = np.zeros((n, c, h, w), dtype=dtype)
    for i in range(n):
        x[i, :, 8 + i % 4:14 + i % 4, 9 + i % 3:15 + i % 3] = 1.0
    return x


def com(img):
    t = img.sum()
    return img.sum(1) @ np.arange(img.shape[0]) / t, img.sum(0) @ np.arange(img.shape[1]) / t


def test_identity_when_all_zero():
    x = blob_batch()
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert augment_batch(x, Augment(), rng) is x
    assert rng.bit_generator.state == state               # no random numbers drawn


def test_zero_parameters_warp_is_exact():
    x = np.random.default_rng(0).random((3, 2, 9, 11)).astype(np.float32)
    z = np.zeros(3)
    np.testing.assert_array_equal(warp_batch(x, z, z + 1, z, z), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shapes_dtypes_finite_range(dtype):
    x = np.random.default_rng(1).random((5, 3, 16, 12)).astype(dtype)
    spec = Augment(rotate=30, shift=3, scale=0.3, noise=0.1)
    y = augment_batch(x, spec, np.random.default_rng(2))
    assert y.shape == x.shape and y.dtype == dtype
    assert np.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    assert not np.shares_memory(x, y)


def test_deterministic_for_the_same_rng_state():
    x = blob_batch()
    spec = Augment(rotate=15, shift=2, scale=0.1, noise=0.05)
    a = augment_batch(x, spec, np.random.default_rng(7))
    b = augment_batch(x, spec, np.random.default_rng(7))
    c = augment_batch(x, spec, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_params_drawn_in_sample_order():
    spec = Augment(rotate=10, shift=2, scale=0.1)
    big = draw_params(8, spec, np.random.default_rng(5))
    small = draw_params(3, spec, np.random.default_rng(5))
    for k in big:
        np.testing.assert_array_equal(big[k][:3], small[k])
    assert np.abs(big["angle"]).max() <= 10 and np.abs(big["dx"]).max() <= 2
    assert (np.abs(big["scale"] - 1) <= 0.1).all()


def test_integer_shift_moves_pixels_exactly():
    x = blob_batch(n=2)
    z = np.zeros(2)
    y = warp_batch(x, z, z + 1, np.array([3.0, -2.0]), np.array([-4.0, 1.0]))
    np.testing.assert_array_equal(y[0, 0, 3:, :-4], x[0, 0, :-3, 4:])
    np.testing.assert_array_equal(y[1, 0, :-2, 1:], x[1, 0, 2:, :-1])


def test_shift_moves_centre_of_mass_as_drawn():
    x = blob_batch(n=16)
    spec = Augment(shift=3)
    y = augment_batch(x, spec, np.random.default_rng(11))
    p = draw_params(16, spec, np.random.default_rng(11))
    for i in range(16):
        (y0, x0), (y1, x1) = com(x[i, 0]), com(y[i, 0])
        assert y1 - y0 == pytest.approx(p["dy"][i], abs=1e-3)
        assert x1 - x0 == pytest.approx(p["dx"][i], abs=1e-3)


def test_rotation_direction_and_mass():
    x = np.zeros((1, 1, 21, 21), np.float32)
    x[0, 0, 10, 14:18] = 1.0                              # a bar right of the centre
    y = warp_batch(x, np.array([90.0]), np.ones(1), np.zeros(1), np.zeros(1))
    np.testing.assert_allclose(y[0, 0, 3:7, 10], 1.0, atol=1e-5)   # now above the centre
    assert y.sum() == pytest.approx(x.sum(), rel=1e-4)
    np.testing.assert_allclose(
        warp_batch(x, np.array([90.0]), np.ones(1), np.zeros(1), np.zeros(1))[0, 0],
        np.rot90(x[0, 0]), atol=1e-5)


def test_scale_about_the_centre():
    x = np.zeros((1, 1, 21, 21), np.float32)
    x[0, 0, 8:13, 8:13] = 1.0
    y = warp_batch(x, np.zeros(1), np.array([2.0]), np.zeros(1), np.zeros(1))
    assert com(y[0, 0]) == pytest.approx((10.0, 10.0), abs=1e-4)
    assert y.sum() == pytest.approx(4 * x.sum(), rel=0.1)


def test_outside_reads_black():
    x = np.ones((1, 1, 8, 8), np.float32)
    y = warp_batch(x, np.zeros(1), np.ones(1), np.array([20.0]), np.zeros(1))
    assert y.max() == 0.0


def test_noise_statistics():
    x = np.full((50, 1, 16, 16), 0.5, np.float32)
    y = augment_batch(x, Augment(noise=0.05), np.random.default_rng(0))
    assert abs(float((y - x).std()) - 0.05) < 0.003 and abs(float((y - x).mean())) < 0.003

