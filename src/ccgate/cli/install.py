"""`ccgate install` / `ccgate uninstall`: meter plain `claude`, `claude --resume` and IDE sessions through settings."""

from __future__ import annotations

import typer

from ccgate.cli._app import ctx

SCOPE_HELP = (
    "user: every Claude Code you start (~/.claude/settings.json or $CLAUDE_CONFIG_DIR); "
    "project: this git project only (.claude/settings.local.json, which Claude Code keeps out of git)."
)


def _scope(value: str) -> str:
    from ccgate.features.installing import SCOPES

    if value not in SCOPES:
        raise typer.BadParameter(f"must be one of: {', '.join(SCOPES)}")
    return value


def _port() -> int:
    from ccgate.sidecar.process import configured_port

    app_ctx = ctx()
    return configured_port(app_ctx.config.sidecar.port, app_ctx.environ)


def install(
    scope: str = typer.Option("user", "--scope", help=SCOPE_HELP, callback=_scope),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the change as a diff; write nothing."),
) -> None:
    """Route every Claude Code (plain `claude`, `claude --resume`, IDE extensions) through the sidecar.

    Writes `env.ANTHROPIC_BASE_URL` and a SessionStart/UserPromptSubmit hook into Claude Code's settings, keeping
    everything else and a backup; the local token stays out of the file. `ccgate uninstall` undoes it.
    """
    from pathlib import Path

    from rich.markup import escape

    from ccgate.core.providers import redact_url
    from ccgate.core.records import utcnow
    from ccgate.features.installing import install as run_install
    from ccgate.features.launching import bypass_warnings, project_settings_files

    app_ctx = ctx()
    port = _port()
    result = run_install(
        app_ctx.paths, port, app_ctx.environ, scope=scope, cwd=Path.cwd(), dry_run=dry_run, now=utcnow()
    )
    if not result.changed:
        app_ctx.success(f"already installed in {escape(str(result.path))}")
        return
    if dry_run:
        typer.echo(result.diff, nl=False)
        app_ctx.info(f"dry run: {escape(str(result.path))} was not changed")
        return
    app_ctx.success(f"installed in {escape(str(result.path))}: new Claude Code sessions are metered by ccgate")
    if result.backup is not None:
        app_ctx.info(f"  backup: {escape(str(result.backup))}")
    if result.upstream is not None:
        app_ctx.info(f"  requests are metered and forwarded to {escape(redact_url(result.upstream))}, as before")
    app_ctx.info("  sessions already running keep talking to their old endpoint until restarted")
    home = Path(app_ctx.environ.get("HOME") or Path.home())
    for message in bypass_warnings(
        app_ctx.environ, home, extra_settings=project_settings_files(Path.cwd(), home), sidecar_ports=[port]
    ):
        app_ctx.warn(escape(message))


def uninstall(scope: str = typer.Option("user", "--scope", help=SCOPE_HELP, callback=_scope)) -> None:
    """Undo `ccgate install`: the settings file is put back byte for byte (or, if you edited it since, only
    ccgate's entries are removed)."""
    from pathlib import Path

    from rich.markup import escape

    from ccgate.core.records import utcnow
    from ccgate.features.installing import uninstall as run_uninstall

    app_ctx = ctx()
    result = run_uninstall(app_ctx.paths, _port(), app_ctx.environ, scope=scope, cwd=Path.cwd(), now=utcnow())
    where = escape(str(result.path))
    messages = {
        "restored": f"{where} is back to what it was before install",
        "deleted": f"removed {where} (install had created it)",
        "removed": f"removed ccgate's entries from {where}; it changed since install, so the rest stays as you left it",
        "absent": f"nothing of ccgate's in {where}",
    }
    app_ctx.success(messages[result.how])
    if result.backup is not None:
        app_ctx.info(f"  backup: {escape(str(result.backup))}")


def register(app: typer.Typer) -> None:
    app.command("install")(install)
    app.command("uninstall")(uninstall)
