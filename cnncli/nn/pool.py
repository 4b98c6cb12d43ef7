"""Pooling layers: max, mean and Bouvrie's trainable subsampling.

Each is an elementwise reduction over the kh*kw strided views of the NHWC input (one per
window offset), so windows may overlap (3/2) and the loops run over offsets only.
"""

from __future__ import annotations

import numpy as np

from cnncli.errors import SpecError
from cnncli.nn import functional as F
from cnncli.nn import init
from cnncli.nn.activations import Identity
from cnncli.nn.base import Layer
from cnncli.spec.model import Activation


class _PoolBase(Layer):
    kind = "pool"

    def __init__(self, spec, dtype):
        super().__init__(spec, dtype)
        self.channels, self.h, self.w = self.in_shape
        _, self.ho, self.wo = self.out_shape
        self.kh, self.kw = spec.size
        self.sh, self.sw = spec.stride
        self.overlap = self.sh < self.kh or self.sw < self.kw
        self.tiles = F.windows_disjoint_cover(self.h, self.w, self.kh, self.kw, self.sh, self.sw,
                                              self.ho, self.wo)

    def _views(self, x):
        return F.pool_views(x, self.kh, self.kw, self.sh, self.sw, self.ho, self.wo)

    def _input(self, x, ws, nchw):
        ws.nchw = nchw
        return x.transpose(0, 2, 3, 1) if nchw else x

    def _dx(self, n, ws):
        dx = ws.get("dx", (n, self.h, self.w, self.channels), self.dtype)
        if not self.tiles:
            dx.fill(0)
        return dx

    def _spread(self, g, dx, ws):
        """Add ``g`` (N, Ho, Wo, C) to every position of its window in ``dx``."""
        for v in self._views(dx):
            if self.overlap:
                v += g
            else:
                np.copyto(v, g)

    def _output(self, dx, ws):
        return dx.transpose(0, 3, 1, 2) if ws.nchw else dx


class MaxPool(_PoolBase):
    """Max pooling; the gradient of a window goes to one position, the first maximum in
    row-major window order. x: ``(N, H, W, C)`` -> ``(N, H', W', C)``."""

    def __init__(self, spec, dtype):
        super().__init__(spec, dtype)
        self.act = Identity(Activation("none"), self.channels, self.name)
        # set by the network when the previous layer's ReLU leaves its backward to this layer
        self.relu_input = False
        # max over rows, then over columns: faster for few channels (short runs) and for
        # overlapping windows; one pass over the kh*kw views is faster for wide maps
        self.separable = self.channels < 16 or self.kh * self.kw > 4

    def forward(self, x, ws, params, train, nchw=False):
        x = self._input(x, ws, nchw)
        views = self._views(x)
        y = ws.get("y", (x.shape[0], self.ho, self.wo, self.channels), self.dtype)
        if ws.freeze is not None:
            stack = np.stack(views, axis=0)
            np.copyto(y, np.take_along_axis(stack, ws.freeze[0][None], axis=0)[0])
        elif len(views) == 1:
            np.copyto(y, views[0], casting="unsafe")
        elif self.separable and self.kh > 1 and self.kw > 1:
            # rows first: those slices keep whole rows (W*C numbers) contiguous, so only the
            # column pass runs in steps of C numbers
            r = ws.get("rows", (x.shape[0], self.ho, self.w, self.channels), self.dtype)
            rows = [x[:, i:i + (self.ho - 1) * self.sh + 1:self.sh] for i in range(self.kh)]
            np.maximum(rows[0], rows[1], out=r)
            for v in rows[2:]:
                np.maximum(r, v, out=r)
            cols = [r[:, :, j:j + (self.wo - 1) * self.sw + 1:self.sw] for j in range(self.kw)]
            np.maximum(cols[0], cols[1], out=y)
            for v in cols[2:]:
                np.maximum(y, v, out=y)
        else:
            np.maximum(views[0], views[1], out=y)
            for v in views[2:]:
                np.maximum(y, v, out=y)
        ws.x, ws.y = x, y
        return y

    def backward(self, dy, ws, params, grads, need_dx):
        if not need_dx:
            return None
        n = dy.shape[0]
        y = ws.y
        dx = self._dx(n, ws)
        views = self._views(ws.x)
        dviews = self._views(dx)
        mask = ws.get("eq", y.shape, np.bool_)
        if self.relu_input:
            # the layer before applies ReLU and skips its own backward: its derivative at the
            # winning position is (y > 0), applied here on the smaller pooled map
            np.greater(y, 0, out=mask)
            np.multiply(dy, mask, out=dy)
        taken = ws.get("taken", y.shape, np.bool_)
        tmp = ws.get("tmp", y.shape, self.dtype) if self.overlap else None
        last = len(views) - 1
        # a window's gradient goes to its first maximum in offset order; `taken` marks the
        # windows already served (bool work on the contiguous pooled map is cheap, unlike
        # another pass over the strided views)
        for k, v in enumerate(views):
            np.equal(v, y, out=mask)
            if k > 0:
                np.greater(mask, taken, out=mask)          # equal and not yet served
            if k < last:
                if k == 0:
                    np.copyto(taken, mask)
                else:
                    np.logical_or(taken, mask, out=taken)
            if self.overlap:
                np.multiply(dy, mask, out=tmp)
                dviews[k] += tmp
            else:
                np.multiply(dy, mask, out=dviews[k])
        return self._output(dx, ws)

    def patterns(self, ws):
        stack = np.stack(self._views(ws.x), axis=0)
        return [np.argmax(stack, axis=0)]


