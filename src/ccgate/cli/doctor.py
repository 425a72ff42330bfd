"""`ccgate doctor`: one line per check (✓ ok, ! warning, ✗ failed) with the fix; exit 1 if any failed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ccgate.cli._app import AppContext, ctx

if TYPE_CHECKING:
    from ccgate.features.doctor import Check


def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print the checks as one JSON object."),
    full: bool = typer.Option(
        False, "--full", help="Run SQLite's full integrity_check on the ledger (slower than the default quick_check)."
    ),
) -> None:
    """Check config, keyring, sidecar, provider keys, Claude Code, the ledger and anything that bypasses ccgate."""
    from pathlib import Path

    from rich.text import Text

    from ccgate.features.doctor import exit_code, run_checks

    app_ctx = ctx()
    checks = run_checks(app_ctx.paths, app_ctx.environ, cwd=Path.cwd(), full=full)
    checks.extend(_org_checks(app_ctx))
    code = exit_code(checks)
    if as_json:
        app_ctx.print_json({"ok": code == 0, "checks": [check.to_json() for check in checks]})
        raise typer.Exit(code)
    colour = {True: "green", False: "red", None: "yellow"}
    for check in checks:
        app_ctx.out.print(Text.assemble((check.symbol, colour[check.ok]), f" {check.name}: {check.detail}"))
        if check.fix and check.ok is not True:
            app_ctx.out.print(f"    fix: {check.fix}")
    failed = sum(check.ok is False for check in checks)
    warned = sum(check.ok is None for check in checks)
    if failed:
        app_ctx.out.print(Text.assemble((f"{failed} problem(s)", "red"), f", {warned} warning(s)"))
    raise typer.Exit(code)


def _org_checks(app_ctx: AppContext) -> list[Check]:
    """The org gateway (only when logged in): reachable, key valid, mode, clock skew, sync backlog."""
    from ccgate.client.org import doctor_checks
    from ccgate.errors import CcgateError
    from ccgate.features.doctor import Check

    try:
        config = app_ctx.config
    except CcgateError:
        return []  # the config check already says what is wrong
    return [Check(c.name, c.ok, c.detail, c.fix) for c in doctor_checks(app_ctx.paths, config)]


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
