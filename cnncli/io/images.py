"""Reading pictures and bringing them to a model's input. The only module that imports Pillow.

``read_image`` accepts PNG, JPEG, BMP, GIF, TIFF and WebP, sniffed from the content (the
file name's extension is not trusted). Limits are checked before decoding: the file size
(``MAX_IMAGE_BYTES``) before reading, the pixel count (``MAX_IMAGE_PIXELS``) from the
header before the pixels are decoded; Pillow's decompression-bomb warning is an error here.
The result is float32 in [0, 1]: (H, W) for grey pictures, (H, W, 3) for colour ones, with
the EXIF orientation applied, 16-bit pixels scaled (65535 -> 1.0, never clipped), palette,
CMYK and alpha converted (alpha composited over white) and the first frame of an animation.

``frame_digit`` frames a picture of a digit as MNIST framed its digits (LeCun et al. 1998):
light ink on black, the digit scaled to fit a 20x20 box with its aspect ratio kept, and
placed in a 28x28 field with its centre of mass at the centre. ``frame_resize`` brings any
picture to a (C, H, W) input by converting channels and resizing.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnncli.errors import DataError
from cnncli.io._fs import read_regular

#: Files larger than this are refused before they are read (bytes).
MAX_IMAGE_BYTES = 64 * 1024**2
#: Pictures with more pixels than this are refused before they are decoded.
MAX_IMAGE_PIXELS = 64_000_000
#: Pillow plugins allowed to identify a file (the content decides, not the name).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
#: File name endings the image-folder reader and ``infer`` on a folder pick up.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

_FORMAT_NAMES = "a PNG, JPEG, BMP, GIF, TIFF or WebP image"
# ITU-R BT.601 luma, the weights Pillow's own RGB -> L conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Work on pictures at most this many pixels on the long side when framing a digit
# (four times the 28-pixel output: nothing finer survives the final scaling).
_FRAME_WORK = 112


def _sniff(data: bytes) -> str:
    """What a file that Pillow could not identify seems to be, for the message."""
    head = data[:16]
    if head.startswith(b"\x00\x00\x00\x0cjP  ") or head.startswith(b"\xff\x4f\xff\x51"):
        return "a JPEG 2000 image"
    if head[:4] in (b"GIF8",) or head.startswith(b"\x89PNG"):
        return "a damaged image"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK"):
        return "a zip archive"
    try:
        head.decode("utf-8")
        if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
            return "text"
    except UnicodeDecodeError:
        pass
    return "an unknown format"


@contextlib.contextmanager
def _pixel_limit(limit: int):
    """Pillow's own limit set to ``limit`` while decoding (restored afterwards)."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _open_error(exc: Exception, data: bytes, p: str) -> DataError:
    """The DataError for an exception raised while Pillow opens a picture."""
    if isinstance(exc, DataError):
        return exc
    if isinstance(exc, UnidentifiedImageError):
        return DataError(f"not {_FORMAT_NAMES} (the content looks like {_sniff(data)})", path=p)
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _bomb(exc, p)
    return DataError(f"corrupt image ({_reason(exc)})", path=p)


