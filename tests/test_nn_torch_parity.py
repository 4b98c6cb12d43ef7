"""Parameters copied as they are into the equivalent PyTorch model give the same logits and
gradients (skipped where PyTorch is not installed; it is never a dependency)."""

from __future__ import annotations

import numpy as np
import pytest
from nn_specs import chain, conv, fc, pool

from cnncli.engine.network import Network

torch = pytest.importorskip("torch")


def torch_twin(spec):
    tnn = torch.nn
    mods = []
    for layer in spec.layers:
        act = layer.activation.type
        if layer.kind == "conv":
            pt, pb, pl, pr = layer.padding
            mods.append(tnn.ZeroPad2d((pl, pr, pt, pb)))
            mods.append(tnn.Conv2d(layer.in_shape[0], layer.maps, layer.size, layer.stride))
        elif layer.kind == "pool":
            cls = tnn.MaxPool2d if layer.type == "max" else tnn.AvgPool2d
            mods.append(cls(layer.size, layer.stride))
        else:
            if len(layer.in_shape) > 1:
                mods.append(tnn.Flatten())
            mods.append(tnn.Linear(layer.in_features, layer.units))
        if act == "relu":
            mods.append(tnn.ReLU())
        elif act == "tanh":
            mods.append(tnn.Tanh())
        elif act == "prelu":
            mods.append(tnn.PReLU(layer.out_shape[0]))
    return tnn.Sequential(*mods).double()


def copy_params(net, model):
    """cnncli tensors, in network order, into the twin's parameters, in module order."""
    targets = [p for p in model.parameters()]
    names = list(net.params)
    order = []
    for layer in net.spec.layers:
        for suffix in ("weight", "bias", "slope"):
            if f"{layer.name}.{suffix}" in names:
                order.append(f"{layer.name}.{suffix}")
    assert len(order) == len(targets)
    with torch.no_grad():
        for name, p in zip(order, targets, strict=True):
            assert tuple(p.shape) == net.params[name].shape, name
            p.copy_(torch.from_numpy(net.params[name]))
    return order


@pytest.mark.parametrize("spec", [
    chain((1, 28, 28), conv(6, 5, padding=2), pool(), conv(16, 5), pool(), fc(120, "relu"),
          fc(84, "relu"), fc(10)),
    chain((3, 11, 9), conv(5, (3, 2), (2, 1), "same", activation="tanh"), pool("mean", 2),
          conv(17, 3, padding=1), conv(4, 3, padding="same"), pool("max", 3, 2),
          fc(7, "prelu"), fc(3)),
])
def test_same_logits_and_gradients_as_pytorch(spec):
    net = Network(spec, "float64", seed=0)
    net.params[next(k for k in net.params if k.endswith("bias"))][:] = 0.05   # nonzero bias
    model = torch_twin(spec)
    order = copy_params(net, model)
    x = np.random.default_rng(0).standard_normal((4,) + spec.input)
    r = np.random.default_rng(1).standard_normal((4, spec.outputs))
    logits = net.forward(x, train=True)
    dx = net.backward(r)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = model(xt)
    (out * torch.from_numpy(r)).sum().backward()
    np.testing.assert_allclose(logits, out.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-10)
    for name, p in zip(order, model.parameters(), strict=True):
        np.testing.assert_allclose(net.grads[name], p.grad.numpy(), rtol=1e-9, atol=1e-10,
                                   err_msg=name)
