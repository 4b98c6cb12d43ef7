"""IDX files, the format of MNIST (LeCun et al. 1998), plain or gzip-compressed.

Layout: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
then one big-endian uint32 per dimension, then the data in C order. cnncli reads only
unsigned-byte IDX files: images with 3 dimensions (count, rows, columns) and labels with
1 (count).

Every size is checked before anything is allocated: the declared data size is a
Python-int product (NumPy's uint32 product would wrap) compared with the file size, and
for gzip files with what deflate can possibly hold (at most 1032 bytes out per byte in).
A file must hold exactly the declared data: trailing bytes are an error.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cnncli.errors import DataError
from cnncli.io._fs import open_regular, os_reason

#: Largest decompressed data accepted from one IDX file (bytes).
MAX_IDX_BYTES = 4 * 1024**3
#: Deflate's best case is about 1032:1; a gzip file cannot expand beyond this.
_DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 22

_TYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "16-bit integer",
    0x0C: "32-bit integer",
    0x0D: "32-bit float",
    0x0E: "64-bit float",
}


def _gzip_reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "compressed file ended early (truncated .gz)"
    if isinstance(exc, gzip.BadGzipFile):
        msg = str(exc)
        if "CRC" in msg:
            return "CRC check failed: the compressed data is corrupt"
        if "length" in msg.lower():
            return "gzip length check failed: the compressed data is corrupt"
        if "Not a gzipped file" in msg:
            return "not a gzip file"
        return f"corrupt gzip file ({msg})"
    if isinstance(exc, zlib.error):
        return f"corrupt compressed data ({exc})"
    if isinstance(exc, OSError):
        return f"cannot read: {os_reason(exc)}"
    return f"corrupt gzip file ({type(exc).__name__})"


_GZIP_ERRORS = (EOFError, OSError, zlib.error)


def _describe(shape: tuple[int, ...], role: str | None) -> str:
    n = shape[0]
    if role == "images" and len(shape) == 3:
        return f"{n} images of {shape[1]}x{shape[2]}"
    if role == "labels" and len(shape) == 1:
        return f"{n} labels"
    return "an array of shape " + "x".join(str(d) for d in shape)


class _Reader:
    """Reads from a plain or gzip stream, mapping every failure to DataError."""

    def __init__(self, fh: BinaryIO, path: str, compressed: bool):
        self.path = path
        self.compressed = compressed
        self.raw = fh
        self.fh: BinaryIO = gzip.GzipFile(fileobj=fh, mode="rb") if compressed else fh

    def _fail(self, exc: BaseException) -> DataError:
        if self.compressed:
            return DataError(_gzip_reason(exc), path=self.path)
        return DataError(f"cannot read IDX file: {os_reason(exc)}", path=self.path)

    def read(self, n: int) -> bytes:
        try:
            return self.fh.read(n)
        except _GZIP_ERRORS as exc:
            raise self._fail(exc) from None

    def readinto(self, buf: memoryview) -> int:
        """Fill ``buf`` as far as the stream allows; return the bytes read."""
        pos, total = 0, len(buf)
        while pos < total:
            try:
                got = self.fh.readinto(buf[pos : min(total, pos + _CHUNK)])
            except _GZIP_ERRORS as exc:
                raise self._fail(exc) from None
            if not got:
                break
            pos += got
        return pos

    def count_rest(self, cap: int = 64 * 1024**2) -> tuple[int, bool]:
        """Bytes left in the stream (up to ``cap``) and whether the end was reached.

        Reading to the end of a gzip member also verifies its CRC and length.
        """
        n = 0
        while n <= cap:
            try:
                chunk = self.fh.read(_CHUNK)
            except gzip.BadGzipFile as exc:
                if "Not a gzipped file" in str(exc):
                    raise DataError(
                        "unexpected bytes after the end of the compressed data", path=self.path
                    ) from None
                raise self._fail(exc) from None
            except _GZIP_ERRORS as exc:
                raise self._fail(exc) from None
            if not chunk:
                return n, True
            n += len(chunk)
        return n, False

    def close(self) -> None:
        try:
            if self.fh is not self.raw:
                self.fh.close()
        finally:
            self.raw.close()


def read_idx(path: str | os.PathLike, role: str | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file (plain or .gz) into a uint8 array of its declared shape.

    ``role`` is ``"images"`` (3 dimensions required), ``"labels"`` (1 dimension) or None
    (1 to 4 dimensions). Raises DataError naming the file for anything malformed.
    """
    p = os.fspath(path)
    name = Path(p).name
    fh, file_size = open_regular(p, "IDX file")
    if file_size == 0:
        fh.close()
        raise DataError("IDX file is empty (0 bytes)", path=p)
    try:
        start = fh.read(2)
        fh.seek(0)
    except OSError as exc:
        fh.close()
        raise DataError(f"cannot read IDX file: {os_reason(exc)}", path=p) from None
    compressed = start == b"\x1f\x8b"
    if not compressed and name.lower().endswith(".gz"):
        fh.close()
        raise DataError(
            f"not a gzip file: the name ends in .gz but it starts with 0x{start.hex()}", path=p
        )
    rd = _Reader(fh, p, compressed)
    try:
        return _read(rd, p, file_size, role)
    finally:
        try:
            rd.close()
        except _GZIP_ERRORS:
            pass


