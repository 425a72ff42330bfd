"""`ccgate logs [-n N] [-f] [--errors] [--session ID] [--json]`: recent requests from the ledger."""

from __future__ import annotations

import json
import time
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

import typer

from ccgate.cli._app import AppContext, ctx, replay_spills
from ccgate.core.display import printable

if TYPE_CHECKING:
    from rich.text import Text

    from ccgate.core.records import RequestRecord
    from ccgate.storage.reports import LoggedRequest

POLL_SECONDS = 0.5
MAX_LINES = 1_000_000  # `-n` beyond this is a typo; SQLite's LIMIT overflows far above it
_STATUS_STYLES = {"ok": "green", "error": "red", "interrupted": "yellow", "pending": "dim"}


def row_to_json(entry: LoggedRequest) -> dict[str, Any]:
    """The ledger columns as stored (attempts decoded from their JSON text), plus `cost_usd` as a string."""
    from ccgate.storage.reports import usd_string

    row = dict(entry.row)
    row["attempts"] = json.loads(row["attempts"]) if row.get("attempts") else []
    row["stream"] = bool(row.get("stream"))
    from ccgate.core.tags import decode

    row["tags"] = decode(row.get("tags"))
    nanos = row.get("cost_nanos")
    row["cost_usd"] = None if nanos is None else usd_string(nanos)
    return row


def model_text(record: RequestRecord) -> str:
    """`requested → provider/routed` when the request was rerouted, else just the model."""
    requested = record.requested_model or "?"
    if record.routed_model is None and record.provider is None:
        return requested
    routed = record.routed_model or requested
    if routed == requested and record.provider in (None, "anthropic"):
        return requested
    return f"{requested} → {record.provider or '?'}/{routed}"


def _cost_text(record: RequestRecord) -> str:
    from ccgate.core.records import PriceQuality, format_usd

    if record.cost.nanos is None:
        return "unpriced"
    prefix = "~" if record.cost.quality == PriceQuality.ESTIMATED else ""
    return prefix + format_usd(record.cost.nanos, places=4)


def format_line(record: RequestRecord, tz: tzinfo | None) -> Text:
    from rich.text import Text

    usage = record.usage
    started = record.started_at.astimezone(tz)
    latency = "-" if record.latency_ms is None else f"{record.latency_ms / 1000:.1f}s"
    tokens = (
        f"in {usage.input_tokens:,} out {usage.output_tokens:,} "
        f"cache {usage.cache_read_tokens:,}r/{usage.cache_write_tokens:,}w"
    )
    status = record.status.value
    line = Text(f"{started:%Y-%m-%d %H:%M:%S}  ")
    line.append(f"{status:<11}", style=_STATUS_STYLES.get(status, ""))
    http = "-" if record.http_status is None else str(record.http_status)
    # one field cannot forge a line of its own: its newlines are escaped too, not only its control characters
    line.append(f" {http:>3} {latency:>7} {_cost_text(record):>10}  {tokens}  {printable(model_text(record))}")
    if record.error_type:
        line.append(f"  {printable(record.error_type)}", style="red")
    return line


class _Printer:
    def __init__(self, app_ctx: AppContext, as_json: bool, tz: tzinfo | None) -> None:
        self.app_ctx, self.as_json, self.tz = app_ctx, as_json, tz

    def emit(self, entry: LoggedRequest) -> None:
        if self.as_json:
            self.app_ctx.print_json(row_to_json(entry))
        else:
            self.app_ctx.out.print(format_line(entry.record, self.tz), soft_wrap=True)


def logs(
    lines: int = typer.Option(
        20, "-n", "--lines", min=0, max=MAX_LINES, help="How many recent requests to show first (0 with -f: only new)."
    ),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing requests as they finish (Ctrl-C stops)."),
    errors: bool = typer.Option(False, "--errors", help="Only failed or interrupted requests."),
    session: str | None = typer.Option(None, "--session", help="Only requests of this Claude Code session id."),
    tag: str | None = typer.Option(None, "--tag", metavar="KEY=VALUE", help="Only requests of launches with this tag."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line with the ledger columns."),
) -> None:
    """Show recent requests: local time, status, latency, cost, tokens, requested -> routed model."""
    from ccgate.cli.cost import resolve_timezone
    from ccgate.core.tags import parse_tag
    from ccgate.storage.ledger import open_ledger
    from ccgate.storage.reports import latest_rowid, recent_requests

    wanted = None if tag is None else parse_tag(tag)
    app_ctx = ctx()
    tz = resolve_timezone(app_ctx)
    printer = _Printer(app_ctx, as_json, tz)
    replay_spills(app_ctx)
    db = open_ledger(app_ctx.paths.ledger_file)
    try:
        cursor = latest_rowid(db)
        shown = (
            recent_requests(db, limit=lines, errors_only=errors, session=session, after_rowid=None, tag=wanted)
            if lines
            else []
        )
        for entry in shown:
            printer.emit(entry)
        if not shown and lines and not as_json:
            if cursor == 0:
                app_ctx.info("No requests recorded yet. Run `ccgate launch claude` to start metering.")
            else:
                app_ctx.info("No matching requests.")
        if not follow:
            return
        if not as_json:
            app_ctx.info("Following new requests (Ctrl-C to stop)…")
        try:
            _follow(db, printer, cursor=cursor, shown=shown, errors=errors, session=session, tag=wanted)
        except KeyboardInterrupt:
            return
    finally:
        db.close()


def _follow(
    db: Any,
    printer: _Printer,
    *,
    cursor: int,
    shown: list[LoggedRequest],
    errors: bool,
    session: str | None,
    tag: tuple[str, str] | None = None,
) -> None:
    """Poll for rows written after `cursor`; a row is printed once it is no longer pending.

    Rows listed while still pending are printed again when they finish.
    """
    from ccgate.core.records import RequestStatus
    from ccgate.storage.reports import is_error, recent_requests, requests_by_id

    def emit(entry: LoggedRequest) -> None:
        if not errors or is_error(entry.record):
            printer.emit(entry)

    waiting = {e.record.id for e in shown if e.record.status == RequestStatus.PENDING and e.rowid <= cursor}
    already = {e.record.id for e in shown if e.record.status != RequestStatus.PENDING and e.rowid > cursor}
    while True:
        time.sleep(POLL_SECONDS)
        # The --errors filter is applied here, not in SQL: a row is pending before it becomes an error.
        for entry in recent_requests(db, limit=1000, errors_only=False, session=session, after_rowid=cursor, tag=tag):
            cursor = max(cursor, entry.rowid)
            if entry.record.id in already:
                already.discard(entry.record.id)
            elif entry.record.status == RequestStatus.PENDING:
                waiting.add(entry.record.id)
            else:
                emit(entry)
        if waiting:
            for entry in requests_by_id(db, sorted(waiting)):
                if entry.record.status != RequestStatus.PENDING:
                    waiting.discard(entry.record.id)
                    emit(entry)


def register(app: typer.Typer) -> None:
    app.command("logs")(logs)
