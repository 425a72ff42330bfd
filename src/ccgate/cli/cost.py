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
from typing import TYPE_CHECKING, Any

import typer

from ccgate.cli._app import AppContext, ctx, replay_spills
from ccgate.errors import ConfigError, UserInputError

if TYPE_CHECKING:
    from sqlite_utils import Database

    from ccgate.storage.reports import CostReport, GroupKey, SessionInfo, Totals
    from ccgate.storage.what_if import WhatIfReport, WhatIfTotals

PRICE_HINT = "set one with `ccgate price set MODEL --input X --output Y` or in config.toml [prices.MODEL]"
START_HINT = "Run `ccgate launch claude` to start metering."
_KEY_HEADERS = {
    "model": "Model",
    "provider": "Provider",
    "project": "Project",
    "session": "Session",
    "day": "Day",
    "week": "Week",
    "month": "Month",
}
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


def _key_header(by: str) -> str:
    return f"Tag {by.removeprefix('tag:')}" if by.startswith("tag:") else _KEY_HEADERS[by]


def _group_label(by: str, key: str) -> str:
    if by == "day":
        return f"{datetime.fromisoformat(key):%a} {key}"
    if by == "week":
        return f"{datetime.fromisoformat(key):%a} {key}"
    if by == "month":
        return f"{datetime.fromisoformat(key + '-01'):%b %Y}"
    if by == "project":
        return home_relative(key)
    return key


def home_relative(path: str) -> str:
    home = str(Path.home())
    if path == home or path.startswith(home + "/"):
        return "~" + path[len(home) :]
    return path


def _key_cells(parts: tuple[str, ...], key: GroupKey, previous: GroupKey | None) -> list[str]:
    """The label cells of a row; under a two-level key the first level is shown once per run."""
    if isinstance(key, tuple):
        first = "" if isinstance(previous, tuple) and previous[0] == key[0] else _group_label(parts[0], key[0])
        return [first, _group_label(parts[1], key[1])]
    return [_group_label(parts[0], key)]


def _print_table(
    app_ctx: AppContext,
    report: CostReport,
    heading: str,
    db: Database,
    what: WhatIfReport | None = None,
    sessions: dict[str, SessionInfo] | None = None,
    tz: tzinfo | None = None,
) -> None:
    from rich import box
    from rich.table import Table

    from ccgate.storage.reports import estimate_reasons, grouping_parts, unpriced_models

    parts = grouping_parts(report.by or "model")
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
    table.add_column(_key_header(parts[0]), footer="Total", ratio=1, min_width=10, overflow="fold")
    if len(parts) == 2:
        table.add_column(_key_header(parts[1]), ratio=1, min_width=10, overflow="fold")
    if sessions is not None:
        table.add_column("Project", ratio=1, overflow="fold")
        table.add_column("First – last (local)", no_wrap=True)
        table.add_column("Models", ratio=1, overflow="fold")
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
    if what is not None:
        table.add_column("What-if", footer=what_if_cell(what.total, total.requests), justify="right", no_wrap=True)
        table.add_column("Δ", footer=delta_cell(total, what.total), justify="right", no_wrap=True)
    previous: GroupKey | None = None
    for key, totals in report.groups:
        cells = _key_cells(parts, key, previous)
        previous = key
        if sessions is not None:
            cells += _session_cells(sessions.get(key) if isinstance(key, str) else None, tz)
        cells += [
            f"{totals.requests:,}",
            compact(totals.input_tokens),
            compact(totals.output_tokens),
            compact(totals.cache_read_tokens),
            compact(totals.cache_write_tokens),
            _ratio(totals),
            cost_cell(totals),
        ]
        if what is not None:
            from ccgate.storage.what_if import WhatIfTotals

            group_what = what.groups.get(key, WhatIfTotals())
            cells += [what_if_cell(group_what, totals.requests), delta_cell(totals, group_what)]
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
    if what is not None:
        for line in what_if_lines(what):
            out.print(line)


def _session_cells(info: SessionInfo | None, tz: tzinfo | None) -> list[str]:
    if info is None:
        return ["", "", ""]
    first, last = info.first.astimezone(tz), info.last.astimezone(tz)
    until = f"{last:%H:%M}" if first.date() == last.date() else f"{last:%m-%d %H:%M}"
    return [home_relative(info.project or ""), f"{first:%Y-%m-%d %H:%M} – {until}", ", ".join(info.models)]


