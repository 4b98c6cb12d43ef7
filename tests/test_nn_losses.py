"""The losses against their formulas written out, and their gradients by finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import cnncli
from cnncli.errors import DataError, SpecError
from cnncli.nn import losses

RNG = np.random.default_rng(7)


def ref_loss(name, s, y):
    n, k = s.shape
    total = 0.0
    for i in range(n):
        if name == "cross_entropy":
            total += -s[i, y[i]] + np.log(sum(np.exp(s[i, j]) for j in range(k)))
        elif name == "mse":
            total += 0.5 * sum((s[i, j] - (1.0 if j == y[i] else 0.0)) ** 2 for j in range(k))
        else:
            total += sum(max(0.0, s[i, j] - s[i, y[i]] + 1) for j in range(k) if j != y[i])
    return total / n


@pytest.mark.parametrize("name", ["cross_entropy", "mse", "hinge"])
def test_loss_value_and_gradient(name):
    s = RNG.standard_normal((5, 4)) * 2
    y = np.array([0, 3, 1, 1, 2])
    fn = losses.get(name)
    loss, d = fn(s, y)
    assert isinstance(loss, float)
    assert loss == pytest.approx(ref_loss(name, s, y), rel=1e-12)
    assert d.shape == s.shape and d.dtype == s.dtype
    num = np.zeros_like(s)
    eps = 1e-6
    for idx in np.ndindex(s.shape):
        sp, sm = s.copy(), s.copy()
        sp[idx] += eps
        sm[idx] -= eps
        num[idx] = (ref_loss(name, sp, y) - ref_loss(name, sm, y)) / (2 * eps)
    np.testing.assert_allclose(d, num, rtol=1e-6, atol=1e-8)


def test_cross_entropy_is_stable_for_huge_logits():
    s = np.array([[1000.0, 0.0, -1000.0], [-5e4, 5e4, 0.0]], dtype=np.float32)
    loss, d = losses.cross_entropy(s, np.array([0, 0]))
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    assert loss == pytest.approx(1e5 / 2, rel=1e-6)
    p = losses.softmax(s)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], [1, 0, 0], atol=1e-30)


def test_float32_logits_keep_their_dtype():
    s = RNG.standard_normal((3, 4)).astype(np.float32)
    for name in losses.LOSSES:
        _, d = losses.get(name)(s, np.array([0, 1, 2]))
        assert d.dtype == np.float32


def test_hinge_zero_when_margins_are_met():
    s = np.array([[5.0, 1.0, 3.9]])
    loss, d = losses.hinge(s, np.array([0]))
    assert loss == 0.0 and not d.any()


def test_softmax_rows_and_module_access():
    s = RNG.standard_normal((4, 6))
    p = cnncli.losses.softmax(s)
    np.testing.assert_allclose(p, np.exp(s) / np.exp(s).sum(axis=1, keepdims=True), rtol=1e-12)


def test_bad_labels_and_names():
    s = np.zeros((2, 3))
    with pytest.raises(DataError, match="outside 0..2"):
        losses.cross_entropy(s, np.array([0, 3]))
    with pytest.raises(DataError, match="labels must be 2 integers"):
        losses.mse(s, np.array([0.0, 1.0]))
    with pytest.raises(SpecError, match="unknown loss 'l2'"):
        losses.get("l2")
