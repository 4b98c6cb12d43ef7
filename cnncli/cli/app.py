"""The Typer application. Each command lives in its own small module under
``cnncli.cli``; those modules import only Typer at top level, so ``cnncli --help``
stays fast, and pull in NumPy and the engine inside the command body.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="cnncli",
    help="Train, check and inspect convolutional neural networks on a NumPy engine.\n\n"
    "Example: cnncli train            (the bundled quick-start network on the bundled digits)",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root() -> None:
    # Keeps `cnncli COMMAND` a command group even while a single command is registered.
    pass


# Registration: one line per command module (each defines `register(app)`).
from cnncli.cli import summary as _summary  # noqa: E402

_summary.register(app)
from cnncli.cli import train as _train  # noqa: E402

_train.register(app)
from cnncli.cli import eval as _eval  # noqa: E402

_eval.register(app)
from cnncli.cli import infer as _infer  # noqa: E402

_infer.register(app)
from cnncli.cli import visualize as _visualize  # noqa: E402

_visualize.register(app)
from cnncli.cli import inspect_cmd as _inspect  # noqa: E402

_inspect.register(app)
from cnncli.cli import export as _export  # noqa: E402

_export.register(app)
from cnncli.cli import gradcheck as _gradcheck  # noqa: E402

_gradcheck.register(app)


def main() -> None:
    import sys

    try:
        on_terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):
        on_terminal = False
    if not on_terminal:
        # Off a terminal (a pipe, a log, CI): usage errors and help as plain text, no Rich boxes.
        app.rich_markup_mode = None
    app(prog_name="cnncli")


if __name__ == "__main__":
    main()
