"""Random bytes and mutations of valid picture files give only DataError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cnncli.errors import DataError
from cnncli.io.images import frame_digit, load_image

FUZZ = settings(max_examples=150, deadline=None)


def encoded(fmt: str, mode: str = "L") -> bytes:
    rng = np.random.default_rng(0)
    shape = (12, 10) if mode == "L" else (12, 10, len(mode))
    im = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


BASES = [encoded("PNG"), encoded("PNG", "RGBA"), encoded("JPEG", "RGB"), encoded("GIF"),
         encoded("BMP"), encoded("TIFF"), encoded("WEBP", "RGB")]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 64))]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        if not data:
            break
    return bytes(data)


@pytest.fixture(scope="module")
def fdir(tmp_path_factory):
    return tmp_path_factory.mktemp("imgfuzz")


def check(path, data):
    path.write_bytes(data)
    try:
        arr, meta = load_image(path)
    except DataError as e:
        assert path.name in str(e)
        return
    assert arr.dtype == np.float32 and np.isfinite(arr).all()
    assert arr.min() >= 0 and arr.max() <= 1
    out, info = frame_digit(arr)
    assert out.shape == (28, 28) and np.isfinite(out).all()


@settings(FUZZ)
@given(data=st.binary(max_size=512))
def test_random_bytes(fdir, data):
    check(fdir / "r.png", data)


@settings(FUZZ)
@given(data=mutated())
def test_mutated_pictures(fdir, data):
    check(fdir / "m.img", data)
