"""Opening data files safely: regular files only, never blocking on a FIFO or a device.

A path is opened with O_NONBLOCK (so a FIFO without a writer cannot hang the open), and
the *open descriptor* is checked with fstat, so what is checked is what is read.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from cnncli.errors import DataError


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def os_reason(exc: OSError) -> str:
    """A short human reason for an OSError, without the path (the caller names the file)."""
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno == errno.ELOOP:
        return "too many levels of symbolic links"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EISDIR:
        return "is a directory, expected a file"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return "no space left on device"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is not a folder"
    return exc.strerror or type(exc).__name__


def open_regular(path: str | os.PathLike, what: str = "file") -> tuple[BinaryIO, int]:
    """Open ``path`` for binary reading; return (file object, size in bytes).

    Raises DataError naming the file when it is missing, unreadable, a directory, a
    FIFO, a device or a socket. Nothing is read from a non-regular file.
    """
    p = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise DataError(f"cannot open {what}: {os_reason(exc)}", path=p) from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(
            f"{what} is {_kind(st.st_mode)}, expected a regular file; it was not read", path=p
        )
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        raise DataError(f"cannot open {what}: {os_reason(exc)}", path=p) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(
                f"{what} is {_kind(st.st_mode)}, expected a regular file; it was not read",
                path=p,
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return fh, st.st_size


def read_regular(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes (checked first)."""
    fh, size = open_regular(path, what)
    with fh:
        if size > limit:
            raise DataError(
                f"{what} is {size} bytes; the limit is {limit} bytes", path=os.fspath(path)
            )
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise DataError(f"cannot read {what}: {os_reason(exc)}", path=os.fspath(path)) from None
    if len(data) > limit:
        raise DataError(
            f"{what} grew beyond the limit of {limit} bytes while reading", path=os.fspath(path)
        )
    return data
