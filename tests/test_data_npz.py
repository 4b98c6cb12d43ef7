""".npz reader on real files: valid archives and the D27-D33 corpus rows."""

from __future__ import annotations

import io
import os
import pickle
import struct
import time
import zipfile

import numpy as np
import pytest

from cnncli.errors import DataError
from cnncli.io import npz as npz_mod
from cnncli.io.npz import read_npz


def savez(path, compressed=False, **arrays):
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def test_uint8_nhw(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8)
    xs, ys = read_npz(savez(tmp_path / "d.npz", x=x, y=y))
    assert xs.shape == (6, 1, 5, 4) and xs.dtype == np.uint8
    np.testing.assert_array_equal(xs[:, 0], x)
    assert ys.dtype == np.int64 and ys.tolist() == y.tolist()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ">f4"])
def test_float_nchw_compressed(tmp_path, dtype):
    x = np.random.default_rng(1).random((4, 3, 2, 2)).astype(dtype)
    y = np.arange(4, dtype=np.int32)
    xs, ys = read_npz(savez(tmp_path / "f.npz", compressed=True, x=x, y=y))
    assert xs.dtype == np.float32 and xs.shape == (4, 3, 2, 2)
    np.testing.assert_allclose(xs, x.astype(np.float64), rtol=1e-6)


def test_d27_object_array_refused(tmp_path):
    x = np.empty(3, dtype=object)
    p = savez(tmp_path / "obj.npz", x=x, y=np.zeros(3, np.int64))
    with pytest.raises(DataError) as e:
        read_npz(p)
    assert "obj.npz" in str(e.value) and "contains pickled objects" in str(e.value)
    assert "never loads pickles" in str(e.value)


def test_d27_pickle_renamed_npz(tmp_path):
    marker = tmp_path / "PWNED"
    p = tmp_path / "data.npz"
    p.write_bytes(pickle.dumps({"x": [1, 2, 3]}, protocol=4))
    with pytest.raises(DataError, match="Python pickle, not an .npz archive"):
        read_npz(p)
    assert not marker.exists()


@pytest.mark.parametrize("members,needle", [
    ({"x": np.zeros((2, 3, 3), np.uint8)}, "missing member 'y' (labels)"),
    ({"y": np.zeros(2, np.int64)}, "missing member 'x' (images)"),
    ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros(2, np.int64),
      "z": np.zeros(1)}, "unexpected member 'z.npy'"),
    ({"images": np.zeros((2, 3, 3), np.uint8), "labels": np.zeros(2)}, "unexpected member"),
    ({"x": np.zeros((2, 3, 3), np.int8), "y": np.zeros(2, np.int64)},
     "member x has dtype int8; expected uint8"),
    ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros(2, np.float64)},
     "member y has dtype float64; expected integer"),
    ({"x": np.zeros((2, 9), np.uint8), "y": np.zeros(2, np.int64)},
     "member x has shape (2, 9); expected (N, C, H, W) or (N, H, W)"),
    ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros((2, 1), np.int64)},
     "member y has shape (2, 1)"),
    ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros(3, np.int64)},
     "image count 2 (x) != label count 3 (y)"),
    ({"x": np.zeros((0, 3, 3), np.uint8), "y": np.zeros(0, np.int64)}, "dataset is empty"),
    ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.zeros(2, np.int64)}, "channels-last"),
])
def test_d28_members_dtypes_shapes(tmp_path, members, needle):
    p = savez(tmp_path / "m.npz", **members)
    with pytest.raises(DataError) as e:
        read_npz(p)
    assert needle in str(e.value) and "m.npz" in str(e.value)


def test_d29_non_finite_and_out_of_range(tmp_path):
    x = np.zeros((20, 2, 2), np.float32)
    x[12, 1, 0] = np.nan
    with pytest.raises(DataError, match=r"non-finite pixel values in x\[12\]"):
        read_npz(savez(tmp_path / "nan.npz", x=x, y=np.zeros(20, np.int64)))
    x[12, 1, 0] = np.inf
    with pytest.raises(DataError, match=r"non-finite pixel values in x\[12\]"):
        read_npz(savez(tmp_path / "inf.npz", x=x, y=np.zeros(20, np.int64)))
    x[12, 1, 0] = 255.0
    with pytest.raises(DataError,
                       match=r"must lie in \[0, 1\]; x\[12\] holds values from 0 to 255"):
        read_npz(savez(tmp_path / "big.npz", x=x, y=np.zeros(20, np.int64)))


