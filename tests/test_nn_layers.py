"""Every layer type and option against slow, obvious references written from the formulas
with explicit loops (tiny sizes), in the user's NCHW layout and PyTorch's weight layouts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from nn_specs import chain, conv, fc, pool

from cnncli.engine.network import Network

RNG = np.random.default_rng(1234)


# ---- references ---------------------------------------------------------------------------
def ref_conv(x, w, b, stride, padding):
    """Cross-correlation as torch.nn.functional.conv2d computes it, one output at a time."""
    n, c, h, wd = x.shape
    f, c2, kh, kw = w.shape
    assert c == c2
    pt, pb, pl, pr = padding
    sh, sw = stride
    xp = np.zeros((n, c, h + pt + pb, wd + pl + pr))
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    ho = (h + pt + pb - kh) // sh + 1
    wo = (wd + pl + pr - kw) // sw + 1
    out = np.zeros((n, f, ho, wo))
    for i, o, y, xx in itertools.product(range(n), range(f), range(ho), range(wo)):
        s = b[o]
        for ci, a, bb in itertools.product(range(c), range(kh), range(kw)):
            s += xp[i, ci, y * sh + a, xx * sw + bb] * w[o, ci, a, bb]
        out[i, o, y, xx] = s
    return out


def ref_pool(x, size, stride, reduce):
    n, c, h, w = x.shape
    kh, kw = size
    sh, sw = stride
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((n, c, ho, wo))
    for i, ci, y, xx in itertools.product(range(n), range(c), range(ho), range(wo)):
        out[i, ci, y, xx] = reduce(x[i, ci, y * sh:y * sh + kh, xx * sw:xx * sw + kw])
    return out


def ref_act(z, type, alpha=0.01, slope=None, pieces=2):
    """Activation on NCHW maps or (N, units); channels on axis 1."""
    if type == "relu":
        return np.where(z > 0, z, 0.0)
    if type == "leaky_relu":
        return np.where(z > 0, z, alpha * z)
    if type == "prelu":
        a = slope.reshape((1, -1) + (1,) * (z.ndim - 2))
        return np.where(z > 0, z, a * z)
    if type == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if type == "tanh":
        return np.tanh(z)
    if type == "maxout":
        out = np.empty((z.shape[0], z.shape[1] // pieces) + z.shape[2:])
        for j in range(out.shape[1]):
            out[:, j] = np.max(z[:, j * pieces:(j + 1) * pieces], axis=1)
        return out
    return z


def run(spec, x, dtype="float64", seed=0):
    net = Network(spec, dtype=dtype, seed=seed)
    logits = net.forward(x, keep=True)
    return net, logits


def rand(*shape):
    return RNG.standard_normal(shape)


# ---- convolution --------------------------------------------------------------------------
CONV_CASES = [
    # (input C,H,W, filters, size, stride, padding)
    ((1, 6, 6), 2, 3, 1, 0),
    ((2, 7, 5), 3, 3, 2, "same"),          # asymmetric same: extra row/column at bottom/right
    ((3, 6, 8), 2, (2, 3), 1, "same"),     # rectangular kernel, even height: pads 0/1
    ((2, 5, 7), 2, (3, 2), (2, 1), 1),     # rectangular stride, floor drops rows
    ((1, 4, 4), 2, 3, 1, "full"),
    ((2, 6, 6), 3, 2, 2, (1, 0, 0, 1)),    # explicit asymmetric padding
    ((17, 5, 5), 4, 3, 1, "same"),         # >= 16 channels: input gradient by full convolution
    ((3, 9, 9), 2, 5, 3, 2),
]


@pytest.mark.parametrize("in_shape,filters,size,stride,padding", CONV_CASES)
def test_conv_forward_matches_reference(in_shape, filters, size, stride, padding):
    spec = chain(in_shape, conv(filters, size, stride, padding, activation="none"), fc(3))
    x = rand(2, *in_shape)
    net, logits = run(spec, x)
    layer = spec.layers[0]
    want = ref_conv(x, net.params["conv1.weight"], net.params["conv1.bias"] + 0.1 * 0,
                    layer.stride, layer.padding)
    got = net.activations["conv1"]
    assert got.shape == (2,) + layer.out_shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # fc flattens in (C, H, W) order: the PyTorch layout
    flat = want.reshape(2, -1)
    np.testing.assert_allclose(logits, flat @ net.params["fc1.weight"].T + net.params["fc1.bias"],
                               rtol=1e-12, atol=1e-12)


def test_conv_bias_and_nonzero_params():
    spec = chain((2, 5, 5), conv(3, 3, padding=1, activation="none"), fc(2))
    x = rand(3, 2, 5, 5)
    net = Network(spec, "float64")
    net.set_params({"conv1.bias": np.array([0.5, -1.0, 2.0])}, strict=False)
    net.forward(x, keep=True)
    want = ref_conv(x, net.params["conv1.weight"], net.params["conv1.bias"], (1, 1), (1, 1, 1, 1))
    np.testing.assert_allclose(net.activations["conv1"], want, atol=1e-12)


@pytest.mark.parametrize("activation,opts", [
    ("relu", {}), ("leaky_relu", {"alpha": 0.2}), ("prelu", {}), ("sigmoid", {}),
    ("tanh", {}), ("maxout", {"pieces": 3}), ("none", {}),
])
def test_conv_activations(activation, opts):
    spec = chain((2, 5, 6), conv(3, 3, padding="same", activation=activation, **opts), fc(2))
    x = rand(2, 2, 5, 6) * 3
    net, _ = run(spec, x)
    if activation == "prelu":
        net.set_params({"conv1.slope": np.array([0.1, -0.3, 0.7])}, strict=False)
        net.forward(x, keep=True)
    w = net.params["conv1.weight"]
    pieces = opts.get("pieces", 2)
    assert w.shape[0] == 3 * (pieces if activation == "maxout" else 1)
    z = ref_conv(x, w, net.params["conv1.bias"], (1, 1), spec.layers[0].padding)
    want = ref_act(z, activation, alpha=opts.get("alpha", 0.01),
                   slope=net.params.get("conv1.slope"), pieces=pieces)
    np.testing.assert_allclose(net.activations["conv1"], want, rtol=1e-12, atol=1e-12)


def test_maxout_takes_consecutive_groups():
    spec = chain((1, 1, 1), conv(2, 1, activation="maxout", pieces=3), fc(1))
    net = Network(spec, "float64")
    # maps 0..5 = 1*[1, 5, 2, 9, 0, 4] -> groups (1, 5, 2) and (9, 0, 4) -> 5 and 9
    net.set_params({"conv1.weight": np.array([1, 5, 2, 9, 0, 4.0]).reshape(6, 1, 1, 1)},
                   strict=False)
    net.forward(np.ones((1, 1, 1, 1)), keep=True)
    np.testing.assert_array_equal(net.activations["conv1"].ravel(), [5.0, 9.0])


def ref_learned(x, k, c, b, stride, padding):
    """Bouvrie's learned combination: y_i = x_i * k_i, out_j = sum_i softmax(c_j)_i y_i + b_j."""
    n, cin, h, w = x.shape
    alpha = np.exp(c) / np.exp(c).sum(axis=1, keepdims=True)
    ys = [ref_conv(x[:, i:i + 1], k[i:i + 1], np.zeros(1), stride, padding)[:, 0]
          for i in range(cin)]
    out = np.zeros((n, c.shape[0]) + ys[0].shape[1:])
    for j in range(c.shape[0]):
        out[:, j] = b[j] + sum(alpha[j, i] * ys[i] for i in range(cin))
    return out


