"""Float64 finite-difference checks of every layer option, the penalties, and the gradcheck
report itself (it must fail loudly on a wrong gradient)."""

from __future__ import annotations

import numpy as np
import pytest
from nn_specs import chain, conv, fc, lenet5, pool

from cnncli.engine import gradcheck
from cnncli.engine.network import Network
from cnncli.nn.conv import Conv2D

SPECS = {
    "stride2_same_asymmetric": chain((2, 7, 6), conv(3, 3, 2, "same"), fc(4)),
    "full_padding": chain((1, 5, 5), conv(2, 3, padding="full"), fc(3)),
    "explicit_asymmetric": chain((2, 6, 5), conv(3, (2, 3), (2, 1), (1, 0, 2, 1)), fc(3)),
    "rect_input_kernel_valid": chain((3, 5, 9), conv(4, (3, 5)), pool(), fc(2)),
    "wide_channels_full_conv_dx": chain((18, 5, 4), conv(17, 3, padding="same"), fc(3)),
    "deep_stride3": chain((2, 11, 11), conv(3, 5, 3, 2), conv(20, 2), conv(4, 1), fc(2)),
    "overlapping_max_pool": chain((2, 9, 9), conv(3, 3), pool("max", 3, 2), fc(3)),
    "mean_pool_rect": chain((2, 7, 8), pool("mean", (2, 3), (2, 2)), conv(2, 2), fc(2)),
    "subsample_tanh": chain((2, 8, 8), conv(3, 3, activation="none"),
                            pool("subsample", 2, activation="tanh"), fc(3)),
    "subsample_overlap_sigmoid": chain((2, 7, 7), pool("subsample", 3, 2,
                                                        activation="sigmoid"), fc(2)),
    "learned_entropy": chain((3, 6, 6), conv(4, 3, padding=1, combine="learned",
                                             sparsity=0.3), fc(3)),
    "learned_l1_stride": chain((4, 7, 7), conv(3, 3, 2, combine="learned", sparsity=0.5,
                                               sparsity_penalty="l1"), fc(2)),
    "learned_maxout": chain((3, 5, 5), conv(2, 3, combine="learned", activation="maxout",
                                            pieces=3), fc(2)),
    "maxout_conv_fc": chain((2, 6, 6), conv(3, 3, activation="maxout"), pool(),
                            fc(5, "maxout", pieces=3), fc(2)),
    "prelu_conv_fc": chain((2, 6, 6), conv(3, 3, activation="prelu"), fc(4, "prelu"), fc(2)),
    "leaky_relu": chain((2, 6, 6), conv(3, 3, activation="leaky_relu", alpha=0.2),
                        fc(4, "leaky_relu", alpha=0.05), fc(2)),
    "sigmoid_tanh": chain((1, 6, 6), conv(2, 3, activation="sigmoid"), fc(4, "tanh"), fc(2)),
    "dropout_is_off": chain((1, 5, 5), conv(2, 3), fc(6, "relu", dropout=0.5), fc(2)),
    "mlp_only": chain((2, 3, 3), fc(7, "relu"), fc(5, "tanh"), fc(3)),
    "output_activation": chain((1, 4, 4), conv(2, 3), fc(3, "sigmoid")),
    "lenet5": lenet5(),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_gradients_match_finite_differences(name):
    report = gradcheck.check(SPECS[name], batch=2, threshold=1e-6, seed=0, max_entries=24)
    assert report.passed, [(c.tensor, c.rel_error, c.index) for c in report.checks]
    names = [c.tensor for c in report.checks]
    assert names == list(Network(SPECS[name], "float64").params) + ["input"]
    assert report.max_rel_error < 1e-7
    # every tensor compared something
    assert all(c.entries > 0 for c in report.checks)


def test_batch_of_three_and_other_seed():
    report = gradcheck.check(SPECS["overlapping_max_pool"], batch=3, seed=5)
    assert report.passed
    assert report.checks[-1].shape == (3, 2, 9, 9)


def test_large_tensors_are_sampled_with_a_direction():
    report = gradcheck.check(SPECS["lenet5"], max_entries=10)
    by = {c.tensor: c for c in report.checks}
    assert by["fc1.weight"].entries == 10 and by["fc1.weight"].directional
    assert by["fc3.bias"].entries == 10 and not by["fc3.bias"].directional
    assert by["conv1.bias"].entries == 6 and not by["conv1.bias"].directional


def test_check_a_trained_network_uses_its_parameters():
    spec = SPECS["prelu_conv_fc"]
    net = Network(spec, "float32", seed=9)
    net.params["conv1.slope"][:] = [0.5, -0.2, 0.9]
    report = gradcheck.check(net)
    assert report.passed


def test_wrong_gradient_is_caught_and_named(monkeypatch):
    real = Conv2D.backward

    def wrong(self, dy, ws, params, grads, need_dx):
        dx = real(self, dy, ws, params, grads, need_dx)
        if self.name == "conv2":
            grads["conv2.weight"][0, 0, 0, 0] *= 1.01
        return dx

    monkeypatch.setattr(Conv2D, "backward", wrong)
    report = gradcheck.check(chain((1, 6, 6), conv(2, 3), conv(2, 2), fc(2)), max_entries=100)
    assert not report.passed
    assert report.worst.tensor == "conv2.weight"
    assert report.worst.index == (0, 0, 0, 0)
    assert report.worst.rel_error > 1e-3
    others = [c for c in report.checks if c.tensor != "conv2.weight"]
    assert all(c.rel_error < 1e-7 for c in others)


# ---- the sparsity penalty of learned combinations -----------------------------------------
def _penalty_fd(net, name, eps=1e-6):
    c = net.params[name]
    num = np.zeros_like(c)
    for idx in np.ndindex(c.shape):
        old = c[idx]
        c[idx] = old + eps
        up = net.penalty()[0]
        c[idx] = old - eps
        down = net.penalty()[0]
        c[idx] = old
        num[idx] = (up - down) / (2 * eps)
    return num


def test_entropy_penalty_value_and_gradient():
    spec = chain((3, 5, 5), conv(4, 3, combine="learned", sparsity=0.7), fc(2))
    net = Network(spec, "float64", seed=4)
    c = net.params["conv1.combine"]
    alpha = np.exp(c) / np.exp(c).sum(axis=1, keepdims=True)
    value, grads = net.penalty()
    assert value == pytest.approx(0.7 * -np.sum(alpha * np.log(alpha)), rel=1e-12)
    assert list(grads) == ["conv1.combine"]
    np.testing.assert_allclose(grads["conv1.combine"], _penalty_fd(net, "conv1.combine"),
                               rtol=1e-6, atol=1e-9)
    assert np.abs(grads["conv1.combine"]).max() > 1e-3


def test_entropy_penalty_descent_sparsifies():
    spec = chain((6, 4, 4), conv(3, 3, combine="learned", sparsity=1.0), fc(2))
    net = Network(spec, "float64", seed=1)
    c = net.params["conv1.combine"]

    def max_alpha():
        a = np.exp(c) / np.exp(c).sum(axis=1, keepdims=True)
        return a.max(axis=1)

    before = max_alpha()
    for _ in range(200):
        c -= 0.5 * net.penalty()[1]["conv1.combine"]
    after = max_alpha()
    assert np.all(after > before) and np.all(after > 0.9)


def test_l1_penalty_is_constant_and_its_gradient_is_zero():
    spec = chain((3, 5, 5), conv(4, 3, combine="learned", sparsity=0.7,
                                 sparsity_penalty="l1"), fc(2))
    net = Network(spec, "float64", seed=4)
    value, grads = net.penalty()
    # sum_ij |alpha_ij| = number of output maps, whatever c is: lambda * 4
    assert value == pytest.approx(0.7 * 4, rel=1e-12)
    g = grads["conv1.combine"]
    assert np.abs(g).max() < 1e-15
    numeric = _penalty_fd(net, "conv1.combine")
    assert np.abs(numeric).max() < 1e-8
    net.params["conv1.combine"][:] *= 5
    assert net.penalty()[0] == pytest.approx(0.7 * 4, rel=1e-12)


def test_no_penalty_without_sparsity():
    spec = chain((3, 5, 5), conv(4, 3, combine="learned"), fc(2))
    assert Network(spec).penalty() == (0.0, {})
    assert Network(lenet5()).penalty() == (0.0, {})


def test_report_json_shape():
    report = gradcheck.check(SPECS["mlp_only"])
    doc = report.to_json()
    assert doc["passed"] is True and doc["threshold"] == 1e-6
    assert {"tensor", "rel_error"} <= set(doc["checks"][0])
    tensor, err, index = report.checks[0]
    assert tensor == "fc1.weight" and err == report.checks[0].rel_error


def test_non_finite_gradient_fails(monkeypatch):
    real = Conv2D.backward

    def broken(self, dy, ws, params, grads, need_dx):
        dx = real(self, dy, ws, params, grads, need_dx)
        grads["conv1.bias"][-1] = np.nan
        return dx

    monkeypatch.setattr(Conv2D, "backward", broken)
    report = gradcheck.check(chain((1, 5, 5), conv(2, 3), fc(2)))
    assert not report.passed
    assert report.worst.tensor == "conv1.bias" and report.worst.rel_error == float("inf")
