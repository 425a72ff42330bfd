"""The dashboard's queries: its sessions, spend from the roll-ups, and the request list's keyset pages.

Spend always comes from the roll-ups, never from a scan of `requests`: whole UTC days from `request_daily` (one row
per UTC day and key, team, customer, project, model and provider) or, where a page needs no more than team and
model, `request_daily_team_model`; the hours at either end from `request_hourly`. A 90-day chart on a
million-request ledger so sums a few thousand rows. Ranges are whole UTC hours.
The request list is the one reader of raw rows: newest first, one page at a time from an index (migration 0005),
resumed after the last row shown (never OFFSET).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from ccgate.core.records import from_iso, to_iso
from ccgate.storage.gateway import ledger
from ccgate.storage.gateway.db import Database
from ccgate.storage.gateway.ledger import ROLLUP_SUMS
from ccgate.storage.reports import Totals, ceil_hour, floor_hour

SESSION_BYTES = 32
# last_seen_at is written at most this often per session (a page view is otherwise a read only)
TOUCH_EVERY = timedelta(minutes=1)

_HOURLY_SUMS = (
    "coalesce(sum(r.requests), 0), coalesce(sum(r.input_tokens), 0), coalesce(sum(r.output_tokens), 0), "
    "coalesce(sum(r.cache_read_tokens), 0), coalesce(sum(r.cache_write_tokens), 0), coalesce(sum(r.cost_nanos), 0), "
    "coalesce(sum(r.unpriced_requests), 0), coalesce(sum(r.estimated_requests), 0), "
    "coalesce(sum(r.imported_requests), 0)"
)
# what a group is keyed by (its id where there is one, so a page can link to it)
GROUP_COLUMNS = {
    "key": "r.key_id",
    "team": "r.team_id",
    "customer": "r.customer_id",
    "project": "r.project",
    "model": "r.model",
    "provider": "r.provider",
}


def _hash(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8")).hexdigest()


# --- sessions ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UiSession:
    """A signed-in browser: it acts as the admin token `token_name`, with that token's role and team."""

    id_hash: str
    token_name: str
    role: str
    team_id: str | None
    csrf_secret: str
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime


_SESSION_COLS = "s.id_hash, s.token_name, s.role, s.team_id, s.csrf_secret, s.created_at, s.expires_at, s.last_seen_at"


def _session(row: Sequence[Any]) -> UiSession:
    return UiSession(
        str(row[0]),
        str(row[1]),
        str(row[2]),
        row[3],
        str(row[4]),
        from_iso(row[5]),
        from_iso(row[6]),
        from_iso(row[7]),
    )


async def create_session(
    db: Database, *, token_name: str, role: str, team_id: str | None, now: datetime, ttl: timedelta
) -> tuple[str, UiSession]:
    """A new session; returns the cookie value (only its hash is stored) and the session."""
    cookie = secrets.token_urlsafe(SESSION_BYTES)
    session = UiSession(
        _hash(cookie), token_name, role, team_id, secrets.token_urlsafe(SESSION_BYTES), now, now + ttl, now
    )
    await db.execute(
        "INSERT INTO ui_sessions (id_hash, token_name, role, team_id, csrf_secret, created_at, expires_at, "
        "last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            session.id_hash,
            token_name,
            role,
            team_id,
            session.csrf_secret,
            to_iso(now),
            to_iso(session.expires_at),
            to_iso(now),
        ),
    )
    return cookie, session


async def find_session(db: Database, cookie: str, *, now: datetime, bootstrap_name: str | None) -> UiSession | None:
    """The live session of this cookie, or None: unknown, expired, or its admin token revoked since sign-in.

    `bootstrap_name` is the name the environment's admin token signs in as while that token is configured (None:
    it is not, so its sessions end too). Admin token names are unique for ever (a revoked one keeps its row), so
    the join by name finds the very token the session signed in with.
    """
    if not cookie or len(cookie) > 200 or not cookie.isascii():
        return None
    row = await db.fetchone(
        f"SELECT {_SESSION_COLS}, t.revoked_at, t.role FROM ui_sessions s "
        "LEFT JOIN admin_tokens t ON t.name = s.token_name WHERE s.id_hash = ? AND s.expires_at > ?",
        (_hash(cookie), to_iso(now)),
    )
    if row is None:
        return None
    session = _session(row)
    if session.token_name == bootstrap_name and row[9] is None:
        return session
    if row[9] is None or row[8] is not None or row[9] != session.role:
        return None
    return session


async def touch_session(db: Database, session: UiSession, *, now: datetime) -> None:
    if now - session.last_seen_at >= TOUCH_EVERY:
        await db.execute("UPDATE ui_sessions SET last_seen_at = ? WHERE id_hash = ?", (to_iso(now), session.id_hash))


async def delete_session(db: Database, id_hash: str) -> None:
    await db.execute("DELETE FROM ui_sessions WHERE id_hash = ?", (id_hash,))


