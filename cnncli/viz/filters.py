"""Pictures of what a network learned: conv kernels as a grid, and feature maps.

Headless (Pillow only). Every kernel or map is normalised on its own to [0, 1] (a constant
kernel becomes mid-grey, a constant map black), enlarged with nearest-neighbour sampling so
each weight stays a crisp square, and laid out in a grid with a thin border between cells.
The grid is assembled with array reshapes, not a loop over cells.

How a conv layer's kernels are shown (the title says which):
- 3 input maps: one RGB cell per filter (the input's channels as red, green, blue);
- 1 input map, or a learned combination (one kernel per input map): one grey cell per kernel;
- any other number: one row per filter with a cell per input map when that stays legible
  (at most 64 input maps and 4096 cells), else the mean over input maps, one cell per filter.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

BORDER = (60, 90, 140)     # slate blue: stands apart from grey kernels
BACKGROUND = (255, 255, 255)
BORDER_PX = 2
TARGET_CELL = 56          # pixels a kernel or map is enlarged to, roughly
MAX_FULL_COLUMNS = 64
MAX_FULL_CELLS = 4096


def normalise_each(a: np.ndarray, axes: tuple[int, ...], flat: float = 0.5) -> np.ndarray:
    """Scale each slice to [0, 1] over ``axes`` (min -> 0, max -> 1; a constant one -> flat)."""
    a = np.asarray(a, dtype=np.float64)
    lo = a.min(axis=axes, keepdims=True)
    hi = a.max(axis=axes, keepdims=True)
    span = hi - lo
    return np.divide(a - lo, span, out=np.full(a.shape, float(flat)), where=span > 0)


def scale_for(h: int, w: int, target: int = TARGET_CELL) -> int:
    """Nearest-neighbour enlargement that brings an h x w tile near ``target`` pixels."""
    return max(1, round(target / max(h, w, 1)))


def tile_grid(tiles: np.ndarray, cols: int, scale: int, border: int = BORDER_PX) -> np.ndarray:
    """Tiles (n, h, w, 3) floats in [0, 1] -> one RGB uint8 image with borders between cells.

    Cells are enlarged ``scale`` times (nearest neighbour); empty cells at the end are white.
    """
    n, h, w, _ = tiles.shape
    rows = max(1, math.ceil(n / cols))
    px = (np.clip(tiles, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    px = np.repeat(np.repeat(px, scale, axis=1), scale, axis=2)
    filler = np.full((rows * cols - n, *px.shape[1:]), 255, dtype=np.uint8)
    px = np.concatenate([px, filler], axis=0)
    ch, cw = px.shape[1], px.shape[2]
    cells = np.empty((rows, cols, ch + border, cw + border, 3), dtype=np.uint8)
    cells[...] = BORDER
    cells[:, :, border:, border:] = px.reshape(rows, cols, ch, cw, 3)
    grid = cells.transpose(0, 2, 1, 3, 4).reshape(rows * (ch + border), cols * (cw + border), 3)
    # close the frame on the right and at the bottom
    out = np.empty((grid.shape[0] + border, grid.shape[1] + border, 3), dtype=np.uint8)
    out[...] = BORDER
    out[: grid.shape[0], : grid.shape[1]] = grid
    return out


@dataclass
class KernelView:
    """What will be drawn for one conv layer: tiles (n, h, w, 3) in [0, 1] and their layout."""

    tiles: np.ndarray
    cols: int
    title: str
    row_label: str       # what a row is ("filters 0-7", "filter")
    col_label: str       # what a column is
    row_step: int        # index of the first item of each row advances by this


def kernel_view(weight: np.ndarray, layer) -> KernelView:
    """Choose how to show the kernels ``weight`` of conv ``layer`` (see the module notes)."""
    w = np.asarray(weight, dtype=np.float64)
    n_out, c_in, kh, kw = w.shape
    name = layer.name
    size = f"{kh}x{kw}"
    if getattr(layer, "combine", "full") == "learned":
        tiles = normalise_each(w[:, 0], (1, 2))[..., None].repeat(3, axis=-1)
        cols = min(n_out, 16)
        title = (f"{name}: {n_out} kernels {size}, one per input map (learned combination), "
                 "each scaled to its own range")
        return KernelView(tiles, cols, title, "input map", "", cols)
    if c_in == 3:
        tiles = normalise_each(w.transpose(0, 2, 3, 1), (1, 2, 3))
        cols = _square_cols(n_out)
        title = f"{name}: {n_out} filters {size}, input channels as RGB, each scaled to its range"
        return KernelView(tiles, cols, title, "filter", "", cols)
    if c_in == 1:
        tiles = normalise_each(w[:, 0], (1, 2))[..., None].repeat(3, axis=-1)
        cols = _square_cols(n_out)
        title = f"{name}: {n_out} filters {size}, each scaled to its own range"
        return KernelView(tiles, cols, title, "filter", "", cols)
    if c_in <= MAX_FULL_COLUMNS and n_out * c_in <= MAX_FULL_CELLS:
        tiles = normalise_each(w, (1, 2, 3)).reshape(n_out * c_in, kh, kw)
        tiles = tiles[..., None].repeat(3, axis=-1)
        title = (f"{name}: {n_out} filters {size} x {c_in} input maps "
                 "(row = filter, column = input map; each filter scaled to its range)")
        return KernelView(tiles, c_in, title, "filter", "input map", 1)
    mean = w.mean(axis=1)
    tiles = normalise_each(mean, (1, 2))[..., None].repeat(3, axis=-1)
    cols = _square_cols(n_out)
    title = (f"{name}: {n_out} filters {size}, mean over the {c_in} input maps, "
             "each scaled to its own range")
    return KernelView(tiles, cols, title, "filter", "", cols)


def _square_cols(n: int) -> int:
    return max(1, min(n, math.ceil(math.sqrt(n))))


def _labelled(grid: np.ndarray, cell: int, view_cols: int, rows: int, title: str,
              row_step: int, col_label: str, row_label: str):
    """Put the title, column numbers and the first index of each row around a grid."""
    from PIL import Image, ImageDraw

    from cnncli.viz.confusion import font, text_size

    f_title, f_small = font(14), font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    last_row_index = (rows - 1) * row_step
    gutter = text_size(probe, str(last_row_index), f_small)[0] + 10
    tw, th = text_size(probe, title, f_title)
    pad = 10
    label_band = 16
    axis_band = 16 if col_label else 0
    top = pad + th + 8 + axis_band + label_band
    left = pad + gutter + (16 if row_label else 0)
    width = max(left + grid.shape[1] + pad, pad + tw + pad)
    height = top + grid.shape[0] + pad
    img = Image.new("RGB", (width, height), BACKGROUND)
    img.paste(Image.fromarray(grid, "RGB"), (left, top))
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, font=f_title, fill=(0, 0, 0))
    if col_label:
        draw.text((left + grid.shape[1] // 2, pad + th + 8), col_label, font=f_small,
                  fill=(70, 70, 70), anchor="mt")
    # column numbers: every column when they fit, else every k-th
    every = max(1, math.ceil(text_size(probe, str(view_cols - 1), f_small)[0] / max(cell, 1) + 0.3))
    for j in range(0, view_cols, every):
        x = left + j * (cell + BORDER_PX) + BORDER_PX + cell // 2
        draw.text((x, top - 3), str(j), font=f_small, fill=(70, 70, 70), anchor="mb")
    every_row = max(1, math.ceil(14 / max(cell, 1)))
    for i in range(0, rows, every_row):
        y = top + i * (cell + BORDER_PX) + BORDER_PX + cell // 2
        draw.text((left - 5, y), str(i * row_step), font=f_small, fill=(70, 70, 70), anchor="rm")
    if row_label:
        from cnncli.viz.confusion import rotated_text

        tile = rotated_text(row_label, f_small, fill=(70, 70, 70))
        img.paste(tile, (pad, top + grid.shape[0] // 2 - tile.height // 2), tile)
    return img


def draw_filters(weight: np.ndarray, layer):
    """PIL RGB image of the kernels of conv ``layer`` (weight in PyTorch layout)."""
    view = kernel_view(weight, layer)
    _, h, w, _ = view.tiles.shape
    scale = scale_for(h, w)
    grid = tile_grid(view.tiles, view.cols, scale)
    rows = math.ceil(view.tiles.shape[0] / view.cols)
    row_label = view.row_label if view.col_label else ""
    return _labelled(grid, h * scale, view.cols, rows, view.title, view.row_step,
                     view.col_label, row_label)


def draw_feature_maps(image: np.ndarray, maps: list[tuple[str, np.ndarray]], source: str = ""):
    """PIL RGB image: the network's input, then each layer's maps, each map scaled on its own.

    ``image`` is the model input (C, H, W) as given to the network; ``maps`` holds
    (layer name, activations (C, H, W)) pairs in network order.
    """
    from PIL import Image, ImageDraw

    from cnncli.viz.confusion import font, text_size

    panels = []
    img = np.asarray(image, dtype=np.float64)
    if img.shape[0] == 3:
        first = normalise_each(img.transpose(1, 2, 0)[None], (1, 2, 3))
    else:
        first = normalise_each(img[:1], (1, 2))[..., None].repeat(3, axis=-1)
    c, h, w = img.shape
    panels.append((f"input {c}x{h}x{w}" + (f"  ({source})" if source else ""),
                   tile_grid(first, 1, scale_for(h, w, 2 * TARGET_CELL))))
    for name, a in maps:
        a = np.asarray(a, dtype=np.float64)
        c, h, w = a.shape
        # a map without any variation (a ReLU map that is all zero) is drawn black
        tiles = normalise_each(a, (1, 2), flat=0.0)[..., None].repeat(3, axis=-1)
        cols = min(c, 16)
        panels.append((f"{name}: {c} maps {h}x{w}", tile_grid(tiles, cols, scale_for(h, w))))

    f_title = font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, gap = 10, 12
    heads = [text_size(probe, t, f_title) for t, _ in panels]
    width = max(max(g.shape[1], hw[0]) for (_, g), hw in zip(panels, heads, strict=True))
    width += 2 * pad
    height = pad + sum(hw[1] + 6 + g.shape[0] + gap for (_, g), hw in zip(panels, heads,
                                                                             strict=True))
    out = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(out)
    y = pad
    for (title, grid), (_, th) in zip(panels, heads, strict=True):
        draw.text((pad, y), title, font=f_title, fill=(0, 0, 0))
        y += th + 6
        out.paste(Image.fromarray(grid, "RGB"), (pad, y))
        y += grid.shape[0] + gap
    return out


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
