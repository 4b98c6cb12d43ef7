"""The fully connected layer, with inverted dropout on its output while training."""

from __future__ import annotations

import numpy as np

from cnncli.nn import init
from cnncli.nn.base import Layer


class Dense(Layer):
    """y = dropout(f(x W^T + b)).

    x: ``(N, in_features)``, or maps ``(N, H, W, C)`` flattened in (C, H, W) order as PyTorch's
    ``flatten`` does, so the weight ``(units * pieces, in_features)`` copies into ``nn.Linear``
    as it is. Dropout is inverted (kept units scaled by 1/(1-p) while training, nothing at
    inference); its uniform draws come from the network (``ws.dropout_u``), so results do not
    depend on how a batch is split.
    """

    kind = "fc"

    def __init__(self, spec, dtype):
        super().__init__(spec, dtype)
        self.units = spec.units
        self.outputs = spec.units * spec.activation.multiplier
        self.in_features = spec.in_features
        self.dropout = float(spec.dropout)
        self.wname, self.bname = f"{self.name}.weight", f"{self.name}.bias"

    def init_params(self, rng):
        shapes = self.param_shapes()
        out = {
            self.wname: init.weights(shapes[self.wname], self.spec.init, self.in_features,
                                     self.outputs, rng, self.dtype),
            self.bname: init.zeros(shapes[self.bname], self.dtype),
        }
        for name, shape in shapes.items():
            if name.endswith(".slope"):
                out[name] = init.full(shape, 0.25, self.dtype)
        return {k: out[k] for k in shapes}

    def forward(self, x, ws, params, train, nchw=False):
        n = x.shape[0]
        ws.in_ndim, ws.nchw = x.ndim, nchw
        if x.ndim == 4 and not nchw:
            xf = ws.get("xf", (n, self.in_features), self.dtype)
            c, h, w = self.in_shape
            np.copyto(xf.reshape(n, c, h, w), x.transpose(0, 3, 1, 2))
        else:
            xf = x.reshape(n, self.in_features)
            if xf.dtype != self.dtype:
                xf = xf.astype(self.dtype)
        z = ws.get("z", (n, self.outputs), self.dtype)
        np.matmul(xf, params[self.wname].T, out=z)
        z += params[self.bname]
        y = self.act.forward(z, ws, train, params)
        ws.xf = xf
        ws.dropped = False
        if train and self.dropout > 0.0:
            u = ws.dropout_u
            keep = ws.get("keep", y.shape, np.bool_)
            np.greater_equal(u, self.dropout, out=keep)
            mask = ws.get("mask", y.shape, self.dtype)
            np.multiply(keep, 1.0 / (1.0 - self.dropout), out=mask)
            out = ws.get("dropped", y.shape, self.dtype)
            np.multiply(y, mask, out=out)
            ws.dropped = True
            return out
        return y

    def backward(self, dy, ws, params, grads, need_dx):
        if ws.dropped:
            dy *= ws.get("mask", dy.shape, self.dtype)
        dz = self.act.backward(dy, ws, grads, params)
        np.matmul(dz.T, ws.xf, out=grads[self.wname])
        np.sum(dz, axis=0, out=grads[self.bname])
        if not need_dx:
            return None
        n = dz.shape[0]
        dxf = ws.get("dxf", (n, self.in_features), self.dtype)
        np.matmul(dz, params[self.wname], out=dxf)
        if ws.in_ndim == 4:
            c, h, w = self.in_shape
            if ws.nchw:
                return dxf.reshape(n, c, h, w)
            dx = ws.get("dx", (n, h, w, c), self.dtype)
            np.copyto(dx, dxf.reshape(n, c, h, w).transpose(0, 2, 3, 1))
            return dx
        return dxf
