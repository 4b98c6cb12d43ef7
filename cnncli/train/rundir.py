"""Run folders: naming, the write probe, the lock, metrics.csv.

A run folder is ``runs/<name>-<n>`` (n the next free number) or the exact ``--out``
folder. While a process trains into it, ``run.lock`` holds that process's id; a lock
whose process is gone is stale and taken over.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from pathlib import Path

from cnncli.errors import CnncliError, UsageError
from cnncli.io._fs import os_reason

LOCK_NAME = "run.lock"
METRICS_FIELDS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
    "images_per_s",
)
_INT_FIELDS = {"epoch"}


def check_out_dir(path: Path) -> None:
    """Refuse an --out folder that exists and is not empty (nothing is modified)."""
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise UsageError(f"--out '{path}' exists and is not a folder")
        check_unlocked(path)
        if any(path.iterdir()):
            raise UsageError(
                f"run folder '{path}' exists and is not empty",
                hint=f"continue it with: cnncli train --resume {path}; or choose another --out",
            )


def make_dir(path: Path) -> bool:
    """Create ``path`` (and parents); True when it did not exist before."""
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"cannot create run folder '{path}': a file is in the way") from None
    except OSError as e:
        raise CnncliError(f"cannot create run folder '{path}': {os_reason(e)}") from None
    return not existed


def new_run_dir(base: Path, name: str) -> Path:
    """Claim ``base/<name>-<n>`` with n one more than the highest number already there."""
    make_dir(base)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "run"
    pattern = re.compile(rf"^{re.escape(safe)}-(\d+)$")
    try:
        taken = [int(m.group(1)) for p in base.iterdir() if (m := pattern.match(p.name))]
    except OSError as e:
        raise CnncliError(f"cannot list '{base}': {os_reason(e)}") from None
    n = max(taken, default=0) + 1
    while True:
        folder = base / f"{safe}-{n}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1
        except OSError as e:
            raise CnncliError(f"cannot create run folder '{folder}': {os_reason(e)}") from None


def probe_writable(folder: Path) -> None:
    """Create and delete a file in ``folder``: exit 2 now rather than after training."""
    probe = folder / f".write-probe.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CnncliError(
            f"cannot write to '{folder}': {os_reason(e)}",
            hint="choose a writable folder with --out DIR",
        ) from None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def check_unlocked(folder: Path) -> None:
    """Refuse (exit 2) a run folder whose lock is held by a running process."""
    lock = RunLock(folder)
    pid = lock._owner() if lock.path.exists() else None
    if pid is not None and _pid_alive(pid):
        raise lock.locked_error(pid)


class RunLock:
    """``run.lock`` created with O_EXCL and holding the owner's pid.

    A lock whose pid no longer runs (a killed process) is stale: it is removed and taken.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid = self._owner()
                if pid is not None and _pid_alive(pid):
                    raise self.locked_error(pid) from None
                try:
                    self.path.unlink()  # stale: its process is gone
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise CnncliError(
                        f"cannot remove the stale lock '{self.path}': {os_reason(e)}"
                    ) from None
                continue
            except OSError as e:
                raise CnncliError(f"cannot create '{self.path}': {os_reason(e)}") from None
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
            self.held = True
            return
        raise UsageError(f"cannot lock run folder '{self.path.parent}': the lock keeps changing")

    def locked_error(self, pid: int) -> UsageError:
        return UsageError(
            f"run folder '{self.path.parent}' locked by pid {pid}",
            hint=f"another cnncli process is training into it; if not, delete {self.path}",
        )

    def _owner(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._owner() == os.getpid():
            try:
                self.path.unlink()
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---- metrics.csv ------------------------------------------------------------------------------


def _fmt(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, int):
        return str(v)
    f = float(v)  # type: ignore[arg-type]
    return repr(f) if math.isfinite(f) else ""


def metrics_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METRICS_FIELDS)
    for r in rows:
        w.writerow([_fmt(r.get(k)) for k in METRICS_FIELDS])
    return buf.getvalue()


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.csv (numbers parsed; an empty cell is None); [] when absent."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CnncliError(f"cannot read '{path}': {os_reason(e)}") from None
    rows = []
    for rec in csv.DictReader(io.StringIO(text)):
        row: dict = {}
        for k in METRICS_FIELDS:
            cell = (rec.get(k) or "").strip()
            try:
                row[k] = None if not cell else int(cell) if k in _INT_FIELDS else float(cell)
            except ValueError:
                raise CnncliError(f"'{path}': bad value {cell!r} in column {k}") from None
        rows.append(row)
    return rows


def write_metrics(path: Path, rows: list[dict]) -> None:
    from cnncli.io.atomic import atomic_write_text

    atomic_write_text(path, metrics_csv(rows))