async def delete_expired_sessions(db: Database, *, now: datetime) -> int:
    return await db.execute("DELETE FROM ui_sessions WHERE expires_at <= ?", (to_iso(now),))


# --- spend from the daily and hourly roll-ups --------------------------------------------------------------------


def hour_floor(moment: datetime) -> str:
    """`2026-12-07T16` for any moment in that UTC hour: the roll-up's `hour`."""
    return ledger.slot_text("hour", moment)


def hour_ceiling(moment: datetime) -> str:
    """The first roll-up hour not before `moment` (rows up to `moment` are in the hours before it)."""
    return ledger.slot_text("hour", ceil_hour(moment))


def _next_day(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def roll_up_parts(since: datetime, until: datetime) -> list[tuple[str, str, str]]:
    """[since, until) widened to whole UTC hours, as (slot column, low, high) keys: the whole UTC days within from
    `request_daily` (`day`), the hours at either end from `request_hourly` (`hour`), split as reports split it."""
    parts = ledger.rollup_parts(floor_hour(since), ceil_hour(until))
    return [(slot, ledger.slot_text(slot, low), ledger.slot_text(slot, high)) for slot, low, high in parts]


_NARROW_COLUMNS = frozenset(("team_id", "model", *ROLLUP_SUMS))


@dataclass(frozen=True, slots=True)
class Scope:
    """Which roll-up rows a page sums: all, one team's (a team admin's view, a team page) or one key's."""

    team_id: str | None = None
    key_id: str | None = None

    def _day_table(self, columns: Sequence[str]) -> str:
        """The per-team-and-model days (a few rows a day) when they hold the columns and the scope needs no key."""
        if self.key_id is None and all(c in _NARROW_COLUMNS for c in columns):
            return "request_daily_team_model"
        return "request_daily"

    def source(self, since: datetime, until: datetime, columns: Sequence[str]) -> tuple[str, list[Any]]:
        """`FROM` text naming `r`: the roll-up rows of [since, until) in scope, with `slot` (a day or an hour) and
        `columns`; each part filtered on its own table's key, so its indexes serve."""
        selects: list[str] = []
        params: list[Any] = []
        for slot, low, high in roll_up_parts(since, until):
            clauses = [f"{slot} >= ?", f"{slot} < ?"]
            params += [low, high]
            if self.team_id is not None:
                clauses.append("team_id = ?")
                params.append(self.team_id)
            if self.key_id is not None:
                clauses.append("key_id = ?")
                params.append(self.key_id)
            table = "request_hourly" if slot == "hour" else self._day_table(columns)
            selects.append(f"SELECT {slot} AS slot, {', '.join(columns)} FROM {table} WHERE {' AND '.join(clauses)}")
        if not selects:  # an empty range: no rows, same columns
            selects.append(f"SELECT hour AS slot, {', '.join(columns)} FROM request_hourly WHERE 1 = 0")
        return f" FROM ({' UNION ALL '.join(selects)}) r", params


async def totals(db: Database, *, since: datetime, until: datetime, scope: Scope = Scope()) -> Totals:
    """Sums over [since, until) in whole UTC hours."""
    source, params = scope.source(since, until, ROLLUP_SUMS)
    row = await db.fetchone(f"SELECT {_HOURLY_SUMS}{source}", params)
    return Totals() if row is None else Totals.from_row(row)


async def period_totals(
    db: Database, spans: Sequence[tuple[datetime, datetime]], *, scope: Scope = Scope()
) -> list[Totals]:
    """Several ranges' sums, one statement each (each range its own days and hours)."""
    return [await totals(db, since=since, until=until, scope=scope) for since, until in spans]


@dataclass(frozen=True, slots=True)
class Group:
    """One group's sums; `id` is what the roll-up holds ('' for none: no project, an ingested row's provider)."""

    id: str
    totals: Totals


async def groups(
    db: Database,
    *,
    by: str,
    since: datetime,
    until: datetime,
    scope: Scope = Scope(),
    limit: int | None = None,
) -> list[Group]:
    """Sums per key|team|customer|project|model|provider, most spent first."""
    column = GROUP_COLUMNS[by]
    source, params = scope.source(since, until, (column.removeprefix("r."), *ROLLUP_SUMS))
    sql = (
        f"SELECT {column}, {_HOURLY_SUMS}{source} GROUP BY {column} "
        f"ORDER BY coalesce(sum(r.cost_nanos), 0) DESC, coalesce(sum(r.requests), 0) DESC, {column}"
    )
    if limit is not None:
        sql += " LIMIT ?"
        params.append(max(1, limit))
    return [Group(str(row[0]), Totals.from_row(row[1:])) for row in await db.fetch(sql, params)]


@dataclass(frozen=True, slots=True)
class SpendCell:
    """Spend in one roll-up slot and team or model: a whole UTC day (`slot` YYYY-MM-DD) or an hour
    (YYYY-MM-DDTHH)."""

    slot: str
    group: str  # the team's or model's id ('' for none)
    cost_nanos: int
    requests: int
    unpriced_requests: int

    @property
    def day(self) -> str:
        return self.slot[:10]

    def within(self, low_hour: str, high_hour: str) -> bool:
        """Whether the slot lies in the hours [low_hour, high_hour) (a day: all its hours)."""
        if len(self.slot) == 10:
            return low_hour <= self.slot + "T00" and _next_day(self.slot) + "T00" <= high_hour
        return low_hour <= self.slot < high_hour


async def spend_cells(
    db: Database, *, since: datetime, until: datetime, stack: str, scope: Scope = Scope()
) -> list[SpendCell]:
    """Spend, requests and unpriced requests per roll-up slot (whole UTC days, hours at the edges) and team or
    model: the overview's cards and chart in one read. A range from a UTC midnight reads a row per day and group
    for all but the current day; periods that start at UTC midnights fold from it exactly."""
    column = GROUP_COLUMNS[stack]
    source, params = scope.source(
        since, until, (column.removeprefix("r."), "cost_nanos", "requests", "unpriced_requests")
    )
    rows = await db.fetch(
        f"SELECT r.slot, {column}, coalesce(sum(r.cost_nanos), 0), coalesce(sum(r.requests), 0), "
        f"coalesce(sum(r.unpriced_requests), 0){source} GROUP BY r.slot, {column}",
        params,
    )
    return [SpendCell(str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]


# --- the request list ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """Equality on each given column, started_at within [since, until)."""

    key_id: str | None = None
    team_id: str | None = None
    project: str | None = None
    model: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the next page starts: just after this row in newest-first order."""

    started_at: str
    id: str
    key_id: str

    def text(self) -> str:
        return f"{self.started_at}~{self.id}~{self.key_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        parts = text.split("~")
        if len(parts) != 3 or len(text) > 600 or not text.isascii() or not text.isprintable():
            return None
        try:
            from_iso(parts[0])
        except ValueError:
            return None
        return cls(*parts)


@dataclass(frozen=True, slots=True)
class RequestLine:
    key_id: str
    id: str
    started_at: datetime
    team_id: str | None
    project: str | None
    requested_model: str | None
    provider: str | None
    routed_model: str | None
    status: str
    http_status: int | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_nanos: int | None
    price_quality: str
    latency_ms: float | None
    source: str


_LINE_COLS = (
    "r.key_id, r.id, r.started_at, r.team_id, r.project, r.requested_model, r.provider, r.routed_model, r.status, "
    "r.http_status, r.input_tokens, r.output_tokens, r.cache_read_tokens, "
    "r.cache_write_5m_tokens + r.cache_write_1h_tokens, r.cost_nanos, r.price_quality, r.latency_ms, r.source"
)
_FILTER_COLUMNS = (
    ("key_id", "r.key_id"),
    ("team_id", "r.team_id"),
    ("project", "r.project"),
    ("model", "r.requested_model"),
    ("status", "r.status"),
)


async def list_requests(
    db: Database, where: RequestFilter, *, after: Cursor | None = None, limit: int = 50
) -> tuple[list[RequestLine], Cursor | None]:
    """One page, newest first, and the cursor of the next page (None: this is the last)."""
    clauses: list[str] = []
    params: list[Any] = []
    for name, column in _FILTER_COLUMNS:
        value = getattr(where, name)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if where.since is not None:
        clauses.append("r.started_at >= ?")
        params.append(to_iso(where.since))
    if where.until is not None:
        clauses.append("r.started_at < ?")
        params.append(to_iso(where.until))
    if after is not None:
        # the plain `<=` lets the planner range-scan the index; the row value orders ties exactly
        clauses.append("r.started_at <= ? AND (r.started_at, r.id, r.key_id) < (?, ?, ?)")
        params += [after.started_at, after.started_at, after.id, after.key_id]
    sql = f"SELECT {_LINE_COLS} FROM requests r"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY r.started_at DESC, r.id DESC, r.key_id DESC LIMIT ?"
    rows = await db.fetch(sql, [*params, max(1, min(limit, 500)) + 1])
    lines = [_line(row) for row in rows]
    if len(lines) <= limit:
        return lines, None
    last = lines[limit - 1]
    return lines[:limit], Cursor(to_iso(last.started_at), last.id, last.key_id)


def _line(row: Sequence[Any]) -> RequestLine:
    return RequestLine(
        str(row[0]),
        str(row[1]),
        from_iso(row[2]),
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        str(row[8]),
        None if row[9] is None else int(row[9]),
        int(row[10]),
        int(row[11]),
        int(row[12]),
        int(row[13]),
        None if row[14] is None else int(row[14]),
        str(row[15]),
        None if row[16] is None else float(row[16]),
        str(row[17]),
    )
