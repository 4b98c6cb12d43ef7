"""``cnncli train``: build, train with progress, write a run folder."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Annotated, Any

import typer

from cnncli.cli.common import DebugOpt, JsonOpt, QuietOpt, SeedOpt, SetOpt, command

HELP = """Train a network and write a run folder (runs/<name>-<n>/).

CONFIG is a YAML file or a bundled config name (default: quickstart, a small
network on the bundled digits). Prints the layer table, then progress on
stderr. The run folder holds best.safetensors, last.safetensors, config.yaml,
metrics.csv and curves.png; runs/latest points at the newest run. Ctrl-C saves
last.safetensors and prints how to resume.

CNNCLI_PROGRESS=jsonl prints machine-readable progress instead: one JSON
object per line on stderr.

Several processes train one model together (data parallelism over MPI):
--workers K starts K on this machine; `mpiexec -n K cnncli train CONFIG`
(with -hostfile, across machines) does the same by hand. Needs
`pip install 'cnncli[mpi]'`.

Examples:

  cnncli train

  cnncli train lenet5 --epochs 5 --set train.optimizer.lr=0.01

  cnncli train --resume runs/quickstart-1 --set train.epochs=20

  cnncli train lenet5 --workers 2
"""


def register(app: typer.Typer) -> None:
    app.command("train", help=HELP)(train_command)


@command
def train_command(
    config: Annotated[
        str | None,
        typer.Argument(help="Config file or bundled config name (default: quickstart).",
                       show_default=False, metavar="CONFIG"),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Continue a run: its folder or its last.safetensors.",
                     metavar="RUN"),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Exact run folder (new or empty) instead of "
                     "runs/<name>-<n>.", metavar="DIR"),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Shorthand for --set train.epochs=N.", min=1)
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Train with K processes on this machine (starts "
                     "mpiexec; needs pip install 'cnncli[mpi]').", min=1, metavar="K"),
    ] = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    from cnncli.train.distributed import world_from_env

    world = world_from_env()
    if world is None and workers is not None and workers > 1:
        from cnncli.train.distributed import launch

        args = relaunch_args(config, resume, out, epochs, set_, seed, json_, quiet, debug)
        raise typer.Exit(launch(workers, args))
    if world is not None:
        _train_mpi(world, workers, config, resume, out, epochs, set_, seed, json_, quiet,
                   debug)
        return
    from cnncli.train.signals import stop_on_signals

    cfg, state = prepare(config, resume, epochs, set_, seed)
    mode = progress_mode(quiet)
    reporter = make_reporter(mode)
    for w in getattr(cfg, "warnings", ()):
        reporter.on_warning(w)
    if mode in ("rich", "plain"):
        print_layer_table(cfg.model)
    with stop_on_signals() as flag:
        result = _run(cfg, out, state, reporter, flag)
    print_result(result, reporter, json_)


def _run(cfg, out, state, reporter, flag, dist=None):
    """Train, closing the progress display however it ends; an interruption (state saved)
    prints its resume line and exits 130/143."""
    from cnncli.errors import Interrupted
    from cnncli.train.loop import train

    try:
        return train(cfg, out=out, resume=state, callbacks=reporter, stop=flag, dist=dist)
    except Interrupted as e:
        reporter.close()
        sys.stderr.write(f"{e.message}\n")
        sys.stderr.flush()
        raise typer.Exit(int(e.code)) from None
    finally:
        reporter.close()


def prepare(config, resume, epochs, set_, seed) -> tuple[Any, Any]:
    """The config to train and the resume state (None for a new run)."""
    from cnncli.errors import UsageError
    from cnncli.train.loop import prepare_resume

    overrides = list(set_ or [])
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if resume is not None:
        if config is not None:
            raise UsageError(
                "give either CONFIG or --resume, not both: a resumed run keeps its own config",
                hint="change train.* values of a resumed run with --set",
            )
        state = prepare_resume(resume, overrides, seed=seed)
        return state.config, state
    from cnncli.resources import resolve_config_path
    from cnncli.spec import load_config

    source: Any = config if config is not None else "quickstart"
    if config is not None:
        source = str(resolve_config_path(config))
    return load_config(source, tuple(overrides), seed=seed), None


def print_result(result: Any, reporter: Reporter, json_: bool) -> None:
    if result.already_complete:
        reporter.message(
            f"run already complete (epoch {result.epochs}/{result.epochs_planned}"
            + (", stopped early" if result.stopped_early else "")
            + "); nothing to do",
            force=True,
        )
    if json_:
        from cnncli.cli.common import print_json

        print_json(result.to_dict())
    else:
        sys.stdout.write(summary_text(result))
        sys.stdout.flush()


# ---- several processes (MPI) -------------------------------------------------------------------


def relaunch_args(config, resume, out, epochs, set_, seed, json_, quiet, debug) -> list[str]:
    """The arguments of this ``cnncli train`` call without ``--workers``, for mpiexec."""
    args = ["train"]
    if config is not None:
        args.append(str(config))
    if resume is not None:
        args += ["--resume", str(resume)]
    if out is not None:
        args += ["--out", str(out)]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    for s in set_ or []:
        args += ["--set", s]
    if seed is not None:
        args += ["--seed", str(seed)]
    args += [flag for flag, on in (("--json", json_), ("--quiet", quiet), ("--debug", debug))
             if on]
    return args


def _train_mpi(world, workers, config, resume, out, epochs, set_, seed, json_, quiet,
               debug) -> None:
    """This process is one rank of ``mpiexec -n K cnncli train ...``.

    Rank 0 reads the config (and the run to resume) and sends it to the others, prints and
    writes; the others stay silent. An error every rank knows about (``Dist.check``) ends
    each rank with its exit code and is printed by one rank; anything else is printed by
    the rank that met it, and MPI_Abort ends the job so that no rank waits forever.
    """
    from cnncli.errors import CnncliError
    from cnncli.train.distributed import Dist, RankStopped, agreed

    rank, _ = world
    try:
        dist = Dist.init()
    except CnncliError as e:
        if rank != 0:  # every rank meets the same problem; rank 0 says it
            raise typer.Exit(int(e.code)) from None
        raise
    try:
        _train_ranks(dist, workers, config, resume, out, epochs, set_, seed, json_, quiet)
    except typer.Exit:
        raise
    except RankStopped as e:
        raise typer.Exit(int(e.code)) from None
    except BaseException as e:  # noqa: BLE001
        if agreed(e):
            raise  # the rank that speaks: reported by the command wrapper
        _abort(dist, e, debug)


def _abort(dist: Any, exc: BaseException, debug: bool) -> None:
    """Print what went wrong on this rank and end every rank with its exit code."""
    import traceback

    from cnncli.cli.common import report_error, write_crash_log
    from cnncli.errors import CnncliError
    from cnncli.train.distributed import exit_code_of

    code = exit_code_of(exc)
    who = f"rank {dist.rank} of {dist.size}: " if dist.rank else ""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, CnncliError):
        exc.message = who + exc.message
        report_error(exc)
    elif isinstance(exc, KeyboardInterrupt):
        sys.stderr.write(f"{who}interrupted\n")
    else:
        log = write_crash_log(exc)
        sys.stderr.write(f"error: {who}internal error ({type(exc).__name__}: {exc}); traceback "
                         f"written to {log}\n")
    dist.abort(code)


def _train_ranks(dist, workers, config, resume, out, epochs, set_, seed, json_, quiet
                 ) -> None:
    from cnncli.errors import UsageError
    from cnncli.train.signals import stop_on_signals

    # handlers first: a Ctrl-C from now on is a request that the ranks act on together
    with stop_on_signals() as flag:
        payload = err = None
        if dist.lead:
            try:
                if workers is not None and workers != dist.size:
                    raise UsageError(
                        f"--workers {workers} does not match the {dist.size} processes "
                        "mpiexec started",
                        hint="under mpiexec, leave --workers out (mpiexec -n sets the count)",
                    )
                payload = prepare(config, resume, epochs, set_, seed)
            except BaseException as e:  # noqa: BLE001 - reported to every rank
                err = e
        dist.check(err)
        cfg, state = dist.bcast(payload)
        share = dist.pin_threads()
        mode = progress_mode(quiet) if dist.lead else "none"
        reporter = make_reporter(mode)
        if dist.lead:
            for w in getattr(cfg, "warnings", ()):
                reporter.on_warning(w)
            if dist.blas_threads is None:
                reporter.on_warning("threadpoolctl is not installed, so the processes' BLAS "
                                    "threads are not limited and may compete for cores")
            if mode in ("rich", "plain"):
                print_layer_table(cfg.model)
            bs = cfg.train.batch_size
            reporter.message(
                f"data parallel: {dist.size} processes, {share} core"
                f"{'s' if share > 1 else ''} each; each step splits a batch of {bs} into "
                f"{dist.size} shards of {bs // dist.size}"
                + (f"-{-(-bs // dist.size)}" if bs % dist.size else "")
            )
        result = _run(cfg, out, state, reporter, flag, dist)
    if dist.lead:
        print_result(result, reporter, json_)


# ---- rendering ---------------------------------------------------------------------------------


def progress_mode(quiet: bool) -> str:
    """jsonl (CNNCLI_PROGRESS=jsonl), none (--quiet), rich (a terminal) or plain."""
    if os.environ.get("CNNCLI_PROGRESS", "").strip().lower() == "jsonl":
        return "jsonl"
    if quiet:
        return "none"
    if os.environ.get("NO_COLOR") or os.environ.get("CI") or os.environ.get("TERM") == "dumb":
        return "plain"
    try:
        if not sys.stderr.isatty():
            return "plain"
    except (AttributeError, ValueError):
        return "plain"
    from cnncli.cli.common import err_console

    return "rich" if err_console().is_terminal else "plain"


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "-"
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return str(v)


def print_layer_table(spec: Any) -> None:
    """The per-layer table (cnncli summary's figures) on stderr, plain text off a terminal."""
    rows = _layer_rows(spec)
    headers = ("layer", "options", "output", "params", "FLOPs")
    if sys.stderr.isatty() and progress_mode(False) == "rich":
        from rich import box
        from rich.table import Table

        from cnncli.cli.common import err_console

        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold",
                      title=f"network {spec.name}", title_justify="left")
        for i, h in enumerate(headers):
            table.add_column(h, justify="right" if i >= 3 else "left", no_wrap=i != 1)
        for r in rows[:-1]:
            table.add_row(*r)
        table.add_section()
        table.add_row(*rows[-1])
        err_console().print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in pairs).rstrip()

    out = [f"network {spec.name}", line(headers)]
    out += [line(r) for r in rows]
    sys.stderr.write("\n".join(out) + "\n")
    sys.stderr.flush()