def test_labels_negative_or_huge(tmp_path):
    x = np.zeros((3, 2, 2), np.uint8)
    with pytest.raises(DataError, match="label -1 at index 1 is negative"):
        read_npz(savez(tmp_path / "n.npz", x=x, y=np.array([0, -1, 2])))
    with pytest.raises(DataError, match="labels must be below 10000"):
        read_npz(savez(tmp_path / "h.npz", x=x, y=np.array([0, 10**9, 2])))


def test_d30_zip_bomb_refused_before_inflating(tmp_path):
    p = tmp_path / "bomb.npz"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        header = npy_bytes(np.zeros((0,), np.uint8))[:128]
        with zf.open("x.npy", "w", force_zip64=True) as m:
            m.write(header)
            chunk = b"\x00" * (1 << 20)
            for _ in range(40):
                m.write(chunk)
        zf.writestr("y.npy", npy_bytes(np.zeros(2, np.int64)))
    assert os.path.getsize(p) < 200_000
    t = time.perf_counter()
    with pytest.raises(DataError) as e:
        read_npz(p)
    assert time.perf_counter() - t < 0.5
    assert "member x.npy declares 41943168 bytes" in str(e.value)
    assert "zip bomb" in str(e.value)


def test_total_size_cap(tmp_path, monkeypatch):
    p = savez(tmp_path / "ok.npz", x=np.zeros((4, 4, 4), np.uint8), y=np.zeros(4, np.int64))
    monkeypatch.setattr(npz_mod, "MAX_NPZ_BYTES", 100)
    with pytest.raises(DataError, match=r"archive declares \d+ uncompressed bytes, limit 100"):
        read_npz(p)


def test_d31_header_declares_huge_shape(tmp_path):
    p = tmp_path / "liar.npz"
    # a version 1.0 .npy header: magic, version, little-endian length, padded dict
    d = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 784), }"
    d = d + b" " * (-(10 + len(d) + 1) % 64) + b"\n"
    hdr = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("x.npy", hdr + b"\x00" * 16)
        zf.writestr("y.npy", npy_bytes(np.zeros(2, np.int64)))
    t = time.perf_counter()
    with pytest.raises(DataError) as e:
        read_npz(p)
    assert time.perf_counter() - t < 0.5
    assert "member x.npy: header declares shape (1000000000, 784) of float32" in str(e.value)
    assert "holds 16 bytes" in str(e.value)


def test_malformed_npy_header(tmp_path):
    p = tmp_path / "mal.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("x.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}   \n")
        zf.writestr("y.npy", npy_bytes(np.zeros(2, np.int64)))
    with pytest.raises(DataError, match=r"member x.npy: malformed .npy header"):
        read_npz(p)


def test_d32_truncated(tmp_path):
    good = savez(tmp_path / "g.npz", x=np.zeros((4, 3, 3), np.uint8), y=np.zeros(4, np.int64))
    raw = good.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 10, 30):
        p = tmp_path / f"cut{cut}.npz"
        p.write_bytes(raw[:cut])
        with pytest.raises(DataError, match=rf"cut{cut}\.npz: not a valid \.npz \(zip\) file"):
            read_npz(p)


def test_not_zip_and_single_npy(tmp_path):
    p = tmp_path / "text.npz"
    p.write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="not a valid .npz"):
        read_npz(p)
    q = tmp_path / "arr.npz"
    q.write_bytes(npy_bytes(np.zeros(3)))
    with pytest.raises(DataError, match="single .npy array"):
        read_npz(q)
    e = tmp_path / "empty.npz"
    e.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty \(0 bytes\)"):
        read_npz(e)


def test_d33_fifo_and_directory(tmp_path):
    fifo = tmp_path / "d.npz"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="FIFO"):
        read_npz(fifo)
    with pytest.raises(DataError, match="directory"):
        read_npz(tmp_path)
