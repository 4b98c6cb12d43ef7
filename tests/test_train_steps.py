"""What the loop does to the weights, step by step, against updates written out by hand.

float64 and one step per epoch (the batch holds the whole training set), no augmentation or
dropout, so each expected update is the textbook formula applied to gradients taken from
the engine at the same point: the optimizers' own maths, the schedule's rate at each step,
weight decay on weights only, and the sparsity penalty all have to meet in the loop.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_train import make_images

from cnncli.engine.network import Network
from cnncli.io.checkpoint import read_checkpoint
from cnncli.io.datasets import apply_normalization, compute_normalization, load_dataset
from cnncli.nn import losses
from cnncli.spec import load_config
from cnncli.train import rundir
from cnncli.train.loop import train

SPEC = """\
model:
  name: steps
  input: [1, 8, 8]
  pattern: "INPUT -> [[CONV]*2 -> POOL]*1 -> [FC]*1"
  conv: {{filters: [4, 4], size: 3, combine: [full, {combine}], sparsity: [0, {sparsity}]}}
  fc: {{units: [3]}}
data:
  train: train.npz
  val_split: 0
  normalize: standardize
train:
  epochs: {epochs}
  batch_size: 64
  optimizer: {optimizer}
  schedule: {{type: step, step_size: 1, gamma: 0.5}}
  weight_decay: 0.01
  dtype: float64
  seed: 3
"""


def setup_run(tmp_path, optimizer, epochs=2, combine="full", sparsity=0):
    x, y = make_images(30, 5)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(optimizer=optimizer, epochs=epochs, combine=combine,
                                sparsity=sparsity))
    cfg = load_config(spec)
    ds = load_dataset(str(tmp_path / "train.npz"))
    norm = compute_normalization(ds, "standardize")
    net = Network(cfg.model, dtype="float64", seed=3)
    return cfg, ds, norm, net


def grads_at(net, ds, norm, epoch, seed=3, loss="cross_entropy"):
    """Loss, penalty and gradients (data + penalty) at the network's current weights, on
    the whole training set in the order the loop visits it in ``epoch``."""
    order = np.random.default_rng([seed, epoch]).permutation(len(ds.y))
    x = apply_normalization(ds.batch_float(order, np.float64), norm)
    logits = net.forward(x, train=True)
    value, dlogits = losses.get(loss)(logits, ds.y[order])
    net.backward(dlogits, input_grad=False)
    pen, pen_grads = net.penalty()
    g = {k: v.copy() for k, v in net.grads.items()}
    for k, v in pen_grads.items():
        g[k] = g[k] + v
    return value, pen, g


def decayed(g, params, wd):
    return {k: g[k] + (wd * params[k] if k.endswith(".weight") else 0.0) for k in g}


def final_weights(out):
    tensors, meta = read_checkpoint(out / "last.safetensors")
    return tensors, meta


def test_sgd_momentum_two_steps_with_step_schedule(tmp_path):
    cfg, ds, norm, net = setup_run(tmp_path, "{type: sgd, lr: 0.1, momentum: 0.9}")
    out = tmp_path / "run"
    train(cfg, out=out)
    wd, mu = 0.01, 0.9
    p = {k: v.copy() for k, v in net.params.items()}
    # step 1 (epoch 1, lr 0.1): v = d1; w -= lr v
    _, _, g1 = grads_at(net, ds, norm, 0)
    d1 = decayed(g1, p, wd)
    p1 = {k: p[k] - 0.1 * d1[k] for k in p}
    net.set_params(p1)
    # step 2 (epoch 2, lr 0.05 from the step schedule): v = mu d1 + d2
    _, _, g2 = grads_at(net, ds, norm, 1)
    d2 = decayed(g2, p1, wd)
    v2 = {k: mu * d1[k] + d2[k] for k in p}
    p2 = {k: p1[k] - 0.05 * v2[k] for k in p}

    tensors, meta = final_weights(out)
    for k in p:
        np.testing.assert_allclose(tensors[k], p2[k], rtol=1e-9, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(tensors[f"optim.{k}.momentum"], v2[k], rtol=1e-9,
                                   atol=1e-12, err_msg=k)
    assert meta["global_step"] == 2
    # biases are never decayed: with decay off their update would be the same
    assert not np.allclose(d1["conv1.weight"], g1["conv1.weight"])
    assert np.array_equal(d1["conv1.bias"], g1["conv1.bias"])
    rows = rundir.read_metrics(out / "metrics.csv")
    assert [r["lr"] for r in rows] == [0.1, 0.05]


def test_adam_first_step(tmp_path):
    cfg, ds, norm, net = setup_run(
        tmp_path, "{type: adam, lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1.0e-8}", epochs=1
    )
    out = tmp_path / "run"
    train(cfg, out=out)
    p = {k: v.copy() for k, v in net.params.items()}
    _, _, g = grads_at(net, ds, norm, 0)
    d = decayed(g, p, 0.01)
    # t = 1: m = 0.1 d, v = 0.001 d^2; bias corrections make the step lr * d / (|d| + eps)
    expect = {k: p[k] - 0.01 * d[k] / (np.abs(d[k]) + 1e-8) for k in p}
    tensors, _ = final_weights(out)
    for k in p:
        np.testing.assert_allclose(tensors[k], expect[k], rtol=1e-9, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(tensors[f"optim.{k}.m"], 0.1 * d[k], rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(tensors[f"optim.{k}.v"], 0.001 * d[k] ** 2, rtol=1e-9,
                                   atol=1e-20)
    assert int(tensors["optim.step"][0]) == 1


@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_sparsity_penalty_enters_loss_and_gradients(tmp_path, sparsity):
    cfg, ds, norm, net = setup_run(tmp_path, "{type: sgd, lr: 0.1, momentum: 0.0}", epochs=1,
                                   combine="learned", sparsity=sparsity)
    out = tmp_path / "run"
    train(cfg, out=out)
    p = {k: v.copy() for k, v in net.params.items()}
    value, pen, g = grads_at(net, ds, norm, 0)
    if sparsity:
        assert pen > 0 and np.abs(net.penalty()[1]["conv2.combine"]).max() > 0
    else:
        assert pen == 0
    expect = {k: p[k] - 0.1 * decayed(g, p, 0.01)[k] for k in p}
    tensors, _ = final_weights(out)
    for k in p:
        np.testing.assert_allclose(tensors[k], expect[k], rtol=1e-9, atol=1e-12, err_msg=k)
    row = rundir.read_metrics(out / "metrics.csv")[0]
    assert row["train_loss"] == pytest.approx(value + pen, rel=1e-12)
