"""cnncli eval: loss, accuracy, per-class figures and the confusion matrix of a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.common import (
    DEFAULT_MODEL,
    DebugOpt,
    JsonOpt,
    ModelOpt,
    QuietOpt,
    command,
)

HELP = """Score a trained model: loss, accuracy, per-class precision, recall and F1, and the
confusion matrix (rows: true class), as tables and as confusion.png beside the model.

Uses the test data named in the model's config unless --data is given, with the
model's own input normalisation.

Examples:

  cnncli eval

  cnncli eval --model runs/lenet5-1 --data fashion-mnist --json

  cnncli eval --min-accuracy 0.95      (exit status 1 below 95%)
"""
MAX_TABLE_CLASSES = 20


# ---- helpers shared with inspect ------------------------------------------------------------


def load_data_for(meta: dict, data: str | None, split: str):
    """The data set to score a model on: --data, else the config's entry for ``split``.

    Returns (dataset, reference as given, labels as model class indices).
    """
    from cnncli.engine.evaluate import map_labels
    from cnncli.errors import DataError, UsageError
    from cnncli.io.datasets import dataset_label, load_dataset

    cfg = meta["config_obj"]
    spec = cfg.model
    if data is not None:
        ref = data
    else:
        # scoring falls back on nothing (the training data would flatter the model);
        # a health check may sample the test data when no training data is named
        ref = cfg.data.test if split == "test" else (cfg.data.train or cfg.data.test)
        if not ref:
            raise UsageError(
                f"the model's config names no {split} data (data.{split}) to use",
                hint="pass --data: a named dataset, an image folder, an IDX pair or a .npz file",
            )
    ds = load_dataset(ref, split=split, input_shape=tuple(spec.input))
    if tuple(ds.x.shape[1:]) != tuple(spec.input):
        raise DataError(
            f"the images of '{dataset_label(ref)}' are {list(ds.x.shape[1:])}, the model expects "
            f"{list(spec.input)}"
        )
    classes = [str(c) for c in meta.get("classes") or range(spec.outputs)]
    labels = map_labels(ds.classes, classes, ds.y, dataset_label(ref))
    return ds, dataset_label(ref), labels


def batch_reader(ds, norm: dict | None, dtype: str):
    """indices -> normalised network input, for ``predict_logits``."""
    import numpy as np

    from cnncli.io.datasets import apply_normalization

    def batch_of(idx):
        x = ds.batch_float(idx)
        if norm:
            x = apply_normalization(x, norm)
        return np.ascontiguousarray(x, dtype=dtype)

    return batch_of


def parse_min_accuracy(value: float | None) -> float | None:
    """--min-accuracy as a fraction: 0.95 and 95 both mean 95%."""
    from cnncli.errors import UsageError

    if value is None:
        return None
    if not (0.0 <= value <= 100.0):
        raise UsageError(f"--min-accuracy must be a fraction in [0, 1] or a percentage, "
                         f"got {value}")
    return value / 100.0 if value > 1.0 else value


def _progress_callback(quiet: bool):
    """A transient Rich bar on a terminal; nothing otherwise (logs stay clean)."""
    from cnncli.cli.common import err_console

    con = err_console()
    if quiet or not con.is_terminal:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(),
                   console=con, transient=True)
    task = bar.add_task("eval", total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


def _render(doc: dict, result, png: str | None) -> None:
    from rich.table import Table

    from cnncli.cli.common import out_console

    con = out_console()
    con.print(
        f"[bold]{doc['model']}[/bold] on {doc['data']}: {doc['samples']} samples, "
        f"accuracy [bold]{doc['accuracy']:.2%}[/bold], loss {doc['loss']:.4f}"
    )
    t = Table(title="per class", show_edge=False, header_style="bold")
    for col in ("class", "precision", "recall", "F1", "support"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for row in doc["per_class"]:
        t.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                  f"{row['f1']:.3f}", str(row["support"]))
    m = result.metrics
    t.add_section()
    t.add_row("macro avg", f"{m['precision'].mean():.3f}", f"{m['recall'].mean():.3f}",
              f"{m['f1'].mean():.3f}", str(doc["samples"]))
    con.print(t)
    classes = doc["classes"]
    if len(classes) <= MAX_TABLE_CLASSES:
        c = Table(title="confusion matrix (rows: true class, columns: predicted)",
                  show_edge=False, header_style="bold")
        c.add_column("true \\ pred")
        for name in classes:
            c.add_column(name, justify="right")
        for i, name in enumerate(classes):
            cells = []
            for j, v in enumerate(doc["confusion"][i]):
                if i == j:
                    cells.append(f"[bold green]{v}[/bold green]")
                elif v:
                    cells.append(f"[red]{v}[/red]")
                else:
                    cells.append("[dim]0[/dim]")
            c.add_row(name, *cells)
        con.print(c)
    else:
        con.print(f"({len(classes)} classes: the confusion matrix is in the picture only)")
    if png:
        con.print(f"confusion matrix picture: {png}")


def register(app: typer.Typer) -> None:
    @app.command(
        "eval", help=HELP,
        short_help="Loss, accuracy, per-class figures and the confusion matrix.",
    )
    @command
    def eval_command(
        model: ModelOpt = DEFAULT_MODEL,
        data: Annotated[
            str | None,
            typer.Option("--data", "-d", help="Data to evaluate on: a named dataset, an image "
                         "folder, an IDX pair or a .npz file (default: the model's test data).",
                         show_default=False),
        ] = None,
        min_accuracy: Annotated[
            float | None,
            typer.Option("--min-accuracy", help="Exit with status 1 when the accuracy is below "
                         "this (a fraction such as 0.95, or a percentage such as 95).",
                         show_default=False),
        ] = None,
        json_out: JsonOpt = False,
        batch: Annotated[int, typer.Option("--batch", min=1,
                                           help="Images per forward pass.")] = 256,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        from cnncli.cli.common import print_json, warn
        from cnncli.engine.evaluate import evaluate
        from cnncli.errors import CheckFailed, CnncliError
        from cnncli.io.atomic import atomic_write_bytes
        from cnncli.io.checkpoint import load_model
        from cnncli.viz.confusion import confusion_png

        threshold = parse_min_accuracy(min_accuracy)
        net, meta = load_model(model)
        cfg = meta["config_obj"]
        ds, ref, labels = load_data_for(meta, data, "test")
        classes = [str(c) for c in meta.get("classes") or range(cfg.model.outputs)]
        reader = batch_reader(ds, meta.get("normalization"), net.dtype.name)
        bar, update = _progress_callback(quiet or json_out)
        if bar is not None:
            bar.start()
        try:
            result = evaluate(
                net, len(labels), labels, reader, classes, loss=cfg.train.loss, batch=batch,
                progress=update,
            )
        finally:
            if bar is not None:
                bar.stop()
        doc = {"model": meta["file"], "data": ref, **result.to_dict()}
        png_path = Path(meta["file"]).parent / "confusion.png"
        title = (f"{cfg.model.name or 'model'} on {ref}: accuracy {result.accuracy:.2%} "
                 f"({result.samples} samples)")
        try:
            atomic_write_bytes(png_path, confusion_png(result.confusion, classes, title))
            doc["confusion_png"] = str(png_path)
        except CnncliError as e:
            warn(f"confusion matrix picture not written: {e}")
        if json_out:
            print_json(doc)
        else:
            _render(doc, result, doc.get("confusion_png"))
        if threshold is not None and result.accuracy < threshold:
            raise CheckFailed(
                f"accuracy {result.accuracy:.2%} is below --min-accuracy {threshold:.2%}"
            )
