"""Optimizer steps against hand-computed values, decay rules and exact state round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnncli.engine.optim import SGD, Adam, make_optimizer
from cnncli.errors import CheckpointError, SpecError
from cnncli.spec.model import Optimizer as OptSpec


def params():
    return {"fc1.weight": np.array([[1.0, -2.0]]), "fc1.bias": np.array([0.5])}


def grads():
    return {"fc1.weight": np.array([[0.1, 0.2]]), "fc1.bias": np.array([-0.3])}


def test_sgd_plain():
    p, g = params(), grads()
    SGD(momentum=0.0).step(p, g, lr=0.5)
    np.testing.assert_allclose(p["fc1.weight"], [[0.95, -2.1]])
    np.testing.assert_allclose(p["fc1.bias"], [0.65])


def test_sgd_momentum_two_steps_by_hand():
    p, g = params(), grads()
    opt = SGD(momentum=0.9)
    opt.step(p, g, lr=0.1)        # v = g; w -= 0.1 g
    opt.step(p, g, lr=0.1)        # v = 0.9 g + g = 1.9 g; w -= 0.19 g
    np.testing.assert_allclose(p["fc1.weight"], [[1.0 - 0.29 * 0.1, -2.0 - 0.29 * 0.2]])
    np.testing.assert_allclose(opt.state["fc1.weight"]["momentum"], [[0.19, 0.38]])
    assert opt.step_count == 2


def test_sgd_nesterov_by_hand():
    p, g = params(), grads()
    opt = SGD(momentum=0.5, nesterov=True)
    opt.step(p, g, lr=1.0)        # v = g; w -= g + 0.5 v = 1.5 g
    np.testing.assert_allclose(p["fc1.bias"], [0.5 + 1.5 * 0.3])
    opt.step(p, g, lr=1.0)        # v = 1.5 g; w -= g + 0.75 g
    np.testing.assert_allclose(p["fc1.bias"], [0.5 + 1.5 * 0.3 + 1.75 * 0.3])


def test_weight_decay_only_on_weights():
    p, g = params(), grads()
    SGD(momentum=0.0, weight_decay=0.1).step(p, g, lr=1.0)
    # weight: w -= g + 0.1 w
    np.testing.assert_allclose(p["fc1.weight"], [[1.0 - 0.1 - 0.1, -2.0 - 0.2 + 0.2]])
    np.testing.assert_allclose(p["fc1.bias"], [0.5 + 0.3])    # bias: no decay
    extra = {"pool1.beta": np.array([1.0]), "conv1.slope": np.array([1.0]),
             "conv1.combine": np.array([[1.0]])}
    zero = {k: np.zeros_like(v) for k, v in extra.items()}
    SGD(momentum=0.0, weight_decay=0.5).step(extra, zero, lr=1.0)
    for v in extra.values():
        np.testing.assert_array_equal(v, 1.0)


def test_adam_by_hand():
    p, g = params(), grads()
    opt = Adam(beta1=0.9, beta2=0.999, eps=1e-8)
    opt.step(p, g, lr=0.01)
    # first step: m = 0.1 g, v = 0.001 g^2; m_hat = g, v_hat = g^2 -> step = lr * sign(g)
    np.testing.assert_allclose(p["fc1.weight"], [[1.0 - 0.01, -2.0 - 0.01]], rtol=1e-7)
    np.testing.assert_allclose(p["fc1.bias"], [0.5 + 0.01], rtol=1e-7)
    g2 = {"fc1.weight": np.array([[0.3, -0.2]]), "fc1.bias": np.array([0.0])}
    w = p["fc1.weight"].copy()
    opt.step(p, g2, lr=0.01)
    m = 0.9 * 0.1 * grads()["fc1.weight"] + 0.1 * g2["fc1.weight"]
    v = 0.999 * 0.001 * grads()["fc1.weight"] ** 2 + 0.001 * g2["fc1.weight"] ** 2
    step = 0.01 / (1 - 0.9 ** 2) * m / (np.sqrt(v) / math.sqrt(1 - 0.999 ** 2) + 1e-8)
    np.testing.assert_allclose(p["fc1.weight"], w - step, rtol=1e-12)


def test_adam_weight_decay_is_l2_on_weights_only():
    p = {"a.weight": np.array([2.0]), "a.bias": np.array([2.0])}
    g = {"a.weight": np.array([0.0]), "a.bias": np.array([0.0])}
    Adam(weight_decay=0.1).step(p, g, lr=0.01)
    np.testing.assert_allclose(p["a.weight"], [2.0 - 0.01], rtol=1e-7)   # d = 0.2 > 0
    np.testing.assert_array_equal(p["a.bias"], [2.0])


@pytest.mark.parametrize("make", [lambda: SGD(momentum=0.9, weight_decay=1e-3),
                                  lambda: SGD(momentum=0.8, nesterov=True),
                                  lambda: Adam(weight_decay=1e-2)])
def test_state_dict_round_trip_is_bit_exact(make):
    rng = np.random.default_rng(0)
    shapes = {"conv1.weight": (4, 1, 3, 3), "conv1.bias": (4,), "fc1.weight": (3, 36)}
    p = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    gs = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
          for _ in range(6)]
    a = make()
    for g in gs[:3]:
        a.step(p, g, 0.05)
    state = a.state_dict()
    assert state["optim.step"].tolist() == [3] and state["optim.step"].dtype == np.int64
    assert all(k.startswith("optim.") for k in state)
    slot = "momentum" if isinstance(a, SGD) else "m"
    assert f"optim.conv1.weight.{slot}" in state
    p2 = {k: v.copy() for k, v in p.items()}
    b = make()
    b.load_state_dict({**state, "conv1.weight": p["conv1.weight"]})   # model tensors ignored
    for g in gs[3:]:
        a.step(p, g, 0.05)
        b.step(p2, g, 0.05)
    for k in p:
        np.testing.assert_array_equal(p[k], p2[k])
        assert p[k].dtype == np.float32


def test_step_allocates_nothing_once_state_exists():
    import tracemalloc

    rng = np.random.default_rng(0)
    p = {"fc1.weight": rng.standard_normal((300, 300)), "fc1.bias": rng.standard_normal(300)}
    g = {k: rng.standard_normal(v.shape) for k, v in p.items()}
    for opt in (SGD(momentum=0.9, nesterov=True, weight_decay=1e-4), Adam(weight_decay=1e-4)):
        opt.step(p, g, 0.01)
        tracemalloc.start()
        opt.step(p, g, 0.01)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 10_000, (type(opt).__name__, peak)


def test_make_optimizer_and_validation():
    assert isinstance(make_optimizer(OptSpec(type="sgd", momentum=0.5), 1e-4), SGD)
    opt = make_optimizer(OptSpec(type="adam", beta1=0.8), 0.0)
    assert isinstance(opt, Adam) and opt.beta1 == 0.8
    with pytest.raises(SpecError, match="nesterov"):
        SGD(momentum=0.0, nesterov=True)
    with pytest.raises(SpecError):
        make_optimizer(OptSpec(type="rmsprop"), 0.0)
    with pytest.raises(CheckpointError, match="optim.step"):
        SGD().load_state_dict({})
    with pytest.raises(CheckpointError, match="unexpected optimizer tensor"):
        SGD().load_state_dict({"optim.step": np.array([1]), "optim.fc1.weight.m": np.zeros(2)})
    bad = SGD()
    bad.load_state_dict({"optim.step": np.array([1]),
                         "optim.fc1.weight.momentum": np.zeros((2, 2))})
    with pytest.raises(CheckpointError, match="shape"):
        bad.step(params(), grads(), 0.1)
