"""IDX reader on real files: valid plain and gzip files, and the D01-D10 corpus rows."""

from __future__ import annotations

import gzip
import os
import struct
import time

import numpy as np
import pytest

from cnncli.errors import DataError
from cnncli.io import idx as idx_mod
from cnncli.io.datasets import check_labels, load_dataset
from cnncli.io.idx import encode_idx, read_idx, write_idx


def make_idx(arr: np.ndarray) -> bytes:
    """Independent of cnncli's writer: magic, type 0x08, ndim, big-endian dims, data."""
    return (struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            + arr.astype(np.uint8).tobytes())


def images(n=60, h=28, w=28, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


def write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_plain_and_gzip_round_trip(tmp_path):
    x = images(5, 4, 3)
    a = read_idx(write(tmp_path, "a-images-idx3-ubyte", make_idx(x)), role="images")
    b = read_idx(write(tmp_path, "b-images-idx3-ubyte.gz", gzip.compress(make_idx(x))),
                 role="images")
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(b, x)
    assert a.dtype == np.uint8 and a.shape == (5, 4, 3)


def test_writer_matches_independent_encoding(tmp_path):
    x = images(3, 5, 2)
    assert encode_idx(x) == make_idx(x)
    write_idx(tmp_path / "w.gz", x)
    assert gzip.decompress((tmp_path / "w.gz").read_bytes()) == make_idx(x)


def test_gzip_sniffed_without_gz_name(tmp_path):
    x = images(2, 3, 3)
    p = write(tmp_path, "compressed-images-idx3-ubyte", gzip.compress(make_idx(x)))
    np.testing.assert_array_equal(read_idx(p, role="images"), x)


def test_d01_truncated_mid_data(tmp_path):
    raw = make_idx(images(60))
    p = write(tmp_path, "train-images.idx3-ubyte", raw[: 16 + 30000])
    with pytest.raises(DataError) as e:
        read_idx(p, role="images")
    assert str(e.value).startswith("train-images.idx3-ubyte") or "train-images.idx3-ubyte" in str(
        e.value)
    assert ("header declares 60 images of 28x28 (47040 bytes) but the file has 30000 bytes "
            "after the 16-byte header") in str(e.value)


def test_d02_count_larger_than_data(tmp_path):
    raw = bytearray(make_idx(images(10)))
    raw[4:8] = struct.pack(">I", 11)
    with pytest.raises(DataError, match=r"declares 11 images of 28x28 \(8624 bytes\) but the "
                                         r"file has 7840 bytes"):
        read_idx(write(tmp_path, "c.idx3", bytes(raw)), role="images")


def test_d03_trailing_bytes(tmp_path):
    p = write(tmp_path, "t.idx3", make_idx(images(3)) + b"\x00" * 7)
    with pytest.raises(DataError, match="7 unexpected trailing bytes"):
        read_idx(p, role="images")
    g = write(tmp_path, "t.idx3.gz", gzip.compress(make_idx(images(3)) + b"abc"))
    with pytest.raises(DataError, match="3 unexpected trailing bytes"):
        read_idx(g, role="images")


@pytest.mark.parametrize("head,needle", [
    (b"\x01\x00\x08\x03", "not an IDX file (magic 0x01000803"),
    (b"\x00\x00\x0a\x03", "IDX data type 0x0A (not a valid IDX type)"),
    (b"\x00\x00\x0d\x03", "IDX data type 0x0D (32-bit float); cnncli reads only unsigned-byte"),
    (b"\x00\x00\x08\x00", "declares 0 dimensions"),
])
def test_d04_bad_magic_type_ndim(tmp_path, head, needle):
    p = write(tmp_path, "bad.idx", head + b"\x00" * 40)
    with pytest.raises(DataError) as e:
        read_idx(p, role="images")
    assert needle in str(e.value) and "bad.idx" in str(e.value)


def test_d05_labels_given_as_images(tmp_path):
    p = write(tmp_path, "train-labels-idx1-ubyte", make_idx(np.arange(10, dtype=np.uint8)))
    with pytest.raises(DataError) as e:
        read_idx(p, role="images")
    assert "this is a labels file (1 dimensions), expected an images file" in str(e.value)
    assert e.value.hint == "did you swap the images and labels files?"
    q = write(tmp_path, "train-images-idx3-ubyte", make_idx(images(2)))
    with pytest.raises(DataError, match="this is an images file") as e:
        read_idx(q, role="labels")
    assert "swap" in e.value.hint


def test_d05_labels_file_as_dataset(tmp_path):
    p = write(tmp_path, "train-labels-idx1-ubyte", make_idx(np.arange(10, dtype=np.uint8)))
    with pytest.raises(DataError) as e:
        load_dataset(str(p))
    assert "labels file" in str(e.value) and "swap" in e.value.hint


def test_d06_count_mismatch_names_both(tmp_path):
    write(tmp_path, "train-images-idx3-ubyte", make_idx(images(60)))
    write(tmp_path, "train-labels-idx1-ubyte", make_idx(np.zeros(59, np.uint8)))
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path))
    msg = str(e.value)
    assert "image count 60 != label count 59" in msg
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg


def test_d07_label_outside_model_outputs():
    y = np.zeros(20, np.int64)
    y[17] = 10
    with pytest.raises(DataError, match=r"label 10 at index 17 outside \[0, 10\)"):
        check_labels(y, 10, "labels.idx1")
    check_labels(y, 11)


def test_d08_gzip_truncated_not_gzip_crc(tmp_path):
    gz = gzip.compress(make_idx(images(20)))
    with pytest.raises(DataError, match=r"cut\.gz: compressed file ended early"):
        read_idx(write(tmp_path, "cut.gz", gz[: len(gz) // 2]), role="images")
    with pytest.raises(DataError, match=r"plain\.gz: not a gzip file"):
        read_idx(write(tmp_path, "plain.gz", make_idx(images(2))), role="images")
    bad = bytearray(gz)
    bad[-8] ^= 0xFF                      # CRC32 field of the gzip trailer
    with pytest.raises(DataError, match=r"crc\.gz: CRC check failed"):
        read_idx(write(tmp_path, "crc.gz", bytes(bad)), role="images")
    bad = bytearray(gz)
    bad[len(gz) // 2] ^= 0x55            # inside the deflate stream
    with pytest.raises(DataError, match=r"mid\.gz: "):
        read_idx(write(tmp_path, "mid.gz", bytes(bad)), role="images")


def test_d09_count_zero(tmp_path):
    p = write(tmp_path, "zero.idx3", struct.pack(">BBBBIII", 0, 0, 8, 3, 0, 28, 28))
    with pytest.raises(DataError, match="dataset is empty: the header declares 0 images"):
        read_idx(p, role="images")


def test_d10_huge_dims_instant(tmp_path):
    p = write(tmp_path, "huge.idx3",
              struct.pack(">BBBBIII", 0, 0, 8, 3, 0xFFFFFFFF, 0xFFFFFFFF, 3) + b"\x00" * 10)
    t = time.perf_counter()
    with pytest.raises(DataError) as e:
        read_idx(p, role="images")
    assert time.perf_counter() - t < 0.5
    assert str(0xFFFFFFFF * 0xFFFFFFFF * 3) in str(e.value)
    g = write(tmp_path, "huge.idx3.gz",
              gzip.compress(struct.pack(">BBBBIII", 0, 0, 8, 3, 0xFFFFFFFF, 0xFFFFFFFF, 3)))
    t = time.perf_counter()
    with pytest.raises(DataError, match="cannot hold more than"):
        read_idx(g, role="images")
    assert time.perf_counter() - t < 0.5


def test_size_cap(tmp_path, monkeypatch):
    p = write(tmp_path, "cap.idx3", make_idx(images(2, 4, 4)))
    monkeypatch.setattr(idx_mod, "MAX_IDX_BYTES", 32)
    assert read_idx(p).shape == (2, 4, 4)
    monkeypatch.setattr(idx_mod, "MAX_IDX_BYTES", 31)
    with pytest.raises(DataError, match="more than the limit of 31 bytes"):
        read_idx(p)


def test_short_header_and_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"IDX file is empty \(0 bytes\)"):
        read_idx(write(tmp_path, "e.idx", b""))
    with pytest.raises(DataError, match="shorter than the 4-byte IDX magic"):
        read_idx(write(tmp_path, "s.idx", b"\x00\x00"))
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(write(tmp_path, "h.idx", b"\x00\x00\x08\x03\x00\x00\x00\x05"))


def test_d33_fifo_dev_zero_directory(tmp_path):
    fifo = tmp_path / "train-images-idx3-ubyte"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is a FIFO .*expected a regular file"):
        read_idx(fifo)
    if os.path.exists("/dev/zero"):
        with pytest.raises(DataError, match="character device"):
            read_idx("/dev/zero")
    d = tmp_path / "dir.idx3"
    d.mkdir()
    with pytest.raises(DataError, match="is a directory"):
        read_idx(d)