@pytest.mark.parametrize("stride,padding", [(1, "same"), (2, 0), ((1, 2), (0, 1, 2, 0))])
def test_learned_combination_matches_reference(stride, padding):
    spec = chain((3, 6, 7), conv(4, (3, 2), stride, padding, activation="none",
                                 combine="learned"), fc(2))
    x = rand(2, 3, 6, 7)
    net, _ = run(spec, x)
    assert net.params["conv1.weight"].shape == (3, 1, 3, 2)
    assert net.params["conv1.combine"].shape == (4, 3)
    layer = spec.layers[0]
    want = ref_learned(x, net.params["conv1.weight"], net.params["conv1.combine"],
                       net.params["conv1.bias"], layer.stride, layer.padding)
    np.testing.assert_allclose(net.activations["conv1"], want, rtol=1e-12, atol=1e-12)


# ---- pooling ------------------------------------------------------------------------------
POOL_CASES = [((2, 4, 4), 2, None), ((2, 7, 7), 3, 2), ((1, 5, 8), (2, 3), (1, 2)),
              ((3, 5, 5), 2, None)]


@pytest.mark.parametrize("in_shape,size,stride", POOL_CASES)
@pytest.mark.parametrize("type", ["max", "mean"])
def test_pool_matches_reference(in_shape, size, stride, type):
    spec = chain(in_shape, pool(type, size, stride), fc(2))
    x = rand(2, *in_shape)
    net, _ = run(spec, x)
    layer = spec.layers[0]
    want = ref_pool(x, layer.size, layer.stride, np.max if type == "max" else np.mean)
    np.testing.assert_allclose(net.activations["pool1"], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["none", "tanh", "sigmoid", "relu", "prelu"])
