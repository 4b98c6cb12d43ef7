"""frame_digit (MNIST-style framing) and frame_resize on drawn pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from cnncli.errors import DataError
from cnncli.io.images import frame_digit, frame_resize, read_image
from cnncli.resources import sample_dir


def drawn_seven(w=240, h=180, at=(150, 30), size=90, width=9, paper=235, ink=25, noise=0.0,
                seed=0) -> np.ndarray:
    """A dark '7' on light paper, off-centre, as float32 (h, w) in [0, 1]."""
    im = Image.new("L", (w, h), paper)
    d = ImageDraw.Draw(im)
    x, y = at
    d.line([(x, y), (x + size * 0.7, y), (x + size * 0.25, y + size)], fill=ink, width=width,
           joint="curve")
    im = im.filter(ImageFilter.GaussianBlur(1.0))
    a = np.asarray(im, dtype=np.float32) / 255
    if noise:
        a = a + np.random.default_rng(seed).normal(0, noise, a.shape).astype(np.float32)
    return np.clip(a, 0, 1)


def centre_of_mass(img):
    t = img.sum()
    return (img.sum(1) @ np.arange(img.shape[0]) / t, img.sum(0) @ np.arange(img.shape[1]) / t)


def test_off_centre_digit_is_centred_by_mass_in_a_20_box():
    out, info = frame_digit(drawn_seven())
    assert out.shape == (28, 28) and out.dtype == np.float32
    cy, cx = centre_of_mass(out)
    assert abs(cy - 13.5) <= 0.75 and abs(cx - 13.5) <= 0.75
    ys, xs = np.nonzero(out > 0.02)
    assert ys.max() - ys.min() + 1 <= 20 and xs.max() - xs.min() + 1 <= 20
    assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 >= 18   # fills the box
    assert info["inverted"] is True and info["empty"] is False
    json.dumps(info)                                      # JSON-serialisable
    # the bbox is where the digit was drawn, in the picture's own pixels
    top, left, bottom, right = info["bbox"]
    assert 20 <= top <= 32 and 140 <= left <= 152 and 115 <= bottom <= 135


def test_light_on_dark_output_and_polarity_invariance():
    dark_on_light = drawn_seven()
    light_on_dark = 1.0 - dark_on_light
    a, ia = frame_digit(dark_on_light)
    b, ib = frame_digit(light_on_dark)
    assert ia["inverted"] is True and ib["inverted"] is False
    assert a.max() == pytest.approx(1.0)
    corners = np.concatenate([a[:3, :3].ravel(), a[-3:, -3:].ravel()])
    assert corners.max() == 0.0                           # background is black
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_same_digit_anywhere_any_size_gives_nearly_the_same_frame():
    a, _ = frame_digit(drawn_seven(at=(20, 20), size=60, width=6))
    b, _ = frame_digit(drawn_seven(w=300, h=300, at=(150, 150), size=120, width=12))
    assert np.abs(a - b).mean() < 0.06


def test_noise_specks_dropped():
    clean, _ = frame_digit(drawn_seven())
    img = drawn_seven()
    rng = np.random.default_rng(3)
    for y, x in zip(rng.integers(0, 176, 12), rng.integers(0, 130, 12), strict=True):
        img[y:y + 4, x:x + 4] = 0.0                       # dark specks on the paper
    noisy, info = frame_digit(img)
    assert info["components"]["dropped"] >= 10
    assert np.abs(noisy - clean).mean() < 0.02


def test_paper_grain_and_grey_background():
    img = drawn_seven(paper=150, ink=60, noise=0.04)
    out, info = frame_digit(img)
    cy, cx = centre_of_mass(out)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1
    assert out[:3].max() == 0 and info["inverted"] is True


@pytest.mark.parametrize("angle", [0, 90, 135, 200, 300])
def test_a_shadow_across_the_paper_goes_with_the_paper(angle):
    """Light falling off to 45% across the sheet: the darkened paper is not ink."""
    clean, _ = frame_digit(drawn_seven())
    img = drawn_seven()
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    t = np.radians(angle)
    ramp = np.cos(t) * xx + np.sin(t) * yy
    ramp = (ramp - ramp.min()) / np.ptp(ramp)
    shaded = img * (1.0 - 0.55 * ramp).astype(np.float32)
    # the darkest paper (0.92 * 0.45 = 0.41) is darker than the middle grey between
    # paper and ink: one paper level for the whole picture would call it ink
    assert shaded[np.unravel_index(np.argmax(ramp), ramp.shape)] < 0.5
    out, info = frame_digit(shaded)
    assert info["paper_variation"] > 0.3 > frame_digit(img)[1]["paper_variation"]
    top, left, bottom, right = info["bbox"]
    assert 20 <= top <= 32 and 140 <= left <= 152 and 115 <= bottom <= 135
    assert np.abs(out - clean).mean() < 0.02


def test_ruled_paper_lines_are_not_the_digit():
    clean, _ = frame_digit(drawn_seven())
    img = drawn_seven()
    img[5::22] = 0.62                                     # faint lines across the sheet
    out, info = frame_digit(img)
    top, left, bottom, right = info["bbox"]
    assert 140 <= left and right - left < 100
    assert np.abs(out - clean).mean() < 0.03


def test_thin_strokes_are_thickened():
    out, info = frame_digit(drawn_seven(w=300, h=300, size=200, at=(40, 40), width=2))
    assert info["thickened"] >= 1
    assert (out > 0.5).sum() >= 40                        # not a faint hairline


def test_rgb_input_and_blank_picture():
    rgb = np.repeat(drawn_seven()[..., None], 3, axis=2)
    a, _ = frame_digit(rgb)
    b, _ = frame_digit(drawn_seven())
    np.testing.assert_allclose(a, b, atol=1e-4)
    blank, info = frame_digit(np.full((50, 50), 0.8, np.float32))
    assert info["empty"] is True and blank.sum() == 0 and blank.shape == (28, 28)


def test_tall_thin_one_keeps_aspect():
    im = np.ones((200, 200), np.float32)
    im[30:170, 95:105] = 0.0
    out, info = frame_digit(im)
    ys, xs = np.nonzero(out > 0.1)
    assert ys.max() - ys.min() + 1 == 20 and xs.max() - xs.min() + 1 <= 6


def test_bundled_pictures_frame_cleanly():
    for p in sorted((sample_dir() / "pictures").glob("*.png")):
        out, info = frame_digit(read_image(p))
        assert not info["empty"], p.name
        cy, cx = centre_of_mass(out)
        assert abs(cy - 13.5) < 1.5 and abs(cx - 13.5) < 1.5, p.name
        ys, xs = np.nonzero(out > 0.02)
        assert np.ptp(ys) < 20 and np.ptp(xs) < 20, p.name


def test_frame_resize_channels_and_size():
    g = np.linspace(0, 1, 40 * 60, dtype=np.float32).reshape(40, 60)
    out = frame_resize(g, (1, 20, 30))
    assert out.shape == (1, 20, 30) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    assert abs(float(out.mean()) - float(g.mean())) < 0.01
    rgb = frame_resize(g, (3, 40, 60))
    np.testing.assert_allclose(rgb[0], g)
    np.testing.assert_allclose(rgb[2], g)
    c = np.zeros((10, 10, 3), np.float32)
    c[..., 1] = 1.0
    grey = frame_resize(c, (1, 10, 10))
    np.testing.assert_allclose(grey, 0.587, atol=1e-6)
    with pytest.raises(DataError, match="4 channels"):
        frame_resize(g, (4, 8, 8))
