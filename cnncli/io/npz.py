"""``.npz`` datasets: members ``x`` (images) and ``y`` (integer labels), never pickles.

Before NumPy reads anything the archive is checked: a regular file, a valid zip with
exactly the members ``x.npy`` and ``y.npy``, declared uncompressed sizes within a cap and
a compression ratio that no real image data reaches (a zip bomb is refused before it is
inflated), and each member's ``.npy`` header parsed (shape, dtype) and checked against
the member's size. Only then is ``np.load(..., allow_pickle=False)`` called.

``x`` is (N, C, H, W) or (N, H, W), uint8 (0..255) or float32/float64 in [0, 1];
``y`` is (N,) of any integer type, values in [0, MAX_CLASSES).
"""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from cnncli.errors import DataError
from cnncli.io._fs import open_regular, os_reason

#: Largest total of declared uncompressed member sizes accepted (bytes).
MAX_NPZ_BYTES = 4 * 1024**3
#: Largest uncompressed/compressed ratio for members over _RATIO_MIN_BYTES.
MAX_RATIO = 200
_RATIO_MIN_BYTES = 1 << 20
#: Labels must be below this (the class list is built from them).
MAX_CLASSES = 10_000

_MEMBERS = ("x.npy", "y.npy")
_X_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))


def _member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, p: str):
    """(shape, dtype, header length) of one .npy member, read without loading its data."""
    name = info.filename
    try:
        with zf.open(info) as m:
            version = np.lib.format.read_magic(m)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(m)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(m)
            else:
                raise DataError(
                    f"member {name}: .npy format version {version[0]}.{version[1]} is not "
                    "supported (1.0 and 2.0 are)",
                    path=p,
                )
            header_len = m.tell()
    except DataError:
        raise
    except (ValueError, SyntaxError, TypeError, OSError, EOFError, zlib.error,
            zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
        raise DataError(f"member {name}: malformed .npy header ({exc})", path=p) from None
    if not isinstance(dtype, np.dtype):
        raise DataError(f"member {name}: malformed .npy header (bad dtype)", path=p)
    return tuple(int(d) for d in shape), dtype, header_len, fortran


def _preflight(fh, size: int, p: str) -> None:
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError, KeyError, IndexError, OverflowError, zlib.error,
            UnicodeDecodeError) as exc:
        raise DataError(f"not a valid .npz (zip) file ({exc})", path=p) from None
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        extra = [n for n in names if n not in _MEMBERS]
        if extra:
            raise DataError(
                f"unexpected member {extra[0]!r}; an .npz for cnncli holds exactly x (images) "
                "and y (labels)",
                path=p,
            )
        if len(set(names)) != len(names):
            raise DataError("duplicate members in the archive", path=p)
        for want, role in zip(_MEMBERS, ("images", "labels"), strict=True):
            if want not in names:
                raise DataError(
                    f"missing member {want[0]!r} ({role}); found {sorted(names) or 'none'}; "
                    "an .npz for cnncli holds exactly x (images) and y (labels)",
                    path=p,
                )
        total = sum(i.file_size for i in infos)
        if total > MAX_NPZ_BYTES:
            raise DataError(
                f"archive declares {total} uncompressed bytes, limit {MAX_NPZ_BYTES}", path=p
            )
        headers = {}
        for info in infos:
            name = info.filename
            if info.flag_bits & 0x1:
                raise DataError(f"member {name} is encrypted", path=p)
            if info.compress_size > size:
                raise DataError(
                    f"member {name} declares {info.compress_size} compressed bytes in a file of "
                    f"{size} bytes (truncated?)",
                    path=p,
                )
            if info.compress_type == zipfile.ZIP_STORED:
                if info.compress_size != info.file_size:
                    raise DataError(
                        f"member {name} is stored uncompressed but declares {info.file_size} "
                        f"bytes in {info.compress_size}",
                        path=p,
                    )
            elif info.file_size > _RATIO_MIN_BYTES and (
                info.file_size > MAX_RATIO * max(info.compress_size, 1)
            ):
                raise DataError(
                    f"member {name} declares {info.file_size} bytes from {info.compress_size} "
                    f"compressed (ratio above {MAX_RATIO}); refusing a likely zip bomb",
                    path=p,
                )
            shape, dtype, hlen, _ = _member_header(zf, info, p)
            if dtype.hasobject:
                raise DataError(
                    f"member {name} contains pickled objects (dtype {dtype}); cnncli never "
                    "loads pickles",
                    path=p,
                )
            if dtype.fields is not None or dtype.subdtype is not None:
                raise DataError(f"member {name} has a structured dtype {dtype}", path=p)
            count = 1
            for d in shape:
                count *= d
            need = hlen + count * dtype.itemsize
            if need != info.file_size:
                raise DataError(
                    f"member {name}: header declares shape {shape} of {dtype} "
                    f"({count * dtype.itemsize} bytes) but the member holds "
                    f"{info.file_size - hlen} bytes of data",
                    path=p,
                )
            headers[name] = (shape, dtype)
    _check_headers(headers, p)