def test_subsample_matches_reference(activation):
    spec = chain((2, 6, 7), pool("subsample", 3, 2, activation=activation), fc(2))
    x = rand(2, 2, 6, 7)
    net = Network(spec, "float64")
    np.testing.assert_allclose(net.params["pool1.beta"], [1 / 9, 1 / 9])
    np.testing.assert_array_equal(net.params["pool1.bias"], [0.0, 0.0])
    beta, bias = np.array([0.3, -1.2]), np.array([0.1, 0.2])
    net.set_params({"pool1.beta": beta, "pool1.bias": bias}, strict=False)
    net.forward(x, keep=True)
    down = ref_pool(x, (3, 3), (2, 2), np.sum)
    z = beta[None, :, None, None] * down + bias[None, :, None, None]
    want = ref_act(z, activation, slope=net.params.get("pool1.slope"))
    np.testing.assert_allclose(net.activations["pool1"], want, rtol=1e-12, atol=1e-12)


def test_subsample_starts_as_mean_pooling():
    x = rand(2, 2, 6, 6)
    sub, _ = run(chain((2, 6, 6), pool("subsample", 2), fc(2)), x)
    mean, _ = run(chain((2, 6, 6), pool("mean", 2), fc(2)), x)
    np.testing.assert_allclose(sub.activations["pool1"], mean.activations["pool1"], atol=1e-14)


def test_max_pool_gradient_goes_to_one_argmax_per_window():
    spec = chain((1, 4, 4), pool("max", 2), fc(1))
    net = Network(spec, "float64")
    x = np.zeros((1, 1, 4, 4))      # every window a four-way tie
    x[0, 0, 3, 3] = 1.0
    net.forward(x, train=True)
    dx = net.backward(np.ones((1, 1)))
    w = net.params["fc1.weight"].reshape(2, 2)
    want = np.zeros((4, 4))
    want[0, 0], want[0, 2], want[2, 0] = w[0, 0], w[0, 1], w[1, 0]   # first of each tie
    want[3, 3] = w[1, 1]
    np.testing.assert_allclose(dx[0, 0], want)
    assert np.count_nonzero(dx) == 4


def test_overlapping_max_pool_gradient_accumulates():
    spec = chain((1, 1, 5), pool("max", (1, 3), (1, 2)), fc(1))
    net = Network(spec, "float64")
    net.set_params({"fc1.weight": np.array([[2.0, 3.0]])}, strict=False)
    x = np.array([0.0, 1.0, 5.0, 1.0, 0.0]).reshape(1, 1, 1, 5)   # 5 wins both windows
    net.forward(x, train=True)
    dx = net.backward(np.ones((1, 1)))
    np.testing.assert_allclose(dx.ravel(), [0, 0, 5.0, 0, 0])


# ---- fully connected, dropout -------------------------------------------------------------
@pytest.mark.parametrize("activation,opts", [("relu", {}), ("prelu", {}), ("maxout", {}),
                                             ("leaky_relu", {"alpha": 0.3}), ("tanh", {})])
