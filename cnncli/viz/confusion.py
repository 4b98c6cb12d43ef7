"""The confusion matrix as a PNG, drawn with Pillow alone (headless).

Rows are true classes, columns predicted ones. Each cell shows its count; its colour is the
count's share of the true class (the row), so a small class is as readable as a large one,
with a colour bar saying so. Very large matrices (more than 40 classes) drop the numbers and
labels and keep the colours.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

# A white-to-navy sequential scale (anchor colours chosen by eye for print and screen).
_ANCHORS = np.array(
    [
        [0.00, 255, 255, 255],
        [0.15, 222, 235, 247],
        [0.40, 140, 190, 220],
        [0.70, 50, 120, 190],
        [1.00, 10, 45, 110],
    ],
    dtype=np.float64,
)
MAX_LABELLED = 40


def colour_scale(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 (..., 3) on the white-to-navy scale."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    rgb = [np.interp(v, _ANCHORS[:, 0], _ANCHORS[:, i]) for i in (1, 2, 3)]
    return np.stack(rgb, axis=-1).round().astype(np.uint8)


def font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def text_size(draw, text: str, fnt) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=fnt)
    return x1 - x0, y1 - y0


def rotated_text(text: str, fnt, fill=(0, 0, 0)):
    """``text`` on a transparent tile, rotated 90 degrees anticlockwise."""
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=fnt)
    tile = Image.new("RGBA", (max(1, x1 - x0), max(1, y1 - y0 + 2)), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((-x0, -y0), text, font=fnt, fill=fill)
    return tile.rotate(90, expand=True)


def draw_confusion(
    confusion: np.ndarray, classes: Sequence[str], title: str = "Confusion matrix"
):
    """Return a PIL RGB image of the confusion matrix."""
    from PIL import Image, ImageDraw

    c = np.asarray(confusion, dtype=np.int64)
    k = c.shape[0]
    labelled = k <= MAX_LABELLED
    rows = c.sum(axis=1, keepdims=True)
    share = np.divide(c, rows, out=np.zeros(c.shape, dtype=np.float64), where=rows > 0)

    f_cell, f_label, f_title = font(13), font(13), font(16)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = [str(n) for n in classes]
    if labelled:
        widest_count = max(text_size(probe, str(int(v)), f_cell)[0] for v in c.ravel())
        cell = max(34, widest_count + 12)
        label_w = max(text_size(probe, n, f_label)[0] for n in names) + 10
        label_h = label_w  # column labels are rotated
    else:
        cell = max(2, 800 // k)
        label_w = label_h = 0

    pad, axis_gap, bar_w = 16, 22, 18
    _, title_h = text_size(probe, title, f_title)
    grid = k * cell
    left = pad + axis_gap + label_w
    top = pad + title_h + 10 + axis_gap + label_h
    bar_x = left + grid + 24
    width = bar_x + bar_w + 60 + pad
    height = max(top + grid + pad, top + 200 + pad)

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, font=f_title, fill=(0, 0, 0))

    colours = colour_scale(share)  # (k, k, 3)
    tiles = np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1)
    img.paste(Image.fromarray(tiles, "RGB"), (left, top))
    draw.rectangle([left - 1, top - 1, left + grid, top + grid], outline=(90, 90, 90))

    if labelled:
        lum = colours.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        for i in range(k):
            for j in range(k):
                s = str(int(c[i, j]))
                ink = (255, 255, 255) if lum[i, j] < 128 else (0, 0, 0)
                cx, cy = left + j * cell + cell // 2, top + i * cell + cell // 2
                draw.text((cx, cy), s, font=f_cell, fill=ink, anchor="mm")
        for i, name in enumerate(names):
            tw, _ = text_size(draw, name, f_label)
            draw.text(
                (left - 6 - tw, top + i * cell + cell // 2), name, font=f_label,
                fill=(0, 0, 0), anchor="lm",
            )
            tile = rotated_text(name, f_label)
            img.paste(
                tile,
                (left + i * cell + cell // 2 - tile.width // 2, top - 6 - tile.height),
                tile,
            )
    axis_left = rotated_text("true class", f_label, fill=(60, 60, 60))
    img.paste(axis_left, (pad, top + grid // 2 - axis_left.height // 2), axis_left)
    draw.text(
        (left + grid // 2, pad + title_h + 10), "predicted class", font=f_label,
        fill=(60, 60, 60), anchor="mt",
    )

    # Colour bar: share of the true class, 0 at the bottom, 1 at the top.
    bar_h = max(120, min(grid, 400))
    ramp = colour_scale(np.linspace(1.0, 0.0, bar_h))[:, None, :].repeat(bar_w, axis=1)
    img.paste(Image.fromarray(np.ascontiguousarray(ramp), "RGB"), (bar_x, top))
    draw.rectangle([bar_x - 1, top - 1, bar_x + bar_w, top + bar_h], outline=(90, 90, 90))
    for frac in (0.0, 0.5, 1.0):
        y = top + round((1.0 - frac) * (bar_h - 1))
        draw.line([bar_x + bar_w, y, bar_x + bar_w + 4, y], fill=(0, 0, 0))
        draw.text((bar_x + bar_w + 7, y), f"{frac:.0%}", font=f_label, fill=(0, 0, 0), anchor="lm")
    note = rotated_text("share of the true class", font(11), fill=(60, 60, 60))
    img.paste(note, (bar_x + bar_w + 44, top + bar_h // 2 - note.height // 2), note)
    return img


def confusion_png(
    confusion: np.ndarray, classes: Sequence[str], title: str = "Confusion matrix"
) -> bytes:
    """The confusion matrix drawn as PNG bytes (write them with cnncli.io.atomic)."""
    buf = io.BytesIO()
    draw_confusion(confusion, classes, title).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
