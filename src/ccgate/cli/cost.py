"""`ccgate cost [today|yesterday|week|month|all]`: spend from the ledger, as a table, JSON or CSV.

Reads the ledger file directly, so it works whether or not the sidecar is running.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ccgate.cli._app import AppContext, ctx, replay_spills
from ccgate.errors import ConfigError, UserInputError

if TYPE_CHECKING:
    from sqlite_utils import Database

    from ccgate.storage.reports import CostReport, Totals

PRICE_HINT = "set one with `ccgate price set MODEL --input X --output Y` or in config.toml [prices.MODEL]"
START_HINT = "Run `ccgate launch claude` to start metering."
_KEY_HEADERS = {"model": "Model", "provider": "Provider", "project": "Project", "session": "Session", "day": "Day"}
# A spreadsheet runs a cell starting with one of these as a formula; CSV text cells get a leading ' instead.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def resolve_timezone(app_ctx: AppContext) -> tzinfo:
    """The zone reports and `budget show` use: `local.timezone.resolve_timezone` (as the sidecar), naming the file
    on error."""
    from ccgate.local.timezone import resolve_timezone as resolve

    config = app_ctx.config  # outside the try: a config that does not load says so itself, with its own hint
    try:
        return resolve(config.timezone, app_ctx.environ)
    except ConfigError as error:
        raise ConfigError(
            f"{app_ctx.paths.config_file}: {error.message}",
            hint="use an IANA name such as Europe/Berlin, or remove `timezone` to use the system's",
        ) from None


@dataclass(frozen=True, slots=True)
class Window:
    """The report's [since, until) plus how to name it in a heading and in the empty-ledger line."""

    since: datetime
    until: datetime
    heading: str
    phrase: str


def resolve_window(period: str | None, since: str | None, until: str | None, tz: tzinfo | None) -> Window:
    """--since/--until override the period's ends; without a period they extend to all time / now."""
    from ccgate.storage.reports import PERIODS, parse_moment, period_bounds

    if period is not None and period not in PERIODS:
        raise UserInputError(f"unknown period {period!r}", hint=f"use one of: {', '.join(PERIODS)}, or --since/--until")
    custom = since is not None or until is not None
    name = period or ("all" if custom else "today")
    start, end = period_bounds(name, tz=tz)
    if since is not None:
        start = parse_moment(since, tz=tz)
    if until is not None:
        end = parse_moment(until, tz=tz, end=True)
    if start >= end:
        # in the user's own words: `--until 2025-03-01` means "through March 1", not "before 00:00 on March 1"
        opening = f"--since {since}" if since is not None else f"the start of {name}"
        closing = f"--until {until}" if until is not None else ("now" if name == "all" else f"the end of {name}")
        raise UserInputError(
            f"the range is empty: {opening} is not before {closing}",
            hint="--since must come before --until (a date given to --until includes that whole day)",
        )
    if custom:
        phrase = f"from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}"
        return Window(start, end, phrase, phrase)
    if name in ("today", "yesterday"):
        return Window(start, end, f"{name} ({start:%a %d %b %Y})", name)
    if name == "week":
        last = end - timedelta(days=1)
        return Window(start, end, f"this week ({start:%a %d %b} – {last:%a %d %b})", "this week")
    if name == "month":
        return Window(start, end, f"this month ({start:%B %Y})", "this month")
    return Window(start, end, "(all time)", "yet")


def compact(value: int) -> str:
    """Token counts for the table: 951, 12.3k, 4.5M, 1.2B (the exact numbers are in --json/--csv)."""
    for suffix, size in (("B", 1_000_000_000), ("M", 1_000_000), ("k", 1_000)):
        if value >= size:
            return f"{value / size:.1f}{suffix}"
    return str(value)


def _ratio(totals: Totals) -> str:
    ratio = totals.cache_hit_ratio
    return "–" if ratio is None else f"{ratio:.0%}"


def cost_cell(totals: Totals) -> str:
    """`$1.23`; `~` marks estimated parts, `*` unpriced requests left out; `unpriced` (never $0) if all are."""
    from ccgate.core.records import format_usd

    if totals.all_unpriced:
        return "unpriced"
    text = ("~" if totals.estimated_requests else "") + format_usd(totals.cost_nanos)
    return text + "*" if totals.unpriced_requests else text


def _group_label(by: str, key: str) -> str:
    if by == "day":
        return f"{datetime.fromisoformat(key):%a} {key}"
    if by == "project":
        home = str(Path.home())
        if key == home or key.startswith(home + "/"):
            return "~" + key[len(home) :]
    return key


