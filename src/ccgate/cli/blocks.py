"""`ccgate blocks [--active] [--json] [--token-limit N|max]`: spend per 5-hour window, burn rate, projection."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import TYPE_CHECKING

import typer

from ccgate.cli._app import ctx
from ccgate.cli.cost import START_HINT, compact, cost_cell, resolve_timezone

if TYPE_CHECKING:
    from ccgate.storage.blocks import Block


def blocks(
    active: bool = typer.Option(False, "--active", help="Only the window in progress, with its projection."),
    token_limit: str | None = typer.Option(
        None, "--token-limit", metavar="N|max", help="Mark windows over N tokens (max: the busiest past window)."
    ),
    since: str | None = typer.Option(None, "--since", help="Only windows since this ISO date or datetime (local)."),
    last: int | None = typer.Option(None, "--last", min=1, help="Only the N most recent windows."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (stable shape, for scripts)."),
) -> None:
    """Show usage per 5-hour window, the way Claude subscriptions count it.

    A window opens at the hour of the first request after the previous one closed and lasts five hours.
    Dollars are API list prices (on a subscription: API-equivalent value).
    """
    from ccgate.core.records import utcnow
    from ccgate.storage.blocks import blocks_to_json, load_blocks, parse_token_limit
    from ccgate.storage.reports import open_for_reports, parse_moment

    app_ctx = ctx()
    tz = resolve_timezone(app_ctx)
    start = parse_moment(since, tz=tz) if since is not None else None
    now = utcnow()
    db = open_for_reports(app_ctx.paths.ledger_file)
    try:
        found = load_blocks(db, since=start)
    finally:
        db.close()
    limit = parse_token_limit(token_limit, found, now)
    if active:
        found = [block for block in found if block.active(now)]
    if last is not None:
        found = found[-last:]
    if as_json:
        app_ctx.print_json(blocks_to_json(found, now=now, tz=tz, limit=limit))
        return
    if not found:
        what = "No window is active right now." if active else "No requests recorded yet."
        app_ctx.out.print(f"{what} {START_HINT}", markup=False)
        return
    _print_table(found, now=now, tz=tz, limit=limit)


def _print_table(found: list[Block], *, now: datetime, tz: tzinfo, limit: int | None) -> None:
    from rich import box
    from rich.table import Table

    from ccgate.core.records import format_usd
    from ccgate.storage.blocks import burn_rate, projection

    out = ctx().out
    table = Table(
        title="ccgate 5-hour windows",
        caption="API list prices (on a subscription: API-equivalent value)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1),
    )
    for header in ("Window (local)", "Reqs", "Tokens", "Cost", "Burn/h", "Status"):
        table.add_column(header, justify="left" if header in ("Window (local)", "Status") else "right", no_wrap=True)
    for block in found:
        burn = burn_rate(block, now)
        start, end = block.start.astimezone(tz), block.end.astimezone(tz)
        status = "ACTIVE" if block.active(now) else ""
        if limit is not None and block.tokens > limit:
            status = (status + " over limit").strip()
        table.add_row(
            f"{start:%a %Y-%m-%d %H:%M} – {end:%H:%M}",
            f"{block.totals.requests:,}",
            compact(block.tokens),
            cost_cell(block.totals),
            "–" if burn is None else f"{compact(burn.tokens_per_hour)} {format_usd(burn.cost_nanos_per_hour)}",
            status,
        )
    out.print(table)
    current = next((block for block in found if block.active(now)), None)
    ahead = projection(current, now) if current is not None else None
    if ahead is not None:
        minutes = int(ahead.remaining.total_seconds() // 60)
        line = (
            f"Active window: {minutes // 60}h {minutes % 60:02d}m left; at the current rate it ends at "
            f"{compact(ahead.tokens)} tokens, {format_usd(ahead.cost_nanos)}"
        )
        if limit is not None:
            line += f" ({ahead.tokens * 100 // max(limit, 1)}% of the {compact(limit)}-token limit)"
        out.print(line)


def register(app: typer.Typer) -> None:
    app.command("blocks")(blocks)
