"""Budget admission and rate limits in the database, exact across instances.

The arithmetic is `ccgate.core.budgets` (windows, rolling buckets, `decide`); this module adds the locking. Every
transaction that reads or changes a budget's spend first takes the budget rows -- ``FOR UPDATE`` on
PostgreSQL, in one fixed order (customer, team, key, provider, then id), or SQLite's write lock (BEGIN
IMMEDIATE) -- so "spent + reserved + bound <= limit" is checked and acted on atomically by one instance at a
time. A reservation is a row with its instance and an expiry: one whose expiry has passed no longer counts,
even before `expire` deletes it, so a killed instance's holds lapse by themselves.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from ccgate.core.budgets import Admit, BudgetState, Reject, bucket_size, decide, parse_period, rolling_buckets, window
from ccgate.core.records import from_iso, new_request_id, to_iso
from ccgate.errors import NotFoundError, UserInputError
from ccgate.storage.gateway.db import Connection, Database, DatabaseUnavailableError, Row, SyncConnection
from ccgate.storage.gateway.records import (
    AdmissionResult,
    Admitted,
    Budget,
    BudgetLevel,
    BudgetView,
    RateAllowed,
    RateDecision,
    RateLevel,
    RateLimit,
    RateLimited,
    Refused,
    Reservation,
    Waiting,
)

__all__ = ["AdmissionResult", "BudgetView", "RateDecision"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# one request's cost or bound: $1e9, far above anything real and far below where sums of BIGINT overflow
MAX_NANOS = 10**18
_BUDGET_COLS = (
    "id, level, target_id, limit_nanos, period, calendar, timezone, thresholds, webhook_url, "
    "override_limit_nanos, override_until, created_at, updated_at"
)
_APPLYING = (
    "(level = 'customer' AND target_id = ?) OR (level = 'team' AND target_id = ?) "
    "OR (level = 'key' AND target_id = ?) OR (level = 'provider' AND target_id = ?)"
)
_SPEND_UPSERT = (
    "INSERT INTO budget_spend (budget_id, bucket_start, spent_nanos) VALUES (?, ?, ?) "
    "ON CONFLICT (budget_id, bucket_start) DO UPDATE SET spent_nanos = budget_spend.spent_nanos + excluded.spent_nanos"
)
AuditFn = Callable[[Connection, str | None, str, str | None, Any, Any], Awaitable[None]]


def _budget(row: Sequence[Any]) -> Budget:
    """The budget a row's first 13 columns describe; the same definition (its `updated_at` included) is parsed
    once, not on every admission (period, thresholds and three timestamps were parsed per budget per request)."""
    return _parsed_budget(tuple(row[:13]))


@functools.lru_cache(maxsize=4096)
def _parsed_budget(row: tuple[Any, ...]) -> Budget:
    return Budget(
        id=str(row[0]),
        level=BudgetLevel(row[1]),
        target_id=str(row[2]),
        limit_nanos=int(row[3]),
        period=parse_period(str(row[4])),
        calendar=bool(row[5]),
        timezone=str(row[6]),
        thresholds=tuple(Decimal(t) for t in json.loads(row[7])),
        webhook_url=row[8],
        override_limit_nanos=None if row[9] is None else int(row[9]),
        override_until=None if row[10] is None else from_iso(row[10]),
        created_at=from_iso(row[11]),
        updated_at=from_iso(row[12]),
    )


async def load_budgets(conn: Connection, where: str, params: Sequence[Any], *, lock: str = "") -> list[Budget]:
    rows = await conn.fetch(
        f"SELECT {_BUDGET_COLS} FROM budgets WHERE {where} ORDER BY lock_rank, id{lock}",
        params,
    )
    return [_budget(r) for r in rows]


# (budget id, updated_at) -> (valid from, valid until, current_window's answer): every admission and settle asks
# for each of its budgets' windows, and working one out (time zones, DST) was ~5 % of the gateway's CPU per request
_windows: dict[tuple[str, datetime], tuple[datetime, datetime, tuple[datetime, datetime, datetime]]] = {}


def current_window(budget: Budget, now: datetime) -> tuple[datetime, datetime, datetime]:
    """(first bucket counted, resets_at, bucket that spend at `now` goes to) for a budget at `now`."""
    key = (budget.id, budget.updated_at)
    cached = _windows.get(key)
    if cached is not None and cached[0] <= now < cached[1]:
        return cached[2]
    if budget.calendar:
        start, end = window(budget.period, now, ZoneInfo(budget.timezone), calendar=True)
        answer, valid = (start, end, start), (start, end)
    else:
        size = bucket_size(budget.period)
        duration = budget.period.approx_duration()
        buckets = rolling_buckets(budget.period, now, size=size)
        first, last = buckets[0], buckets[-1]
        # the oldest bucket stops counting once the whole of it lies before the window
        answer = (first, first + size + duration, last)
        # the same answer while `now` stays in bucket `last` and `now - duration` in bucket `first`
        valid = (max(last, first + duration), min(last + size, first + size + duration))
    if len(_windows) >= 4096:
        _windows.clear()
    _windows[key] = (*valid, answer)
    return answer


Windows = dict[str, tuple[datetime, datetime, datetime]]


def _views_query(budgets: Sequence[Budget], now: datetime) -> tuple[str, list[Any], Windows]:
    """One round trip: the spend buckets, then (bucket '') the live reservations' sum per budget."""
    ids = [b.id for b in budgets]
    marks = ", ".join("?" for _ in ids)
    windows = {b.id: current_window(b, now) for b in budgets}
    oldest = min(w[0] for w in windows.values())
    sql = (
        f"SELECT budget_id, bucket_start, spent_nanos FROM budget_spend "
        f"WHERE budget_id IN ({marks}) AND bucket_start >= ? "
        "UNION ALL SELECT rb.budget_id, '', sum(r.amount_nanos) FROM reservation_budgets rb "
        f"JOIN reservations r ON r.id = rb.reservation_id WHERE rb.budget_id IN ({marks}) AND r.expires_at > ? "
        "GROUP BY rb.budget_id"
    )
    return sql, [*ids, to_iso(oldest), *ids, to_iso(now)], windows


