"""`cnncli summary CONFIG`: the layer table of a network, from its spec alone."""

from __future__ import annotations

from typing import Annotated

import typer

from cnncli.cli.common import DebugOpt, JsonOpt, SetOpt, command

HELP = """Print the layer table of a network without reading any data: per layer the
output shape, parameters, FLOPs (one image, forward pass) and activation memory, with
totals. Instant even for networks far too large to train here.

CONFIG is a YAML file or the name of a bundled config (quickstart, lenet5,
tutorial-figure, alexnet, fashion-mnist).

Examples:

  cnncli summary lenet5 --explain

  cnncli summary alexnet --json | jq .total_params

  cnncli summary my.yaml --set model.input=[3,64,64]
"""


def register(app: typer.Typer) -> None:
    @app.command("summary", help=HELP, short_help="The layer table of a network (no data read).")
    @command
    def summary(
        config: Annotated[str, typer.Argument(help="Config file or bundled config name.",
                                              metavar="CONFIG")],
        explain: Annotated[bool, typer.Option(
            "--explain", help="Show the arithmetic: output-size formula, parameter and FLOP "
            "counts with the numbers filled in.")] = False,
        json_out: JsonOpt = False,
        overrides: SetOpt = None,
        debug: DebugOpt = False,
    ) -> None:
        from cnncli.cli.common import print_json, warn
        from cnncli.engine.summary import summarize
        from cnncli.spec import load_config

        cfg = load_config(config, overrides or ())
        for w in cfg.warnings:
            warn(w)
        result = summarize(cfg.model)
        if json_out:
            print_json(result.to_json())
            return
        _render(result, explain)


def _flops(n: int) -> str:
    from cnncli.engine.summary import human_count

    text = human_count(n)
    return f"{text}FLOPs" if text[-1].isalpha() else f"{text} FLOPs"


def _render(s, explain: bool) -> None:
    from rich import box
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    from cnncli.cli.common import out_console
    from cnncli.engine.summary import human_bytes, human_count

    con = out_console()
    tty = con.is_terminal
    simple_ascii = box.Box("    \n    \n -- \n    \n    \n -- \n    \n    \n", ascii=True)
    table = Table(box=box.SIMPLE_HEAD if tty else simple_ascii,
                  header_style="bold" if tty else None, pad_edge=False, collapse_padding=True)
    table.add_column("layer", no_wrap=True)
    table.add_column("options", min_width=10)
    table.add_column("output", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("FLOPs", justify="right", no_wrap=True)
    table.add_column("memory", justify="right", no_wrap=True)
    table.add_column("RF", justify="right", no_wrap=True)
    table.add_row("input", "", _shape(s.input), "", "", human_bytes(s.input_bytes), "")
    for r in s.rows:
        rf = f"{r.receptive_field[0]}x{r.receptive_field[1]}" if r.receptive_field else ""
        mark = "*" if r.dropped != (0, 0) else ""
        table.add_row(f"{r.name}{mark}", r.options, _shape(r.output_shape), f"{r.params:,}",
                      f"{r.flops:,}", human_bytes(r.activation_bytes), rf)
    table.add_section()
    table.add_row("total", "", "", f"{s.total_params:,}", f"{s.total_flops:,}",
                  human_bytes(s.total_activation_bytes), "")
    if not tty:
        # a pipe or a file: one line per row, never squeezed or wrapped, no escape codes
        need = Measurement.get(con, con.options.update_width(10_000), table).maximum
        con = type(con)(width=max(need, 80), highlight=False, soft_wrap=True, color_system=None)
    con.print(table)
    lines = [
        f"{s.name}: {s.total_params:,} parameters ({human_count(s.total_params)}, "
        f"{human_bytes(s.param_bytes)} as float32); {_flops(s.total_flops)} per image "
        f"(forward); activations {human_bytes(s.total_activation_bytes)} per image",
    ]
    lines += [f"* {note}" for note in s.notes]
    if explain:
        for r in s.rows:
            lines += ["", f"{r.name} ({r.type} {r.options}) -> {_shape(r.output_shape)}"]
            lines += [f"  {line}" for line in r.explain]
            if r.receptive_field:
                lines.append(f"  receptive field {r.receptive_field[0]}x{r.receptive_field[1]} "
                             f"input pixels, jump {r.jump[0]}x{r.jump[1]}")
    for line in lines:
        con.print(Text(line))


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape)