def test_fc_matches_reference(activation, opts):
    spec = chain((2, 3, 3), fc(5, activation, **opts), fc(3))
    x = rand(4, 2, 3, 3)
    net, logits = run(spec, x)
    z = x.reshape(4, -1) @ net.params["fc1.weight"].T + net.params["fc1.bias"]
    h = ref_act(z, activation, alpha=opts.get("alpha", 0.01), slope=net.params.get("fc1.slope"))
    np.testing.assert_allclose(net.activations["fc1"], h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(logits, h @ net.params["fc2.weight"].T + net.params["fc2.bias"],
                               rtol=1e-12, atol=1e-12)


def test_dropout_train_versus_eval():
    spec = chain((1, 1, 1), fc(4000, "relu", dropout=0.25), fc(1))
    net = Network(spec, "float64", seed=3)
    net.set_params({"fc1.weight": np.ones((4000, 1)), "fc1.bias": np.zeros(4000)}, strict=False)
    x = np.ones((2, 1, 1, 1))
    net.forward(x, train=False, keep=True)
    np.testing.assert_array_equal(net.activations["fc1"], 1.0)        # eval: no dropout
    net.forward(x, train=True, keep=True)
    h = net.activations["fc1"]
    kept = h != 0
    np.testing.assert_allclose(h[kept], 1.0 / 0.75)                   # inverted scaling
    assert 0.22 < 1 - kept.mean() < 0.28
    # the gradient flows only through kept units, scaled the same way
    net.backward(np.ones((2, 1)))
    g = net.grads["fc1.weight"][:, 0]
    w2 = net.params["fc2.weight"][0]
    np.testing.assert_allclose(g, (kept.sum(axis=0) / 0.75) * w2 * (w2 != 0))


def test_dropout_uses_the_given_generator():
    spec = chain((1, 2, 2), fc(50, "relu", dropout=0.5), fc(2))
    net = Network(spec, "float64")
    x = rand(3, 1, 2, 2)
    a = net.forward(x, train=True, rng=np.random.default_rng(5))
    b = net.forward(x, train=True, rng=np.random.default_rng(5))
    c = net.forward(x, train=True, rng=np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ---- whole networks -----------------------------------------------------------------------
def test_float32_and_float64_agree():
    spec = chain((3, 12, 10), conv(8, 3, padding="same"), pool(), conv(16, 3, stride=2),
                 pool("mean", 2), fc(20, "relu"), fc(5))
    x = rand(4, 3, 12, 10)
    n32 = Network(spec, "float32", seed=1)
    n64 = Network(spec, "float64", seed=1)
    for k in n32.params:
        np.testing.assert_allclose(n32.params[k], n64.params[k], rtol=1e-6, atol=1e-7)
    a = n32.forward(x, train=True)
    b = n64.forward(x, train=True)
    assert a.dtype == np.float32 and b.dtype == np.float64
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    r = rand(4, 5)
    da = n32.backward(r.astype(np.float32))
    db = n64.backward(r)
    np.testing.assert_allclose(da, db, rtol=1e-3, atol=1e-4)
    for k in n32.grads:
        np.testing.assert_allclose(n32.grads[k], n64.grads[k], rtol=1e-3, atol=1e-4)


def test_threads_split_gives_the_same_network():
    spec = chain((3, 16, 16), conv(20, 3, padding="same"), pool(), conv(20, 3, padding="same"),
                 pool(), fc(32, "relu", dropout=0.3), fc(10))
    x = rand(40, 3, 16, 16)
    r = rand(40, 10)
    from threadpoolctl import threadpool_info

    blas_before = [i["num_threads"] for i in threadpool_info()]
    one = Network(spec, "float64", seed=2, threads=1)
    two = Network(spec, "float64", seed=2, threads=2)
    ya = one.forward(x, train=True, rng=np.random.default_rng(1))
    yb = two.forward(x, train=True, rng=np.random.default_rng(1))
    assert len(two._ws) == 2                                   # the batch really was split
    assert [i["num_threads"] for i in threadpool_info()] == blas_before
    np.testing.assert_allclose(ya, yb, rtol=1e-12, atol=1e-12)
    da = one.backward(r)
    db = two.backward(r)
    np.testing.assert_allclose(da, db, rtol=1e-12, atol=1e-12)
    for k in one.grads:
        np.testing.assert_allclose(one.grads[k], two.grads[k], rtol=1e-10, atol=1e-12)
    # deterministic: the same again, bit for bit
    g1 = {k: v.copy() for k, v in two.grads.items()}
    two.forward(x, train=True, rng=np.random.default_rng(1))
    two.backward(r)
    for k in g1:
        np.testing.assert_array_equal(g1[k], two.grads[k])


def test_inference_in_pieces_matches_one_batch():
    spec = chain((1, 8, 8), conv(4, 3), pool(), fc(3))
    net = Network(spec, "float64")
    x = rand(10, 1, 8, 8)
    whole = net.forward(x)
    net.infer_piece = 3
    np.testing.assert_allclose(net.forward(x), whole, rtol=1e-13, atol=1e-13)


def test_pool_first_network_with_float64_input():
    spec = chain((1, 4, 4), pool("max", 2), fc(1))
    net = Network(spec, "float32")
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))       # float64 on purpose
    net.forward(x, train=True)
    dx = net.backward(np.ones((2, 1), np.float32))
    assert dx.dtype == np.float32
    assert np.count_nonzero(dx) == 8                                   # one per window


