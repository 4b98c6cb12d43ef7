"""Pure array maths shared by the layers: output sizes, im2col / col2im, pooling windows,
stable softmax. No state, no parameters.

Feature maps are NHWC inside the engine (``(N, H, W, C)``): the channel axis is then the
contiguous one, so a window of an im2col copy is one run of ``kw * C`` numbers and a
convolution is one GEMM whose output is already the next layer's input. The network converts
from and to the user's NCHW at its edges. Python loops here run over kernel offsets only,
never over samples or pixels.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int = 0,
                     pad_after: int = 0) -> int:
    """floor((W - F + P_before + P_after) / S) + 1 (CS231n notes, "Convolutional Neural
    Networks")."""
    return (size + pad_before + pad_after - kernel) // stride + 1


def windows(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, ho: int, wo: int) -> np.ndarray:
    """Read-only view ``(N, Ho, Wo, kh, kw, C)`` of the windows of an NHWC array.

    Element ``[n, y, x, i, j, c]`` is ``xp[n, y*sh + i, x*sw + j, c]``; ``xp`` must already hold
    any padding and be large enough for ``ho`` x ``wo`` windows.
    """
    n, hp, wp, c = xp.shape
    if (ho - 1) * sh + kh > hp or (wo - 1) * sw + kw > wp:
        raise ValueError(f"windows {kh}x{kw}/{sh}x{sw} x {ho}x{wo} do not fit an input of "
                         f"{hp}x{wp}")
    s0, s1, s2, s3 = xp.strides
    return as_strided(xp, (n, ho, wo, kh, kw, c), (s0, s1 * sh, s2 * sw, s1, s2, s3),
                      writeable=False)


def im2col(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, ho: int, wo: int,
           out: np.ndarray | None = None) -> np.ndarray:
    """Copy the windows of an NHWC array into a column matrix ``(N*Ho*Wo, kh*kw*C)``.

    One strided copy; the column order (i, j, c) matches a weight reshaped from
    ``(out, in, kh, kw)`` by ``transpose(2, 3, 1, 0)``.
    """
    view = windows(xp, kh, kw, sh, sw, ho, wo)
    n, c = xp.shape[0], xp.shape[3]
    if out is None:
        out = np.empty(view.shape, dtype=xp.dtype)
    out6 = out.reshape(view.shape)
    np.copyto(out6, view)
    return out6.reshape(n * ho * wo, kh * kw * c)


def offset_ranges(size: int, out: int, kernel: int, stride: int, pad: int):
    """For each kernel offset i, the output positions whose tap lands inside the unpadded input.

    Yields ``(i, o0, o1, x0)``: outputs ``o0 .. o1-1`` read input ``x0, x0 + stride, ...``.
    """
    for i in range(kernel):
        # input index of output o at offset i is o*stride + i - pad; it must lie in [0, size)
        o0 = max(0, -((i - pad) // stride))               # ceil((pad - i) / stride)
        o1 = min(out, (size - 1 - i + pad) // stride + 1)
        if o1 > o0:
            yield i, o0, o1, o0 * stride + i - pad


def col2im(cols: np.ndarray, dx: np.ndarray, kh: int, kw: int, sh: int, sw: int, ho: int, wo: int,
           padding: tuple[int, int, int, int]) -> np.ndarray:
    """Scatter-add a column matrix back onto an unpadded NHWC gradient ``dx`` (overwritten).

    ``cols`` is ``(N*Ho*Wo, kh*kw*C)`` in the order of ``im2col``; taps that fell on padding are
    dropped, so ``dx`` needs no padded twin.
    """
    n, h, w, c = dx.shape
    pt, _, pl, _ = padding
    c6 = cols.reshape(n, ho, wo, kh, kw, c)
    dx.fill(0)
    rows = list(offset_ranges(h, ho, kh, sh, pt))
    colr = list(offset_ranges(w, wo, kw, sw, pl))
    for i, y0, y1, a0 in rows:
        ys = slice(a0, a0 + (y1 - y0 - 1) * sh + 1, sh)
        for j, x0, x1, b0 in colr:
            xs = slice(b0, b0 + (x1 - x0 - 1) * sw + 1, sw)
            dx[:, ys, xs, :] += c6[:, y0:y1, x0:x1, i, j, :]
    return dx


def paste(src: np.ndarray, dst: np.ndarray, top: int, left: int) -> None:
    """Copy NHWC ``src`` into ``dst`` at (top, left), clipping what falls outside ``dst``."""
    _, h, w, _ = src.shape
    _, hd, wd, _ = dst.shape
    sy0, sx0 = max(0, -top), max(0, -left)
    dy0, dx0 = max(0, top), max(0, left)
    hh = min(h - sy0, hd - dy0)
    ww = min(w - sx0, wd - dx0)
    if hh > 0 and ww > 0:
        np.copyto(dst[:, dy0:dy0 + hh, dx0:dx0 + ww, :], src[:, sy0:sy0 + hh, sx0:sx0 + ww, :],
                  casting="same_kind")


def pool_views(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ho: int, wo: int):
    """The kh*kw strided slices of an NHWC array, one per window offset, each (N, Ho, Wo, C).

    ``views[i*kw + j][n, y, x, c] = x[n, y*sh + i, x*sw + j, c]``: pooling is an elementwise
    reduction over these views, so no Python loop touches a pixel.
    """
    out = []
    for i in range(kh):
        for j in range(kw):
            out.append(x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :])
    return out


def windows_disjoint_cover(h: int, w: int, kh: int, kw: int, sh: int, sw: int, ho: int,
                           wo: int) -> bool:
    """True when pooling windows tile the input exactly (each input in exactly one window)."""
    return sh == kh and sw == kw and ho * kh == h and wo * kw == w


# ---- planar layout for layers with few channels --------------------------------------------
# With C = 1 or 6 channels an NHWC window row is only kw*C numbers long, and a copy or an add
# that moves runs that short is slow. The planar layout keeps each padded input map as one
# flat row (C, N, (Hp + 1) * Wp): the window at offset (i, j) of every output pixel is then
# the row shifted by i*Wp + j, one contiguous run of Ho*Wp numbers per map (stride 1). The
# price: each output row carries kw - 1 junk columns (x >= Wo), computed and then ignored, and
# one spare row per map keeps the shifted runs inside their own map.


def planar_shape(c: int, n: int, hp: int, wp: int) -> tuple[int, int, int]:
    return (c, n, (hp + 1) * wp)


def planar_interior(xq: np.ndarray, hp: int, wp: int, padding) -> np.ndarray:
    """The unpadded (C, N, H, W) view inside a planar buffer."""
    c, n, _ = xq.shape
    pt, pb, pl, pr = padding
    return xq.reshape(c, n, hp + 1, wp)[:, :, pt:hp - pb, pl:wp - pr]


def im2col_planar(xq: np.ndarray, kh: int, kw: int, ho: int, wp: int,
                  out: np.ndarray) -> np.ndarray:
    """Columns ``(kh*kw*C, N*Ho*Wp)`` (rows in (i, j, c) order) from a planar buffer, in one
    strided copy: the run of offset (i, j) starts i*Wp + j numbers into each map."""
    c, n, length = xq.shape
    run = ho * wp
    s = xq.strides
    view = as_strided(xq, (kh, kw, c, n, run), (wp * s[2], s[2], s[0], s[1], s[2]),
                      writeable=False)
    if (kh - 1) * wp + kw - 1 + run > length:
        raise ValueError("planar buffer too short for these windows")
    np.copyto(out.reshape(kh, kw, c, n, run), view)
    return out


def col2im_planar(dcols: np.ndarray, dxq: np.ndarray, kh: int, kw: int, ho: int,
                  wp: int) -> np.ndarray:
    """Add columns ``(kh*kw*C, N*Ho*Wp)`` back onto a planar gradient buffer (overwritten).

    Junk columns must hold zeros: they land on other pixels of the same map."""
    c, n, _ = dxq.shape
    run = ho * wp
    d3 = dcols.reshape(kh * kw, c, n, run)
    dxq.fill(0)
    for i in range(kh):
        for j in range(kw):
            off = i * wp + j
            dxq[:, :, off:off + run] += d3[i * kw + j]
    return dxq


def ones(n: int, dtype) -> np.ndarray:
    """A read-only vector of n ones (cached): ``ones @ A`` sums the rows of A through BLAS,
    several times faster than ``A.sum(axis=0)`` on a tall matrix."""
    key = np.dtype(dtype).str
    v = _ONES.get(key)
    if v is None or v.size < n:
        v = np.ones(max(n, 1024), dtype=dtype)
        v.flags.writeable = False
        _ONES[key] = v
    return v[:n]


_ONES: dict[str, np.ndarray] = {}


def sum_rows(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = a.sum(axis=0)`` for a C-contiguous 2-D ``a``, as a GEMV."""
    return np.matmul(ones(a.shape[0], a.dtype), a, out=out)


def matmul_nn_chunked(a: np.ndarray, b: np.ndarray, out: np.ndarray, chunk: int = 0
                      ) -> np.ndarray:
    """``out = a @ b`` for wide ``a (K, M)`` and tall ``b (M, F)``, summing products of slices
    of ``chunk`` along M when chunk > 0 (see ``matmul_tn``)."""
    m = a.shape[1]
    if chunk <= 0 or m <= chunk:
        return np.matmul(a, b, out=out)
    tmp = np.empty_like(out)
    np.matmul(a[:, :chunk], b[:chunk], out=out)
    for s in range(chunk, m, chunk):
        np.matmul(a[:, s:s + chunk], b[s:s + chunk], out=tmp)
        out += tmp
    return out


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax with the maximum subtracted first, so large logits cannot overflow."""
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    s = z - np.max(z, axis=axis, keepdims=True)
    s -= np.log(np.sum(np.exp(s), axis=axis, keepdims=True))
    return s


def wgrad_chunk(k: int, f: int) -> int:
    """Rows per slice for a weight gradient ``(K, M) @ (M, F)`` with a very long inner M: 0
    (no slicing) for K*F above 1024; else about 400,000 / (K*F) rows, a power of two, so each
    partial product stays in cache (measured: (25 x 50176) @ (50176 x 6) runs twice as fast
    in slices of 2048 rows, (27 x 131072) @ (131072 x 32) in slices of 512)."""
    kf = k * f
    if kf > 1024:
        return 0
    target = 400_000 / kf
    chunk = 256
    while chunk * 2 <= target * 1.414 and chunk < 8192:   # the nearest power of two
        chunk *= 2
    return chunk


def matmul_tn(a: np.ndarray, b: np.ndarray, out: np.ndarray, chunk: int = 0) -> np.ndarray:
    """``out = a.T @ b`` for tall ``a (M, K)`` and ``b (M, F)``.

    With ``chunk`` > 0 the long inner dimension M is cut into slices of ``chunk`` rows whose
    products are summed: BLAS runs (K x M) @ (M x F) with tiny K and F far below its peak, while
    several shorter products stay in cache. The order of the sums is fixed, so results are
    deterministic.
    """
    m = a.shape[0]
    if chunk <= 0 or m <= chunk:
        return np.matmul(a.T, b, out=out)
    tmp = np.empty_like(out)
    np.matmul(a[:chunk].T, b[:chunk], out=out)
    for s in range(chunk, m, chunk):
        np.matmul(a[s:s + chunk].T, b[s:s + chunk], out=tmp)
        out += tmp
    return out