def _layer_rows(spec: Any) -> list[tuple[str, ...]]:
    """(layer, options, output, params, FLOPs) per layer, input first, totals last."""
    shape = "x".join
    try:
        from cnncli.engine.summary import summarize

        s = summarize(spec)
        rows = [("input", "", shape(str(d) for d in s.input), "", "")]
        rows += [
            (r.name, r.options, shape(str(d) for d in r.output_shape), f"{r.params:,}",
             f"{r.flops:,}")
            for r in s.rows
        ]
        rows.append(("total", "", "", f"{s.total_params:,}", f"{s.total_flops:,}"))
        return rows
    except ImportError:
        pass
    from cnncli.spec.model import param_shapes

    rows = [("input", "", shape(str(d) for d in spec.input), "", "")]
    total = 0
    for layer in spec.layers:
        n = sum(math.prod(s) for s in param_shapes(layer).values())
        total += n
        rows.append((layer.name, layer.kind, shape(str(d) for d in layer.out_shape), f"{n:,}",
                     ""))
    rows.append(("total", "", "", f"{total:,}", ""))
    return rows


def summary_text(r: Any) -> str:
    lines = [f"run: {r.run_dir}"]
    ep = f"epochs: {r.epochs}/{r.epochs_planned}"
    if r.stopped_early:
        ep += " (stopped early)"
    lines.append(ep)
    if r.best_val_acc is not None:
        lines.append(
            f"validation accuracy: best {_fmt(r.best_val_acc)} (epoch {r.best_epoch}), "
            f"final {_fmt(r.final_val_acc)}"
        )
    if r.test_samples:
        lines.append(
            f"test accuracy: {_fmt(r.test_acc)} on {r.test_samples:,} images "
            "(best checkpoint)"
        )
    lines.append(f"time: {r.seconds:.1f} s, {r.images_per_s:,.0f} images/s")
    return "\n".join(lines) + "\n"


