"""Spend and request queries over the ledger: plain SQL aggregates, calendar periods in the user's timezone.

Every status counts, `pending` included: a request in flight is real spend (the provider bills it even if the
stream is cut), so reports and budgets see it as soon as its usage is known.
"""

from __future__ import annotations

import json
import re
import sqlite3
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ccgate.core.records import RequestRecord, RequestStatus, from_iso, nanos_to_usd, to_iso, utcnow
from ccgate.errors import UserInputError
from ccgate.storage.ledger import row_to_record

if TYPE_CHECKING:
    from sqlite_utils import Database

# --by KEY -> (column in `requests`, column in `request_rollups`); roll-ups store NULL as ''.
_KEYS: dict[str, tuple[str, str]] = {
    "model": ("requested_model", "model"),
    "provider": ("provider", "provider"),
    "project": ("project", "project"),
    "session": ("session_id", "session"),
}
GROUPINGS: tuple[str, ...] = (*_KEYS, "day")
NONE_KEY = "(none)"
PERIODS = ("today", "yesterday", "week", "month", "all")
# Rows written by the proxy itself; anything else (e.g. `import claude-code`) counts as imported.
LIVE_SOURCES = ("sidecar", "gateway")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)

_RAW_SUMS = """
    count(*),
    coalesce(sum(input_tokens), 0),
    coalesce(sum(output_tokens), 0),
    coalesce(sum(cache_read_tokens), 0),
    coalesce(sum(cache_write_5m_tokens + cache_write_1h_tokens), 0),
    coalesce(sum(cost_nanos), 0),
    coalesce(sum(cost_nanos IS NULL), 0),
    coalesce(sum(cost_nanos IS NOT NULL AND price_quality = 'estimated'), 0),
    coalesce(sum(source NOT IN ('sidecar', 'gateway')), 0)
"""
_ROLLUP_SUMS = """
    coalesce(sum(requests), 0),
    coalesce(sum(input_tokens), 0),
    coalesce(sum(output_tokens), 0),
    coalesce(sum(cache_read_tokens), 0),
    coalesce(sum(cache_write_tokens), 0),
    coalesce(sum(cost_nanos), 0),
    coalesce(sum(unpriced_requests), 0),
    coalesce(sum(estimated_requests), 0),
    coalesce(sum(imported_requests), 0)
"""