def _views_from(budgets: Sequence[Budget], rows: Sequence[Row], windows: Windows, now: datetime) -> list[BudgetView]:
    spent: dict[str, int] = {b.id: 0 for b in budgets}
    reserved = dict.fromkeys(spent, 0)
    by_id = {b.id: b for b in budgets}
    for budget_id, bucket, nanos in rows:
        first, _, last = windows[budget_id]
        if bucket == "":
            reserved[budget_id] += int(nanos)
        elif by_id[budget_id].calendar:
            if bucket == to_iso(first):
                spent[budget_id] += int(nanos)
        elif to_iso(first) <= bucket <= to_iso(last):
            spent[budget_id] += int(nanos)
    return [_view(b, windows[b.id], b.effective_limit(now), spent[b.id], reserved[b.id]) for b in budgets]


def _view(
    budget: Budget, window: tuple[datetime, datetime, datetime], limit: int, spent: int, reserved: int
) -> BudgetView:
    state = BudgetState(
        key=f"{budget.level.rank}:{budget.id}",
        label=budget.label,
        limit_nanos=limit,
        spent_nanos=spent,
        reserved_nanos=reserved,
        resets_at=window[1],
    )
    return BudgetView(budget=budget, state=state, window_start=window[0])


async def _views(conn: Connection, budgets: Sequence[Budget], now: datetime) -> list[BudgetView]:
    if not budgets:
        return []
    sql, params, windows = _views_query(budgets, now)
    return _views_from(budgets, await conn.fetch(sql, params), windows, now)


async def views(
    db: Database,
    key_id: str,
    team_id: str | None,
    customer_id: str | None,
    provider_id: str | None,
    now: datetime,
) -> list[BudgetView]:
    async with db.transaction() as conn:
        budgets = await load_budgets(conn, _APPLYING, (customer_id, team_id, key_id, provider_id))
        return await _views(conn, budgets, now)


async def reserve(
    db: Database,
    key_id: str,
    team_id: str | None,
    customer_id: str | None,
    provider_id: str | None,
    bound_nanos: int,
    instance_id: str,
    ttl: timedelta,
    now: datetime,
    definitions: BudgetDefinitions | None = None,
    batcher: ReserveBatcher | None = None,
) -> AdmissionResult:
    """One transaction: lock the applying budgets in order, apply `decide`, and hold `bound_nanos` if admitted.

    Admitted when spent + reserved + bound <= limit at every level, or when nothing is in flight there and
    spent < limit (the lone request); otherwise `Waiting` (live reservations fill the budget, spent < limit)
    or `Refused` (spent >= limit). Refused and waiting requests hold nothing. One round trip (see `admit`).
    """
    ask = Ask(key_id, team_id, customer_id, provider_id, bound_nanos, instance_id, ttl, now)
    # not urgent: a waiting request retries for room that settles make, so it does not go ahead of them
    _, result = await admit(db, ask, take_rate=False, definitions=definitions, urgent=False, batcher=batcher)
    assert result is not None  # only a rate limit answers None
    return result


@dataclass(frozen=True, slots=True)
class Ask:
    """What one admission asks for: whose request, how much to hold, by which instance, for how long."""

    key_id: str
    team_id: str | None
    customer_id: str | None
    provider_id: str | None
    bound_nanos: int
    instance_id: str
    ttl: timedelta
    now: datetime

    @property
    def applying(self) -> tuple[str | None, str | None, str | None, str | None]:
        """The `_APPLYING` parameters (customer, team, key, provider)."""
        return (self.customer_id, self.team_id, self.key_id, self.provider_id)


async def admit(
    db: Database,
    ask: Ask,
    *,
    take_rate: bool,
    definitions: BudgetDefinitions | None = None,
    urgent: bool = True,
    batcher: ReserveBatcher | None = None,
) -> tuple[RateDecision, AdmissionResult | None]:
    """The request's rate limits (with `take_rate`: counted unless one is reached), then its budgets, in one
    round trip: on SQLite one job inside BEGIN IMMEDIATE, on PostgreSQL one call of
    ``ccgate_reserve_many_v1`` (migration 0011), shared with the admissions `batcher` has waiting. Rate limited:
    (RateLimited, None), nothing reserved.

    On SQLite it runs on the event loop's own connection when the write lock is free; when it has to queue on
    the database thread, an `urgent` admission (a new request: its reply waits for it) goes ahead of queued
    settles and ledger writes, which only run after replies (`SQLiteDatabase.run_transaction`)."""
    if not 0 <= ask.bound_nanos <= MAX_NANOS:
        raise ValueError("bound_nanos must be between 0 and MAX_NANOS")
    from ccgate.storage.gateway.db import SQLiteDatabase

    if isinstance(db, SQLiteDatabase):
        return await db.run_transaction(lambda conn: _admit_sync(conn, ask, take_rate), urgent=urgent, inline=True)
    return await _admit_postgres(db, ask, take_rate, definitions or BudgetDefinitions(), batcher or ReserveBatcher())


def _admit_sync(conn: SyncConnection, ask: Ask, take_rate: bool) -> tuple[RateDecision, AdmissionResult | None]:
    """SQLite: the whole admission as one job, its write lock held (BEGIN IMMEDIATE)."""
    if take_rate:
        rate = _take_sync(conn, ask.key_id, ask.team_id, ask.now)
        if isinstance(rate, RateLimited):
            return rate, None
    budgets = [
        _budget(row)
        for row in conn.fetch(
            f"SELECT {_BUDGET_COLS} FROM budgets WHERE {_APPLYING} ORDER BY lock_rank, id", ask.applying
        )
    ]
    budget_views: list[BudgetView] = []
    if budgets:
        sql, params, windows = _views_query(budgets, ask.now)
        budget_views = _views_from(budgets, conn.fetch(sql, params), windows, ask.now)
    result = _outcome(budget_views, ask)
    if isinstance(result, Admitted) and budgets:
        for sql, params in _hold_statements(result.reservation, ask.now):
            conn.execute(sql, params)
    return RateAllowed(), result


