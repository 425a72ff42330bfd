"""`ccgate statusline [install|uninstall]`: the status bar line for Claude Code, and its settings entry.

Plain `ccgate statusline` is normally served before typer loads (see `ccgate.cli.main`); the callback here
handles the same thing when it is reached another way.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import typer

from ccgate.cli._app import ctx

statusline_app = typer.Typer(
    help="One line for Claude Code's status bar: model, session and today's cost, budget left, routes.",
    invoke_without_command=True,
)

SETTINGS_HELP = "Claude Code settings file (default: ~/.claude/settings.json)."


def default_command(environ: dict[str, str]) -> str:
    """The command written into settings: this ccgate's absolute path, so Claude Code's shell finds it."""
    found = shutil.which("ccgate", path=environ.get("PATH"))
    if found is None:
        argv0 = Path(sys.argv[0])
        found = str(argv0.resolve()) if argv0.name == "ccgate" and argv0.exists() else "ccgate"
    return f"{shlex.quote(found)} statusline"


def _settings_path(settings: str | None, environ: dict[str, str]) -> Path:
    from ccgate.features.statusline import claude_settings_file

    return Path(settings).expanduser() if settings is not None else claude_settings_file(environ)


@statusline_app.callback()
def statusline(context: typer.Context) -> None:
    """Read the JSON Claude Code pipes in and print one line (always exits 0)."""
    if context.invoked_subcommand is None:
        from ccgate.features.statusline import main

        raise typer.Exit(main())


@statusline_app.command("install")
def install(
    settings: str | None = typer.Option(None, "--settings", help=SETTINGS_HELP),
    force: bool = typer.Option(False, "--force", help="Replace a statusLine that is not ccgate's (it is kept)."),
) -> None:
    """Add `ccgate statusline` to Claude Code's settings, keeping everything else and a backup of the file."""
    from ccgate.features.statusline import install_statusline

    app_ctx = ctx()
    path = _settings_path(settings, app_ctx.environ)
    change = install_statusline(path, default_command(app_ctx.environ), state_dir=app_ctx.paths.state_dir, force=force)
    if not change.changed:
        app_ctx.success(f"statusLine {change.message} in {path}")
        return
    app_ctx.success(f"statusLine installed in {path}; Claude Code shows it from the next prompt")
    if change.backup is not None:
        app_ctx.info(f"  backup: {change.backup}")


@statusline_app.command("uninstall")
def uninstall(settings: str | None = typer.Option(None, "--settings", help=SETTINGS_HELP)) -> None:
    """Remove ccgate's statusLine from Claude Code's settings (restoring one that --force replaced)."""
    from ccgate.features.statusline import uninstall_statusline

    app_ctx = ctx()
    path = _settings_path(settings, app_ctx.environ)
    change = uninstall_statusline(path, state_dir=app_ctx.paths.state_dir)
    if change.changed:
        app_ctx.success(f"statusLine {change.message} in {path}")
        if change.backup is not None:
            app_ctx.info(f"  backup: {change.backup}")
    else:
        app_ctx.warn(f"{path}: {change.message}")


def register(app: typer.Typer) -> None:
    app.add_typer(statusline_app, name="statusline")
