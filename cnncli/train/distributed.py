"""Data-parallel training over MPI: one model, K processes, the same result as one process.

Every rank holds the whole model and the whole training set. Each step, the global batch
(``train.batch_size`` images, in the order single-process training visits them) is cut into
K contiguous slices; rank r computes the gradient of its slice, scaled by its share of the
batch, and one in-place ``Allreduce`` of a single flat buffer (every gradient tensor, then a
few bookkeeping slots) sums them, so every rank holds the gradient of the batch mean and takes
the same optimizer step. Random numbers are drawn for the whole global batch in sample order
(``ShardRng``), so augmentation and dropout do not depend on K either.

Rank 0 alone prints, writes the run folder and checkpoints. A rank that fails reports it in
the next collective (a slot of the step's buffer, or ``Dist.check``); then every rank stops
with the failing rank's exit code and only that rank prints. Anything that escapes outside
those points ends the job with ``MPI_Abort`` after printing, so no rank is left waiting.

Nothing here imports mpi4py until ``Dist.init`` is called: single-process training and
``cnncli --help`` never load MPI.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cnncli.errors import CnncliError, ExitCode, UsageError

MPI_HINT = "pip install 'cnncli[mpi]'   (mpi4py and an MPICH build from the package index)"
# (rank, size) variables set by MPI launchers: MPICH/Hydra (PMI), Open MPI, PMIx
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
# private test hook: "R" fails rank R at its first training step, "R:setup" while loading
FAIL_ENV = "_CNNCLI_TEST_FAIL_RANK"
# how long a rank that waits for the others sleeps between checks
POLL_SECONDS = 0.0002


# ---- where we are ------------------------------------------------------------------------------


def world_from_env(environ: dict | None = None) -> tuple[int, int] | None:
    """(rank, size) when an MPI launcher started this process, from its environment alone.

    None outside MPI (no launcher variables) and for a job of one process, which trains
    exactly as a plain run does.
    """
    env = os.environ if environ is None else environ
    size = next((env[v] for v in _SIZE_VARS if env.get(v)), None)
    rank = next((env[v] for v in _RANK_VARS if env.get(v)), "0")
    try:
        k, r = int(size), int(rank)
    except (TypeError, ValueError):
        return None
    return (r, k) if k > 1 else None


def injected_failure(rank: int, where: str) -> None:
    """Private test hook: raise a data error on the rank named by ``_CNNCLI_TEST_FAIL_RANK``."""
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return
    r, _, at = spec.partition(":")
    if r.strip() == str(rank) and (at or "step") == where:
        from cnncli.errors import DataError

        raise DataError(f"injected failure on rank {rank} ({where})")


# ---- launching ---------------------------------------------------------------------------------


def find_mpiexec() -> str | None:
    """The MPI launcher: the one installed beside this Python first (the ``cnncli[mpi]``
    extra puts MPICH's there), then ``mpiexec`` on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("mpiexec")


def missing_mpi() -> str | None:
    """What is missing for multi-process training (None when mpi4py and mpiexec are there)."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed"
    if find_mpiexec() is None:
        return "no MPI launcher (mpiexec) was found beside Python or on PATH"
    return None


def launcher_env(mpiexec: str, workers: int) -> dict[str, str]:
    """The environment for ``mpiexec``; Open MPI needs a few settings MPICH does not."""
    env = dict(os.environ)
    try:
        res = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                             timeout=10, check=False, stdin=subprocess.DEVNULL)
        version = res.stdout + res.stderr
    except (OSError, subprocess.SubprocessError):
        version = ""
    if "Open MPI" in version or "OpenRTE" in version:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        # the libfabric transport fails in many containers; shared memory and TCP remain
        env.setdefault("OMPI_MCA_btl", "^ofi")
        if workers > (os.cpu_count() or 1):
            env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    return env


def launch(workers: int, args: list[str]) -> int:
    """Run ``mpiexec -n WORKERS python -m cnncli ARGS`` and return its exit code.

    SIGINT and SIGTERM received here are passed on to the launcher, which hands them to
    every rank (Hydra's mpiexec does); the ranks save and stop together.
    """
    missing = missing_mpi()
    if missing is not None:
        raise UsageError(
            f"--workers {workers} needs MPI: {missing}",
            hint=f"install it with: {MPI_HINT}; or train in one process without --workers",
        )
    mpiexec = find_mpiexec()
    cmd = [mpiexec, "-n", str(workers), sys.executable, "-m", "cnncli", *args]
    env = launcher_env(mpiexec, workers)
    # the launcher gets its own process group, so a Ctrl-C on the terminal reaches it once,
    # through us, rather than twice
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, process_group=0)

    def forward(signum, _frame):
        try:
            proc.send_signal(signum)
        except OSError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:  # pragma: no cover - handlers are installed
                forward(signal.SIGINT, None)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 128 - rc if rc < 0 else rc


# ---- errors ------------------------------------------------------------------------------------


class RankStopped(CnncliError):
    """This rank stops because another rank failed, or because all ranks agreed to stop;
    the rank that speaks has printed the message, so this one exits quietly."""

    def __init__(self, code: int) -> None:
        super().__init__("stopped with the other ranks", code=int(code))
        self.agreed = True


def exit_code_of(exc: BaseException) -> int:
    """The exit code the CLI gives ``exc`` (``cnncli.cli.common.command``'s rules)."""
    if isinstance(exc, CnncliError):
        return int(exc.code)
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    if isinstance(exc, KeyboardInterrupt):
        return int(ExitCode.SIGINT)
    if isinstance(exc, MemoryError):
        return int(ExitCode.ENVIRONMENT)
    return int(ExitCode.INTERNAL)


def agreed(exc: BaseException) -> bool:
    """Whether every rank raised for the same reason at the same point (no abort needed)."""
    return bool(getattr(exc, "agreed", False))


def mark_agreed(exc: BaseException) -> BaseException:
    try:
        exc.agreed = True
    except AttributeError:  # pragma: no cover - built-in exceptions take attributes
        pass
    return exc


# ---- the communicator --------------------------------------------------------------------------


def signal_slots(signum: int | None) -> tuple[float, float]:
    """A rank's stop request as (SIGINT?, SIGTERM?) flags for a sum or max reduction."""
    return (float(signum == signal.SIGINT), float(signum == signal.SIGTERM))


def agreed_signal(sigint: float, sigterm: float) -> int | None:
    """The stop every rank acts on: SIGTERM if any rank got one, else SIGINT, else None."""
    if sigterm > 0:
        return int(signal.SIGTERM)
    if sigint > 0:
        return int(signal.SIGINT)
    return None


class Dist:
    """MPI_COMM_WORLD for training: rank, size, the few collectives the loop needs."""

    def __init__(self, comm: Any, mpi: Any) -> None:
        self.comm = comm
        self.MPI = mpi
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())
        self.threads = 1                    # Python threads of the engine on this rank
        self.blas_threads: int | None = None
        self._limits = None

    @classmethod
    def init(cls) -> Dist:
        """Start MPI (imports mpi4py); a UsageError with the install hint without it."""
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise UsageError(
                f"this process was started by an MPI launcher, but mpi4py cannot be "
                f"imported ({e})",
                hint=f"install it with: {MPI_HINT}",
            ) from None
        return cls(MPI.COMM_WORLD, MPI)

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def shard(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """Rows [lo, hi) of n that ``rank`` (default this one) takes: contiguous, sizes
        differing by at most one."""
        r = self.rank if rank is None else rank
        return (n * r) // self.size, (n * (r + 1)) // self.size

    # -- collectives
    def allreduce_sum(self, buf) -> None:
        """Sum ``buf`` (a contiguous float array) over the ranks, in place."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def wait_for_all(self) -> None:
        """Return when every rank has called this (a barrier that sleeps while it waits).

        MPI implementations spin while a collective waits for a late rank. On cores that
        share a physical core (hyperthreads, many virtual machines) a spinning rank slows
        the ones still computing; sleeping in short slices leaves them the core.
        """
        req = self.comm.Ibarrier()
        while not req.Test():
            time.sleep(POLL_SECONDS)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def check(self, err: BaseException | None, signum: int | None = None) -> int | None:
        """Collective status check. Every rank calls it at the same point with the error it
        met since the last collective (or None) and the stop signal it received (or None).

        If any rank failed, every rank raises: the lowest failing rank its own error (with
        its rank in the message when it is not rank 0), the others ``RankStopped`` with that
        error's exit code. Otherwise returns the stop signal all ranks agree on, or None.
        """
        import numpy as np

        a, b = signal_slots(signum)
        v = np.array([self.size - self.rank if err is not None else 0, a, b], np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, v, op=self.MPI.MAX)
        if v[0] > 0:
            self.fail(self.size - int(v[0]), err)
        return agreed_signal(v[1], v[2])

    def failed(self, err: BaseException | None) -> None:
        """After a collective that showed some rank failed: find the lowest failing rank and
        raise (a second, small collective)."""
        import numpy as np

        v = np.array([self.size - self.rank if err is not None else 0], np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, v, op=self.MPI.MAX)
        self.fail(self.size - int(v[0]), err)

    def fail(self, leader: int, err: BaseException | None) -> None:
        code = exit_code_of(err) if self.rank == leader and err is not None else 0
        code = int(self.comm.bcast(code, root=leader))
        if self.rank == leader and err is not None:
            if self.rank != 0 and isinstance(err, CnncliError) and not agreed(err):
                err.message = f"rank {self.rank} of {self.size}: {err.message}"
                err.args = (err.message,)
            raise mark_agreed(err)
        raise RankStopped(code)

    def abort(self, code: int) -> None:
        """End every rank now (the last resort when a rank fails outside a collective)."""
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            self.comm.Abort(int(code))

    # -- threads
    def pin_threads(self) -> int:
        """Give this rank its share of the machine's cores: ranks on one machine divide its
        cores (at least one each). Limits BLAS with threadpoolctl and sets ``self.threads``,
        the engine's thread count. Returns the share."""
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            try:
                mine = frozenset(os.sched_getaffinity(0))
            except AttributeError:  # pragma: no cover - not Linux
                mine = frozenset(range(os.cpu_count() or 1))
            sets = local.allgather(mine)
            if all(s == mine for s in sets):
                share = max(1, len(mine) // local.Get_size())
            else:  # the launcher bound each rank to its own cores already
                share = max(1, len(mine))
        finally:
            local.Free()
        self.threads = max(1, min(2, share))
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            self.blas_threads = None
        else:
            self._limits = threadpool_limits(limits=share, user_api="blas")
            self.blas_threads = share
        return share


class ShardRng:
    """The step's random generator as one rank sees it.

    Every draw is made for the whole global batch (``total`` samples, first axis) in sample
    order, exactly as single-process training draws it, and only this rank's rows
    ``[lo, hi)`` are returned. So augmentation and dropout of sample i do not depend on how
    many ranks share the batch. Supports the draws the trainer and the engine make:
    ``random`` and ``standard_normal`` with a size whose first axis is the local batch.
    """

    def __init__(self, rng: Any, total: int, lo: int, hi: int) -> None:
        self.rng = rng
        self.total = int(total)
        self.lo = int(lo)
        self.hi = int(hi)

    def _global(self, size: Any) -> tuple[int, ...]:
        shape = (size,) if isinstance(size, int) else tuple(size)
        if not shape or shape[0] != self.hi - self.lo:
            raise ValueError(f"a per-sample draw of shape {shape} on a shard of "
                             f"{self.hi - self.lo} samples")
        return (self.total, *shape[1:])

    def random(self, size: Any, dtype: Any = None) -> Any:
        kw = {} if dtype is None else {"dtype": dtype}
        return self.rng.random(self._global(size), **kw)[self.lo:self.hi]

    def standard_normal(self, size: Any, dtype: Any = None) -> Any:
        kw = {} if dtype is None else {"dtype": dtype}
        return self.rng.standard_normal(self._global(size), **kw)[self.lo:self.hi]
