"""Spend and request queries over the ledger: plain SQL aggregates, calendar periods in the user's timezone.

Every status counts, `pending` included: a request in flight is real spend (the provider bills it even if the
stream is cut), so reports and budgets see it as soon as its usage is known.
"""

from __future__ import annotations

import re
import sqlite3
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta, tzinfo
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

    @property
    def cache_hit_ratio(self) -> float | None:
        """Share of the prompt served from cache: cache_read / (input + cache_read + cache_write)."""
        prompt = self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
        return None if prompt == 0 else self.cache_read_tokens / prompt

    @property
    def all_unpriced(self) -> bool:
        return self.requests > 0 and self.unpriced_requests == self.requests


@dataclass(slots=True)
class CostReport:
    since: datetime
    until: datetime
    by: str | None
    total: Totals
    groups: list[tuple[str, Totals]]


def check_grouping(by: str | None) -> None:
    if by is not None and by not in GROUPINGS:
        raise UserInputError(
            f"cannot group by {by!r}",
            hint=f"use --by with one of: {', '.join(GROUPINGS)}",
        )


def cost_report(
    db: Database, *, since: datetime, until: datetime, by: str | None, tz: tzinfo | None = None
) -> CostReport:
    """Totals for [since, until), optionally grouped; `tz` (None = the system's local zone) defines `day`."""
    check_grouping(by)
    groups: list[tuple[str, Totals]] = []
    with one_snapshot(db):
        spans = _day_spans(db, since, until, tz) if by == "day" else [("", since, until)]
        sums = _aggregate(db, spans, None if by == "day" else by)
    if by == "day":
        groups = sorted((label, totals) for (label, _), totals in sums.items())
    elif by is not None:
        groups = [(key or NONE_KEY, totals) for (_, key), totals in sums.items()]
        groups.sort(key=lambda group: (-group[1].cost_nanos, -group[1].requests, group[0]))
    total = sum(sums.values(), Totals())
    return CostReport(since=since, until=until, by=by, total=total, groups=groups)


def spent_nanos(db: Database, *, since: datetime, until: datetime, project: str | None = None) -> int:
    """Priced and estimated spend in [since, until), optionally for one project (budgets)."""
    with one_snapshot(db):
        sums = _aggregate(db, [("", since, until)], None, project=project)
    return sum(totals.cost_nanos for totals in sums.values())


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


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _ceil_hour(moment: datetime) -> datetime:
    floor = _floor_hour(moment)
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
        lo_hour, hi_hour = _ceil_hour(lo), _floor_hour(hi)
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
    """[local midnight, next local midnight) for every day of the range that holds requests' span.

    Only the span between the first and last request is walked, so `all --by day` does not list every day
    since 1970.
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
    day = start.astimezone(tz).date()
    while True:
        lo = max(local_midnight(day, tz), since)
        if lo >= end:
            break
        hi = min(local_midnight(day + timedelta(days=1), tz), until)
        spans.append((day.isoformat(), lo, hi))
        day += timedelta(days=1)
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
        "groups": [{"key": key, **totals_to_json(totals)} for key, totals in report.groups],
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
    db: Database, *, limit: int, errors_only: bool, session: str | None, after_rowid: int | None
) -> list[LoggedRequest]:
    """Oldest first. Without `after_rowid`: the `limit` most recently started requests. With it: rows first
    written after that rowid, in write order (what `logs -f` polls for)."""
    where: list[str] = []
    params: list[Any] = []
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