class MeanPool(_PoolBase):
    """Mean over each window. x: ``(N, H, W, C)`` -> ``(N, H', W', C)``."""

    def __init__(self, spec, dtype):
        super().__init__(spec, dtype)
        self.act = Identity(Activation("none"), self.channels, self.name)

    def _window_sum(self, x, ws, key):
        views = self._views(x)
        s = ws.get(key, (x.shape[0], self.ho, self.wo, self.channels), self.dtype)
        if len(views) == 1:
            np.copyto(s, views[0], casting="unsafe")
        else:
            np.add(views[0], views[1], out=s)
            for v in views[2:]:
                s += v
        return s

    def forward(self, x, ws, params, train, nchw=False):
        x = self._input(x, ws, nchw)
        y = self._window_sum(x, ws, "y")
        y *= 1.0 / (self.kh * self.kw)
        return y

    def backward(self, dy, ws, params, grads, need_dx):
        if not need_dx:
            return None
        dx = self._dx(dy.shape[0], ws)
        g = ws.get("g", dy.shape, self.dtype)
        np.multiply(dy, 1.0 / (self.kh * self.kw), out=g)
        self._spread(g, dx, ws)
        return self._output(dx, ws)


class Subsample(MeanPool):
    """Bouvrie's down-sampling layer (Bouvrie 2006, section 3.2): x_j = f(beta_j down(x_j) + b_j),
    down = the sum over each window, with a trainable beta (starting at 1/(kh*kw), so the layer
    starts as mean pooling) and bias b per map, and its own activation (default none)."""

    def __init__(self, spec, dtype):
        _PoolBase.__init__(self, spec, dtype)
        if self.act.multiplier != 1:
            raise SpecError(f"{self.name}: maxout is not available on a subsample pool")
        self.beta_name, self.bname = f"{self.name}.beta", f"{self.name}.bias"

    def init_params(self, rng):
        shapes = self.param_shapes()
        out = {}
        for name, shape in shapes.items():
            if name == self.beta_name:
                out[name] = init.full(shape, 1.0 / (self.kh * self.kw), self.dtype)
            elif name.endswith(".slope"):
                out[name] = init.full(shape, 0.25, self.dtype)
            else:
                out[name] = init.zeros(shape, self.dtype)
        return out

    def forward(self, x, ws, params, train, nchw=False):
        x = self._input(x, ws, nchw)
        s = self._window_sum(x, ws, "down")
        z = ws.get("z", s.shape, self.dtype)
        np.multiply(s, params[self.beta_name], out=z)
        z += params[self.bname]
        ws.down = s
        return self.act.forward(z, ws, train, params)

    def backward(self, dy, ws, params, grads, need_dx):
        dz = self.act.backward(dy, ws, grads, params)
        c = self.channels
        np.sum(dz.reshape(-1, c), axis=0, out=grads[self.bname])
        g = ws.get("g", dz.shape, self.dtype)
        np.multiply(dz, ws.down, out=g)
        np.sum(g.reshape(-1, c), axis=0, out=grads[self.beta_name])
        if not need_dx:
            return None
        np.multiply(dz, params[self.beta_name], out=g)
        dx = self._dx(dz.shape[0], ws)
        self._spread(g, dx, ws)
        return self._output(dx, ws)