def what_if_cell(what: WhatIfTotals, requests: int) -> str:
    """As `cost_cell`: `unpriced` (never $0) when no request of the group has a what-if price."""
    from ccgate.core.records import format_usd

    if requests and what.unpriced_requests == requests:
        return "unpriced"
    text = format_usd(what.cost_nanos)
    return text + "†" if what.unpriced_requests else text


def delta_cell(actual: Totals, what: WhatIfTotals) -> str:
    """`-$1.20 (-40.0%)`: what-if minus actual; `–` when either side has no price at all."""
    from ccgate.core.records import format_usd
    from ccgate.storage.what_if import difference

    if actual.requests and actual.requests in (what.unpriced_requests, actual.unpriced_requests):
        return "–"
    delta, percent = difference(actual, what)
    sign = "-" if delta < 0 else "+"
    text = f"{sign}{format_usd(abs(delta))}"
    return text if percent is None else f"{text} ({percent:+}%)"


def what_if_lines(what: WhatIfReport) -> list[str]:
    """What was re-priced as what, the plain statement of what it means, and the targets without a price."""
    from ccgate.storage.what_if import STATEMENT, unpriced_targets

    lines = [
        f"What-if: {scenario.tier} → {scenario.target} ({what.repriced.get(scenario.tier, 0):,} requests)"
        for scenario in what.scenarios
    ]
    lines.append(STATEMENT)
    for scenario, count in unpriced_targets(what):
        lines.append(
            f"† {scenario.target} has no known price: {count:,} {scenario.tier} request(s) left unpriced in the "
            f"what-if; set one with `ccgate price set {scenario.model} --input X --output Y`"
        )
    if what.total.unpriced_requests and not unpriced_targets(what):
        lines.append(f"† {what.total.unpriced_requests:,} request(s) without a price are left out of the what-if")
    return lines


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


def _print_csv(
    report: CostReport, what: WhatIfReport | None = None, sessions: dict[str, SessionInfo] | None = None
) -> None:
    from ccgate.storage.reports import grouping_parts, session_to_json, totals_to_json
    from ccgate.storage.what_if import WhatIfTotals, what_if_fields

    two_level = len(grouping_parts(report.by)) == 2

    def row(key: GroupKey, totals: Totals) -> dict[str, object]:
        """The same columns as --json, in its order; a two-level key in `key` and `key2`."""
        first, second = key if isinstance(key, tuple) else (key, "")
        cells: dict[str, object] = {"key": first if first == "(total)" else csv_text(first)}
        if two_level:
            cells["key2"] = csv_text(second)
        if sessions is not None:
            info = session_to_json(sessions.get(first) if not two_level else None)
            cells.update({**info, "project": csv_text(info["project"] or ""), "models": " ".join(info["models"])})
        cells.update(totals_to_json(totals))
        if what is not None:
            cells.update(what_if_fields(what.total if key == "(total)" else what.groups.get(key, WhatIfTotals())))
        return cells

    # The writer ends rows in \r\n so that it also quotes a cell holding a lone \r (a project directory may);
    # each row is printed with a plain \n, as before.
    buffer = io.StringIO()
    # the same columns as --json, in its order
    writer = csv.DictWriter(buffer, fieldnames=tuple(row("(total)", report.total)), lineterminator="\r\n")

    def emit() -> None:
        sys.stdout.write(buffer.getvalue().removesuffix("\r\n") + "\n")
        buffer.seek(0)
        buffer.truncate()

    writer.writeheader()
    emit()
    total_key: GroupKey = ("(total)", "") if two_level else "(total)"
    for key, totals in [*report.groups, (total_key, report.total)]:
        writer.writerow(row("(total)" if key == total_key else key, totals))
        emit()
    sys.stdout.flush()