def test_input_checks_and_backward_order():
    from cnncli.errors import DataError, UsageError

    net = Network(chain((1, 6, 6), conv(2, 3), fc(2)))
    with pytest.raises(DataError, match=r"expects \(N, 1, 6, 6\)"):
        net.forward(np.zeros((2, 6, 6)))
    with pytest.raises(UsageError, match="forward"):
        net.backward(np.zeros((2, 2)))
    net.forward(np.zeros((3, 1, 6, 6)), train=True)
    with pytest.raises(UsageError, match="dlogits"):
        net.backward(np.zeros((2, 2)))
    net.forward(np.zeros((3, 1, 6, 6)), train=True)
    assert net.backward(np.zeros((3, 2)), input_grad=False) is None
    with pytest.raises(UsageError):
        net.backward(np.zeros((3, 2)))                                 # once per forward
    assert net.forward(np.zeros((0, 1, 6, 6))).shape == (0, 2)


def test_params_and_grads_layout_and_set_params():
    from cnncli.errors import CheckpointError
    from cnncli.spec.model import param_shapes

    spec = chain((3, 8, 8), conv(4, 3, activation="prelu"), pool("subsample", 2),
                 conv(6, 2, combine="learned", activation="maxout"), fc(5, "prelu"), fc(2))
    net = Network(spec, "float64")
    want = {k: v for layer in spec.layers for k, v in param_shapes(layer).items()}
    assert list(net.params) == list(want) == list(net.grads)
    assert all(net.params[k].shape == want[k] for k in want)
    assert net.n_params == sum(int(np.prod(s)) for s in want.values())
    np.testing.assert_array_equal(net.params["conv1.slope"], 0.25)
    ref = net.params["fc2.weight"]
    net.set_params({"fc2.weight": np.ones((2, 5))}, strict=False)
    assert net.params["fc2.weight"] is ref and np.all(ref == 1)       # in place
    with pytest.raises(CheckpointError, match="shape"):
        net.set_params({"fc2.weight": np.ones((5, 2))}, strict=False)
    with pytest.raises(CheckpointError, match="unknown tensor"):
        net.set_params({"fc9.weight": np.ones(2)}, strict=False)
    with pytest.raises(CheckpointError, match="missing"):
        net.set_params({"fc2.weight": np.ones((2, 5))})
    n32 = net.astype("float32")
    assert n32.dtype == np.float32 and n32.params["conv1.slope"].dtype == np.float32
    np.testing.assert_allclose(n32.params["fc2.weight"], 1.0)


def test_gradients_overwrite_never_accumulate():
    spec = chain((1, 6, 6), conv(2, 3), pool(), fc(3))
    net = Network(spec, "float64")
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6))
    r = np.random.default_rng(1).standard_normal((2, 3))
    net.forward(x, train=True)
    net.backward(r)
    first = {k: g.copy() for k, g in net.grads.items()}
    net.forward(x, train=True)
    net.backward(r)
    for k in first:
        np.testing.assert_array_equal(net.grads[k], first[k])


def test_build_accepts_specs_configs_and_yaml(tmp_path):
    import cnncli
    from cnncli.engine.network import build
    from cnncli.spec import load_config

    cfg = load_config("lenet5")
    a = build(cfg, seed=1)
    b = build(cfg.model, seed=1)
    c = cnncli.build("lenet5", seed=1)
    assert a.n_params == 61706
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
        np.testing.assert_array_equal(a.params[k], c.params[k])
    assert build(a, dtype="float64").dtype == np.float64
