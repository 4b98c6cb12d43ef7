"""cnncli export: the ONNX file, run in ONNX Runtime, computes what the engine computes."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import assert_clean_error

from cnncli.engine.network import Network
from cnncli.io.checkpoint import write_checkpoint
from cnncli.spec import load_config

# Every layer kind and activation the spec knows: padding same (with stride 2: the extra row
# and column go at the bottom and right), full and explicit; a learned combination; maxout
# on conv and FC; PReLU on conv and FC; subsample, max (overlapping) and mean pools; dropout.
EVERY_LAYER = {
    "name": "every-layer",
    "input": [3, 19, 33],
    "blocks": [
        {"conv": [{"filters": 4, "size": 3, "padding": "same", "activation": "prelu"},
                  {"filters": 4, "size": [3, 2], "stride": [1, 2], "padding": "full"}],
         "pool": {"type": "subsample", "size": 2, "activation": "tanh"}},
        {"conv": [{"filters": 3, "size": 3, "padding": 1, "combine": "learned",
                   "activation": "maxout", "pieces": 2},
                  {"filters": 4, "size": 3, "stride": 2, "padding": "same",
                   "activation": "sigmoid"}],
         "pool": {"type": "max", "size": 3, "stride": 2}},
        {"conv": [{"filters": 5, "size": 2, "padding": 1, "activation": "leaky_relu",
                   "alpha": 0.2}],
         "pool": {"type": "mean", "size": 2}},
    ],
    "fc": [{"units": 7, "activation": "sigmoid", "dropout": 0.5},
           {"units": 6, "activation": "maxout", "pieces": 3},
           {"units": 5, "activation": "prelu"},
           {"units": 4, "activation": "tanh"},
           {"units": 3}],
}
NORM = {"mode": "standardize", "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]}
CLASSES = ["ant", "bee", "cow"]


@pytest.fixture
def every_layer_model(tmp_path):
    cfg = load_config({"model": EVERY_LAYER, "data": {"train": "digits", "framing": "resize"}})
    net = Network(cfg.model, dtype="float32", seed=0)
    rng = np.random.default_rng(1)
    for v in net.params.values():  # away from the initial values, so every tensor matters
        v[...] = rng.normal(size=v.shape) * 0.6
    path = tmp_path / "run" / "best.safetensors"
    path.parent.mkdir()
    write_checkpoint(path, net.params,
                     {"config": cfg.resolved, "classes": CLASSES, "normalization": NORM})
    return path, net, cfg


def test_every_layer_type_matches_onnx_runtime(cli, every_layer_model, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path, net, cfg = every_layer_model
    kinds = {(layer.kind, layer.activation.type) for layer in cfg.model.layers}
    for act in ("relu", "prelu", "maxout", "sigmoid", "tanh", "leaky_relu", "none"):
        assert any(a == act for _, a in kinds), act
    assert {layer.type for layer in cfg.model.layers if layer.kind == "pool"} == {
        "max", "mean", "subsample"}
    same_s2 = [layer for layer in cfg.model.layers
               if layer.kind == "conv" and layer.padding_mode == "same" and layer.stride[0] == 2]
    assert same_s2 and same_s2[0].padding[0] != same_s2[0].padding[1]  # asymmetric pads

    out = tmp_path / "m.onnx"
    res = cli("export", "--model", path, "-o", out)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    ops = {n.op_type for n in model.graph.node}
    assert {"Conv", "MaxPool", "AveragePool", "PRelu", "LeakyRelu", "Sigmoid", "Tanh", "Relu",
            "ReduceMax", "Gemm", "Flatten"} <= ops
    assert "Dropout" not in ops
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["cnncli.normalization"]) == NORM
    assert json.loads(props["cnncli.classes"]) == CLASSES

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).normal(size=(6, 3, 19, 33)).astype(np.float32)
    got = sess.run(None, {"input": x})[0]
    want = net.forward(x, train=False)
    assert got.shape == want.shape == (6, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # any batch size
    one = sess.run(None, {"input": x[:1]})[0]
    np.testing.assert_allclose(one, want[:1], rtol=1e-4, atol=1e-5)


def test_export_float64_model_and_default_path(cli, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    cfg = load_config({
        "model": {"input": [1, 28, 28], "pattern": "INPUT -> [[CONV]*2 -> POOL]*1 -> [FC]*2",
                  "conv": {"filters": [4, 6], "size": 5, "padding": [2, 0]},
                  "pool": {"type": "subsample", "size": 2}, "fc": {"units": [16, 10]}},
        "data": {"train": "digits"},
    })
    net = Network(cfg.model, dtype="float64", seed=3)
    run = tmp_path / "run"
    run.mkdir()
    write_checkpoint(run / "best.safetensors", net.params,
                     {"config": cfg.resolved, "classes": [str(i) for i in range(10)],
                      "normalization": {"mode": "scale", "mean": [0.0], "std": [1.0]}})
    res = cli("export", "--model", run)
    assert res.exit_code == 0, res.output
    out = run / "model.onnx"
    assert res.stdout.strip() == str(out)
    assert "ONNX Runtime agrees" in res.stderr
    onnx.checker.check_model(onnx.load(str(out)))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 1, 28, 28))
    got = sess.run(None, {"input": x.astype(np.float32)})[0]
    np.testing.assert_allclose(got, net.forward(x), rtol=1e-4, atol=1e-5)


def test_export_without_onnx_says_how_to_install(cli, every_layer_model, monkeypatch, tmp_path):
    path, _, _ = every_layer_model
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    res = cli("export", "--model", path, "-o", tmp_path / "m.onnx")
    assert_clean_error(res, 2, "pip install 'cnncli[onnx]'")
    assert not (tmp_path / "m.onnx").exists()


def test_export_missing_model(cli, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.chdir(tmp_path)
    assert_clean_error(cli("export", "-o", "m.onnx"), 2, "runs/latest")