def cost(
    period: str | None = typer.Argument(
        None, help="today (default), yesterday, week, month or all.", show_default=False
    ),
    since: str | None = typer.Option(None, "--since", help="Start: ISO date or datetime, local time."),
    until: str | None = typer.Option(None, "--until", help="End: ISO datetime, or a date (that day included)."),
    by: str | None = typer.Option(
        None,
        "--by",
        help="Group by model (default), project, session, provider, day, week, month or tag:KEY; "
        "or two of them, e.g. day,model.",
    ),
    last: int | None = typer.Option(
        None, "--last", min=1, help="Only the N most recent groups (days, weeks, months or sessions)."
    ),
    chart: bool = typer.Option(False, "--chart", help="Draw spend per group as a bar chart (with --by day: per day)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (stable shape, for scripts)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV: one row per group and a (total) row."),
    what_if: list[str] = typer.Option(  # noqa: B008 - typer's idiom
        [],
        "--what-if",
        metavar="TIER=PROVIDER/MODEL",
        help="Re-price a tier's tokens as if routed there (repeatable), e.g. haiku=groq/llama-3.3-70b-versatile.",
    ),
) -> None:
    """Show what Claude Code cost: tokens, cache hits and dollars from the local ledger.

    Periods are calendar-aligned in local time (weeks start on Monday). Requests still in flight count
    with the usage seen so far: the provider bills them even if they never finish.
    """
    from ccgate.storage.reports import check_grouping, open_for_reports, report_to_json

    chosen = [name for name, on in (("--json", as_json), ("--csv", as_csv), ("--chart", chart)) if on]
    if len(chosen) > 1:
        raise UserInputError(f"{' and '.join(chosen)} cannot be combined", hint="pick one output format")
    check_grouping(by)
    app_ctx = ctx()
    tz = resolve_timezone(app_ctx)
    window = resolve_window(period, since, until, tz)
    replay_spills(app_ctx)
    db = open_for_reports(app_ctx.paths.ledger_file)
    try:
        # Table, JSON and CSV break spend down the same way: by model unless --by says otherwise.
        report, sessions = _report(app_ctx, db, window, by or "model", last, tz)
        what = _what_if(app_ctx, db, report, what_if, tz) if what_if else None
        if as_json:
            document = report_to_json(report)
            if what is not None:
                from ccgate.storage.what_if import add_to_json

                add_to_json(document, what)
            if sessions is not None:
                _add_sessions(document, sessions, tz)
            app_ctx.print_json(document)
        elif as_csv:
            _print_csv(report, what, sessions)
        elif report.total.requests == 0:
            app_ctx.out.print(f"No requests recorded {window.phrase}. {START_HINT}", markup=False)
        elif chart:
            from ccgate.cli.chart import print_chart

            print_chart(app_ctx.out, report, window.heading)
        else:
            _print_table(app_ctx, report, window.heading, db, what, sessions, tz)
    finally:
        db.close()


def week_start(app_ctx: AppContext) -> int:
    from ccgate.core.settings import WEEKDAYS

    name = app_ctx.config.week_start
    return WEEKDAYS.index(name) if name else 0


def _report(
    app_ctx: AppContext, db: Database, window: Window, by: str, last: int | None, tz: tzinfo
) -> tuple[CostReport, dict[str, SessionInfo] | None]:
    """The report, cut to its `last` most recent groups, with each session's details when grouped by session."""
    from ccgate.storage.reports import cost_report, keep_last, session_details

    report = cost_report(db, since=window.since, until=window.until, by=by, tz=tz, week_start=week_start(app_ctx))
    sessions = None
    if report.by == "session":
        ids = [key for key, _ in report.groups if isinstance(key, str)]
        sessions = session_details(db, since=window.since, until=window.until, ids=ids)
    if last is not None:
        report = keep_last(report, last, sessions)
    return report, sessions


def _add_sessions(document: dict[str, Any], sessions: dict[str, SessionInfo], tz: tzinfo) -> None:
    from ccgate.storage.reports import session_to_json

    for group in document["groups"]:
        group.update(session_to_json(sessions.get(group["key"]), tz))


def _what_if(app_ctx: AppContext, db: Database, report: CostReport, texts: list[str], tz: tzinfo) -> WhatIfReport:
    from ccgate.storage.what_if import resolve_scenarios, what_if

    cache_file = app_ctx.paths.state_dir / "price-cache.json"
    scenarios = resolve_scenarios(texts, app_ctx.config.prices, cache_file=cache_file, info=app_ctx.info)
    return what_if(db, report, scenarios, tz=tz)


def register(app: typer.Typer) -> None:
    app.command("cost")(cost)
