"""``cnncli gradcheck CONFIG...``: the engine's analytic gradients against finite differences."""

from __future__ import annotations

from typing import Annotated

import typer

from cnncli.cli.common import DebugOpt, JsonOpt, SeedOpt, SetOpt, command

HELP = """Check the network's gradients against centred finite differences in float64.

For every parameter tensor and for the input, on a small random batch: tensors of up to
--max-entries entries are checked entry by entry, larger ones on a random sample plus one
random direction. Relative error per entry is |a - n| / max(|a| + |n|, 1e-12); exits 1 when a
tensor's largest error is above --threshold.

Example: cnncli gradcheck configs/lenet5.yaml configs/alexnet.yaml --json
"""

DEFAULT_CONFIG = "quickstart"


def register(app: typer.Typer) -> None:
    app.command("gradcheck", help=HELP)(gradcheck)


@command
def gradcheck(
    configs: Annotated[
        list[str] | None,
        typer.Argument(help="Config files or bundled config names (default: quickstart).",
                       show_default=False),
    ] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Largest relative error allowed.")
    ] = 1e-6,
    batch: Annotated[int, typer.Option("--batch", help="Images in the random batch.")] = 2,
    max_entries: Annotated[
        int | None,
        typer.Option("--max-entries",
                     help="Tensors up to this size are checked entry by entry; larger ones on "
                     "this many random entries (default 48; 12 for networks above 200 MFLOP).",
                     show_default=False),
    ] = None,
    json_out: JsonOpt = False,
    seed: SeedOpt = None,
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    import math

    from cnncli.cli.common import info, out_console, print_json
    from cnncli.engine.gradcheck import check, json_number
    from cnncli.errors import CheckFailed, UsageError
    from cnncli.resources import resolve_config_path
    from cnncli.spec import load_config

    if not (threshold > 0 and math.isfinite(threshold)):
        raise UsageError(f"--threshold must be a finite number > 0; got {threshold}")
    if batch < 1:
        raise UsageError(f"--batch must be at least 1; got {batch}")
    if max_entries is not None and max_entries < 1:
        raise UsageError(f"--max-entries must be at least 1; got {max_entries}")

    names = list(configs or [DEFAULT_CONFIG])
    loaded = []
    for name in names:   # every config is validated before any long check starts
        path = resolve_config_path(name)
        loaded.append((name, load_config(path, overrides=tuple(set_ or ()), seed=seed)))

    results = []
    for name, cfg in loaded:
        if not json_out:
            info(f"checking {name} ({cfg.model.name}) ...")
        report = check(cfg.model, batch=batch, threshold=threshold, seed=cfg.train.seed,
                       max_entries=max_entries)
        results.append((name, report))
        if not json_out:
            _render(out_console(), name, report)

    worst_name, worst = max(results, key=lambda r: r[1].max_rel_error)
    passed = all(r.passed for _, r in results)
    if json_out:
        print_json(_document(results, threshold, json_number))
    elif passed:
        info(f"all gradients agree to within {threshold:g} (largest relative error "
             f"{worst.max_rel_error:.2e}, {worst_name})")
    if not passed:
        failed = [(n, r) for n, r in results if not r.passed]
        n, r = max(failed, key=lambda item: item[1].max_rel_error)
        w = r.worst
        raise CheckFailed(
            f"{n}: gradient of {w.where()} has relative error {w.rel_error:.3e}, above the "
            f"threshold {threshold:g}"
            + (f" ({len(failed)} configs failed)" if len(failed) > 1 else "")
        )


def _document(results, threshold, json_number) -> dict:
    checks = []
    configs = []
    for name, report in results:
        doc = report.to_json()
        doc["config"] = name
        configs.append(doc)
        for c in doc["checks"]:
            checks.append({"config": name, **c})
    return {
        "passed": all(r.passed for _, r in results),
        "threshold": threshold,
        "max_rel_error": json_number(max(r.max_rel_error for _, r in results)),
        "checks": checks,
        "configs": configs,
    }


def _render(console, name, report) -> None:
    from rich.table import Table

    table = Table(
        title=f"gradcheck {name} ({report.name}): batch {report.batch}, step {report.eps:g}, "
        f"threshold {report.threshold:g}",
        title_justify="left",
    )
    table.add_column("tensor")
    table.add_column("shape")
    table.add_column("entries checked", justify="right")
    table.add_column("max rel error", justify="right")
    table.add_column("ok", justify="center")
    for c in report.checks:
        checked = (f"{c.entries:,} of {c.total:,} + direction" if c.directional
                   else f"all {c.entries:,}")
        ok = c.rel_error <= report.threshold
        table.add_row(
            c.tensor,
            "x".join(map(str, c.shape)),
            checked,
            f"{c.rel_error:.2e}",
            "[green]yes[/green]" if ok else "[bold red]NO[/bold red]",
        )
    console.print(table)
    verdict = "passed" if report.passed else "FAILED"
    console.print(f"{report.name}: {verdict}, largest relative error {report.max_rel_error:.2e} "
                  f"({report.worst.where() if report.worst else '-'}), {report.seconds:.1f} s")
