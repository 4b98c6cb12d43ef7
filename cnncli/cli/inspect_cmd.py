"""cnncli inspect: the health of a trained network, layer by layer."""

from __future__ import annotations

from typing import Annotated

import typer

from cnncli.cli.common import (
    DEFAULT_MODEL,
    DebugOpt,
    JsonOpt,
    ModelOpt,
    QuietOpt,
    SeedOpt,
    command,
)

HELP = """Check a trained network's health layer by layer on a sample of data: the share of
active units, dead units (never active on any sampled image; a unit is a feature map
of a conv layer or a neuron of an FC layer), activation mean and std, weight and
gradient norms, and the update/weight ratio one optimizer step at the configured
learning rate would make (about 1e-3 is healthy, per the CS231n notes). Layers that
look unhealthy get a warning.

Examples:

  cnncli inspect

  cnncli inspect --model runs/lenet5-1 --samples 1024 --json
"""


def _fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def _pct(v) -> str:
    return "-" if v is None else f"{v:.0%}"


def _render(doc: dict) -> None:
    from rich import box
    from rich.table import Table

    from cnncli.cli.common import out_console

    con = out_console()
    con.print(f"[bold]{doc['model']}[/bold] on {doc['samples']} samples of {doc['data']}: "
              f"loss {doc['loss']:.4f}; updates of one step at lr {doc['lr']:g}")
    saturating = any(r["saturated_fraction"] is not None for r in doc["layers"])
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    cols = [("layer", "left"), ("kind", "left"), ("active", "right"), ("dead", "right")]
    if saturating:
        cols.append(("saturated", "right"))
    cols += [("mean", "right"), ("std", "right"), ("|w|", "right"), ("|grad|", "right"),
             ("update/|w|", "right")]
    for col, just in cols:
        t.add_column(col, justify=just, no_wrap=True)
    for r in doc["layers"]:
        dead = _pct(r["dead_fraction"])
        if r["dead_fraction"] is not None and r["dead_fraction"] > 0.5:
            dead = f"[red]{dead}[/red]"
        kind = r["type"] if r["type"].startswith("pool") else f"{r['type']}/{r['activation']}"
        if r["type"].startswith("pool") and r["activation"] != "none":
            kind += f"/{r['activation']}"
        row = [r["name"], kind, _pct(r["active_fraction"]), dead]
        if saturating:
            row.append(_pct(r["saturated_fraction"]))
        row += [_fmt(r["mean"]), _fmt(r["std"]), _fmt(r["weight_norm"]), _fmt(r["grad_norm"]),
                _fmt(r["update_ratio"], ".1e")]
        t.add_row(*row)
    con.print(t)
    if doc["warnings"]:
        for w in doc["warnings"]:
            con.print(f"[yellow]warning:[/yellow] {w}")
    else:
        con.print("no layer looks unhealthy")


def register(app: typer.Typer) -> None:
    @app.command(
        "inspect", help=HELP,
        short_help="Layer-by-layer health: dead units, norms, update ratios.",
    )
    @command
    def inspect(
        model: ModelOpt = DEFAULT_MODEL,
        data: Annotated[
            str | None,
            typer.Option("--data", "-d", help="Data to sample: a named dataset, an image "
                         "folder, an IDX pair or a .npz file (default: the model's training "
                         "data).", show_default=False),
        ] = None,
        samples: Annotated[int, typer.Option("--samples", "-n", min=1,
                                             help="How many images to sample.")] = 512,
        json_out: JsonOpt = False,
        seed: SeedOpt = None,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        import numpy as np

        from cnncli.cli.common import print_json
        from cnncli.cli.eval import batch_reader, load_data_for
        from cnncli.engine.inspect import inspect_network
        from cnncli.io.checkpoint import load_model

        net, meta = load_model(model)
        cfg = meta["config_obj"]
        ds, ref, labels = load_data_for(meta, data, "train")
        n = len(labels)
        rng = np.random.default_rng(0 if seed is None else seed)
        idx = np.sort(rng.choice(n, size=min(samples, n), replace=False))
        x = batch_reader(ds, meta.get("normalization"), net.dtype.name)(idx)
        health = inspect_network(
            net, x, labels[idx], loss=cfg.train.loss, optimizer=cfg.train.optimizer,
            lr=cfg.train.optimizer.lr, weight_decay=cfg.train.weight_decay,
            seed=0 if seed is None else seed,
        )
        doc = {"model": meta["file"], "data": ref, **health.to_dict()}
        if json_out:
            print_json(doc)
        else:
            _render(doc)