def _print_table(app_ctx: AppContext, report: CostReport, heading: str, db: Database) -> None:
    from rich import box
    from rich.table import Table

    from ccgate.storage.reports import estimate_reasons, unpriced_models

    by = report.by or "model"
    table = Table(
        title=f"ccgate spend {heading}",
        caption="API list prices (on a subscription: API-equivalent value)",
        box=box.SIMPLE_HEAD,
        show_footer=True,
        padding=(0, 1),
        collapse_padding=True,
        show_edge=False,  # two more columns for model ids (claude-sonnet-4-5-20250929 fits at 80 columns)
    )
    total = report.total
    table.add_column(_KEY_HEADERS[by], footer="Total", ratio=1, min_width=10, overflow="fold")
    for header, footer in (
        ("Reqs", f"{total.requests:,}"),
        ("Input", compact(total.input_tokens)),
        ("Output", compact(total.output_tokens)),
        ("Cache\nread", compact(total.cache_read_tokens)),
        ("Cache\nwrite", compact(total.cache_write_tokens)),
        ("Cache\nhit", _ratio(total)),
        ("Cost", cost_cell(total)),
    ):
        table.add_column(header, footer=footer, justify="right", no_wrap=True)
    for key, totals in report.groups:
        cells = [
            _group_label(by, key),
            f"{totals.requests:,}",
            compact(totals.input_tokens),
            compact(totals.output_tokens),
            compact(totals.cache_read_tokens),
            compact(totals.cache_write_tokens),
            _ratio(totals),
            cost_cell(totals),
        ]
        table.add_row(*cells)
    out = app_ctx.out
    out.print(table)
    if total.unpriced_requests:
        models = unpriced_models(db, since=report.since, until=report.until)
        which = f" ({', '.join(models)})" if models else ""
        noun = "request has" if total.unpriced_requests == 1 else "requests have"
        out.print(f"* {total.unpriced_requests} {noun} no known price{which}: {PRICE_HINT}", markup=False)
    if total.estimated_requests:
        for line in estimate_lines(
            total.estimated_requests, estimate_reasons(db, since=report.since, until=report.until)
        ):
            out.print(line)
    if total.imported_requests:
        out.print(f"  includes {total.imported_requests} request(s) imported from transcripts", markup=False)


# What `~` means for each kind of estimate (keys of `reports.ESTIMATE_REASONS`, plus `other`).
_ESTIMATE_PHRASES = {
    "same_family": "priced from a same-family model: the model is not in the price catalog",
    "other_provider": "priced at another provider's rates for the same model",
    "cut_stream": "cut mid-stream: the output tokens are estimated from what had arrived",
    "no_usage": "the provider reported no usage: tokens estimated from the request and reply sizes",
    "fast_mode": "fast mode with no fast-mode price: standard rates used, may be too low",
    "clamped": "absurd usage reported: tokens clamped or cost capped",
    "other": "estimated for another reason (see cost_note in `ccgate logs --json`)",
}


def estimate_lines(estimated: int, reasons: dict[str, int]) -> list[str]:
    """The `~` footnote: why the estimated requests are estimates, with a count per reason."""
    noun = "request is" if estimated == 1 else "requests are"
    if len(reasons) == 1 and sum(reasons.values()) == estimated:
        return [f"~ {estimated} {noun} estimated: {_ESTIMATE_PHRASES[next(iter(reasons))]}"]
    lines = [f"~ {estimated} {noun} estimated:"]
    lines.extend(f"    {count} {_ESTIMATE_PHRASES[reason]}" for reason, count in reasons.items())
    return lines


def csv_text(value: str) -> str:
    """A text cell a spreadsheet shows as typed: session ids, models and projects are not formulas."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _print_csv(report: CostReport) -> None:
    from ccgate.storage.reports import totals_to_json

    # The writer ends rows in \r\n so that it also quotes a cell holding a lone \r (a project directory may);
    # each row is printed with a plain \n, as before.
    buffer = io.StringIO()
    # the same columns as --json, in its order
    writer = csv.DictWriter(buffer, fieldnames=("key", *totals_to_json(report.total)), lineterminator="\r\n")

    def emit() -> None:
        sys.stdout.write(buffer.getvalue().removesuffix("\r\n") + "\n")
        buffer.seek(0)
        buffer.truncate()

    writer.writeheader()
    emit()
    for key, totals in [*((csv_text(key), totals) for key, totals in report.groups), ("(total)", report.total)]:
        writer.writerow({"key": key, **totals_to_json(totals)})
        emit()
    sys.stdout.flush()


def cost(
    period: str | None = typer.Argument(
        None, help="today (default), yesterday, week, month or all.", show_default=False
    ),
    since: str | None = typer.Option(None, "--since", help="Start: ISO date or datetime, local time."),
    until: str | None = typer.Option(None, "--until", help="End: ISO datetime, or a date (that day included)."),
    by: str | None = typer.Option(None, "--by", help="Group by model (default), project, session, day or provider."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (stable shape, for scripts)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV: one row per group and a (total) row."),
) -> None:
    """Show what Claude Code cost: tokens, cache hits and dollars from the local ledger.

    Periods are calendar-aligned in local time (weeks start on Monday). Requests still in flight count
    with the usage seen so far: the provider bills them even if they never finish.
    """
    from ccgate.storage.ledger import open_ledger
    from ccgate.storage.reports import check_grouping, cost_report, report_to_json

    if as_json and as_csv:
        raise UserInputError("--json and --csv cannot be combined", hint="pick one output format")
    check_grouping(by)
    app_ctx = ctx()
    tz = resolve_timezone(app_ctx)
    window = resolve_window(period, since, until, tz)
    replay_spills(app_ctx)
    db = open_ledger(app_ctx.paths.ledger_file)
    try:
        # Table, JSON and CSV break spend down the same way: by model unless --by says otherwise.
        report = cost_report(db, since=window.since, until=window.until, by=by or "model", tz=tz)
        if as_json:
            app_ctx.print_json(report_to_json(report))
        elif as_csv:
            _print_csv(report)
        elif report.total.requests == 0:
            app_ctx.out.print(f"No requests recorded {window.phrase}. {START_HINT}", markup=False)
        else:
            _print_table(app_ctx, report, window.heading, db)
    finally:
        db.close()


def register(app: typer.Typer) -> None:
    app.command("cost")(cost)
