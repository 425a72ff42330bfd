"""Command-line interface: the only package that imports typer and rich."""

from __future__ import annotations

import sys

import typer

from ccgate.cli._app import report_error
from ccgate.errors import CcgateError

app = typer.Typer(
    name="ccgate",
    help="A cost gate for Claude Code: meter, budget and route every request.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    """Each command group lives in its own module; importing them is cheap (heavy imports are lazy)."""
    from ccgate.cli import commands

    commands.register(app)


_register()


def main() -> None:
    try:
        app()
    except CcgateError as error:
        try:
            report_error(error)
        except typer.Exit as exit_:
            sys.exit(exit_.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("ccgate: interrupted\n")
        sys.exit(130)
