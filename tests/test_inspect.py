"""cnncli inspect: dead units, vanishing gradients and update ratios are found and reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_clean_error

from cnncli.engine.inspect import activation_stats, inspect_network
from cnncli.engine.network import Network
from cnncli.io.checkpoint import write_checkpoint
from cnncli.nn import losses
from cnncli.spec import load_config

NORM = {"mode": "scale", "mean": [0.0], "std": [1.0]}
KEYS = {"name", "active_fraction", "dead_fraction", "mean", "std", "weight_norm", "grad_norm",
        "update_ratio"}


def small_data(path, n=96, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8),
             y=rng.integers(0, 3, n).astype(np.int64))
    return path


def conv_config(data, lr=0.01):
    return load_config({
        "model": {"name": "probe", "input": [1, 8, 8],
                  "pattern": "INPUT -> [[CONV]*1 -> POOL]*1 -> [FC]*2",
                  "conv": {"filters": [6], "size": 3, "padding": "same"},
                  "fc": {"units": [12, 3]}},
        "data": {"train": str(data), "normalize": "scale"},
        "train": {"optimizer": {"type": "sgd", "lr": lr, "momentum": 0.9}},
    })


def save(tmp_path, cfg, net, name="run"):
    folder = tmp_path / name
    folder.mkdir()
    write_checkpoint(folder / "best.safetensors", net.params,
                     {"config": cfg.resolved, "classes": ["a", "b", "c"], "normalization": NORM})
    return folder


def test_dead_conv_layer_is_reported(cli, tmp_path):
    data = small_data(tmp_path / "d.npz")
    cfg = conv_config(data)
    net = Network(cfg.model, seed=0)
    net.params["conv1.bias"][...] = -50.0  # no input in [0, 1] can wake these units
    run = save(tmp_path, cfg, net)
    res = cli("inspect", "--model", run, "--json", "--samples", "64")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["model"] == str(run / "best.safetensors")
    assert doc["samples"] == 64
    layers = {r["name"]: r for r in doc["layers"]}
    assert list(layers) == ["conv1", "pool1", "fc1", "fc2"]
    for r in doc["layers"]:
        assert KEYS <= set(r)
    conv = layers["conv1"]
    assert conv["dead_fraction"] == 1.0 and conv["active_fraction"] == 0.0
    assert conv["mean"] == 0.0 and conv["std"] == 0.0
    assert conv["grad_norm"] == 0.0 and conv["weight_norm"] > 0
    assert layers["fc2"]["active_fraction"] is None  # the output layer has no ReLU
    assert any(w.startswith("conv1: 100% of its 6 feature maps never activate")
               for w in doc["warnings"]), doc["warnings"]
    assert any("conv1: its weights receive no gradient" in w for w in doc["warnings"])
    table = cli("inspect", "--model", run, "--samples", "64")
    assert table.exit_code == 0, table.output
    assert "100%" in table.stdout and "never activate" in table.stdout


def test_healthy_layer_has_no_dead_warning_and_ratio_is_lr_grad_over_w(tmp_path):
    data = small_data(tmp_path / "d.npz")
    cfg = conv_config(data, lr=0.02)
    net = Network(cfg.model, dtype="float64", seed=0)
    net.params["conv1.bias"][...] = 0.1
    rng = np.random.default_rng(0)
    x = rng.random((64, 1, 8, 8))
    y = rng.integers(0, 3, 64)
    health = inspect_network(net, x, y, optimizer=None, lr=0.02)
    conv = health.layers[0]
    assert conv.name == "conv1" and conv.dead_fraction < 0.5
    assert not any(w.startswith("conv1") and "never activate" in w for w in health.warnings)
    # independent: one forward/backward, |lr * grad| / |w| for conv1.weight
    logits = net.forward(x, train=True)
    _, d = losses.get("cross_entropy")(logits, y)
    net.backward(d)
    g = net.grads["conv1.weight"]
    w = net.params["conv1.weight"]
    assert conv.grad_norm == pytest.approx(np.linalg.norm(g))
    assert conv.weight_norm == pytest.approx(np.linalg.norm(w))
    assert conv.update_ratio == pytest.approx(0.02 * np.linalg.norm(g) / np.linalg.norm(w))
    # shares of active units against a plain count
    net.forward(x, keep=True)
    out = net.activations["conv1"]
    assert conv.active_fraction == pytest.approx((out > 0).sum() / out.size)
    never = [not (out[:, c] > 0).any() for c in range(out.shape[1])]
    assert conv.dead_fraction == pytest.approx(sum(never) / len(never))


def test_vanishing_gradients_through_sigmoid_layers(tmp_path):
    cfg = load_config({
        "model": {"name": "deep", "input": [1, 8, 8], "pattern": "INPUT -> [FC]*7",
                  "fc": {"units": [32, 32, 32, 32, 32, 32, 3], "activation": "sigmoid"}},
        "data": {"train": "digits"},
    })
    net = Network(cfg.model, dtype="float64", seed=0)
    rng = np.random.default_rng(1)
    for k, v in net.params.items():
        if k.endswith(".weight"):
            v[...] = rng.normal(size=v.shape) * 0.05
    x = rng.random((32, 1, 8, 8))
    y = rng.integers(0, 3, 32)
    health = inspect_network(net, x, y, optimizer=None, lr=0.01)
    assert [h.activation for h in health.layers[:6]] == ["sigmoid"] * 6
    assert all(h.active_fraction is None for h in health.layers)
    assert any(w.startswith("vanishing gradients") and "fc1" in w for w in health.warnings), \
        health.warnings
    assert health.layers[0].grad_norm < 1e-3 * health.layers[-1].grad_norm


def test_update_ratio_far_from_target_is_flagged():
    stats = activation_stats(np.array([[1.0, -1.0], [2.0, -3.0]]), "relu")
    assert stats["active_fraction"] == 0.5 and stats["dead_fraction"] == 0.5
    cfg = load_config({
        "model": {"input": [1, 4, 4], "pattern": "INPUT -> [FC]*2", "fc": {"units": [8, 2]}},
        "data": {"train": "digits"},
    })
    net = Network(cfg.model, dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 1, 4, 4)), rng.integers(0, 2, 16)
    loud = inspect_network(net, x, y, optimizer=None, lr=1e3)
    assert any("far too large" in w for w in loud.warnings), loud.warnings
    quiet = inspect_network(net, x, y, optimizer=None, lr=1e-9)
    assert any("far too small" in w for w in quiet.warnings), quiet.warnings


def test_inspect_uses_the_configured_optimizer(cli, tmp_path):
    pytest.importorskip("cnncli.engine.optim")
    data = small_data(tmp_path / "d.npz")
    cfg = conv_config(data, lr=0.05)
    net = Network(cfg.model, seed=0)
    run = save(tmp_path, cfg, net)
    res = cli("inspect", "--model", run, "--data", data, "--json", "--samples", "500")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["samples"] == 96 and doc["lr"] == 0.05
    fc1 = next(r for r in doc["layers"] if r["name"] == "fc1")
    # first SGD step from a fresh state: the update is lr * grad
    assert fc1["update_ratio"] == pytest.approx(0.05 * fc1["grad_norm"] / fc1["weight_norm"],
                                                rel=1e-4)


def test_inspect_errors(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_clean_error(cli("inspect"), 2, "runs/latest")
    data = small_data(tmp_path / "d.npz")
    run = save(tmp_path, conv_config(data), Network(conv_config(data).model))
    assert_clean_error(cli("inspect", "--model", run, "--samples", "0"), 2)
    assert_clean_error(cli("inspect", "--model", run, "--data", "nowhere.npz"), 2, "nowhere")
