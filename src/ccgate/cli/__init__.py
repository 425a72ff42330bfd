"""Command-line interface: the only package that imports typer and rich."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

_typer_app: typer.Typer | None = None  # not `_app`: that name is the submodule cli/_app.py
HELP_OPTIONS = ("-h", "--help")


def build_app() -> typer.Typer:
    """The typer app with every command group; built on first use so `ccgate statusline` never loads typer."""
    global _typer_app
    if _typer_app is None:
        import typer

        from ccgate.cli import _typer_coercion
        from ccgate.cli.commands import LazyGroup

        _typer_coercion.install()

        app = typer.Typer(
            name="ccgate",
            cls=LazyGroup,  # each command is imported and built when it runs, not all of them every time
            help="A cost gate for Claude Code: meter, budget and route every request.",
            no_args_is_help=True,
            add_completion=False,  # one way to get completions: `ccgate completions` (static scripts)
            pretty_exceptions_enable=False,
            rich_markup_mode=None,  # plain click help: loading rich's help renderer costs ~100 ms per call
            context_settings={"help_option_names": list(HELP_OPTIONS)},
        )

        @app.callback()
        def root(
            version: bool = typer.Option(
                False, "--version", help="Print ccgate's version and exit.", callback=_print_version, is_eager=True
            ),
        ) -> None:
            """Every command reaches this invocation's AppContext through `ctx.obj` (see `cli._app.ctx`)."""
            from ccgate.cli._app import AppContext, current_click_context

            current_click_context().obj = AppContext()

        _typer_app = app
    return _typer_app


def _print_version(value: bool) -> None:
    if value:
        import typer

        from ccgate import __version__

        typer.echo(f"ccgate {__version__}")
        raise typer.Exit()


def __getattr__(name: str) -> Any:
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    # Fast path: Claude Code runs `ccgate statusline` on every prompt update; it needs neither typer nor rich.
    if sys.argv[1:] == ["statusline"]:
        from ccgate.features.statusline import main as statusline_main

        sys.exit(statusline_main())
    # Claude Code runs `ccgate hook` (installed by `ccgate install`) at session start and on every prompt
    if sys.argv[1:2] == ["hook"]:
        import os

        from ccgate.features.installing import hook_main

        sys.exit(hook_main(sys.argv[2:], sys.stdin, sys.stderr, os.environ))

    import sqlite3

    import typer

    from ccgate.cli._app import report_error
    from ccgate.errors import CcgateError, LedgerError

    try:
        build_app()()
    except (CcgateError, sqlite3.Error) as error:
        if isinstance(error, sqlite3.Error):
            # a ledger damaged on disk surfaces mid-query: one line and what to do, never a traceback
            error = LedgerError(f"the ledger cannot be read: {error}", hint="run `ccgate doctor` to check it")
        try:
            report_error(error)
        except typer.Exit as exit_:
            sys.exit(exit_.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("ccgate: interrupted\n")
        sys.exit(130)