def _outcome(budget_views: Sequence[BudgetView], ask: Ask) -> AdmissionResult:
    """`decide` over the budgets' states: the reservation to hold, or which budget refuses or makes it wait."""
    decision = decide([v.state for v in budget_views], ask.bound_nanos)
    if not isinstance(decision, Admit):
        blocking = next(v for v in budget_views if v.state.key == decision.blocking.key)
        return Refused(blocking) if isinstance(decision, Reject) else Waiting(blocking)
    reservation = Reservation(
        id=new_request_id(),
        budget_ids=tuple(v.budget.id for v in budget_views),
        amount_nanos=ask.bound_nanos,
        instance_id=ask.instance_id,
        expires_at=ask.now + ask.ttl,
    )
    return Admitted(reservation, tuple(budget_views))


def _hold_statements(reservation: Reservation, now: datetime) -> list[tuple[str, list[Any]]]:
    return [
        (
            "INSERT INTO reservations (id, amount_nanos, instance_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            [
                reservation.id,
                reservation.amount_nanos,
                reservation.instance_id,
                to_iso(now),
                to_iso(reservation.expires_at),
            ],
        ),
        (
            "INSERT INTO reservation_budgets (budget_id, reservation_id) VALUES "
            + ", ".join("(?, ?)" for _ in reservation.budget_ids),
            [value for budget_id in reservation.budget_ids for value in (budget_id, reservation.id)],
        ),
    ]


_RESERVE_MANY = "SELECT ask, kind, item, note, a, b, c, d FROM ccgate_reserve_many_v1(" + ", ".join("?" * 16) + ")"
# A budget changed between reading the definitions and the call more often than this in a row: take the slow path
# (one transaction of several statements), which reads them under the lock.
_STALE_TRIES = 3


@dataclass(slots=True)
class _Queued:
    """One admission for ``ccgate_reserve_many_v1``, with the budget definitions it was decided against."""

    ask: Ask
    take_rate: bool
    cached: tuple[tuple[Budget, str], ...]
    windows: dict[str, tuple[datetime, datetime, datetime]]
    reservation_id: str
    answer: asyncio.Future[list[Row]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ReserveBatcher:
    """This process's PostgreSQL admissions: sent at once while fewer than `MAX_IN_FLIGHT` calls run, otherwise
    queued and sent together in the next call of ``ccgate_reserve_many_v1`` -- one round trip and one transaction
    for all of them, where each would take its team's budget rows in a transaction of its own, one after another.
    Alone (c=1) an admission never waits for a batch."""

    MAX_IN_FLIGHT = 2
    MAX_BATCH = 64
    GIVE_BACK_TRIES = 30  # a second apart: a database restart's length

    def __init__(self) -> None:
        self._queued: list[_Queued] = []
        self._in_flight = 0
        self._calls: set[asyncio.Task[None]] = set()

    async def submit(self, db: Database, queued: _Queued) -> list[Row]:
        """This admission's rows of the call it went in: v1's rows (kind, item, note, a, b, c, d)."""
        self._queued.append(queued)
        if self._in_flight < self.MAX_IN_FLIGHT:
            self._send(db)
        return await queued.answer

    def _send(self, db: Database) -> None:
        batch, self._queued = self._queued[: self.MAX_BATCH], self._queued[self.MAX_BATCH :]
        self._in_flight += 1
        self._background(self._call(db, batch))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, db: Database, batch: list[_Queued]) -> None:
        try:
            rows = await db.fetch(_RESERVE_MANY, _many_params(batch))
        except BaseException as error:
            for queued in batch:
                if not queued.answer.done():
                    if isinstance(error, asyncio.CancelledError):
                        queued.answer.cancel()
                    else:
                        queued.answer.set_exception(error)
            if not isinstance(error, Exception):
                raise
            self._give_back(db, [queued.reservation_id for queued in batch])
        else:
            answers: list[list[Row]] = [[] for _ in batch]
            for row in rows:
                answers[int(row[0]) - 1].append(tuple(row[1:]))
            for queued, answer in zip(batch, answers, strict=True):
                if not queued.answer.done():
                    queued.answer.set_result(answer)
        finally:
            self._in_flight -= 1
            if self._queued:
                self._send(db)

    def _give_back(self, db: Database, reservation_ids: list[str]) -> None:
        """A call that failed may still have committed (the connection broke on the way back): the holds it made
        are known to no request, and the heartbeat would renew them with this instance's others for as long as it
        lives. Deleted in the background (ids are fresh per call, so no live hold is among them)."""
        self._background(self._delete_holds(db, reservation_ids))

    async def _delete_holds(self, db: Database, reservation_ids: list[str]) -> None:
        marks = ", ".join("?" for _ in reservation_ids)
        for _ in range(self.GIVE_BACK_TRIES):
            try:
                await db.execute(f"DELETE FROM reservations WHERE id IN ({marks})", reservation_ids)
                return
            except DatabaseUnavailableError:
                await asyncio.sleep(1.0)


def _many_params(batch: Sequence[_Queued]) -> tuple[list[Any], ...]:
    """``ccgate_reserve_many_v1``'s parameters: one element per admission; the budget lists one after another."""
    return (
        [q.ask.customer_id for q in batch],
        [q.ask.team_id for q in batch],
        [q.ask.key_id for q in batch],
        [q.ask.provider_id for q in batch],
        [position for position, q in enumerate(batch, 1) for _ in q.cached],
        [budget.id for q in batch for budget, _ in q.cached],
        [updated for q in batch for _, updated in q.cached],
        [to_iso(q.windows[budget.id][0]) for q in batch for budget, _ in q.cached],
        [to_iso(q.windows[budget.id][2]) for q in batch for budget, _ in q.cached],
        [q.ask.bound_nanos for q in batch],
        [to_iso(q.ask.now) for q in batch],
        [q.reservation_id for q in batch],
        [q.ask.instance_id for q in batch],
        [to_iso(q.ask.now + q.ask.ttl) for q in batch],
        [q.take_rate for q in batch],
        [to_iso(minute_of(q.ask.now)) for q in batch],
    )


