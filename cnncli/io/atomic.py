"""Crash-safe file writes: every file cnncli writes goes through here.

A write goes to a temporary file in the destination folder, is flushed and fsynced,
then renamed over the destination (``os.replace`` is atomic on POSIX), and the folder
is fsynced. A crash or kill at any moment leaves either the old file or the new one,
never a torn one; the temporary file is removed on failure.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from cnncli.errors import CnncliError, ExitCode, RuntimeFault
from cnncli.io._fs import os_reason

TMP_PREFIX = "."
TMP_SUFFIX = ".partial"

_ENV_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync folder).

    Raises RuntimeFault (exit 3) when the disk is full or fails, CnncliError (exit 2)
    when the destination cannot be written for another reason (read-only, not a folder).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    tmp = folder / f"{TMP_PREFIX}{path.name}.{os.getpid()}{TMP_SUFFIX}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 & ~_umask())
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        kind = RuntimeFault if e.errno in _ENV_ERRNOS else CnncliError
        code = ExitCode.ENVIRONMENT if kind is RuntimeFault else ExitCode.BAD_INPUT
        raise kind(
            f"cannot write '{path}': {os_reason(e)} (needed {len(data):,} bytes); "
            "the previous version of the file, if any, is intact",
            code=code,
        ) from e
    _fsync_dir(folder)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_orphans(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files left by a killed write; returns what was removed."""
    removed = []
    for p in Path(folder).glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def point_symlink(link: str | os.PathLike, target: str) -> None:
    """Make ``link`` a symlink to ``target`` (relative), replacing it atomically."""
    link = Path(link)
    tmp = link.parent / f"{TMP_PREFIX}{link.name}.{os.getpid()}{TMP_SUFFIX}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        # A filesystem without symlinks: fall back to a small pointer file.
        atomic_write_text(link.with_name(link.name + ".txt"), target + "\n")
