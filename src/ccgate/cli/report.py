"""`ccgate report --html FILE [period]`: one self-contained HTML page to attach to an expense question."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ccgate.cli._app import ctx
from ccgate.cli.cost import resolve_timezone, resolve_window, week_start
from ccgate.errors import UserInputError

if TYPE_CHECKING:
    from ccgate.storage.reports import CostReport

TOP_SESSIONS = 10


def report(
    period: str | None = typer.Argument(
        None, help="today, yesterday, week, month (default) or all.", show_default=False
    ),
    html_file: Path = typer.Option(  # noqa: B008 - typer's idiom
        ..., "--html", metavar="FILE", help="Write the page here (replaced if it exists)."
    ),
    since: str | None = typer.Option(None, "--since", help="Start: ISO date or datetime, local time."),
    until: str | None = typer.Option(None, "--until", help="End: ISO datetime, or a date (that day included)."),
) -> None:
    """Write spend over time by model and project, the 5-hour windows, the tags and the top sessions as one
    HTML file that opens anywhere without a network (numbers as in `ccgate cost --json`)."""
    from ccgate.core.records import utcnow
    from ccgate.features.html_report import PageData, render
    from ccgate.storage.blocks import load_blocks
    from ccgate.storage.ledger import open_ledger
    from ccgate.storage.reports import cost_report, session_details, tag_keys

    app_ctx = ctx()
    tz = resolve_timezone(app_ctx)
    window = resolve_window(period or ("all" if since or until else "month"), since, until, tz)
    start = week_start(app_ctx)
    db = open_ledger(app_ctx.paths.ledger_file)
    try:

        def by(key: str) -> CostReport:
            return cost_report(db, since=window.since, until=window.until, by=key, tz=tz, week_start=start)

        sessions = by("session")
        sessions.groups = sessions.groups[:TOP_SESSIONS]
        ids = [key for key, _ in sessions.groups if isinstance(key, str)]
        data = PageData(
            heading=window.heading,
            generated=utcnow(),
            tz=tz,
            by_model=by("model"),
            by_project=by("project"),
            by_day_model=by("day,model"),
            by_day_project=by("day,project"),
            blocks=[b for b in load_blocks(db, since=window.since) if b.start < window.until],
            tags={key: by(f"tag:{key}") for key in tag_keys(db, since=window.since, until=window.until)},
            sessions=sessions,
            session_details=session_details(db, since=window.since, until=window.until, ids=ids),
        )
    finally:
        db.close()
    _write(html_file, render(data))
    app_ctx.success(f"wrote {html_file}: {data.by_model.total.requests:,} requests, {window.heading}")


def _write(path: Path, text: str) -> None:
    """Whole or not at all (`local.atomic`). A page replacing one keeps that file's permissions (a report made
    private stays private); a new one gets what any file the user creates gets (0644 less the umask)."""
    from ccgate.local import atomic

    target = path.expanduser()
    try:
        mode = None if target.exists() else 0o644 & ~_umask()
        atomic.write_atomic(target, text, mode=mode)
    except OSError as error:
        raise UserInputError(
            f"cannot write {target}: {error.strerror or error}",
            hint="choose a file in a directory you can write to, not a directory itself",
        ) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def register(app: typer.Typer) -> None:
    app.command("report")(report)
