"""Training curves: loss and accuracy per epoch, train and validation, as a PNG.

Drawn with Pillow's ImageDraw (no plotting library): two panels side by side, each with
axes, tick labels, a title and a legend.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

WIDTH, HEIGHT = 1000, 420
TRAIN_COLOUR = (31, 119, 180)
VAL_COLOUR = (230, 120, 20)
AXIS = (60, 60, 60)
GRID = (225, 225, 225)
TEXT = (20, 20, 20)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def _ticks(lo: float, hi: float) -> list[float]:
    step = _nice_step(hi - lo)
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + 1e-9 * step:
        out.append(round(v, 10))
        v += step
    return out


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100 or abs(v) < 0.01:
        return f"{v:.3g}"
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _finite(values: Sequence[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def _value(row: dict, key: str) -> float | None:
    v = row.get(key)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _panel(draw, box, rows, keys, title, y_range, fonts, legend_at="top") -> None:
    x0, y0, x1, y1 = box
    small, label = fonts
    epochs = [int(r["epoch"]) for r in rows]
    e_lo, e_hi = (min(epochs), max(epochs)) if epochs else (1, 1)
    if e_lo == e_hi:
        e_lo, e_hi = e_lo - 0.5, e_hi + 0.5
    lo, hi = y_range
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5

    def px(e: float) -> float:
        return x0 + (e - e_lo) / (e_hi - e_lo) * (x1 - x0)

    def py(v: float) -> float:
        return y1 - (v - lo) / (hi - lo) * (y1 - y0)

    # Grid and y ticks.
    for t in _ticks(lo, hi):
        y = py(t)
        draw.line([(x0, y), (x1, y)], fill=GRID, width=1)
        draw.line([(x0 - 5, y), (x0, y)], fill=AXIS, width=1)
        text = _fmt(t)
        w = draw.textlength(text, font=small)
        draw.text((x0 - 8 - w, y - 7), text, fill=TEXT, font=small)
    # x ticks: integer epochs, at most about ten labels.
    stride = max(1, math.ceil(len(set(epochs)) / 10)) if epochs else 1
    for e in sorted(set(epochs))[::stride]:
        x = px(e)
        draw.line([(x, y1), (x, y1 + 5)], fill=AXIS, width=1)
        text = str(e)
        w = draw.textlength(text, font=small)
        draw.text((x - w / 2, y1 + 8), text, fill=TEXT, font=small)
    draw.rectangle([x0, y0, x1, y1], outline=AXIS, width=1)
    # Axis labels and title.
    w = draw.textlength("epoch", font=label)
    draw.text(((x0 + x1) / 2 - w / 2, y1 + 26), "epoch", fill=TEXT, font=label)
    w = draw.textlength(title, font=label)
    draw.text(((x0 + x1) / 2 - w / 2, y0 - 26), title, fill=TEXT, font=label)
    # Series.
    legend = []
    for key, name, colour in keys:
        pts = [(px(int(r["epoch"])), py(v)) for r in rows if (v := _value(r, key)) is not None]
        if not pts:
            continue
        legend.append((name, colour))
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2, joint="curve")
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    # Legend in a corner the curves tend to leave free (loss falls, accuracy rises).
    if not legend:
        return
    lx = x1 - 130
    ly = y0 + 8 if legend_at == "top" else y1 - 8 - 18 * len(legend)
    draw.rectangle([lx - 6, ly - 4, x1 - 6, ly + 18 * len(legend)], fill="white", outline=GRID)
    for name, colour in legend:
        draw.line([(lx, ly + 8), (lx + 22, ly + 8)], fill=colour, width=3)
        draw.text((lx + 28, ly), name, fill=TEXT, font=small)
        ly += 18


def render_curves(rows: Sequence[dict], title: str | None = None):
    """A PIL image of the loss and accuracy curves for ``rows`` (metrics.csv rows)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    small, label = _font(12), _font(15)
    rows = [r for r in rows if _value(r, "epoch") is not None]

    losses = _finite([r.get(k) for r in rows for k in ("train_loss", "val_loss")])
    l_hi = max(losses) if losses else 1.0
    l_lo = min(0.0, min(losses)) if losses else 0.0
    accs = _finite([r.get(k) for r in rows for k in ("train_acc", "val_acc")])
    a_lo = math.floor(min(accs) * 10) / 10 if accs else 0.0
    a_lo = max(0.0, min(a_lo, 0.9))

    top, bottom = 60, HEIGHT - 60
    _panel(
        draw,
        (70, top, WIDTH // 2 - 30, bottom),
        rows,
        (("train_loss", "train", TRAIN_COLOUR), ("val_loss", "validation", VAL_COLOUR)),
        "loss",
        (l_lo, l_hi * 1.05 if l_hi > 0 else 1.0),
        (small, label),
    )
    _panel(
        draw,
        (WIDTH // 2 + 70, top, WIDTH - 30, bottom),
        rows,
        (("train_acc", "train", TRAIN_COLOUR), ("val_acc", "validation", VAL_COLOUR)),
        "accuracy",
        (a_lo, 1.0),
        (small, label),
        legend_at="bottom",
    )
    if title:
        w = draw.textlength(title, font=label)
        draw.text((WIDTH / 2 - w / 2, 6), title, fill=TEXT, font=label)
    return img


def curves_png(rows: Sequence[dict], title: str | None = None) -> bytes:
    """The curves as PNG bytes."""
    buf = io.BytesIO()
    render_curves(rows, title).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_curves(rows: Sequence[dict], path: Any, title: str | None = None) -> None:
    """Write the curves to ``path`` atomically."""
    from cnncli.io.atomic import atomic_write_bytes

    atomic_write_bytes(path, curves_png(rows, title))