def _check_headers(headers: dict, p: str) -> None:
    xs, xd = headers["x.npy"]
    ys, yd = headers["y.npy"]
    if xd.newbyteorder("=") not in _X_DTYPES:
        raise DataError(
            f"member x has dtype {xd}; expected uint8 (0..255) or float32/float64 in [0, 1]",
            path=p,
        )
    if yd.kind not in "iu":
        raise DataError(f"member y has dtype {yd}; expected integer class labels", path=p)
    if len(xs) not in (3, 4):
        raise DataError(
            f"member x has shape {xs}; expected (N, C, H, W) or (N, H, W)", path=p
        )
    if len(xs) == 4 and xs[3] in (1, 3, 4) and xs[1] not in (1, 3, 4):
        raise DataError(
            f"member x has shape {xs}, which looks channels-last (N, H, W, C); expected "
            "(N, C, H, W)",
            path=p,
            hint="transpose with x.transpose(0, 3, 1, 2) before saving",
        )
    if len(ys) != 1:
        raise DataError(f"member y has shape {ys}; expected (N,) labels", path=p)
    if xs[0] == 0:
        raise DataError("dataset is empty: x holds 0 images", path=p)
    if any(d == 0 for d in xs[1:]):
        raise DataError(f"member x has shape {xs}: a zero dimension", path=p)
    if xs[0] != ys[0]:
        raise DataError(f"image count {xs[0]} (x) != label count {ys[0]} (y)", path=p)


def read_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an .npz dataset; return x (N, C, H, W) uint8 or float32 in [0, 1], y (N,) int64."""
    p = os.fspath(path)
    fh, size = open_regular(p, ".npz file")
    with fh:
        if size == 0:
            raise DataError(".npz file is empty (0 bytes)", path=p)
        try:
            start = fh.read(8)
            fh.seek(0)
        except OSError as exc:
            raise DataError(f"cannot read .npz file: {os_reason(exc)}", path=p) from None
        if start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            raise DataError(
                "this is a Python pickle, not an .npz archive; cnncli never loads pickles",
                path=p,
            )
        if start.startswith(b"\x93NUMPY"):
            raise DataError(
                "this is a single .npy array; expected an .npz archive with members x and y",
                path=p,
                hint="save with np.savez(path, x=images, y=labels)",
            )
        if not start.startswith(b"PK"):
            raise DataError(
                f"not a valid .npz (zip) file (it starts with 0x{start[:4].hex()})", path=p
            )
        _preflight(fh, size, p)
        fh.seek(0)
        try:
            with np.load(fh, allow_pickle=False) as z:
                x = z["x"]
                y = z["y"]
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
                NotImplementedError, RuntimeError) as exc:
            raise DataError(f"cannot read the .npz data ({exc})", path=p) from None
    return _finish(x, y, p)


def _finish(x: np.ndarray, y: np.ndarray, p: str) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    if x.dtype.kind == "f":
        flat = x.reshape(n, -1)
        finite = np.isfinite(flat).all(axis=1)
        if not finite.all():
            i = int(np.argmin(finite))
            raise DataError(f"non-finite pixel values in x[{i}]", path=p)
        lo = flat.min(axis=1)
        hi = flat.max(axis=1)
        bad = (lo < 0) | (hi > 1)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"float pixel values must lie in [0, 1]; x[{i}] holds values from "
                f"{float(lo[i]):g} to {float(hi[i]):g}",
                path=p,
                hint="divide 0..255 pixel values by 255, or store them as uint8",
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
    else:
        x = np.ascontiguousarray(x, dtype=np.uint8)
    if x.ndim == 3:
        x = x[:, None, :, :]
    if y.size and int(y.min()) < 0:
        i = int(np.argmin(y))
        raise DataError(f"label {int(y[i])} at index {i} is negative", path=p)
    if y.size and int(y.max()) >= MAX_CLASSES:
        i = int(np.argmax(y))
        raise DataError(
            f"label {int(y[i])} at index {i}: labels must be below {MAX_CLASSES}", path=p
        )
    return x, y.astype(np.int64)
