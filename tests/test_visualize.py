"""cnncli visualize-filters: the PNGs are opened and their cells compared with the weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error
from PIL import Image, ImageDraw

from cnncli.engine.network import Network
from cnncli.io.checkpoint import write_checkpoint
from cnncli.spec import load_config
from cnncli.viz.filters import BORDER, BORDER_PX, normalise_each, scale_for, tile_grid

NORM = {"mode": "scale", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def colour_model(folder: Path, learned: bool = False) -> tuple[Path, Network]:
    conv2 = {"filters": 5, "size": 3, "padding": 1}
    if learned:
        conv2["combine"] = "learned"
    cfg = load_config({
        "model": {"name": "colour", "input": [3, 12, 12],
                  "blocks": [{"conv": [{"filters": 4, "size": 3}, conv2],
                              "pool": {"type": "max", "size": 2}}],
                  "fc": [{"units": 3}]},
        "data": {"train": "digits", "framing": "resize"},
    })
    net = Network(cfg.model, seed=0)
    rng = np.random.default_rng(7)
    for v in net.params.values():
        v[...] = rng.normal(size=v.shape)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "best.safetensors"
    write_checkpoint(path, net.params, {"config": cfg.resolved, "classes": ["a", "b", "c"],
                                        "normalization": NORM})
    return path, net


def grid_origin(px: np.ndarray) -> tuple[int, int]:
    """Top-left corner of the cell grid: the first pixel of the border colour."""
    mask = (px == np.array(BORDER, np.uint8)).all(axis=2)
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(cols.min())


def cell(px: np.ndarray, origin, r: int, c: int, size: int) -> np.ndarray:
    top = origin[0] + BORDER_PX + r * (size + BORDER_PX)
    left = origin[1] + BORDER_PX + c * (size + BORDER_PX)
    return px[top : top + size, left : left + size]


def test_rgb_filters_png_cells_show_each_kernel(cli, tmp_path):
    model, net = colour_model(tmp_path / "run")
    res = cli("visualize-filters", "--model", model.parent)
    assert res.exit_code == 0, res.output
    out = tmp_path / "run" / "filters-conv1.png"
    assert res.stdout.strip() == str(out)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        px = np.asarray(im)
    w = net.params["conv1.weight"]  # (4, 3, 3, 3)
    scale = scale_for(3, 3)
    size = 3 * scale
    cols = 2  # four filters in a 2 x 2 grid
    assert px.shape[0] > 2 * size and px.shape[1] > 2 * size
    origin = grid_origin(px)
    expect = normalise_each(w.transpose(0, 2, 3, 1), (1, 2, 3))
    cells = []
    for k in range(4):
        got = cell(px, origin, k // cols, k % cols, size)
        want = np.repeat(np.repeat(expect[k], scale, 0), scale, 1)
        np.testing.assert_allclose(got / 255.0, want, atol=1 / 255 + 1e-9)
        cells.append(got)
        # each kernel uses its full range and real colour
        assert got.min() == 0 and got.max() == 255
        assert np.ptp(got.astype(int), axis=2).max() > 50
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.array_equal(cells[a], cells[b])


def test_many_input_maps_and_feature_maps(cli, tmp_path):
    model, net = colour_model(tmp_path / "run")
    pic = tmp_path / "pic.png"
    im = Image.new("RGB", (40, 30), "white")
    ImageDraw.Draw(im).ellipse([5, 5, 30, 25], fill=(200, 30, 30))
    im.save(pic)
    target = tmp_path / "out" / "conv2.png"
    target.parent.mkdir()
    res = cli("visualize-filters", "--model", model, "--layer", "conv2", "--image", pic,
              "-o", target)
    assert res.exit_code == 0, res.output
    features = tmp_path / "out" / "conv2-features.png"
    assert res.stdout.split() == [str(target), str(features)]
    with Image.open(target) as im2:
        px = np.asarray(im2.convert("RGB"))
    # conv2 sees 4 maps: one row per filter (5), one column per input map (4)
    scale = scale_for(3, 3)
    size = 3 * scale
    origin = grid_origin(px)
    w = net.params["conv2.weight"]
    expect = normalise_each(w, (1, 2, 3))
    for f in range(5):
        for c in range(4):
            got = cell(px, origin, f, c, size)[..., 0] / 255.0
            want = np.repeat(np.repeat(expect[f, c], scale, 0), scale, 1)
            np.testing.assert_allclose(got, want, atol=1 / 255 + 1e-9)
    with Image.open(features) as fm:
        assert fm.mode == "RGB"
        fpx = np.asarray(fm)
    # the input panel plus conv1 (4 maps 10x10) and conv2 (5 maps 10x10), each with content
    assert fpx.shape[0] > 3 * 56 and fpx.shape[1] >= 5 * 56
    assert len(np.unique(fpx.reshape(-1, 3), axis=0)) > 50


def test_learned_combination_kernels(cli, tmp_path):
    model, net = colour_model(tmp_path / "run", learned=True)
    out = tmp_path / "k.png"
    res = cli("visualize-filters", "--model", model, "--layer", "CONV2", "-o", out)
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        px = np.asarray(im)
    size = 3 * scale_for(3, 3)
    origin = grid_origin(px)
    w = net.params["conv2.weight"]  # (4, 1, 3, 3): one kernel per input map
    cells = [cell(px, origin, 0, k, size) for k in range(4)]
    for k in range(4):
        want = normalise_each(w[k, 0], (0, 1))
        np.testing.assert_allclose(cells[k][::size // 3 or 1, ::size // 3 or 1, 0] / 255.0,
                                   want, atol=1 / 255 + 1e-9)


def test_tile_grid_layout():
    tiles = np.zeros((5, 2, 3, 3))
    for k in range(5):
        tiles[k] = k / 4
    g = tile_grid(tiles, cols=3, scale=2, border=1)
    assert g.shape == (2 * (4 + 1) + 1, 3 * (6 + 1) + 1, 3)
    assert (g[0] == BORDER).all() and (g[:, 0] == BORDER).all()
    assert (g[1:5, 1:7] == 0).all()
    assert (g[6:10, 8:14] == round(4 / 4 * 255)).all()
    assert (g[6:10, 15:21] == 255).all()  # the empty sixth cell is white


def test_visualize_errors(cli, tmp_path):
    model, _ = colour_model(tmp_path / "run")
    assert_clean_error(cli("visualize-filters", "--model", model, "--layer", "fc1"), 2,
                       "not a conv layer", "conv1, conv2")
    assert_clean_error(cli("visualize-filters", "--model", model, "-o", tmp_path / "x.jpg"),
                       2, "PNG")
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    assert_clean_error(cli("visualize-filters", "--model", model, "--image", bad), 2, "bad.png")
    cfg = load_config({"model": {"input": [1, 4, 4], "pattern": "INPUT -> FC",
                                 "fc": {"units": [2]}}, "data": {"train": "digits"}})
    flat = tmp_path / "mlp.safetensors"
    write_checkpoint(flat, Network(cfg.model).params,
                     {"config": cfg.resolved, "classes": ["a", "b"],
                      "normalization": {"mode": "scale", "mean": [0.0], "std": [1.0]}})
    assert_clean_error(cli("visualize-filters", "--model", flat), 2, "no conv layers")


@pytest.mark.parametrize("c_in,rows_cols", [(1, None), (6, (3, 6)), (80, None)])
def test_kernel_view_choices(c_in, rows_cols):
    from types import SimpleNamespace

    from cnncli.viz.filters import kernel_view

    w = np.random.default_rng(0).normal(size=(3, c_in, 5, 5))
    view = kernel_view(w, SimpleNamespace(name="convX", combine="full"))
    if rows_cols:
        assert view.tiles.shape[0] == rows_cols[0] * rows_cols[1] and view.cols == c_in
        assert "column = input map" in view.title
    elif c_in == 1:
        assert view.tiles.shape[0] == 3
    else:
        assert view.tiles.shape[0] == 3 and "mean over the 80 input maps" in view.title