async def _admit_postgres(
    db: Database, ask: Ask, take_rate: bool, definitions: BudgetDefinitions, batcher: ReserveBatcher
) -> tuple[RateDecision, AdmissionResult | None]:
    cached = definitions.applying(ask.applying)
    for _ in range(_STALE_TRIES):
        if cached is None:
            cached = await definitions.load(db, ask.applying)
        budgets = [budget for budget, _ in cached]
        windows = {b.id: current_window(b, ask.now) for b in budgets}
        reservation_id = new_request_id()
        rows = await batcher.submit(db, _Queued(ask, take_rate, cached, windows, reservation_id))
        verdict = str(rows[-1][1])
        if take_rate:
            limits = [
                RateLimit(
                    str(item),
                    RateLevel(note),
                    ask.key_id if note == "key" else str(ask.team_id),
                    _int_or_none(a),
                    _int_or_none(b),
                    ask.now,
                    ask.now,
                )
                for kind, item, note, a, b, _, _ in rows
                if kind == "rate"
            ]
            counts = {str(row[1]): (int(row[5]), int(row[6])) for row in rows if row[0] == "rate"}
            rate = _rate_verdict(limits, counts, ask.now)
            if verdict == "rate":
                assert isinstance(rate, RateLimited)
                return rate, None
            take_rate = False  # counted: a retry after 'stale' must not count the request again
        if verdict == "stale":
            cached = None
            continue
        budget_views = [
            _view(by_id, windows[by_id.id], int(a), int(b), int(c))
            for (kind, _, _, a, b, c, _), by_id in zip((r for r in rows if r[0] == "budget"), budgets, strict=True)
        ]
        if verdict == "admitted":
            reservation = Reservation(
                reservation_id, tuple(b.id for b in budgets), ask.bound_nanos, ask.instance_id, ask.now + ask.ttl
            )
            return RateAllowed(), Admitted(reservation, tuple(budget_views))
        result = _outcome(budget_views, ask)
        if isinstance(result, Admitted):  # the function and `decide` disagree: a defect, never a silent admit
            raise RuntimeError("ccgate_reserve_many_v1 refused what ccgate.core.budgets.decide admits")
        return RateAllowed(), result
    # the definitions keep changing under us: read them under the lock, the slow way
    return RateAllowed(), await _reserve_in_transaction(db, ask)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


async def _reserve_in_transaction(db: Database, ask: Ask) -> AdmissionResult:
    """`reserve` in several statements of one transaction: the budget rows locked, read, decided, held."""
    async with db.transaction() as conn:
        budgets = await load_budgets(conn, _APPLYING, ask.applying, lock=db.for_update)
        result = _outcome(await _views(conn, budgets, ask.now), ask)
        if isinstance(result, Admitted) and budgets:
            for sql, params in _hold_statements(result.reservation, ask.now):
                await conn.execute(sql, params)
        return result


class BudgetDefinitions:
    """This process's copy of budget definitions: which budgets apply to a (customer, team, key, provider), with
    the ``updated_at`` each was read at, and every budget seen by id (for the bucket a settle charges).

    Never trusted where it matters, so it needs no expiry: PostgreSQL's ``ccgate_reserve_many_v1`` compares the ids
    and ``updated_at`` of the budgets it locks with these and answers 'stale' (nothing held) on any difference,
    and reads limits and overrides itself. A settle uses only a budget's period, calendar flag and timezone,
    which never change once it is created (ids are never reused). Bounded: cleared when full.
    """

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._applying: dict[tuple[str | None, ...], tuple[tuple[Budget, str], ...]] = {}
        self.by_id: dict[str, Budget] = {}

    def applying(self, who: tuple[str | None, ...]) -> tuple[tuple[Budget, str], ...] | None:
        return self._applying.get(who)

    async def load(self, db: Database, who: tuple[str | None, ...]) -> tuple[tuple[Budget, str], ...]:
        rows = await db.fetch(f"SELECT {_BUDGET_COLS} FROM budgets WHERE {_APPLYING} ORDER BY lock_rank, id", who)
        found = tuple((_budget(row), str(row[12])) for row in rows)
        if len(self._applying) >= self.MAX_ENTRIES:
            self._applying.clear()
        self._applying[who] = found
        self.remember(budget for budget, _ in found)
        return found

    def remember(self, budgets: Iterable[Budget]) -> None:
        if len(self.by_id) >= self.MAX_ENTRIES:
            self.by_id.clear()
        self.by_id.update((budget.id, budget) for budget in budgets)

    async def by_ids(self, db: Database, ids: Sequence[str]) -> dict[str, Budget]:
        """The budgets of `ids` that exist (a deleted one is left out)."""
        missing = [budget_id for budget_id in ids if budget_id not in self.by_id]
        if missing:
            marks = ", ".join("?" for _ in missing)
            self.remember(await load_budgets(db, f"id IN ({marks})", missing))
        return {budget_id: self.by_id[budget_id] for budget_id in ids if budget_id in self.by_id}


_LEVEL_COLUMNS = {BudgetLevel.CUSTOMER: "customer_id", BudgetLevel.TEAM: "team_id", BudgetLevel.KEY: "key_id"}


async def seed_spend(conn: Connection, budget: Budget, now: datetime) -> None:
    """Fill a new budget's current window from the ledger rows of its target (by minute, into its buckets)."""
    first = current_window(budget, now)[0]
    if budget.level is BudgetLevel.PROVIDER:
        row = await conn.fetchone("SELECT name FROM provider_configs WHERE id = ?", (budget.target_id,))
        if row is None:
            return
        # ingested rows ran on the developer's own credentials: they never count against an org provider
        where, value = "provider = ? AND source = 'proxied'", row[0]
    else:
        where, value = f"{_LEVEL_COLUMNS[budget.level]} = ?", budget.target_id
    minute = "substr(started_at, 1, 16)"
    rows = await conn.fetch(
        f"SELECT {minute}, sum(cost_nanos) FROM requests WHERE {where} AND started_at >= ? AND started_at <= ? "
        f"AND cost_nanos IS NOT NULL GROUP BY {minute}",
        (value, to_iso(first), to_iso(now)),
    )
    per_bucket: dict[datetime, int] = {}
    for text, nanos in rows:
        moment = max(from_iso(f"{text}:00Z"), first)
        bucket = current_window(budget, moment)[2]
        per_bucket[bucket] = per_bucket.get(bucket, 0) + int(nanos)
    await conn.executemany(
        _SPEND_UPSERT, [(budget.id, to_iso(bucket), nanos) for bucket, nanos in per_bucket.items() if nanos]
    )