def epoch_line(row: dict, info: dict) -> str:
    parts = [
        f"epoch {row['epoch']}/{info.get('epochs', '?')}",
        f"train loss {_fmt(row['train_loss'])} acc {_fmt(row['train_acc'])}",
    ]
    if row.get("val_acc") is not None:
        parts.append(f"val loss {_fmt(row['val_loss'])} acc {_fmt(row['val_acc'])}")
    parts.append(f"lr {_fmt(row['lr'], '.4g')}")
    parts.append(f"{row['seconds']:.1f} s")
    parts.append(f"{row['images_per_s']:,.0f} img/s")
    line = "  ".join(parts)
    if info.get("improved"):
        line += "  (best)"
    if info.get("stopped_early"):
        line += "  early stop"
    return line


class Reporter:
    """Base reporter: plain lines per epoch on stderr; subclasses draw bars or JSON."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def _write(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def message(self, text: str, force: bool = False) -> None:
        if force or not self.quiet:
            self._write(text)

    def close(self) -> None: ...

    # Callbacks protocol (cnncli.train.loop.Callbacks)
    def on_start(self, info: dict) -> None:
        if info.get("already_complete"):
            return
        if info["resumed"]:
            where = f"epoch {info['start_epoch']}"
            if info["start_step"]:
                where += f" step {info['start_step'] + 1}/{info['steps_per_epoch']}"
            changed = ", ".join(info.get("changed") or [])
            self.message(
                f"resuming {info['run_dir']} at {where}" + (f" (changed: {changed})"
                                                            if changed else "")
            )
        else:
            self.message(f"run folder: {info['run_dir']}")
        self.message(
            f"training on {info['train_samples']:,} images, validating on "
            f"{info['val_samples']:,}; {info['epochs']} epochs of {info['steps_per_epoch']} "
            f"steps (batch {info['batch_size']}, {info['dtype']})"
        )

    def on_epoch_start(self, info: dict) -> None: ...

    def on_step(self, info: dict) -> None: ...

    def on_evaluate(self, info: dict) -> None: ...

    def on_epoch_end(self, row: dict, info: dict) -> None:
        self.message(epoch_line(row, info))

    def on_warning(self, message: str) -> None:
        from cnncli.cli.common import warn

        warn(message)

    def on_end(self, result: Any) -> None: ...


class JsonlReporter(Reporter):
    """One JSON object per line on stderr: start, epoch_start, step, evaluate, epoch, end."""

    def _event(self, name: str, payload: dict) -> None:
        doc = {"event": name, **{k: _finite(v) for k, v in payload.items()}}
        self._write(json.dumps(doc, default=_json_default, allow_nan=False))

    def message(self, text: str, force: bool = False) -> None:
        self._event("message", {"text": text})

    def on_start(self, info: dict) -> None:
        self._event("start", info)

    def on_epoch_start(self, info: dict) -> None:
        self._event("epoch_start", info)

    def on_step(self, info: dict) -> None:
        self._event("step", info)

    def on_evaluate(self, info: dict) -> None:
        self._event("evaluate", info)

    def on_epoch_end(self, row: dict, info: dict) -> None:
        self._event("epoch", {**row, **{k: v for k, v in info.items() if k not in row}})

    def on_warning(self, message: str) -> None:
        self._event("warning", {"text": message})

    def on_end(self, result: Any) -> None:
        self._event("end", result.to_dict())


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _json_default(o: Any) -> Any:
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


class RichReporter(Reporter):
    """An epoch bar and a batch bar (loss, accuracy, images/s, ETA) on a terminal."""

    def __init__(self) -> None:
        super().__init__(quiet=False)
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from cnncli.cli.common import err_console

        self.progress = Progress(
            TextColumn("{task.description:<7}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err_console(),
            transient=True,
        )
        self.epoch_bar = None
        self.batch_bar = None
        self.started = False

    def _write(self, text: str) -> None:
        if self.started:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            super()._write(text)

    def close(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False

    def on_start(self, info: dict) -> None:
        super().on_start(info)
        if info.get("already_complete"):
            return
        self.progress.start()
        self.started = True
        self.epoch_bar = self.progress.add_task(
            "epoch", total=info["epochs"], completed=info["start_epoch"] - 1, stats=""
        )
        self.batch_bar = self.progress.add_task(
            "batch", total=info["steps_per_epoch"], completed=info["start_step"], stats=""
        )

    def on_epoch_start(self, info: dict) -> None:
        self.progress.reset(
            self.batch_bar, total=info["steps"], completed=info["first_step"], stats=""
        )
        self.progress.update(self.epoch_bar, stats=f"lr {info['lr']:.4g}")

    def on_step(self, info: dict) -> None:
        self.progress.update(
            self.batch_bar,
            completed=info["step"],
            stats=f"loss {info['loss']:.4f}  acc {info['acc']:.4f}  "
            f"{info['images_per_s']:,.0f} img/s",
        )

    def on_evaluate(self, info: dict) -> None:
        self.progress.update(self.batch_bar, stats=f"evaluating {info['split']} "
                             f"({info['samples']:,} images)")

    def on_epoch_end(self, row: dict, info: dict) -> None:
        self._write(epoch_line(row, info))
        self.progress.update(self.epoch_bar, completed=row["epoch"],
                             stats=f"best {info['metric']} {_fmt(info['best_metric'])}")

    def on_warning(self, message: str) -> None:
        self._write(f"warning: {message}")


def make_reporter(mode: str) -> Reporter:
    if mode == "jsonl":
        return JsonlReporter()
    if mode == "rich":
        return RichReporter()
    return Reporter(quiet=(mode == "none"))
