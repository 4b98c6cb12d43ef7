"""What every command shares: option definitions, consoles, error translation.

Results go to stdout; progress, warnings and errors to stderr. Library code never
prints: it raises ``CnncliError`` or reports through callbacks, and the command
wrapper here turns errors into one line plus an exit code.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from cnncli.errors import CnncliError, ExitCode

# ---- shared options: one definition each -------------------------------------------------
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a config value: key.path=value (YAML flow value; [0], [1]... for list "
        "items). Repeatable.",
        metavar="KEY=VALUE",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (overrides train.seed).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="Checkpoint file or run folder.", show_default=True
    ),
]
DEFAULT_MODEL = "runs/latest"

_stderr = None
_stdout = None


def err_console():
    """Rich console on stderr (imported lazily: start-up stays fast)."""
    global _stderr
    if _stderr is None:
        from rich.console import Console

        _stderr = Console(stderr=True, highlight=False)
    return _stderr


def out_console():
    global _stdout
    if _stdout is None:
        from rich.console import Console

        class _OutConsole(Console):
            def on_broken_pipe(self) -> None:
                # The reader went away (`cnncli ... | head -1`). Rich would exit with status 1
                # here; the command wrapper decides instead, as for any other write to stdout.
                self.quiet = True
                raise BrokenPipeError(errno.EPIPE, "stdout was closed")

        try:
            tty = sys.stdout.isatty()
        except (AttributeError, ValueError):
            tty = False
        # in a pipe or a file, tables keep one line per row instead of wrapping at 80 columns
        # (tables take only the width they need; nothing printed here expands to the width)
        _stdout = _OutConsole(highlight=False, soft_wrap=False, width=None if tty else 1000)
    return _stdout


def warn(message: str) -> None:
    con = err_console()
    if con.is_terminal:
        con.print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False)
    else:
        sys.stderr.write(f"warning: {message}\n")


def info(message: str, quiet: bool = False) -> None:
    if not quiet:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


def print_json(doc: Any) -> None:
    import json

    sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def report_error(err: CnncliError) -> None:
    sys.stderr.write(f"error: {err}\n")
    if err.hint:
        sys.stderr.write(f"hint: {err.hint}\n")
    sys.stderr.flush()


def write_crash_log(exc: BaseException) -> str:
    """Write the traceback to a crash log and return its path."""
    text = "".join(traceback.format_exception(exc))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        path = folder / f"cnncli-crash-{stamp}-{os.getpid()}.log"
        try:
            path.write_text(text, encoding="utf-8")
            return str(path)
        except OSError:
            continue
    return "(could not write a crash log)"


def command(fn: Callable) -> Callable:
    """Wrap a command: CnncliError -> message + its exit code; anything else -> exit 70.

    With ``--debug`` (or CNNCLI_DEBUG=1) the traceback is printed as well.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug")) or os.environ.get("CNNCLI_DEBUG") == "1"
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except CnncliError as e:
            if debug:
                traceback.print_exc(file=sys.stderr)
            report_error(e)
            raise typer.Exit(int(e.code)) from None
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(int(ExitCode.SIGINT)) from None
        except BrokenPipeError:
            # stdout closed early (`cnncli ... | head -1`): not an error of ours. Point the
            # descriptor at /dev/null so the final flush at exit cannot fail again.
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            except (OSError, ValueError, AttributeError):
                pass
            raise typer.Exit(0) from None
        except MemoryError as e:
            report_error(CnncliError(f"out of memory: {e}", code=ExitCode.ENVIRONMENT))
            raise typer.Exit(int(ExitCode.ENVIRONMENT)) from None
        except Exception as e:  # noqa: BLE001 - the one place that catches everything
            log = write_crash_log(e)
            if debug:
                traceback.print_exc(file=sys.stderr)
            sys.stderr.write(
                f"error: internal error ({type(e).__name__}: {e}); traceback written to {log}\n"
                "hint: this is a bug in cnncli; rerun with --debug to see the traceback\n"
            )
            raise typer.Exit(int(ExitCode.INTERNAL)) from None

    return wrapper
