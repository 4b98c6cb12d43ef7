"""Random bytes and mutations of valid IDX and .npz files give only DataError."""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncli.errors import DataError
from cnncli.io.idx import read_idx
from cnncli.io.npz import read_npz

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def valid_idx() -> bytes:
    x = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    return struct.pack(">BBBBIII", 0, 0, 8, 3, 3, 4, 5) + x.tobytes()


def valid_npz(compressed: bool) -> bytes:
    buf = io.BytesIO()
    x = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    (np.savez_compressed if compressed else np.savez)(buf, x=x, y=np.arange(3))
    return buf.getvalue()


IDX = valid_idx()
IDX_GZ = gzip.compress(IDX, mtime=0)
NPZ = valid_npz(False)
NPZ_C = valid_npz(True)


@st.composite
def mutated(draw, base: bytes):
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i: i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


def only_data_error(fn, path, data: bytes):
    path.write_bytes(data)
    try:
        fn(path)
    except DataError as e:
        assert str(path.name) in str(e)


@pytest.fixture(scope="module")
def fdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.binary(max_size=512))
def test_idx_random_bytes(fdir, data):
    only_data_error(lambda p: read_idx(p, role="images"), fdir / "r-images-idx3-ubyte", data)


@FUZZ
@given(data=st.one_of(mutated(IDX), mutated(IDX_GZ)))
def test_idx_mutations(fdir, data):
    only_data_error(lambda p: read_idx(p, role="images"), fdir / "m-images-idx3-ubyte", data)


@FUZZ
@given(data=st.one_of(st.binary(max_size=512), st.binary(max_size=64).map(lambda b: b"PK" + b)))
def test_npz_random_bytes(fdir, data):
    only_data_error(read_npz, fdir / "r.npz", data)


@FUZZ
@given(data=st.one_of(mutated(NPZ), mutated(NPZ_C)))
def test_npz_mutations(fdir, data):
    only_data_error(read_npz, fdir / "m.npz", data)