def _read(rd: _Reader, p: str, file_size: int, role: str | None) -> np.ndarray:
    head = rd.read(4)
    if len(head) < 4:
        raise DataError(
            f"not an IDX file: {len(head)} bytes, shorter than the 4-byte IDX magic number", path=p
        )
    if head[0] != 0 or head[1] != 0:
        raise DataError(
            f"not an IDX file (magic 0x{head.hex()}; an IDX file starts with 0x0000 then a type "
            "code and the number of dimensions)",
            path=p,
        )
    code, ndim = head[2], head[3]
    if code != 0x08:
        kind = _TYPE_NAMES.get(code)
        found = f"0x{code:02X} ({kind})" if kind else f"0x{code:02X} (not a valid IDX type)"
        raise DataError(
            f"IDX data type {found}; cnncli reads only unsigned-byte IDX files (type 0x08)", path=p
        )
    if ndim == 0:
        raise DataError("IDX header declares 0 dimensions; expected 1 (labels) or 3 (images)",
                        path=p)
    want = {"images": 3, "labels": 1}.get(role or "")
    if want is not None and ndim != want:
        other = {3: "an images file", 1: "a labels file"}.get(ndim, f"a {ndim}-dimensional array")
        expected = (
            "an images file with 3 dimensions (count, rows, columns)"
            if role == "images"
            else "a labels file with 1 dimension (count)"
        )
        hint = "did you swap the images and labels files?" if ndim in (1, 3) else None
        raise DataError(f"this is {other} ({ndim} dimensions), expected {expected}",
                        path=p, hint=hint)
    if want is None and ndim > 4:
        raise DataError(f"IDX header declares {ndim} dimensions; at most 4 are supported", path=p)
    dims_raw = rd.read(4 * ndim)
    header = 4 + 4 * ndim
    if len(dims_raw) < 4 * ndim:
        raise DataError(
            f"truncated IDX header: {ndim} dimensions need a {header}-byte header, "
            f"the file ends after {4 + len(dims_raw)} bytes",
            path=p,
        )
    shape = struct.unpack(f">{ndim}I", dims_raw)
    if shape[0] == 0:
        raise DataError(f"dataset is empty: the header declares 0 {role or 'items'}", path=p)
    if any(d == 0 for d in shape[1:]):
        raise DataError(f"header declares {_describe(shape, role)}: a zero dimension", path=p)
    declared = 1
    for d in shape:
        declared *= d                         # Python ints: no silent wrap-around
    what = f"header declares {_describe(shape, role)} ({declared} bytes)"
    if not rd.compressed:
        have = file_size - header
        if have < declared:
            raise DataError(
                f"{what} but the file has {max(have, 0)} bytes after the {header}-byte header "
                "(truncated?)",
                path=p,
            )
        if have > declared:
            raise DataError(
                f"{what}: {have - declared} unexpected trailing bytes after the declared data",
                path=p,
            )
    else:
        bound = _DEFLATE_MAX_RATIO * file_size + 1024
        if declared + header > bound:
            raise DataError(
                f"{what} but a gzip file of {file_size} bytes cannot hold more than about "
                f"{bound} bytes (truncated or corrupt header)",
                path=p,
            )
    if declared > MAX_IDX_BYTES:
        raise DataError(f"{what}, more than the limit of {MAX_IDX_BYTES} bytes", path=p)
    out = np.empty(declared, dtype=np.uint8)
    got = rd.readinto(memoryview(out))
    if got < declared:
        raise DataError(
            f"{what} but the decompressed data has {got} bytes after the {header}-byte header "
            "(truncated?)",
            path=p,
        )
    if rd.compressed:
        extra, at_end = rd.count_rest()
        if extra:
            more = "" if at_end else " at least"
            raise DataError(
                f"{what}:{more} {extra} unexpected trailing bytes after the declared data", path=p
            )
    return out.reshape(shape)


def encode_idx(arr: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array (1 to 4 dimensions)."""
    a = np.ascontiguousarray(arr)
    if a.dtype != np.uint8:
        raise ValueError(f"IDX writer takes uint8 arrays, got {a.dtype}")
    if not 1 <= a.ndim <= 4:
        raise ValueError(f"IDX writer takes 1 to 4 dimensions, got {a.ndim}")
    return struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + (
        a.tobytes()
    )


def write_idx(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write a uint8 array as IDX; gzip-compressed (reproducibly, mtime 0) if the name ends .gz."""
    data = encode_idx(arr)
    p = Path(path)
    if p.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    p.write_bytes(data)
