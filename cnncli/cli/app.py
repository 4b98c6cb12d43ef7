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

# Registration: one line per command module (each defines `register(app)`).
from cnncli.cli import summary as _summary  # noqa: E402

_summary.register(app)


def main() -> None:
    app(prog_name="cnncli")


if __name__ == "__main__":
    main()