async def shrink(db: Database, reservation_id: str, new_bound_nanos: int) -> bool:
    """Lower a reservation (e.g. to the real input cost once `message_start` reports it); never raises it."""
    if not 0 <= new_bound_nanos <= MAX_NANOS:
        raise ValueError("new_bound_nanos must be between 0 and MAX_NANOS")
    changed = await db.execute(
        "UPDATE reservations SET amount_nanos = ? WHERE id = ? AND amount_nanos > ?",
        (new_bound_nanos, reservation_id, new_bound_nanos),
    )
    return changed > 0


async def charge(conn: Connection, db: Database, budget_ids: Sequence[str], actual_nanos: int, at: datetime) -> None:
    """Add spend to the bucket holding `at` of each budget that still exists, its rows locked in order first."""
    if not budget_ids or actual_nanos == 0:
        return
    marks = ", ".join("?" for _ in budget_ids)
    budgets = await load_budgets(conn, f"id IN ({marks})", list(budget_ids), lock=db.for_update)
    await _add_spend(conn, budgets, actual_nanos, at)


async def _add_spend(conn: Connection, budgets: Sequence[Budget], nanos: int, at: datetime) -> None:
    if budgets and nanos:
        await conn.executemany(_SPEND_UPSERT, [(b.id, to_iso(current_window(b, at)[2]), nanos) for b in budgets])


# Only this instance's own pending row: another instance's pending row of the same id is another request in flight
# (its own settle marks it), so this request's cost must not land in that row's charged_nanos.
_CLAIM_UPDATE = (
    "UPDATE requests SET charged_nanos = ?, charged_by = 'settle' "
    "WHERE key_id = ? AND id = ? AND status = 'pending' AND charged_nanos IS NULL AND instance_id = ?"
)
_CLAIM_SELECT = "SELECT source, charged_nanos, charged_by, instance_id FROM requests WHERE key_id = ? AND id = ?"
_CLAIM_PLACEHOLDER = (
    "INSERT INTO requests (key_id, id, source, status, started_at, received_at, instance_id, charged_nanos, "
    "charged_by) VALUES (?, ?, 'proxied', 'pending', ?, ?, ?, ?, 'settle') ON CONFLICT (key_id, id) DO NOTHING"
)
_CLAIM_SETTLE = "UPDATE requests SET charged_nanos = ?, charged_by = 'settle' WHERE key_id = ? AND id = ?"


def _claim_rest(found: Row, nanos: int, instance_id: str) -> tuple[int, int | None]:
    """For a row that was not pending and uncharged: (what is still owed, the new charged_nanos or None)."""
    source, charged, charged_by, row_instance = found
    same_request = (source == "ingested" and charged_by == "ingest") or (
        charged_by == "recovery" and row_instance == instance_id
    )
    if not same_request:
        return nanos, None
    already = int(charged or 0)
    return max(0, nanos - already), max(already, nanos)


async def claim_charge(
    conn: Connection, db: Database, key_id: str, row_id: str, nanos: int, instance_id: str, now: datetime
) -> int:
    """How much of a proxied request's real cost `nanos` still has to go into the budgets, marking its row.

    Charging is idempotent per row (`requests.charged_nanos`): the row's usual state is pending and uncharged
    (all of it), if it is this instance's: another instance's pending row of the same id is another request in
    flight (all of it, that row left for its own settle). A row another instance recovered while this one had lost
    the database (`charged_by` 'recovery', same instance), or a sidecar's sync of this very request that arrived
    first ('ingest'), has part of it already: only the rest. A finished row charged by an earlier request that
    reused the id is another request: all of it, the old row untouched. No row yet (the ledger writer is behind):
    a pending placeholder carries the mark, so a sync arriving before the real row is written finds it.
    (``ccgate_settle_v3``, migration 0012, applies the same rules on PostgreSQL.)
    """
    if await conn.execute(_CLAIM_UPDATE, (nanos, key_id, row_id, instance_id)):
        return nanos
    found = await conn.fetchone(_CLAIM_SELECT + db.for_update, (key_id, row_id))
    if found is None:
        await conn.execute(_CLAIM_PLACEHOLDER, (key_id, row_id, to_iso(now), to_iso(now), instance_id, nanos))
        return nanos
    owed, update = _claim_rest(found, nanos, instance_id)
    if update is not None:
        await conn.execute(_CLAIM_SETTLE, (update, key_id, row_id))
    return owed


async def settle(
    db: Database,
    reservation: Reservation,
    actual_nanos: int,
    now: datetime,
    row: tuple[str, str] | None = None,
    definitions: BudgetDefinitions | None = None,
    *,
    keep_reservation: bool = False,
) -> bool:
    """Replace the reservation by the real cost in one transaction: delete it, add spend to every budget.

    Spend is added even if the reservation had lapsed (the provider billed it all the same); returns whether
    the reservation was still there. `keep_reservation`: only the spend (a request admitted from a lease, whose
    reservation its instance ends). With `row` (key id, row id) the charge is idempotent per row
    (`claim_charge`), taken before any budget or spend row, as `instances.recover_dead` does (one lock order).
    On PostgreSQL it takes no budget row (``ccgate_settle_v2``, migration 0009, says why that is exact): a
    settle does not queue behind its team's admissions. One round trip: one transaction on SQLite (on the event
    loop's connection when the write lock is free), one call of ``ccgate_settle_v3`` (migration 0012) on PostgreSQL.
    """
    if not 0 <= actual_nanos <= MAX_NANOS:
        raise ValueError("actual_nanos must be between 0 and MAX_NANOS")
    from ccgate.storage.gateway.db import SQLiteDatabase

    if isinstance(db, SQLiteDatabase):
        return await db.run_transaction(
            lambda conn: _settle_sync(conn, reservation, actual_nanos, now, row, keep_reservation), inline=True
        )
    budgets = await (definitions or BudgetDefinitions()).by_ids(db, reservation.budget_ids)
    ids = [budget_id for budget_id in reservation.budget_ids if budget_id in budgets]
    found = await db.fetchone(
        "SELECT ccgate_settle_v3(?, ?, ?, ?, ?, ?, ?, ?)",
        (
            None if row is None else row[0],
            None if row is None else row[1],
            actual_nanos,
            reservation.instance_id,
            to_iso(now),
            None if keep_reservation else reservation.id,
            ids,
            [to_iso(current_window(budgets[budget_id], now)[2]) for budget_id in ids],
        ),
    )
    return bool(found is not None and found[0])


