"""read_image / load_image: every mode and format on real files, limits, corrupt files."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image
from pngs import png_header_only

from cnncli.errors import DataError
from cnncli.io import images
from cnncli.io.images import load_image, probe_image, read_image


def save(im: Image.Image, path, fmt: str | None = None, **kw):
    im.save(path, fmt, **kw)
    return path


def test_grey_png_values(tmp_path):
    a = np.array([[0, 128, 255], [10, 20, 30]], dtype=np.uint8)
    p = save(Image.fromarray(a), tmp_path / "g.png")
    out, meta = load_image(p)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out, a / 255.0, atol=1e-7)
    assert meta["format"] == "PNG" and meta["mode"] == "L" and meta["alpha"] is False


def test_rgb_png_values(tmp_path):
    a = np.zeros((4, 5, 3), dtype=np.uint8)
    a[1, 2] = (255, 0, 51)
    out = read_image(save(Image.fromarray(a), tmp_path / "c.png"))
    assert out.shape == (4, 5, 3)
    np.testing.assert_allclose(out[1, 2], [1.0, 0.0, 0.2], atol=1e-6)
    assert out.min() == 0.0


def test_bilevel_png(tmp_path):
    im = Image.new("1", (4, 3), 0)
    im.putpixel((1, 1), 1)
    out = read_image(save(im, tmp_path / "b.png"))
    assert out.shape == (3, 4) and out[1, 1] == 1.0 and out.sum() == 1.0


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    im = Image.fromarray(a)
    assert im.mode == "I;16"
    out = read_image(save(im, tmp_path / "deep.png"))
    np.testing.assert_allclose(out[0], a[0] / 65535.0, rtol=1e-6)
    assert out[0, 3] == pytest.approx(1.0)
    assert out[0, 1] == pytest.approx(256 / 65535, rel=1e-5)       # ~0.0039, not 1.0


def test_16bit_tiff(tmp_path):
    a = np.array([[1000, 65535]], dtype=np.uint16)
    out = read_image(save(Image.fromarray(a), tmp_path / "deep.tif"))
    np.testing.assert_allclose(out[0], a[0] / 65535.0, rtol=1e-6)


def test_rgba_composited_over_white(tmp_path):
    a = np.zeros((1, 3, 4), dtype=np.uint8)
    a[0, 0] = (0, 0, 0, 0)           # fully transparent black -> white
    a[0, 1] = (0, 0, 0, 255)         # opaque black
    a[0, 2] = (255, 0, 0, 128)       # half red over white
    out, meta = load_image(save(Image.fromarray(a, "RGBA"), tmp_path / "a.png"))
    assert meta["alpha"] is True and out.shape == (1, 3, 3)
    np.testing.assert_allclose(out[0, 0], [1, 1, 1])
    np.testing.assert_allclose(out[0, 1], [0, 0, 0])
    alpha = 128 / 255
    np.testing.assert_allclose(out[0, 2], [1.0, 1 - alpha, 1 - alpha], atol=1e-6)


def test_la_composited_over_white(tmp_path):
    a = np.array([[[0, 0], [0, 255], [100, 255]]], dtype=np.uint8)
    out = read_image(save(Image.fromarray(a, "LA"), tmp_path / "la.png"))
    assert out.shape == (1, 3)
    np.testing.assert_allclose(out[0], [1.0, 0.0, 100 / 255], atol=1e-6)


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2])
    im.info["transparency"] = 1                   # the blue entry is transparent
    p = tmp_path / "pal.png"
    im.save(p, transparency=1)
    out, meta = load_image(p)
    assert meta["mode"] == "P" and meta["alpha"] is True
    np.testing.assert_allclose(out[0, 0], [1, 0, 0])
    np.testing.assert_allclose(out[0, 1], [1, 1, 1])          # transparent -> white
    np.testing.assert_allclose(out[0, 2], [0, 1, 0])


def test_grey_palette_gives_grey(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    im.putdata([0, 200])
    out = read_image(save(im, tmp_path / "gp.png"))
    assert out.shape == (1, 2)
    np.testing.assert_allclose(out[0], [0, 200 / 255], atol=1e-6)


def test_cmyk_jpeg(tmp_path):
    im = Image.new("CMYK", (16, 16), (0, 0, 0, 0))          # white paper
    for x in range(8):
        for y in range(16):
            im.putpixel((x, y), (0, 0, 0, 255))           # black ink on the left half
    out, meta = load_image(save(im, tmp_path / "cmyk.jpg", quality=95))
    assert meta["mode"] == "CMYK" and out.shape == (16, 16, 3)
    assert out[:, :4].max() < 0.05          # black -> 0
    assert out[:, 12:].min() > 0.95         # white paper -> 1


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((20, 40), dtype=np.uint8)        # wide picture, bright block top-left
    a[:5, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6                              # display rotated 90 degrees clockwise
    p = save(Image.fromarray(a), tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out, meta = load_image(p)
    assert meta["orientation"] == 6
    assert out.shape == (40, 20)                  # tall after rotation
    # clockwise: the top-left block moves to the top-right
    assert out[:10, -5:].mean() > 0.9 and out[:10, :5].mean() < 0.1


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("L", (6, 6), v) for v in (10, 200, 90)]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    out, meta = load_image(p)
    assert meta["animated"] is True
    np.testing.assert_allclose(out, 10 / 255, atol=1e-6)


@pytest.mark.parametrize("fmt,ext", [("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif"),
                                     ("PNG", "png"), ("GIF", "gif")])
def test_lossless_formats_round_trip(tmp_path, fmt, ext):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out, meta = load_image(save(Image.fromarray(a), tmp_path / f"x.{ext}", fmt, **kw))
    assert meta["format"] == fmt
    grey = out if out.ndim == 2 else out[..., 0]
    np.testing.assert_allclose(grey, a / 255.0, atol=1e-6)


def test_format_sniffed_not_taken_from_the_name(tmp_path):
    a = np.full((3, 3), 77, dtype=np.uint8)
    p = tmp_path / "really_tiff.png"
    Image.fromarray(a).save(p, "TIFF")
    out, meta = load_image(p)
    assert meta["format"] == "TIFF"
    np.testing.assert_allclose(out, 77 / 255, atol=1e-6)


def test_text_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello, this is not a picture\n")
    with pytest.raises(DataError) as e:
        read_image(p)
    msg = str(e.value)
    assert "notes.png" in msg and "not a PNG, JPEG, BMP, GIF, TIFF or WebP image" in msg
    assert "text" in msg


def test_disallowed_format_refused(tmp_path):
    p = tmp_path / "pic.jpg"
    Image.new("RGB", (4, 4)).save(p, "JPEG2000")
    with pytest.raises(DataError, match="JPEG 2000"):
        read_image(p)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: image is empty \(0 bytes\)"):
        read_image(p)


def test_corrupt_png_named(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    i = raw.index(b"IDAT") + 20
    raw[i] ^= 0xFF
    p = tmp_path / "img_0042.png"
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        read_image(p)
    assert "img_0042.png" in str(e.value) and "corrupt image" in str(e.value)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
                    ).save(buf, "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg: corrupt image"):
        read_image(p)


def test_huge_header_refused_fast(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header_only(100000, 100000))
    t = time.perf_counter()
    with pytest.raises(DataError) as e:
        read_image(p)
    assert time.perf_counter() - t < 0.5
    assert "image too large (10000000000 pixels > limit 64000000)" in str(e.value)
    assert "bomb.png" in str(e.value)
    with pytest.raises(DataError, match="image too large"):
        probe_image(p)


def test_pixel_limit_boundary(tmp_path, monkeypatch):
    p = save(Image.new("L", (10, 10)), tmp_path / "hundred.png")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    assert read_image(p).shape == (10, 10)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 99)
    with pytest.raises(DataError, match=r"100 pixels > limit 99"):
        read_image(p)


def test_decompression_bomb_warning_is_an_error(tmp_path, monkeypatch):
    # between 1x and 2x of Pillow's limit Pillow only warns; the loader makes it an error
    p = save(Image.new("L", (15, 10)), tmp_path / "warn.png")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match=r"image too large \(150 pixels > limit 100\)"):
        read_image(p)


def test_pillow_limit_is_set_explicitly():
    assert Image.MAX_IMAGE_PIXELS == images.MAX_IMAGE_PIXELS == 64_000_000


def test_file_size_limit_checked_before_reading(tmp_path, monkeypatch):
    p = save(Image.new("L", (50, 50)), tmp_path / "big.bmp")
    size = os.path.getsize(p)
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", size)
    assert read_image(p).shape == (50, 50)
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", size - 1)
    with pytest.raises(DataError, match=rf"big\.bmp: image is {size} bytes; the limit is"):
        read_image(p)


def test_fifo_and_directory_and_missing(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"pipe\.png: image is a FIFO"):
        read_image(fifo)                          # must not block
    with pytest.raises(DataError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(DataError, match=r"nope\.png: cannot open image: no such file"):
        read_image(tmp_path / "nope.png")


def test_dev_zero_refused():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(DataError, match="character device"):
        read_image("/dev/zero")


def test_probe_reports_size_and_greyness(tmp_path):
    g = probe_image(save(Image.new("L", (7, 3)), tmp_path / "g.png"))
    c = probe_image(save(Image.new("RGB", (7, 3)), tmp_path / "c.png"))
    assert g == {"size": [7, 3], "grey": True, "format": "PNG"}
    assert c["grey"] is False and c["size"] == [7, 3]