def load_image(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a picture: (float32 array in [0, 1], what was found and done, JSON-serialisable).

    The array is (H, W) for grey pictures and (H, W, 3) for colour ones.
    """
    p = os.fspath(path)
    data = read_regular(p, MAX_IMAGE_BYTES, "image")
    if not data:
        raise DataError("image is empty (0 bytes)", path=p)
    limit = MAX_IMAGE_PIXELS
    with _pixel_limit(limit), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")             # Pillow's notes on damaged metadata
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=FORMATS)
        except Exception as exc:  # Pillow's plugins raise many types on malformed headers
            raise _open_error(exc, data, p) from None
        with im:
            w, h = im.size
            if w * h > limit:
                raise DataError(
                    f"image too large ({w}x{h} = {w * h} pixels > limit {limit})", path=p
                )
            if w == 0 or h == 0:
                raise DataError(f"image has no pixels ({w}x{h})", path=p)
            meta: dict[str, Any] = {"format": im.format, "mode": im.mode, "size": [w, h]}
            try:
                animated = bool(getattr(im, "is_animated", False))
                if animated:
                    im.seek(0)
                im.load()
                orientation = int(im.getexif().get(0x0112, 1) or 1)
                if orientation != 1:
                    im = ImageOps.exif_transpose(im)
                arr, alpha = _to_float(im, p)
            except DataError:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise _bomb(exc, p) from None
            except Exception as exc:  # truncated or corrupt pixel data, bad EXIF, ...
                raise DataError(f"corrupt image ({_reason(exc)})", path=p) from None
    meta["orientation"] = orientation
    meta["animated"] = animated
    meta["alpha"] = alpha
    meta["shape"] = list(arr.shape)
    notes = sorted({str(w.message) for w in caught})
    if notes:
        meta["warnings"] = notes[:5]
    return arr, meta


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A picture as float32 in [0, 1]: (H, W) grey or (H, W, 3) RGB. See ``load_image``."""
    return load_image(path)[0]


def _bomb(exc: BaseException, p: str) -> DataError:
    """Pillow's decompression-bomb check, as cnncli's own message."""
    m = re.search(r"\((\d+) pixels\)", str(exc))
    found = f"{m.group(1)} pixels" if m else "too many pixels"
    return DataError(f"image too large ({found} > limit {MAX_IMAGE_PIXELS})", path=p)


def _reason(exc: BaseException) -> str:
    msg = str(exc).strip()
    if not msg:
        return type(exc).__name__
    return msg[:200]


def _composite(rgba: np.ndarray) -> np.ndarray:
    """Colour channels (all but the last) over a white background, alpha in the last."""
    a = rgba[..., -1:]
    return rgba[..., :-1] * a + (1.0 - a)


def _to_float(im: Image.Image, p: str) -> tuple[np.ndarray, bool]:
    mode = im.mode
    if mode == "1" or mode == "L":
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0, False
    if mode.startswith("I;16"):
        a = np.asarray(im)
        return a.astype(np.float32) / 65535.0, False
    if mode == "I":
        a = np.asarray(im)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise DataError(
                f"32-bit integer pixels from {lo} to {hi}; expected 0..65535", path=p
            )
        return a.astype(np.float32) / 65535.0, False
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if not np.isfinite(a).all():
            raise DataError("non-finite floating-point pixel values", path=p)
        lo, hi = float(a.min()), float(a.max())
        if lo < 0:
            raise DataError(f"negative floating-point pixel values (down to {lo:g})", path=p)
        for top in (1.0, 255.0, 65535.0):
            if hi <= top:
                return (a / top).astype(np.float32), False
        raise DataError(f"floating-point pixel values up to {hi:g}; expected at most 65535",
                        path=p)
    if mode in ("LA", "La"):
        la = np.asarray(im.convert("LA"), dtype=np.float32) / 255.0
        return _composite(la)[..., 0].astype(np.float32), True
    if mode == "P":
        has_alpha = "transparency" in im.info or (im.palette is not None
                                                  and im.palette.mode == "RGBA")
        if has_alpha:
            rgb = _composite(np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0)
        else:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        rgb = rgb.astype(np.float32)
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return np.ascontiguousarray(rgb[..., 0]), has_alpha
        return rgb, has_alpha
    if mode in ("RGBA", "RGBa", "PA"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        return _composite(rgba).astype(np.float32), True
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0, False


# ---- bringing pictures to a model's input -------------------------------------------------


def to_grey(img: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) -> (H, W) float32 (BT.601 luma for colour)."""
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 2:
        return a
    if a.ndim == 3 and a.shape[2] == 3:
        return a @ _LUMA
    if a.ndim == 3 and a.shape[2] == 1:
        return a[..., 0]
    raise ValueError(f"expected an (H, W) or (H, W, 3) picture, got shape {a.shape}")


def resize_plane(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize one float32 (H, W) plane to ``hw`` with an antialiased bilinear filter."""
    h, w = int(hw[0]), int(hw[1])
    if a.shape == (h, w):
        return np.asarray(a, dtype=np.float32)
    im = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))
    out = im.resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def frame_resize(img: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A picture as a (C, H, W) float32 model input: channels converted, then resized.

    Grey becomes RGB by repeating it; RGB becomes grey by BT.601 luma. The picture is
    stretched to (H, W) (no cropping), as training images of another size are.
    """
    c, h, w = (int(s) for s in shape)
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
        a = np.moveaxis(a, 0, -1)             # accept (C, H, W) too
    if c == 1:
        planes = [to_grey(a)]
    elif c == 3:
        if a.ndim == 2 or a.shape[2] == 1:
            g = a if a.ndim == 2 else a[..., 0]
            planes = [g, g, g]
        else:
            planes = [a[..., 0], a[..., 1], a[..., 2]]
    else:
        raise DataError(f"cannot bring a grey or RGB picture to {c} channels")
    out = np.stack([resize_plane(pl, (h, w)) for pl in planes])
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _otsu(v: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (Otsu 1979) of values in [0, 1]: maximal between-class variance."""
    hist = np.bincount(np.minimum((v.ravel() * bins).astype(np.int64), bins - 1),
                       minlength=bins).astype(np.float64)
    centres = (np.arange(bins) + 0.5) / bins
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    k = int(np.argmax(between[:-1]))
    return float((k + 1) / bins)


def _shift(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """``a`` moved by (dy, dx), uncovered cells set to ``fill``."""
    out = np.full_like(a, fill)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a boolean mask (-1 outside it).

    Label propagation with pointer jumping: each round takes the smallest label among a
    pixel's neighbours, then follows labels to their representatives; whole-array steps
    only, no loop over pixels.
    """
    h, w = mask.shape
    big = h * w
    lab = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        m = lab
        for dy, dx in _NEIGHBOURS:
            m = np.minimum(m, _shift(lab, dy, dx, big))
        m = np.where(mask, m, big)
        flat = m.ravel()
        ext = np.append(flat, big)
        for _ in range(64):
            nxt = ext[flat]
            if np.array_equal(nxt, flat):
                break
            flat = nxt
            ext[:-1] = flat
        m = flat.reshape(h, w)
        if np.array_equal(m, lab):
            break
        lab = m
    return np.where(mask, lab, -1)


def _dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary dilation by a (2k+1) square, as k rounds of 3x3 (shifts, not pixel loops)."""
    out = mask
    for _ in range(k):
        m = out.copy()
        for dy, dx in _NEIGHBOURS:
            m |= _shift(out, dy, dx, False)
        out = m
    return out


def _stroke_width(mask: np.ndarray) -> float:
    """Rough stroke width in pixels: area over half the boundary length."""
    area = int(mask.sum())
    if area == 0:
        return 0.0
    inner = mask.copy()
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        inner &= _shift(mask, dy, dx, False)
    boundary = max(area - int(inner.sum()), 1)
    return 2.0 * area / boundary


def _paper_level(g: np.ndarray, cells: int = 8) -> np.ndarray:
    """The paper's level at every pixel of ``g`` (ink brighter than the paper), so that light
    that varies across a picture (a shadow, a lamp to one side) is taken away with the paper.

    The picture is cut into cells x cells tiles and a tile's level is its 20th percentile
    (the paper, unless ink covers most of the tile); each tile then takes the lowest level of
    its 3x3 neighbourhood (a tile inside a thick stroke borrows its neighbours'), the grid is
    smoothed by a 3x3 mean and stretched back over the picture bilinearly.
    """
    h, w = g.shape
    ny, nx = min(cells, h), min(cells, w)
    th, tw = h // ny, w // nx
    tiles = g[:ny * th, :nx * tw].reshape(ny, th, nx, tw).transpose(0, 2, 1, 3)
    level = np.percentile(tiles.reshape(ny, nx, th * tw), 20, axis=-1).astype(np.float32)
    low = level
    for dy, dx in _NEIGHBOURS:
        low = np.minimum(low, _shift(level, dy, dx, np.inf))
    padded = np.pad(low, 1, mode="edge")
    smooth = sum(padded[1 + dy:1 + dy + ny, 1 + dx:1 + dx + nx]
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
    return resize_plane(smooth.astype(np.float32), (h, w))


def frame_digit(img: np.ndarray, out: int = 28, box: int = 20,
                stroke: float = 2.0) -> tuple[np.ndarray, dict[str, Any]]:
    """Frame a picture of one digit as MNIST did; return ((out, out) float32, info).

    Steps: grey; reduce to at most 112 px; decide the polarity from the border (the
    paper) and invert dark-on-light to light-on-dark; take away the paper's level, tile by
    tile (so uneven light and shadows go with it; dark ink is measured relative to the
    brightness of the paper around it), and stretch; threshold (Otsu) and keep
    the ink's significant connected parts (noise specks dropped); thicken strokes that
    would be thinner than ``stroke`` pixels after scaling; crop the ink's bounding box;
    scale it (aspect kept) to fit ``box`` x ``box``; place it in ``out`` x ``out`` with
    its centre of mass at the centre (LeCun et al. 1998). ``info`` says what was done.
    """
    g = to_grey(img)
    h0, w0 = g.shape
    info: dict[str, Any] = {"framing": "digit", "input_size": [int(w0), int(h0)]}
    work = min(1.0, _FRAME_WORK / max(h0, w0))
    if work < 1.0:
        g = resize_plane(g, (max(1, round(h0 * work)), max(1, round(w0 * work))))
    h, w = g.shape
    b = max(1, round(0.05 * min(h, w)))
    border = np.concatenate([g[:b].ravel(), g[-b:].ravel(), g[:, :b].ravel(), g[:, -b:].ravel()])
    paper = float(np.median(border))
    lo, hi = (float(v) for v in np.percentile(g, [1, 99]))
    inverted = (paper - lo) > (hi - paper)
    if inverted:
        g = 1.0 - g
        paper = 1.0 - paper
    info["inverted"] = bool(inverted)
    info["background"] = round(1.0 - paper if inverted else paper, 4)
    level = _paper_level(g)
    # how far the paper's level moves across the picture (0: evenly lit), taken away below
    info["paper_variation"] = round(float(np.ptp(level)), 4)
    ink = g - level
    if inverted:
        # dark ink on lit paper: light multiplies what the paper and the ink reflect, so
        # the ink is measured against the brightness of the paper around it
        ink /= np.maximum(1.0 - level, 0.05)
    contrast = float(ink.max())
    empty = np.zeros((out, out), dtype=np.float32)
    if contrast < 0.08:
        info.update(empty=True, reason="no ink found (the picture is nearly uniform)")
        return empty, info
    v = np.clip(ink / contrast, 0.0, 1.0)
    t = _otsu(v)
    mask = v > t
    labels = _components(mask)
    n_comp = int(labels.max()) + 1
    sel = labels[mask]
    mass = np.bincount(sel, weights=v[mask], minlength=n_comp)
    keep_ids = np.flatnonzero(mass >= 0.1 * mass.max())
    keep = np.isin(labels, keep_ids)
    info["components"] = {"kept": int(keep_ids.size),
                          "dropped": int(np.count_nonzero(mass)) - int(keep_ids.size)}
    info["threshold"] = round(t, 4)
    rows = np.flatnonzero(keep.any(axis=1))
    cols = np.flatnonzero(keep.any(axis=0))
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    # soft stroke edges: the ink plus a one-pixel ring, nothing else
    region = _dilate(keep, 1)
    clean = np.where(region, v, 0.0).astype(np.float32)
    scale = box / max(r1 - r0, c1 - c0)
    width = _stroke_width(keep)
    grow = 0
    if width * scale < stroke:
        grow = int(np.ceil((stroke / scale - width) / 2.0))
        if grow > 0:
            thick = _dilate(keep, grow)
            clean = np.maximum(clean, np.where(thick, 1.0, 0.0).astype(np.float32))
            r0, c0 = max(0, r0 - grow), max(0, c0 - grow)
            r1, c1 = min(h, r1 + grow), min(w, c1 + grow)
            scale = box / max(r1 - r0, c1 - c0)
    info["thickened"] = grow
    crop = clean[r0:r1, c0:c1]
    nh = max(1, min(box, round((r1 - r0) * scale)))
    nw = max(1, min(box, round((c1 - c0) * scale)))
    small = np.clip(resize_plane(crop, (nh, nw)), 0.0, 1.0)
    peak = float(small.max())
    if peak > 0:
        small /= peak
    total = float(small.sum())
    cy = float(small.sum(axis=1) @ np.arange(nh)) / total
    cx = float(small.sum(axis=0) @ np.arange(nw)) / total
    centre = (out - 1) / 2.0
    top = int(np.floor(centre - cy + 0.5))
    left = int(np.floor(centre - cx + 0.5))
    top_c = min(max(top, 0), out - nh)
    left_c = min(max(left, 0), out - nw)
    result = empty
    result[top_c:top_c + nh, left_c:left_c + nw] = small
    s = scale * work
    info.update(
        empty=False,
        bbox=[round(r0 / work), round(c0 / work), round(r1 / work), round(c1 / work)],
        scale=round(s, 5),
        size=[int(nh), int(nw)],
        offset=[int(top_c), int(left_c)],
        shift=[round(top_c - r0 * scale, 3), round(left_c - c0 * scale, 3)],
        clamped=bool(top_c != top or left_c != left),
    )
    return result, info


def probe_image(path: str | os.PathLike) -> dict[str, Any]:
    """Size and greyness of a picture from its header, without decoding the pixels.

    Returns {"size": [w, h], "grey": bool, "format": str}. The same checks as
    ``load_image`` apply to what is read (size limit, formats, pixel limit).
    """
    p = os.fspath(path)
    data = read_regular(p, MAX_IMAGE_BYTES, "image")
    if not data:
        raise DataError("image is empty (0 bytes)", path=p)
    with _pixel_limit(MAX_IMAGE_PIXELS), warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                w, h = im.size
                mode = im.mode
                grey = mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")
                if mode == "P":
                    pal = np.asarray(im.getpalette() or [], dtype=np.int64)
                    pal = pal[: len(pal) // 3 * 3].reshape(-1, 3)
                    grey = bool(pal.size) and bool((pal == pal[:, :1]).all())
                fmt = im.format
        except Exception as exc:  # Pillow's plugins raise many types on malformed headers
            raise _open_error(exc, data, p) from None
    if w * h > MAX_IMAGE_PIXELS:
        raise DataError(
            f"image too large ({w}x{h} = {w * h} pixels > limit {MAX_IMAGE_PIXELS})", path=p
        )
    return {"size": [int(w), int(h)], "grey": grey, "format": fmt}