def _settle_sync(
    conn: SyncConnection,
    reservation: Reservation,
    actual_nanos: int,
    now: datetime,
    row: tuple[str, str] | None,
    keep_reservation: bool = False,
) -> bool:
    """SQLite: `settle` as one job, its write lock held."""
    if row is not None and actual_nanos:
        actual_nanos = _claim_sync(conn, row[0], row[1], actual_nanos, reservation.instance_id, now)
    budgets: list[Budget] = []
    if reservation.budget_ids:
        marks = ", ".join("?" for _ in reservation.budget_ids)
        budgets = [
            _budget(r)
            for r in conn.fetch(
                f"SELECT {_BUDGET_COLS} FROM budgets WHERE id IN ({marks}) ORDER BY lock_rank, id",
                reservation.budget_ids,
            )
        ]
    found = 0 if keep_reservation else conn.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,))
    if budgets and actual_nanos:
        conn.executemany(_SPEND_UPSERT, [(b.id, to_iso(current_window(b, now)[2]), actual_nanos) for b in budgets])
    return found > 0


def _claim_sync(conn: SyncConnection, key_id: str, row_id: str, nanos: int, instance_id: str, now: datetime) -> int:
    """`claim_charge` for a job on the SQLite thread (same rules, same statements)."""
    if conn.execute(_CLAIM_UPDATE, (nanos, key_id, row_id, instance_id)):
        return nanos
    found = conn.fetch(_CLAIM_SELECT, (key_id, row_id))
    if not found:
        conn.execute(_CLAIM_PLACEHOLDER, (key_id, row_id, to_iso(now), to_iso(now), instance_id, nanos))
        return nanos
    owed, update = _claim_rest(found[0], nanos, instance_id)
    if update is not None:
        conn.execute(_CLAIM_SETTLE, (update, key_id, row_id))
    return owed


async def release(db: Database, reservation_id: str) -> bool:
    """Drop a reservation without spend (the request never reached the provider)."""
    return await db.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,)) > 0


async def renew(db: Database, instance_id: str, ttl: timedelta, now: datetime) -> int:
    """Push back the expiry of an instance's live reservations (a live stream keeps its hold); lapsed stay lapsed."""
    return await db.execute(
        "UPDATE reservations SET expires_at = ? WHERE instance_id = ? AND expires_at > ?",
        (to_iso(now + ttl), instance_id, to_iso(now)),
    )


async def expire(db: Database, now: datetime) -> int:
    """Delete lapsed reservations (they already stopped counting) and rate counters older than two minutes."""
    async with db.transaction() as conn:
        gone = await conn.execute("DELETE FROM reservations WHERE expires_at <= ?", (to_iso(now),))
        await conn.execute(
            "DELETE FROM rate_counters WHERE minute < ?", (to_iso(minute_of(now) - timedelta(minutes=2)),)
        )
    return gone


async def override_budget(
    db: Database, budget_id: str, limit_nanos: int | None, now: datetime, actor: str | None, audit: AuditFn
) -> Budget:
    if limit_nanos is not None and not 0 <= limit_nanos <= MAX_NANOS:
        raise UserInputError("a budget limit is 0 or more dollars, up to $1e9", hint="give a plain amount")
    async with db.transaction() as conn:
        found = await load_budgets(conn, "id = ?", (budget_id,), lock=db.for_update)
        if not found:
            raise NotFoundError(f"no budget {budget_id!r}")
        before = found[0]
        until = None if limit_nanos is None else current_window(before, now)[1]
        if not before.calendar and until is not None:
            until = now + before.period.approx_duration()
        await conn.execute(
            "UPDATE budgets SET override_limit_nanos = ?, override_until = ?, updated_at = ? WHERE id = ?",
            (limit_nanos, None if until is None else to_iso(until), to_iso(now), budget_id),
        )
        after = (await load_budgets(conn, "id = ?", (budget_id,)))[0]
        await audit(conn, actor, "budget.override", budget_id, before, after)
    return after


async def reset_budget(db: Database, budget_id: str, now: datetime, actor: str | None, audit: AuditFn) -> None:
    async with db.transaction() as conn:
        found = await load_budgets(conn, "id = ?", (budget_id,), lock=db.for_update)
        if not found:
            raise NotFoundError(f"no budget {budget_id!r}")
        (view,) = await _views(conn, found, now)
        first = to_iso(view.window_start)
        await conn.execute("DELETE FROM budget_spend WHERE budget_id = ? AND bucket_start >= ?", (budget_id, first))
        await conn.execute("DELETE FROM budget_alerts WHERE budget_id = ? AND window_start >= ?", (budget_id, first))
        await audit(conn, actor, "budget.reset", budget_id, {"spent_nanos": view.state.spent_nanos}, {"spent_nanos": 0})


