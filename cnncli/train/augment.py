"""Random geometric and noise augmentation of a batch, vectorised over the whole batch.

Each sample gets its own affine map (rotation, scale, shift about the image centre). The
output is sampled by inverse mapping with bilinear interpolation: for every output pixel
the source position is computed for all samples at once and the four neighbours are
gathered with fancy indexing; pixels that map outside the image read 0 (black, the
background of light-on-dark digits). Gaussian noise is added last and the result
clipped to [0, 1].

Random numbers are drawn per sample in sample order, in one call per kind (the affine
parameters for the whole batch, then the noise), so the same generator state always
gives the same batch.
"""

from __future__ import annotations

import numpy as np

from cnncli.spec.model import Augment


def draw_params(n: int, spec: Augment, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-sample affine parameters: angle (degrees), scale, shift (dy, dx pixels).

    One call to ``rng.random((n, 4))``; row i belongs to sample i.
    """
    u = rng.random((n, 4)) * 2.0 - 1.0                 # uniform in [-1, 1)
    return {
        "angle": u[:, 0] * spec.rotate,
        "scale": 1.0 + u[:, 1] * spec.scale,
        "dy": u[:, 2] * spec.shift,
        "dx": u[:, 3] * spec.shift,
    }


def warp_batch(x: np.ndarray, angle: np.ndarray, scale: np.ndarray, dy: np.ndarray,
               dx: np.ndarray) -> np.ndarray:
    """Apply one affine map per sample to x (N, C, H, W); returns a new array of x's dtype.

    The map rotates by ``angle`` degrees (counter-clockwise on screen), scales by
    ``scale`` about the image centre, then shifts by (dy, dx) pixels (down, right).
    """
    n, c, h, w = x.shape
    dt = x.dtype
    th = np.radians(np.asarray(angle, dtype=np.float64))
    inv_s = 1.0 / np.asarray(scale, dtype=np.float64)
    cos = (np.cos(th) * inv_s).astype(dt)[:, None, None]
    sin = (np.sin(th) * inv_s).astype(dt)[:, None, None]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    # output pixel p -> source q = R(-theta) (p - centre - shift) / s + centre,
    # rotation counter-clockwise on screen (y points down)
    ry = (np.arange(h, dtype=dt) - dt.type(cy))[None, :, None] - np.asarray(dy, dt)[:, None, None]
    rx = (np.arange(w, dtype=dt) - dt.type(cx))[None, None, :] - np.asarray(dx, dt)[:, None, None]
    sy = cos * ry + sin * rx + dt.type(cy)                       # (n, h, w)
    sx = cos * rx - sin * ry + dt.type(cx)
    y0 = np.floor(sy)
    x0 = np.floor(sx)
    fy = sy - y0
    fx = sx - x0
    # a one-pixel zero border: every out-of-range corner is clamped onto it and reads 0;
    # channels last, so one gathered row holds all channels of a pixel
    hp, wp = h + 2, w + 2
    padded = np.zeros((n, hp, wp, c), dtype=dt)
    padded[:, 1:-1, 1:-1, :] = x.transpose(0, 2, 3, 1)
    base = (np.arange(n, dtype=np.intp) * (hp * wp))[:, None, None]
    yi0 = np.clip(y0, -1, h).astype(np.intp) + 1
    xi0 = np.clip(x0, -1, w).astype(np.intp) + 1
    yi1 = np.clip(y0 + 1, -1, h).astype(np.intp) + 1
    xi1 = np.clip(x0 + 1, -1, w).astype(np.intp) + 1
    r0 = base + yi0 * wp
    r1 = base + yi1 * wp
    if c == 1:
        # one channel: gather from the flat array, several times faster than row gathers
        flat = padded.reshape(-1)

        def at(i: np.ndarray) -> np.ndarray:
            return flat.take(i)[..., None]                    # (n, h, w, 1)
    else:
        rows = padded.reshape(n * hp * wp, c)

        def at(i: np.ndarray) -> np.ndarray:
            return np.take(rows, i, axis=0)                   # (n, h, w, c)

    fx = fx[..., None]
    fy = fy[..., None]

    top = at(r0 + xi0)
    top += (at(r0 + xi1) - top) * fx
    bottom = at(r1 + xi0)
    bottom += (at(r1 + xi1) - bottom) * fx
    out = top
    out += (bottom - top) * fy
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=dt)


def augment_batch(x: np.ndarray, spec: Augment, rng: np.random.Generator) -> np.ndarray:
    """Randomly rotate, scale, shift and add noise to a batch x (N, C, H, W) in [0, 1].

    Returns a new float array of x's dtype; returns ``x`` itself, untouched and without
    drawing random numbers, when every option of ``spec`` is 0.
    """
    if not spec.active:
        return x
    out = x
    if spec.rotate or spec.scale or spec.shift:
        p = draw_params(x.shape[0], spec, rng)
        out = warp_batch(x, p["angle"], p["scale"], p["dy"], p["dx"])
    if spec.noise:
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        out = out + (noise * np.float32(spec.noise)).astype(x.dtype, copy=False)
        np.clip(out, 0.0, 1.0, out=out)
    return out
