"""Convolution layers: the usual one (``combine: full``) and Bouvrie's learned combination of
feature maps (``combine: learned``).

Maps are NHWC inside the engine; weights keep PyTorch's layout in the parameter dict
(``(out, in, kh, kw)``) and are copied into the GEMM layout ``(kh*kw*in, out)`` once per
forward pass, which costs next to nothing beside the convolution itself.
"""

from __future__ import annotations

import numpy as np

from cnncli.nn import functional as F
from cnncli.nn import init
from cnncli.nn.base import Layer, Workspace

# The input gradient of a stride-1 layer with at least this many input channels is the full
# convolution of the padded output gradient with the flipped kernels (a copy and a GEMM);
# with fewer, col2im (a GEMM into columns, then kh*kw adds) in the planar layout, which
# measured 1.3x faster for C = 32 and 1.8x slower for C = 6 than the other way round.
# Strided layers use col2im in NHWC.
FULL_CONV_MIN_CHANNELS = 16
# With stride 1, window rows of at most this many numbers (kw * C) and few junk columns
# (kw - 1 per Wo), the forward columns are copied from the planar layout (functional.py),
# whose runs are whole rows of a map (LeNet's conv1: 1.25x faster).
PLANAR_MAX_RUN = 16
PLANAR_MAX_JUNK = 0.25


def _act_param_init(layer: Layer, shapes: dict, dtype) -> dict[str, np.ndarray]:
    out = {}
    for name, shape in shapes.items():
        if name.endswith(".slope"):
            out[name] = init.full(shape, 0.25, dtype)
    return out


class _ConvBase(Layer):
    kind = "conv"

    def __init__(self, spec, dtype):
        super().__init__(spec, dtype)
        self.channels, self.h, self.w = self.in_shape
        self.filters, self.ho, self.wo = self.out_shape
        self.maps = spec.maps
        self.kh, self.kw = spec.size
        self.sh, self.sw = spec.stride
        self.padding = tuple(spec.padding)
        pt, pb, pl, pr = self.padding
        self.hp, self.wp = self.h + pt + pb, self.w + pl + pr
        self.wname, self.bname = f"{self.name}.weight", f"{self.name}.bias"

    def _padded_input(self, x, ws: Workspace, nchw: bool) -> np.ndarray:
        """The NHWC input with its zero padding, copied into a persistent buffer when needed."""
        xin = x.transpose(0, 2, 3, 1) if nchw else x
        if (not any(self.padding) and xin.dtype == self.dtype and xin.flags.c_contiguous):
            return xin
        n = x.shape[0]
        pt, _, pl, _ = self.padding
        xp = ws.get("xp", (n, self.hp, self.wp, self.channels), self.dtype, zero=True)
        np.copyto(xp[:, pt:pt + self.h, pl:pl + self.w, :], xin, casting="unsafe")
        return xp

    def _to_input_layout(self, dx: np.ndarray, ws: Workspace) -> np.ndarray:
        return dx.transpose(0, 3, 1, 2) if ws.nchw else dx