async def views_at(
    db: Database,
    key_id: str,
    team_id: str | None,
    customer_id: str | None,
    provider_id: str | None,
    moments: Sequence[datetime],
    now: datetime,
) -> list[BudgetView]:
    """Each applying budget in its current window and, for a calendar budget, every window one of `moments` falls
    in (each window once): what alerts check when spend lands in earlier windows (rows synced late are charged at
    their start times). A rolling budget has no earlier windows that still matter: it is seen as of `now`. Spent
    only, one read per budget; reserved is 0 (alerts compare spent). An override counts only in the window it was
    set for."""
    # windows start on whole minutes (in any timezone), so moments within a minute share every window
    calendar_moments = sorted({now, *(moment.replace(second=0, microsecond=0) for moment in moments)})
    wanted: list[tuple[Budget, tuple[datetime, datetime, datetime], datetime, int]] = []
    async with db.transaction() as conn:
        for budget in await load_budgets(conn, _APPLYING, (customer_id, team_id, key_id, provider_id)):
            if budget.calendar:  # a window's spend is its one bucket: read just those, by primary key
                windows = {(found := current_window(budget, moment))[0]: (found, moment) for moment in calendar_moments}
                starts = sorted(windows)
                rows = await conn.fetch(
                    "SELECT bucket_start, spent_nanos FROM budget_spend WHERE budget_id = ? "
                    f"AND bucket_start IN ({', '.join('?' for _ in starts)})",
                    [budget.id, *(to_iso(start) for start in starts)],
                )
                by_start = {str(bucket): int(nanos) for bucket, nanos in rows}
                wanted += [(budget, w, m, by_start.get(to_iso(start), 0)) for start, (w, m) in windows.items()]
            else:
                found = current_window(budget, now)
                rows = await conn.fetch(
                    "SELECT sum(spent_nanos) FROM budget_spend WHERE budget_id = ? AND bucket_start >= ? "
                    "AND bucket_start <= ?",
                    (budget.id, to_iso(found[0]), to_iso(found[2])),
                )
                wanted.append((budget, found, now, int(rows[0][0] or 0)))
    views = []
    for budget, found, moment, spent_nanos in wanted:
        other_window = budget.calendar and budget.override_until not in (None, found[1])
        limit = budget.limit_nanos if other_window else budget.effective_limit(moment)
        views.append(_view(budget, found, limit, spent_nanos, 0))
    return views


async def claim_alert(db: Database, budget_id: str, window_start: datetime, threshold: Decimal) -> bool:
    return (
        await db.execute(
            "INSERT INTO budget_alerts (budget_id, window_start, threshold, fired_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (budget_id, window_start, threshold) DO NOTHING",
            (budget_id, to_iso(window_start), str(threshold), to_iso(datetime.now(UTC))),
        )
        == 1
    )


# --- rate limits ------------------------------------------------------------------------------------------------


def minute_of(now: datetime) -> datetime:
    """The UTC minute holding `now` (rate limits count per minute)."""
    return _EPOCH + (now.astimezone(UTC) - _EPOCH) // timedelta(minutes=1) * timedelta(minutes=1)


_RATE_COLS = "id, level, target_id, rpm, tpm, created_at, updated_at"
_COUNTER_UPSERT = (
    "INSERT INTO rate_counters (rate_limit_id, minute, requests, tokens) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (rate_limit_id, minute) DO UPDATE SET requests = rate_counters.requests + excluded.requests, "
    "tokens = rate_counters.tokens + excluded.tokens"
)


def _rate_limit(r: Row) -> RateLimit:
    return RateLimit(
        str(r[0]),
        RateLevel(r[1]),
        str(r[2]),
        None if r[3] is None else int(r[3]),
        None if r[4] is None else int(r[4]),
        from_iso(r[5]),
        from_iso(r[6]),
    )


_LIMITS_SQL = (
    f"SELECT {_RATE_COLS} FROM rate_limits WHERE (level = 'key' AND target_id = ?) "
    "OR (level = 'team' AND target_id = ?) ORDER BY level, id"
)


def _counts_query(limits: Sequence[RateLimit], now: datetime) -> tuple[str, list[Any]]:
    marks = ", ".join("?" for _ in limits)
    return (
        f"SELECT rate_limit_id, requests, tokens FROM rate_counters WHERE rate_limit_id IN ({marks}) AND minute = ?",
        [*(limit.id for limit in limits), to_iso(minute_of(now))],
    )


def _rate_verdict(limits: Sequence[RateLimit], counts: dict[str, tuple[int, int]], now: datetime) -> RateDecision:
    """Refused when this minute's requests or tokens reached a limit: the key's first, then the team's."""
    minute = minute_of(now)
    retry_after = max(1, int((minute + timedelta(minutes=1) - now).total_seconds() + 0.999))
    for limit in sorted(limits, key=lambda item: (item.level != RateLevel.KEY, item.id)):
        used_requests, used_tokens = counts.get(limit.id, (0, 0))
        if limit.rpm is not None and used_requests >= limit.rpm:
            return RateLimited(limit, "requests", used_requests, limit.rpm, retry_after)
        if limit.tpm is not None and used_tokens >= limit.tpm:
            return RateLimited(limit, "tokens", used_tokens, limit.tpm, retry_after)
    return RateAllowed()


def _take_sync(conn: SyncConnection, key_id: str, team_id: str | None, now: datetime) -> RateDecision:
    """`take_request` inside a job on the SQLite thread (the write lock is held)."""
    limits = [_rate_limit(r) for r in conn.fetch(_LIMITS_SQL, (key_id, team_id))]
    if not limits:
        return RateAllowed()
    sql, params = _counts_query(limits, now)
    counts = {str(r[0]): (int(r[1]), int(r[2])) for r in conn.fetch(sql, params)}
    decision = _rate_verdict(limits, counts, now)
    if isinstance(decision, RateAllowed):
        conn.executemany(_COUNTER_UPSERT, [(limit.id, to_iso(minute_of(now)), 1, 0) for limit in limits])
    return decision


async def _locked_limits(conn: Connection, db: Database, key_id: str, team_id: str | None) -> list[RateLimit]:
    return [_rate_limit(r) for r in await conn.fetch(_LIMITS_SQL + db.for_update, (key_id, team_id))]