@dataclass(slots=True)
class Totals:
    """Sums over a set of requests. `cost_nanos` adds priced and estimated costs; unpriced ones are counted."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_nanos: int = 0
    unpriced_requests: int = 0
    estimated_requests: int = 0
    imported_requests: int = 0

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Totals:
        return cls(*(int(value) for value in row))

    def __add__(self, other: Totals) -> Totals:
        return Totals(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: Totals) -> Totals:
        return Totals(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    @property
    def cache_hit_ratio(self) -> float | None:
        """Share of the prompt served from cache: cache_read / (input + cache_read + cache_write)."""
        prompt = self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
        return None if prompt == 0 else self.cache_read_tokens / prompt

    @property
    def all_unpriced(self) -> bool:
        return self.requests > 0 and self.unpriced_requests == self.requests


GroupKey = str | tuple[str, str]


@dataclass(slots=True)
class CostReport:
    since: datetime
    until: datetime
    by: str | None
    total: Totals
    # a two-level grouping (`--by day,model`) has a (first, second) key
    groups: list[tuple[GroupKey, Totals]]
    week_start: int = 0  # the weeks of `--by week` start on this weekday (0 = Monday)


TAG_PREFIX = "tag:"
CALENDAR = ("day", "week", "month")
ALL_GROUPINGS: tuple[str, ...] = (*GROUPINGS, "week", "month")
_GROUPING_HINT = f"use --by with one of: {', '.join(ALL_GROUPINGS)}, or tag:KEY; two of them as `day,model`"


def grouping_parts(by: str | None) -> tuple[str, ...]:
    """`day,model` -> ("day", "model"), validated: at most two, no repeats, a tag only alone or after a calendar."""
    if by is None:
        return ()
    parts = tuple(part.strip() for part in by.split(","))
    if len(parts) > 2 or len(set(parts)) != len(parts):
        raise UserInputError(f"cannot group by {by!r}", hint=_GROUPING_HINT)
    for part in parts:
        if part.startswith(TAG_PREFIX):
            from ccgate.core.tags import check_key

            check_key(part.removeprefix(TAG_PREFIX))
        elif part not in ALL_GROUPINGS:
            raise UserInputError(f"cannot group by {part!r}", hint=_GROUPING_HINT)
    if len(parts) == 2:
        if sum(part in CALENDAR for part in parts) > 1:
            raise UserInputError(f"cannot group by {by!r}: two calendar units", hint=_GROUPING_HINT)
        if any(part.startswith(TAG_PREFIX) for part in parts) and not any(part in CALENDAR for part in parts):
            raise UserInputError(
                f"cannot group by {by!r}", hint="a tag pairs with day, week or month (e.g. --by month,tag:ticket)"
            )
    return parts


def check_grouping(by: str | None) -> None:
    grouping_parts(by)


def cost_report(
    db: Database,
    *,
    since: datetime,
    until: datetime,
    by: str | None,
    tz: tzinfo | None = None,
    week_start: int = 0,
) -> CostReport:
    """Totals for [since, until), optionally grouped by one or two keys; `tz` (None = the user's zone) defines
    days, weeks (starting on `week_start`, 0 = Monday) and months. Calendar groups come in time order, other
    groups by cost; under a two-level key the second level is ordered by cost within the first."""
    parts = grouping_parts(by)
    calendar = next((part for part in parts if part in CALENDAR), None)
    other = next((part for part in parts if part not in CALENDAR), None)
    with one_snapshot(db):
        if calendar is None:
            spans = [("", since, until)]
        else:
            spans = _calendar_spans(db, since, until, tz, calendar, week_start)
        if other is not None and other.startswith(TAG_PREFIX):
            sums = _tag_sums(db, spans, other.removeprefix(TAG_PREFIX))
        else:
            sums = _aggregate(db, spans, other)
    total = sum(sums.values(), Totals())
    groups: list[tuple[GroupKey, Totals]] = []
    if not parts:
        return CostReport(since=since, until=until, by=by, total=total, groups=groups, week_start=week_start)
    if calendar is None:
        groups = [(key or NONE_KEY, totals) for (_, key), totals in sums.items()]
        groups.sort(key=lambda group: (-group[1].cost_nanos, -group[1].requests, group[0]))
    elif other is None:
        groups = sorted((label, totals) for (label, _), totals in sums.items())
    else:
        ordered = sorted(
            sums.items(), key=lambda item: (item[0][0], -item[1].cost_nanos, -item[1].requests, item[0][1])
        )
        calendar_first = parts[0] == calendar
        for (label, key), totals in ordered:
            pair = (label, key or NONE_KEY) if calendar_first else (key or NONE_KEY, label)
            groups.append((pair, totals))
        if not calendar_first:
            groups.sort(key=lambda group: group[0][0])  # stable: by the first key, time order within it
    return CostReport(since=since, until=until, by=",".join(parts), total=total, groups=groups, week_start=week_start)


def _tag_sums(db: Database, spans: Sequence[tuple[str, datetime, datetime]], key: str) -> dict[tuple[str, str], Totals]:
    """Sums per (span, value of one tag): tagged rows through their partial index, the rest under '' (the
    span's total minus them, so untagged traffic is read from the roll-ups)."""
    from ccgate.core.tags import json_path

    totals = _aggregate(db, spans, None)
    result: dict[tuple[str, str], Totals] = {}
    chunk = 300
    for offset in range(0, len(spans), chunk):
        part = spans[offset : offset + chunk]
        values = ", ".join("(?, ?, ?)" for _ in part)
        rows = db.execute(
            f"WITH spans(label, lo, hi) AS (VALUES {values}) "  # noqa: S608 - fixed text
            f"SELECT spans.label, json_extract(tags, ?), {_RAW_SUMS} FROM spans JOIN requests "
            "ON requests.started_at >= spans.lo AND requests.started_at < spans.hi AND tags IS NOT NULL "
            "GROUP BY 1, 2",
            [*(v for label, lo, hi in part for v in (label, to_iso(lo), to_iso(hi))), json_path(key)],
        ).fetchall()
        for row in rows:
            if row[1] is not None:
                result[(str(row[0]), str(row[1]))] = Totals.from_row(row[2:])
    for (label, _), span_total in totals.items():
        tagged = sum((value for (lab, _), value in result.items() if lab == label), Totals())
        rest = span_total - tagged
        if rest.requests:
            result[(label, "")] = rest
    return result


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a session row shows besides its sums: where, when (first and last request) and with which models."""

    project: str | None
    first: datetime
    last: datetime
    models: tuple[str, ...]


def session_details(db: Database, *, since: datetime, until: datetime, ids: Sequence[str]) -> dict[str, SessionInfo]:
    """Project, first and last request, and models of each session in [since, until), through the session
    index (one short range read per session)."""
    details: dict[str, SessionInfo] = {}
    bounds = (to_iso(since), to_iso(until))
    for session in ids:
        if session == NONE_KEY:
            continue
        rows = db.execute(
            "SELECT min(started_at), max(started_at), json_group_array(DISTINCT requested_model), "
            "min(project) FROM requests WHERE session_id = ? AND started_at >= ? AND started_at < ?",
            (session, *bounds),
        ).fetchone()
        if rows is None or rows[0] is None:
            continue
        models = tuple(sorted(str(model) for model in json.loads(rows[2]) if model is not None))
        project = None if rows[3] is None else str(rows[3])
        details[session] = SessionInfo(project, from_iso(rows[0]), from_iso(rows[1]), models)
    return details


def session_to_json(info: SessionInfo | None, tz: tzinfo | None = None) -> dict[str, Any]:
    """A session's details for `--json` and `--csv`, times in `tz` (None: the user's zone)."""
    tz = zone(tz)
    if info is None:
        return {"project": None, "first": None, "last": None, "models": []}
    return {
        "project": info.project,
        "first": info.first.astimezone(tz).isoformat(),
        "last": info.last.astimezone(tz).isoformat(),
        "models": list(info.models),
    }


def keep_last(report: CostReport, count: int, sessions: dict[str, SessionInfo] | None = None) -> CostReport:
    """The `count` most recent groups: calendar periods (with all their second-level groups), or the sessions
    last active most recently. The total becomes the sum of what is kept."""
    parts = grouping_parts(report.by)
    calendar_at = next((index for index, part in enumerate(parts) if part in CALENDAR), None)
    if calendar_at is not None:

        def label(key: GroupKey) -> str:
            return key[calendar_at] if isinstance(key, tuple) else key

        recent = set(sorted({label(key) for key, _ in report.groups})[-count:])
        groups = [(key, totals) for key, totals in report.groups if label(key) in recent]
    elif parts == ("session",) and sessions is not None:
        epoch = EPOCH

        def last(key: GroupKey) -> datetime:
            info = sessions.get(key) if isinstance(key, str) else None
            return info.last if info is not None else epoch

        recent_keys = {key for key, _ in sorted(report.groups, key=lambda group: last(group[0]))[-count:]}
        groups = [(key, totals) for key, totals in report.groups if key in recent_keys]
    else:
        raise UserInputError(
            "--last needs a grouping with an order in time", hint="use it with --by day, week, month or session"
        )
    total = sum((totals for _, totals in groups), Totals())
    return CostReport(report.since, report.until, report.by, total, groups, report.week_start)


def tag_keys(db: Database, *, since: datetime, until: datetime, limit: int = 10) -> list[str]:
    """The tag keys used in [since, until), most used first (tagged rows only, through their partial index)."""
    rows = db.execute(
        "SELECT each.key, count(*) AS n FROM requests, json_each(requests.tags) AS each "
        "WHERE requests.tags IS NOT NULL AND requests.started_at >= ? AND requests.started_at < ? "
        "GROUP BY each.key ORDER BY n DESC, each.key LIMIT ?",
        (to_iso(since), to_iso(until), limit),
    ).fetchall()
    from ccgate.core.tags import _KEY

    return [str(row[0]) for row in rows if _KEY.match(str(row[0]))]


def spent_nanos(db: Database, *, since: datetime, until: datetime, project: str | None = None) -> int:
    """Priced and estimated spend in [since, until), optionally for one project (budgets)."""
    with one_snapshot(db):
        sums = _aggregate(db, [("", since, until)], None, project=project)
    return sum(totals.cost_nanos for totals in sums.values())


def open_for_reports(path: Path) -> Database:
    """The ledger for commands that only read it: a plain connection when it is already at the latest schema
    (importing sqlite-utils costs ~50 ms of a `cost` run), else `open_ledger`, which creates and migrates it.

    The report queries only call `execute(sql, params)` (and `one_snapshot` the connection), which a plain
    connection has too; `close()` as well.
    """
    from ccgate.storage.ledger import BUSY_TIMEOUT_S, open_ledger
    from ccgate.storage.migrations import schema_is_current

    if path.exists():
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if schema_is_current(conn) and conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return cast("Database", conn)
        except sqlite3.Error:
            pass  # open_ledger says what is wrong, with a hint
        if conn is not None:
            conn.close()
    return open_ledger(path)


@contextmanager
def one_snapshot(db: Database) -> Iterator[None]:
    """Run a report's several queries in one read transaction: a request finishing between the roll-up query and
    the pending-row query would otherwise be counted by neither (or, moving the other way, by both)."""
    conn = cast("sqlite3.Connection", getattr(db, "conn", db))  # statusline passes a plain connection
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if conn.in_transaction:
        conn.execute("COMMIT")  # nothing was written: this only ends the snapshot


def floor_hour(moment: datetime) -> datetime:
    """The UTC hour `moment` is in (the local ledger's and the gateway's roll-ups are by UTC hour)."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment: datetime) -> datetime:
    floor = floor_hour(moment)
    return floor if floor == moment else floor + HOUR


def _aggregate(
    db: Database, spans: Sequence[tuple[str, datetime, datetime]], by: str | None, *, project: str | None = None
) -> dict[tuple[str, str], Totals]:
    """Sums per (span label, group key) over disjoint spans [lo, hi): whole UTC hours come from the roll-ups
    (kept exact by triggers) plus the pending rows in them, the ragged ends of each span from the request rows
    themselves."""
    raw_key, rollup_key = (f"coalesce({_KEYS[by][0]}, '')", _KEYS[by][1]) if by else ("''", "''")
    result: dict[tuple[str, str], Totals] = {}

    def add(label: str, key: str, row: Sequence[Any]) -> None:
        totals = Totals.from_row(row)
        if totals.requests:
            result[(label, key)] = result[(label, key)] + totals if (label, key) in result else totals

    interiors: list[tuple[str, str, str]] = []
    edges: list[tuple[str, str, str]] = []
    for label, lo, hi in spans:
        lo_hour, hi_hour = ceil_hour(lo), floor_hour(hi)
        if lo_hour < hi_hour:
            interiors.append((to_iso(lo_hour), to_iso(hi_hour), label))
            if lo < lo_hour:
                edges.append((label, to_iso(lo), to_iso(lo_hour)))
            if hi_hour < hi:
                edges.append((label, to_iso(hi_hour), to_iso(hi)))
        elif lo < hi:
            edges.append((label, to_iso(lo), to_iso(hi)))

    project_filter = "" if project is None else " AND project = ?"
    project_params: list[Any] = [] if project is None else [project]
    interiors.sort()
    starts = [interior[0] for interior in interiors]

    def add_to_interiors(rows: Iterable[Sequence[Any]]) -> None:
        """Rows of (UTC start, group key, sums...) added to the interior span holding their start."""
        for row in rows:
            index = bisect_right(starts, row[0]) - 1
            if index >= 0 and row[0] < interiors[index][1]:
                add(interiors[index][2], str(row[1]), row[2:])

    if len(interiors) == 1:
        lo_iso, hi_iso, label = interiors[0]
        rows = db.execute(
            f"SELECT {rollup_key}, {_ROLLUP_SUMS} FROM request_rollups "  # noqa: S608
            f"WHERE bucket >= ? AND bucket < ?{project_filter} GROUP BY 1",
            [lo_iso, hi_iso, *project_params],
        ).fetchall()
        for row in rows:
            add(label, str(row[0]), row[1:])
    elif interiors:
        add_to_interiors(
            db.execute(
                f"SELECT bucket, {rollup_key}, {_ROLLUP_SUMS} FROM request_rollups "  # noqa: S608
                f"WHERE bucket >= ? AND bucket < ?{project_filter} GROUP BY 1, 2",
                [interiors[0][0], interiors[-1][1], *project_params],
            ).fetchall()
        )
    if interiors:
        # Roll-ups hold finished rows only (m005): requests still in flight come from `requests`, found through
        # the small partial index on pending rows (`+` keeps the planner off the started_at index, which would
        # walk every row of a month; a missing index would mean a scan, not an error).
        add_to_interiors(
            db.execute(
                f"SELECT started_at, {raw_key}, {_RAW_SUMS} FROM requests "  # noqa: S608
                f"WHERE status = 'pending' AND +started_at >= ? AND +started_at < ?{project_filter} GROUP BY 1, 2",
                [interiors[0][0], interiors[-1][1], *project_params],
            ).fetchall()
        )

    chunk = 300  # 3 parameters per span, well under SQLite's variable limit
    for offset in range(0, len(edges), chunk):
        part = edges[offset : offset + chunk]
        values = ", ".join("(?, ?, ?)" for _ in part)
        rows = db.execute(
            f"WITH spans(label, lo, hi) AS (VALUES {values}) "  # noqa: S608
            f"SELECT spans.label, {raw_key}, {_RAW_SUMS} FROM spans JOIN requests "
            f"ON requests.started_at >= spans.lo AND requests.started_at < spans.hi{project_filter} GROUP BY 1, 2",
            [*(value for edge in part for value in edge), *project_params],
        ).fetchall()
        for row in rows:
            add(str(row[0]), str(row[1]), row[2:])
    return result


def zone(tz: tzinfo | None) -> tzinfo:
    """`tz`, or for None the user's zone as `local.timezone.resolve_timezone` finds it (POSIX TZ strings too)."""
    if tz is not None:
        return tz
    from ccgate.local.timezone import resolve_timezone

    return resolve_timezone()


def local_midnight(day: date, tz: tzinfo | None) -> datetime:
    """The first moment of `day` in `tz` (None = the user's zone), shown in that zone.

    The instant comes from `budgets.local_midnight`, so `cost today` and the daily budget start together.
    """
    from ccgate.core.budgets import local_midnight as midnight_utc

    resolved = zone(tz)
    return midnight_utc(day, resolved).astimezone(resolved)


def _day_spans(
    db: Database, since: datetime, until: datetime, tz: tzinfo | None
) -> list[tuple[str, datetime, datetime]]:
    return _calendar_spans(db, since, until, tz, "day")


def _period_start(day: date, unit: str, week_start: int) -> date:
    if unit == "week":
        return day - timedelta(days=(day.weekday() - week_start) % 7)
    if unit == "month":
        return day.replace(day=1)
    return day


def _next_period(first: date, unit: str) -> date:
    if unit == "week":
        return first + timedelta(days=7)
    if unit == "month":
        return date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first + timedelta(days=1)


def _calendar_spans(
    db: Database, since: datetime, until: datetime, tz: tzinfo | None, unit: str, week_start: int = 0
) -> list[tuple[str, datetime, datetime]]:
    """[local midnight of a day/week/month, the next one) for each of them in the range that holds requests.

    Only the span between the first and last request is walked, so `all --by day` does not list every day
    since 1970. Labels: the day (`2025-03-04`), the week's first day (`2025-03-03`) or the month (`2025-03`).
    """
    bounds = (to_iso(since), to_iso(until))
    # Two index probes: min() and max() together in one query would scan the whole range.
    first = db.execute(
        "SELECT started_at FROM requests WHERE started_at >= ? AND started_at < ? ORDER BY started_at LIMIT 1", bounds
    ).fetchone()
    if first is None:
        return []
    last = db.execute(
        "SELECT started_at FROM requests WHERE started_at >= ? AND started_at < ? ORDER BY started_at DESC LIMIT 1",
        bounds,
    ).fetchone()
    first, last = first[0], last[0]
    start, end = max(since, from_iso(first)), min(until, from_iso(last) + timedelta(microseconds=1))
    spans: list[tuple[str, datetime, datetime]] = []
    tz = zone(tz)
    period = _period_start(start.astimezone(tz).date(), unit, week_start)
    while True:
        lo = max(local_midnight(period, tz), since)
        if lo >= end:
            break
        following = _next_period(period, unit)
        hi = min(local_midnight(following, tz), until)
        spans.append((period.isoformat()[:7] if unit == "month" else period.isoformat(), lo, hi))
        period = following
    return spans


def unpriced_models(db: Database, *, since: datetime, until: datetime, limit: int = 5) -> list[str]:
    """The models behind unpriced requests in the range, most frequent first (to name them in the hint)."""
    rows = db.execute(
        "SELECT coalesce(routed_model, requested_model, '(unknown)') AS model, count(*) AS n FROM requests "
        "WHERE started_at >= ? AND started_at < ? AND cost_nanos IS NULL GROUP BY model ORDER BY n DESC LIMIT ?",
        (to_iso(since), to_iso(until), limit),
    ).fetchall()
    return [str(row[0]) for row in rows]


# Why a row's cost is an estimate, told from its `cost_note` (written by pricing and the proxy) and its status.
# A row can have several reasons (a clamped usage keeps the earlier note in parentheses); `other` has none of these.
ESTIMATE_REASONS: tuple[tuple[str, str], ...] = (
    ("same_family", "cost_note LIKE '%not in the price catalog; estimated with%'"),
    ("other_provider", "cost_note LIKE '%not in the price catalog; priced as%'"),
    ("cut_stream", "cost_note LIKE '%tokens estimated%' AND status = 'interrupted'"),
    ("no_usage", "cost_note LIKE '%tokens estimated%' AND status != 'interrupted'"),
    ("fast_mode", "cost_note LIKE '%standard rates were used%'"),
    ("clamped", "(cost_note LIKE '%reported more than%' OR cost_note LIKE '%cost capped at%')"),
)


def estimate_reasons(db: Database, *, since: datetime, until: datetime) -> dict[str, int]:
    """How many estimated requests in the range have each reason (see `ESTIMATE_REASONS`, plus `other`)."""
    matched = " OR ".join(f"({condition})" for _, condition in ESTIMATE_REASONS)
    sums = ", ".join(f"coalesce(sum({condition}), 0)" for _, condition in ESTIMATE_REASONS)
    row = db.execute(
        f"SELECT {sums}, coalesce(sum(NOT coalesce({matched}, 0)), 0) FROM requests "  # noqa: S608 - fixed text
        "WHERE started_at >= ? AND started_at < ? AND cost_nanos IS NOT NULL AND price_quality = 'estimated'",
        (to_iso(since), to_iso(until)),
    ).fetchone()
    names = [name for name, _ in ESTIMATE_REASONS] + ["other"]
    return {name: int(count) for name, count in zip(names, row, strict=True) if count}


def usd_string(nanos: int) -> str:
    """Exact decimal string with nine places ("0.012345000"), never exponent notation."""
    return f"{nanos_to_usd(nanos):f}"


def totals_to_json(totals: Totals) -> dict[str, Any]:
    ratio = totals.cache_hit_ratio
    return {
        "requests": totals.requests,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cache_read_tokens": totals.cache_read_tokens,
        "cache_write_tokens": totals.cache_write_tokens,
        "cost_usd": usd_string(totals.cost_nanos),
        "unpriced_requests": totals.unpriced_requests,
        "estimated_requests": totals.estimated_requests,
        "imported_requests": totals.imported_requests,
        "cache_hit_ratio": None if ratio is None else round(ratio, 4),
    }


def report_to_json(report: CostReport) -> dict[str, Any]:
    """The stable `cost --json` shape (also `gateway report --json`); see DESIGN "Interfaces"."""
    return {
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "by": report.by,
        "total": totals_to_json(report.total),
        "groups": [
            {"key": list(key) if isinstance(key, tuple) else key, **totals_to_json(totals)}
            for key, totals in report.groups
        ],
    }


# --- request listings (`ccgate logs`) --------------------------------------------------------------------------

_ERROR_SQL = "(status IN ('error', 'interrupted') OR http_status >= 400)"


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """A ledger row with its rowid, which orders rows by when they were first written (for `logs -f`)."""

    rowid: int
    record: RequestRecord
    row: dict[str, Any]


def is_error(record: RequestRecord) -> bool:
    """Same rule as the SQL filter behind `logs --errors`."""
    failed = record.status in (RequestStatus.ERROR, RequestStatus.INTERRUPTED)
    return failed or (record.http_status is not None and record.http_status >= 400)


def _logged(rows: Iterable[dict[str, Any]]) -> list[LoggedRequest]:
    out = []
    for row in rows:
        rowid = int(row.pop("rowid"))
        out.append(LoggedRequest(rowid=rowid, record=row_to_record(row), row=row))
    return out


def _fetch(db: Database, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    cursor = db.execute(sql, params)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


def recent_requests(
    db: Database,
    *,
    limit: int,
    errors_only: bool,
    session: str | None,
    after_rowid: int | None,
    tag: tuple[str, str] | None = None,
) -> list[LoggedRequest]:
    """Oldest first. Without `after_rowid`: the `limit` most recently started requests. With it: rows first
    written after that rowid, in write order (what `logs -f` polls for). `tag`: only rows with that key=value."""
    where: list[str] = []
    params: list[Any] = []
    if tag is not None:
        from ccgate.core.tags import json_path

        where.append("tags IS NOT NULL AND json_extract(tags, ?) = ?")
        params.extend((json_path(tag[0]), tag[1]))
    if errors_only:
        where.append(_ERROR_SQL)
    if session is not None:
        where.append("session_id = ?")
        params.append(session)
    if after_rowid is not None:
        where.append("rowid > ?")
        params.append(after_rowid)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    if after_rowid is None:
        sql = f"SELECT rowid, * FROM requests{clause} ORDER BY started_at DESC, rowid DESC LIMIT ?"  # noqa: S608
        return list(reversed(_logged(_fetch(db, sql, [*params, limit]))))
    sql = f"SELECT rowid, * FROM requests{clause} ORDER BY rowid LIMIT ?"  # noqa: S608
    return _logged(_fetch(db, sql, [*params, limit]))


def requests_by_id(db: Database, ids: Sequence[str]) -> list[LoggedRequest]:
    if not ids:
        return []
    marks = ", ".join("?" for _ in ids)
    return _logged(_fetch(db, f"SELECT rowid, * FROM requests WHERE id IN ({marks}) ORDER BY rowid", ids))  # noqa: S608


def latest_rowid(db: Database) -> int:
    return int(db.execute("SELECT coalesce(max(rowid), 0) FROM requests").fetchone()[0])


# --- periods ---------------------------------------------------------------------------------------------------


def period_bounds(period: str, *, now: datetime | None = None, tz: tzinfo | None = None) -> tuple[datetime, datetime]:
    """[since, until) for a named period, calendar-aligned in `tz` (None = the user's zone); weeks start on Monday.

    today/week/month are the budgets' calendar windows (`budgets.window`), shown in `tz`.
    """
    from ccgate.core.budgets import Period, PeriodUnit, window

    tz = zone(tz)
    moment = now or utcnow()
    units = {"today": PeriodUnit.DAY, "week": PeriodUnit.WEEK, "month": PeriodUnit.MONTH}
    if period in units:
        start, end = window(Period(1, units[period]), moment, tz)
        return start.astimezone(tz), end.astimezone(tz)
    if period == "yesterday":
        today = moment.astimezone(tz).date()
        return local_midnight(today - timedelta(days=1), tz), local_midnight(today, tz)
    if period == "all":
        return EPOCH.astimezone(tz), moment.astimezone(tz)
    raise UserInputError(f"unknown period {period!r}", hint=f"use one of: {', '.join(PERIODS)}")


_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MOMENT_HINT = "use an ISO date or datetime, e.g. 2025-03-01 or 2025-03-01T14:30 (local time)"


def parse_moment(text: str, *, tz: tzinfo | None = None, end: bool = False) -> datetime:
    """An ISO date or datetime typed by the user, read in `tz` (None = the user's zone) unless it has an offset.

    A bare date used as an end (`--until 2025-03-31`) includes that whole day. Moments must lie between
    years 1 and 9999 in UTC as well (the ledger stores UTC), else a UserInputError says so.
    """
    from ccgate.core.budgets import local_to_utc

    value = text.strip()
    try:
        if _DATE_ONLY.match(value):
            day = date.fromisoformat(value)
            return local_midnight(day + timedelta(days=1) if end else day, tz)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise UserInputError(f"cannot read {text!r} as a date or time", hint=_MOMENT_HINT) from None
    except OverflowError:
        raise _out_of_range(text) from None
    try:
        if moment.tzinfo is None:
            resolved = zone(tz)
            return local_to_utc(moment, resolved).astimezone(resolved)
        moment.astimezone(UTC)  # the ledger compares in UTC: it must be representable there
    except (OverflowError, ValueError):
        raise _out_of_range(text) from None
    return moment


def _out_of_range(text: str) -> UserInputError:
    return UserInputError(
        f"{text!r} is out of range (dates must lie between 0001-01-02 and 9999-12-30 in UTC)",
        hint="leave --since or --until out for no bound, e.g. `ccgate cost all --since 2025-01-01`",
    )