class Conv2D(_ConvBase):
    """Convolution (cross-correlation, as in PyTorch) with stride, asymmetric zero padding and
    rectangular kernels, computed as im2col + one GEMM.

    x: ``(N, H, W, C)`` -> y: ``(N, H', W', filters)``; weight ``(maps, C, kh, kw)``, bias
    ``(maps,)`` where maps = filters x maxout pieces.

    Layouts, chosen from the shapes: the columns come from NHWC windows (runs of kw*C numbers)
    or, with stride 1 and short runs, from the planar layout of ``functional`` (runs of Ho*Wp);
    the input gradient is a full convolution of the output gradient with the flipped kernels
    (stride 1, C >= 16), a planar col2im (stride 1, fewer channels) or an NHWC col2im.
    """

    def __init__(self, spec, dtype):
        super().__init__(spec, dtype)
        self.k = self.kh * self.kw * self.channels
        stride1 = (self.sh, self.sw) == (1, 1)
        self.planar = (stride1 and self.kw * self.channels <= PLANAR_MAX_RUN
                       and (self.kw - 1) <= PLANAR_MAX_JUNK * self.wo)
        if stride1 and self.channels >= FULL_CONV_MIN_CHANNELS:
            self.dx_mode = "full"
        else:
            self.dx_mode = "planar" if stride1 else "nhwc"
        self._wint = np.empty((self.k, self.maps), self.dtype)
        self._wflip = (np.empty((self.kh * self.kw * self.maps, self.channels), self.dtype)
                       if self.dx_mode == "full" else None)
        self.row = self.wp if self.planar else self.wo
        self._btile = np.empty(self.row * self.maps, self.dtype)
        self.wgrad_chunk = F.wgrad_chunk(self.k, self.maps)

    def init_params(self, rng):
        shapes = self.param_shapes()
        spec = self.spec
        fan_in = self.channels * self.kh * self.kw
        fan_out = self.maps * self.kh * self.kw
        out = {
            self.wname: init.weights(shapes[self.wname], spec.init, fan_in, fan_out, rng,
                                     self.dtype),
            self.bname: init.zeros(shapes[self.bname], self.dtype),
        }
        out.update(_act_param_init(self, shapes, self.dtype))
        return {k: out[k] for k in shapes}

    def prepare(self, params):
        w = params[self.wname]
        np.copyto(self._wint.reshape(self.kh, self.kw, self.channels, self.maps),
                  w.transpose(2, 3, 1, 0))
        # the bias repeated along one output row: adding it to rows of (W' * maps) numbers
        # runs far faster than broadcasting a vector of a few maps over every pixel
        np.copyto(self._btile.reshape(-1, self.maps), params[self.bname])
        if self._wflip is not None:
            np.copyto(self._wflip.reshape(self.kh, self.kw, self.maps, self.channels),
                      w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1))

    def forward(self, x, ws, params, train, nchw=False):
        n = x.shape[0]
        ws.nchw = nchw
        if self.planar:
            xq = ws.get("xq", F.planar_shape(self.channels, n, self.hp, self.wp), self.dtype,
                        zero=True)
            np.copyto(F.planar_interior(xq, self.hp, self.wp, self.padding),
                      x.transpose(1, 0, 2, 3) if nchw else x.transpose(3, 0, 1, 2),
                      casting="unsafe")
            cols = ws.get("cols", (self.k, n * self.ho * self.wp), self.dtype)
            F.im2col_planar(xq, self.kh, self.kw, self.ho, self.wp, out=cols)
            z = ws.get("z", (n, self.ho, self.wp, self.maps), self.dtype)
            np.matmul(cols.T, self._wint, out=z.reshape(-1, self.maps))
        else:
            xp = self._padded_input(x, ws, nchw)
            cols = ws.get("cols", (n * self.ho * self.wo, self.k), self.dtype)
            F.im2col(xp, self.kh, self.kw, self.sh, self.sw, self.ho, self.wo, out=cols)
            z = ws.get("z", (n, self.ho, self.wo, self.maps), self.dtype)
            np.matmul(cols, self._wint, out=z.reshape(-1, self.maps))
        z2 = z.reshape(-1, self._btile.size)
        z2 += self._btile
        ws.cols = cols
        y = self.act.forward(z, ws, train, params)
        return y[:, :, :self.wo] if self.planar else y

    def backward(self, dy, ws, params, grads, need_dx):
        n = dy.shape[0]
        if self.planar:
            # back to rows of Wp pixels, junk columns zero: they then add nothing anywhere
            dyw = ws.get("dyw", (n, self.ho, self.wp, self.filters), self.dtype, zero=True)
            np.copyto(dyw[:, :, :self.wo], dy)
            dy = dyw
        dz = self.act.backward(dy, ws, grads, params)
        dz2 = dz.reshape(-1, self.maps)
        F.sum_rows(dz2, out=grads[self.bname])
        if self.planar:
            dw = ws.get("dw", (self.k, self.maps), self.dtype)
            F.matmul_nn_chunked(ws.cols, dz2, dw, chunk=self.wgrad_chunk)
            dwt = dw.T
        elif self.wgrad_chunk:
            dw = ws.get("dw", (self.k, self.maps), self.dtype)
            F.matmul_tn(ws.cols, dz2, dw, chunk=self.wgrad_chunk)
            dwt = dw.T
        else:   # a large product: (maps, M) @ (M, K) measured a little faster than the other way
            dwt = ws.get("dwt", (self.maps, self.k), self.dtype)
            np.matmul(dz2.T, ws.cols, out=dwt)
        np.copyto(grads[self.wname],
                  dwt.reshape(self.maps, self.kh, self.kw, self.channels).transpose(0, 3, 1, 2))
        if not need_dx:
            return None
        dx = ws.get("dx", (n, self.h, self.w, self.channels), self.dtype)
        if self.dx_mode == "full":
            # dL/dx is the full convolution of dL/dz with the flipped kernels: pad dz by
            # kh-1-pt above (and so on), then one im2col and one GEMM.
            pt, _, pl, _ = self.padding
            dzp = ws.get("dzp", (n, self.h + self.kh - 1, self.w + self.kw - 1, self.maps),
                         self.dtype, zero=True)
            F.paste(dz[:, :, :self.wo] if self.planar else dz, dzp, self.kh - 1 - pt,
                    self.kw - 1 - pl)
            cols = ws.shared.scratch(
                "cols_dx", (n * self.h * self.w, self.kh * self.kw * self.maps), self.dtype)
            F.im2col(dzp, self.kh, self.kw, 1, 1, self.h, self.w, out=cols)
            np.matmul(cols, self._wflip, out=dx.reshape(-1, self.channels))
        elif self.dx_mode == "planar":
            if self.planar:
                dzw2 = dz2
                dcols = ws.cols                  # spent once the weight gradient is done
            else:
                dzw = ws.get("dzw", (n, self.ho, self.wp, self.maps), self.dtype, zero=True)
                np.copyto(dzw[:, :, :self.wo], dz)
                dzw2 = dzw.reshape(-1, self.maps)
                dcols = ws.shared.scratch("cols_dx", (self.k, n * self.ho * self.wp), self.dtype)
            np.matmul(self._wint, dzw2.T, out=dcols)
            dxq = ws.get("dxq", F.planar_shape(self.channels, n, self.hp, self.wp), self.dtype)
            F.col2im_planar(dcols, dxq, self.kh, self.kw, self.ho, self.wp)
            np.copyto(dx, F.planar_interior(dxq, self.hp, self.wp, self.padding)
                      .transpose(1, 2, 3, 0))
        else:
            dcols = ws.cols      # the forward columns are spent once the weight gradient is done
            np.matmul(dz2, self._wint.T, out=dcols)
            F.col2im(dcols, dx, self.kh, self.kw, self.sh, self.sw, self.ho, self.wo,
                     self.padding)
        return self._to_input_layout(dx, ws)


