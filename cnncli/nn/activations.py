"""Activation functions, applied in place on a layer's pre-activation buffer.

Every activation acts on the last axis as the channel (or unit) axis: NHWC maps
``(N, H, W, C)`` and FC outputs ``(N, units)`` alike. ``forward`` may overwrite its input and
returns the output; ``backward`` may overwrite the incoming gradient and returns the
gradient of the pre-activation. What backward needs is kept in the layer's workspace, and only
when training.
"""

from __future__ import annotations

import numpy as np

from cnncli.spec.model import Activation


class Identity:
    """``none``: the output is the pre-activation."""

    type = "none"
    multiplier = 1

    def __init__(self, spec: Activation, channels: int, layer: str):
        self.spec = spec
        self.channels = channels
        self.layer = layer

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def forward(self, z, ws, train, params=None):
        return z

    def backward(self, dy, ws, grads=None, params=None):
        return dy

    def pattern(self, ws):
        """The discrete state of the activation (which branch each unit took), or None."""
        return None


class ReLU(Identity):
    type = "relu"
    # True when the next layer (max pooling) applies this derivative on its smaller output
    deferred = False

    def forward(self, z, ws, train, params=None):
        if ws.freeze is not None:
            np.multiply(z, ws.freeze[0], out=z)
        else:
            np.maximum(z, 0, out=z)
        ws.act_y = z
        return z

    def backward(self, dy, ws, grads=None, params=None):
        if self.deferred:
            return dy
        mask = ws.get("act_mask", dy.shape, np.bool_)
        np.greater(ws.act_y, 0, out=mask)
        np.multiply(dy, mask, out=dy)
        return dy

    def pattern(self, ws):
        return ws.act_y > 0


class LeakyReLU(Identity):
    """y = z for z > 0, alpha * z otherwise."""

    type = "leaky_relu"

    def forward(self, z, ws, train, params=None):
        fac = ws.get("act_fac", z.shape, z.dtype)
        fac.fill(self.spec.alpha)
        np.copyto(fac, 1, where=z > 0 if ws.freeze is None else ws.freeze[0])
        np.multiply(z, fac, out=z)
        ws.act_fac = fac
        return z

    def backward(self, dy, ws, grads=None, params=None):
        np.multiply(dy, ws.act_fac, out=dy)
        return dy

    def pattern(self, ws):
        return ws.act_fac == 1


class PReLU(Identity):
    """y = z for z > 0, a_c * z otherwise, with a learned slope a per channel (He et al. 2015)."""

    type = "prelu"

    def param_shapes(self):
        return {f"{self.layer}.slope": (self.channels,)}

    def forward(self, z, ws, train, params=None):
        a = params[f"{self.layer}.slope"]
        zneg = ws.get("act_zneg", z.shape, z.dtype)
        if ws.freeze is not None:
            np.multiply(z, ws.freeze[0], out=zneg)
            z -= zneg
        else:
            np.minimum(z, 0, out=zneg)
            np.maximum(z, 0, out=z)
        tmp = ws.get("act_tmp", z.shape, z.dtype)
        np.multiply(zneg, a, out=tmp)
        z += tmp
        ws.act_zneg = zneg
        return z

    def backward(self, dy, ws, grads=None, params=None):
        a = params[f"{self.layer}.slope"]
        zneg = ws.act_zneg
        tmp = ws.get("act_tmp", dy.shape, dy.dtype)
        np.multiply(dy, zneg, out=tmp)
        np.sum(tmp.reshape(-1, self.channels), axis=0, out=grads[f"{self.layer}.slope"])
        np.multiply(dy, a, out=dy, where=zneg < 0)
        return dy

    def pattern(self, ws):
        return ws.act_zneg < 0


class Sigmoid(Identity):
    type = "sigmoid"

    def forward(self, z, ws, train, params=None):
        # 1 / (1 + exp(-z)) written as (1 + tanh(z/2)) / 2: no overflow for any z
        z *= 0.5
        np.tanh(z, out=z)
        z += 1
        z *= 0.5
        ws.act_y = z
        return z

    def backward(self, dy, ws, grads=None, params=None):
        y = ws.act_y
        tmp = ws.get("act_tmp", dy.shape, dy.dtype)
        np.subtract(1, y, out=tmp)
        tmp *= y
        dy *= tmp
        return dy


class Tanh(Identity):
    type = "tanh"

    def forward(self, z, ws, train, params=None):
        np.tanh(z, out=z)
        ws.act_y = z
        return z

    def backward(self, dy, ws, grads=None, params=None):
        y = ws.act_y
        tmp = ws.get("act_tmp", dy.shape, dy.dtype)
        np.multiply(y, y, out=tmp)
        np.subtract(1, tmp, out=tmp)
        dy *= tmp
        return dy


class Maxout(Identity):
    """Maxout (Goodfellow et al. 2013): output j is the largest of maps j*P .. j*P + P - 1.

    The layer computes ``channels * pieces`` pre-activation maps; the gradient goes to the
    first largest piece of each group.
    """

    type = "maxout"

    def __init__(self, spec, channels, layer):
        super().__init__(spec, channels, layer)
        self.multiplier = spec.pieces

    def forward(self, z, ws, train, params=None):
        p = self.multiplier
        zr = z.reshape(z.shape[:-1] + (self.channels, p))
        y = ws.get("act_out", z.shape[:-1] + (self.channels,), z.dtype)
        if ws.freeze is not None:
            np.copyto(y, np.take_along_axis(zr, ws.freeze[0][..., None], axis=-1)[..., 0])
        elif p == 1:
            np.copyto(y, zr[..., 0])
        else:
            np.maximum(zr[..., 0], zr[..., 1], out=y)
            for k in range(2, p):
                np.maximum(y, zr[..., k], out=y)
        ws.act_z = z
        ws.act_y = y
        return y

    def backward(self, dy, ws, grads=None, params=None):
        p = self.multiplier
        z, y = ws.act_z, ws.act_y
        zr = z.reshape(z.shape[:-1] + (self.channels, p))
        dz = ws.get("act_dz", z.shape, z.dtype)
        dzr = dz.reshape(zr.shape)
        taken = ws.get("act_taken", y.shape, np.bool_)
        mask = ws.get("act_eq", y.shape, np.bool_)
        for k in range(p):
            np.equal(zr[..., k], y, out=mask)
            if k == 0:
                np.copyto(taken, mask)
            else:
                np.greater(mask, taken, out=mask)      # equal and not yet taken
                np.logical_or(taken, mask, out=taken)
            np.multiply(dy, mask, out=dzr[..., k])
        return dz

    def pattern(self, ws):
        z = ws.act_z
        return np.argmax(z.reshape(z.shape[:-1] + (self.channels, self.multiplier)), axis=-1)


ACTIVATIONS = {
    cls.type: cls for cls in (Identity, ReLU, LeakyReLU, PReLU, Sigmoid, Tanh, Maxout)
}


def make_activation(spec: Activation, channels: int, layer: str) -> Identity:
    """The activation object for a layer; ``channels`` counts outputs after maxout."""
    try:
        cls = ACTIVATIONS[spec.type]
    except KeyError:
        from cnncli.errors import SpecError

        raise SpecError(
            f"{layer}: unknown activation {spec.type!r}; expected one of "
            + ", ".join(sorted(ACTIVATIONS))
        ) from None
    return cls(spec, channels, layer)