async def take_request(db: Database, key_id: str, team_id: str | None, now: datetime) -> RateDecision:
    """Fixed one-minute windows (UTC minutes): refuse when the requests or the tokens of this minute reached a limit."""
    from ccgate.storage.gateway.db import SQLiteDatabase

    if isinstance(db, SQLiteDatabase):
        return await db.run_transaction(lambda conn: _take_sync(conn, key_id, team_id, now), urgent=True, inline=True)
    async with db.transaction() as conn:
        limits = await _locked_limits(conn, db, key_id, team_id)
        if not limits:
            return RateAllowed()
        sql, params = _counts_query(limits, now)
        counts = {str(r[0]): (int(r[1]), int(r[2])) for r in await conn.fetch(sql, params)}
        decision = _rate_verdict(limits, counts, now)
        if isinstance(decision, RateAllowed):
            await conn.executemany(_COUNTER_UPSERT, [(limit.id, to_iso(minute_of(now)), 1, 0) for limit in limits])
        return decision


async def add_tokens(db: Database, key_id: str, team_id: str | None, tokens: int, now: datetime) -> None:
    if tokens <= 0:
        return
    from ccgate.storage.gateway.db import SQLiteDatabase

    if isinstance(db, SQLiteDatabase):
        await db.run_transaction(lambda conn: _add_tokens_sync(conn, key_id, team_id, tokens, now))
        return
    # one statement, no transaction: the upsert locks each counter row (in the order the reserve function takes
    # them); the rate_limits rows need no lock, as only a request's admission checks them against the counters
    await db.execute(
        "INSERT INTO rate_counters (rate_limit_id, minute, requests, tokens) SELECT id, ?, 0, ? FROM rate_limits "
        "WHERE (level = 'key' AND target_id = ?) OR (level = 'team' AND target_id = ?) ORDER BY level, id "
        "ON CONFLICT (rate_limit_id, minute) DO UPDATE SET tokens = rate_counters.tokens + excluded.tokens",
        (to_iso(minute_of(now)), tokens, key_id, team_id),
    )


def _add_tokens_sync(conn: SyncConnection, key_id: str, team_id: str | None, tokens: int, now: datetime) -> None:
    limits = [_rate_limit(r) for r in conn.fetch(_LIMITS_SQL, (key_id, team_id))]
    conn.executemany(_COUNTER_UPSERT, [(limit.id, to_iso(minute_of(now)), 0, tokens) for limit in limits])


async def add_tokens_sqlite(conn: Connection, key_id: str, team_id: str | None, tokens: int, now: datetime) -> None:
    """`add_tokens` inside a caller's SQLite transaction (the ledger's one-trip batch: SQLite's one write lock
    orders everything, so no lock order to keep). Not for PostgreSQL, where it is its own statement."""
    if tokens <= 0:
        return
    limits = [_rate_limit(r) for r in await conn.fetch(_LIMITS_SQL, (key_id, team_id))]
    if limits:
        await conn.executemany(_COUNTER_UPSERT, [(limit.id, to_iso(minute_of(now)), 0, tokens) for limit in limits])


# ---- request slots for an instance's lease (see `gateway.leases`) ------------------------------------------------

# A lease takes request slots only while every limit has this many times the wanted slots left this minute, and
# less than this share of its tokens used: near a limit each request is counted on its own, so the limit stays exact
# across instances (slots one instance holds are not another's to use).
SLOT_HEADROOM = 4
SLOT_TOKEN_SHARE = 0.5


def _slots_granted(
    limits: Sequence[RateLimit], counts: dict[str, tuple[int, int]], want: int
) -> tuple[int, int | None]:
    """(slots granted, the least room any tokens-per-minute limit has left: None without one)."""
    granted = want
    tokens_left: int | None = None
    for limit in limits:
        used_requests, used_tokens = counts.get(limit.id, (0, 0))
        if limit.tpm is not None:
            if used_tokens >= limit.tpm * SLOT_TOKEN_SHARE:
                return 0, None
            room = limit.tpm - used_tokens
            tokens_left = room if tokens_left is None else min(tokens_left, room)
        if limit.rpm is not None:
            granted = min(granted, (limit.rpm - used_requests) // SLOT_HEADROOM)
    return max(0, granted), tokens_left


async def take_slots(
    db: Database, key_id: str, team_id: str | None, want: int, now: datetime
) -> tuple[int, tuple[str, ...], int | None]:
    """Count up to `want` requests of this minute at once against the key's and team's rate limits, for requests
    an instance admits later from a lease: (how many were granted, the rate limits counted, the tokens the limits
    have left this minute -- None without a tokens limit). None are granted near a limit (`SLOT_HEADROOM`); with
    no rate limit all are. One transaction, its rate limits locked first (on SQLite its write lock)."""

    async def body(conn: Connection) -> tuple[int, tuple[str, ...], int | None]:
        limits = await _locked_limits(conn, db, key_id, team_id)
        if not limits:
            return want, (), None
        sql, params = _counts_query(limits, now)
        counts = {str(r[0]): (int(r[1]), int(r[2])) for r in await conn.fetch(sql, params)}
        granted, tokens_left = _slots_granted(limits, counts, want)
        if granted:
            await conn.executemany(
                _COUNTER_UPSERT, [(limit.id, to_iso(minute_of(now)), granted, 0) for limit in limits]
            )
        return granted, tuple(limit.id for limit in limits), tokens_left

    return await db.one_trip(body, inline=True)


async def give_back_slots(db: Database, rate_limit_ids: Sequence[str], taken_at: datetime, unused: int) -> None:
    """Uncount a lease's request slots it never used, in the minute they were taken (a counter already gone has
    nothing to give back to)."""
    if unused <= 0 or not rate_limit_ids:
        return
    for rate_limit_id in rate_limit_ids:  # one statement each: never two counter rows held at once (no lock order)
        await db.execute(
            "UPDATE rate_counters SET requests = CASE WHEN requests > ? THEN requests - ? ELSE 0 END "
            "WHERE rate_limit_id = ? AND minute = ?",
            (unused, unused, rate_limit_id, to_iso(minute_of(taken_at))),
        )