class LearnedConv(_ConvBase):
    """Learned combinations of feature maps (Bouvrie 2006, "Notes on Convolutional Neural
    Networks", section 3.3): one kernel k_i per input map, and output map j is
    f(sum_i alpha_ij (x_i * k_i) + b_j) with alpha_.j = softmax over i of c_.j.

    Parameters: weight ``(C, 1, kh, kw)`` (the k_i), combine ``(maps, C)`` (c, row j holding
    the logits of output map j), bias ``(maps,)``.
    """

    def __init__(self, spec, dtype):
        super().__init__(spec, dtype)
        self.cname = f"{self.name}.combine"
        self.taps = self.kh * self.kw
        self._k = np.empty((self.taps, self.channels), self.dtype)
        self._alpha = np.empty((self.maps, self.channels), self.dtype)

    def init_params(self, rng):
        shapes = self.param_shapes()
        fan = self.kh * self.kw
        out = {
            self.wname: init.weights(shapes[self.wname], self.spec.init, fan, fan, rng, self.dtype),
            # random logits: equal ones would make every output map the same, for ever
            self.cname: rng.standard_normal(shapes[self.cname]).astype(self.dtype),
            self.bname: init.zeros(shapes[self.bname], self.dtype),
        }
        out.update(_act_param_init(self, shapes, self.dtype))
        return {k: out[k] for k in shapes}

    def prepare(self, params):
        np.copyto(self._k, params[self.wname].reshape(self.channels, self.taps).T)
        np.copyto(self._alpha, F.softmax(params[self.cname], axis=1))

    def forward(self, x, ws, params, train, nchw=False):
        n = x.shape[0]
        ws.nchw = nchw
        xp = self._padded_input(x, ws, nchw)
        views = F.pool_views(xp, self.kh, self.kw, self.sh, self.sw, self.ho, self.wo)
        y = ws.get("dwise", (n, self.ho, self.wo, self.channels), self.dtype)
        tmp = ws.get("tmp", y.shape, self.dtype)
        np.multiply(views[0], self._k[0], out=y)
        for t in range(1, self.taps):
            np.multiply(views[t], self._k[t], out=tmp)
            y += tmp
        z = ws.get("z", (n, self.ho, self.wo, self.maps), self.dtype)
        np.matmul(y.reshape(-1, self.channels), self._alpha.T, out=z.reshape(-1, self.maps))
        z += params[self.bname]
        ws.xp, ws.dwise = xp, y
        return self.act.forward(z, ws, train, params)

    def backward(self, dy, ws, params, grads, need_dx):
        dz = self.act.backward(dy, ws, grads, params)
        n = dz.shape[0]
        dz2 = dz.reshape(-1, self.maps)
        y2 = ws.dwise.reshape(-1, self.channels)
        np.sum(dz2, axis=0, out=grads[self.bname])
        alpha = self._alpha
        dalpha = dz2.T @ y2                                  # (maps, C)
        # softmax Jacobian, row by row: dc = alpha * (dalpha - <alpha, dalpha>)
        np.multiply(alpha, dalpha - np.sum(alpha * dalpha, axis=1, keepdims=True),
                    out=grads[self.cname])
        dyw = ws.get("ddwise", (n, self.ho, self.wo, self.channels), self.dtype)
        np.matmul(dz2, alpha, out=dyw.reshape(-1, self.channels))
        views = F.pool_views(ws.xp, self.kh, self.kw, self.sh, self.sw, self.ho, self.wo)
        tmp = ws.get("tmp", dyw.shape, self.dtype)
        dk = np.empty((self.taps, self.channels), self.dtype)
        for t in range(self.taps):
            np.multiply(views[t], dyw, out=tmp)
            np.sum(tmp.reshape(-1, self.channels), axis=0, out=dk[t])
        np.copyto(grads[self.wname], dk.T.reshape(self.channels, 1, self.kh, self.kw))
        if not need_dx:
            return None
        dx = ws.get("dx", (n, self.h, self.w, self.channels), self.dtype)
        dx.fill(0)
        pt, _, pl, _ = self.padding
        rows = list(F.offset_ranges(self.h, self.ho, self.kh, self.sh, pt))
        colr = list(F.offset_ranges(self.w, self.wo, self.kw, self.sw, pl))
        for i, y0, y1, a0 in rows:
            ys = slice(a0, a0 + (y1 - y0 - 1) * self.sh + 1, self.sh)
            for j, x0, x1, b0 in colr:
                xs = slice(b0, b0 + (x1 - x0 - 1) * self.sw + 1, self.sw)
                part = tmp[:, y0:y1, x0:x1, :]
                np.multiply(dyw[:, y0:y1, x0:x1, :], self._k[i * self.kw + j], out=part)
                dx[:, ys, xs, :] += part
        return self._to_input_layout(dx, ws)

    def penalty(self, params):
        """The sparsity penalty on alpha and its gradient with respect to c, or None.

        ``entropy``: lambda * sum_j H(alpha_.j); ``l1``: lambda * sum_ij |alpha_ij| (Bouvrie
        2006, section 3.3.1), whose gradient through the softmax is zero (sum_i alpha_ij = 1).
        """
        lam = float(self.spec.sparsity)
        if lam == 0.0:
            return None
        c = params[self.cname].astype(np.float64)
        logp = F.log_softmax(c, axis=1)
        alpha = np.exp(logp)
        if self.spec.sparsity_penalty == "l1":
            value = lam * float(np.abs(alpha).sum())
            g = np.sign(alpha)                               # d|alpha|/dalpha
            grad = lam * alpha * (g - np.sum(alpha * g, axis=1, keepdims=True))
        elif self.spec.sparsity_penalty == "entropy":
            ent = -np.sum(alpha * logp, axis=1, keepdims=True)   # H(alpha_.j), one per row j
            value = lam * float(ent.sum())
            grad = -lam * alpha * (logp + ent)
        else:
            from cnncli.errors import SpecError

            raise SpecError(f"{self.name}: unknown sparsity_penalty "
                            f"{self.spec.sparsity_penalty!r}; expected 'entropy' or 'l1'")
        return value, {self.cname: grad.astype(self.dtype)}
