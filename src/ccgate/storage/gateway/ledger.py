"""The gateway's ledger: request rows (written ahead, then final), idempotent ingest, roll-ups and reports.

A row is identified by (key id, row id): the sidecar's row id travels as `x-ccgate-request-id` and becomes the
gateway's own row id within that key, so a row proxied by the gateway and later synced by the sidecar is one
row. Reports return the `CostReport` of `ccgate.storage.reports`, so `report_to_json` gives `cost --json`'s shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

from ccgate.core.budgets import local_midnight
from ccgate.core.records import RequestRecord, RequestStatus, from_iso, to_iso, utcnow
from ccgate.core.usage import MAX_TOKENS
from ccgate.errors import UserInputError
from ccgate.storage.gateway.admission import (
    BudgetDefinitions,
    add_tokens,
    add_tokens_sqlite,
    charge,
    current_window,
    load_budgets,
)
from ccgate.storage.gateway.db import Connection, ConstraintError, Database, DatabaseUnavailableError, Row
from ccgate.storage.gateway.records import Budget, GatewayRow, IngestResult, RowSource
from ccgate.storage.ledger import COLUMNS as SIDECAR_COLUMNS
from ccgate.storage.ledger import record_to_values, row_to_record, storable_text
from ccgate.storage.reports import NONE_KEY, CostReport, GroupKey, Totals, ceil_hour, floor_hour

log = logging.getLogger("ccgate.gateway")

GROUPINGS: tuple[str, ...] = ("key", "team", "customer", "project", "model", "provider", "day", "session")
MAX_ROW_ID = 128
MAX_TAGS = 32
MAX_TAG_TEXT = 200
_CHUNK = 100
# The sidecar's columns as the gateway stores them: its `source` is kept as `origin`; `synced_at` is its own, and
# `tags` is the gateway's own column (a JSON object, from the row's tags).
_NOT_STORED = ("synced_at", "tags")
_RECORD_COLUMNS = tuple("origin" if c == "source" else c for c in SIDECAR_COLUMNS if c not in _NOT_STORED)
_NOT_STORED_AT = sorted((SIDECAR_COLUMNS.index(c) for c in _NOT_STORED), reverse=True)
COLUMNS: tuple[str, ...] = (
    "key_id",
    "team_id",
    "customer_id",
    "source",
    "tags",
    "instance_id",
    "received_at",
    *_RECORD_COLUMNS,
)
_UPDATABLE = [c for c in COLUMNS if c not in ("key_id", "id", "received_at")]
_INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES "
_ROW_MARKS = "(" + ", ".join("?" for _ in COLUMNS) + ")"
# What a finished row adds to its `request_hourly` group: the seven dimensions, then the sums after `requests`.
_HOURLY_DIMENSIONS = ("hour", "key_id", "team_id", "customer_id", "project", "model", "provider")
ROLLUP_SUMS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_nanos",
    "unpriced_requests",
    "estimated_requests",
    "imported_requests",
)
# No `IS NULL` here: SQLite 3.40 answers `col IS NULL` wrongly in an INSERT's RETURNING (a cost is never negative).
_CONTRIBUTION = (
    "substr(started_at, 1, 13), key_id, coalesce(team_id, ''), coalesce(customer_id, ''), coalesce(project, ''), "
    "coalesce(requested_model, ''), coalesce(provider, ''), input_tokens, output_tokens, cache_read_tokens, "
    "cache_write_5m_tokens + cache_write_1h_tokens, coalesce(cost_nanos, 0), "
    "CASE WHEN coalesce(cost_nanos, -1) < 0 THEN 1 ELSE 0 END, "
    "CASE WHEN coalesce(cost_nanos, -1) >= 0 AND price_quality = 'estimated' THEN 1 ELSE 0 END, "
    "CASE WHEN coalesce(origin, 'gateway') NOT IN ('sidecar', 'gateway') THEN 1 ELSE 0 END"
)
_HOURLY_COLUMNS = (*_HOURLY_DIMENSIONS, *ROLLUP_SUMS)
_CONTRIBUTION_WIDTH = len(_HOURLY_DIMENSIONS) + len(ROLLUP_SUMS) - 1  # every sum but `requests`


@dataclass(frozen=True, slots=True)
class _Rollup:
    """One roll-up table: its dimensions, and which of an hourly group's dimensions make its own (the slot first,
    cut to `slot_length` characters: 13 an hour, 10 a UTC day)."""

    table: str
    dimensions: tuple[str, ...]
    picks: tuple[int, ...]  # indexes into `_HOURLY_DIMENSIONS`, the slot (0) first
    slot_length: int

    def project(self, dims: tuple[str, ...]) -> tuple[str, ...]:
        return (dims[0][: self.slot_length], *(dims[i] for i in self.picks[1:]))

    def upsert(self, groups: int) -> str:
        """A multi-row upsert of `groups` groups adding their sums to what the table holds."""
        marks = "(" + ", ".join("?" for _ in (*self.dimensions, *ROLLUP_SUMS)) + ")"
        return (
            f"INSERT INTO {self.table} ({', '.join((*self.dimensions, *ROLLUP_SUMS))}) VALUES "
            + ", ".join(marks for _ in range(groups))
            + f" ON CONFLICT ({', '.join(self.dimensions)}) DO UPDATE SET "
            + ", ".join(f"{c} = {self.table}.{c} + excluded.{c}" for c in ROLLUP_SUMS)
        )


# the hours, then the days their rows fall in, then those days per team and model: every transaction takes them
# in this order (and each table's groups in primary-key order)
_ROLLUPS = (
    _Rollup("request_hourly", _HOURLY_DIMENSIONS, tuple(range(7)), 13),
    _Rollup("request_daily", ("day", *_HOURLY_DIMENSIONS[1:]), tuple(range(7)), 10),
    _Rollup("request_daily_team_model", ("day", "team_id", "model"), (0, 2, 5), 10),
)
_HOURLY_CHUNK = 1000  # groups per statement: a sink batch (500 rows) is one statement
# A row is updated only while it is pending and this instance's (another instance's pending row of the same id is
# another request in flight: it is never merged into) -- or, when another instance recovered it as `interrupted` while
# this one had lost the database, by this same request's final. A finished row is never overwritten.
# The proxy's rows also carry the charge mark of a settle written with them (`Charge`); a row without one leaves
# the mark it has.
_WRITE_COLUMNS = (*COLUMNS, "charged_nanos", "charged_by")
_WRITE_INSERT = f"INSERT INTO requests ({', '.join(_WRITE_COLUMNS)}) VALUES "
_WRITE_MARKS = "(" + ", ".join("?" for _ in _WRITE_COLUMNS) + ")"
_UPSERT_TAIL = (
    " ON CONFLICT (key_id, id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _UPDATABLE)
    + ", charged_nanos = coalesce(excluded.charged_nanos, requests.charged_nanos)"
    + ", charged_by = coalesce(excluded.charged_by, requests.charged_by)"
    + " WHERE (requests.status = 'pending'"
    " AND coalesce(requests.instance_id, '') = coalesce(excluded.instance_id, ''))"
    " OR (requests.status = 'interrupted'"
    " AND requests.instance_id = excluded.instance_id AND requests.started_at = excluded.started_at)"
    " RETURNING key_id, id, status, " + _CONTRIBUTION
)
_TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "web_searches",
)


class _Hourly:
    """A transaction's changes to the roll-ups (`_ROLLUPS`), summed per group in Python and written in one statement
    per table (per 1000 groups): a day's sums move exactly as its hours' do."""

    __slots__ = ("groups",)

    def __init__(self) -> None:
        self.groups: dict[tuple[str, ...], list[int]] = {}

    def add(self, contribution: Row, sign: int) -> None:
        """Add (sign 1) or take out (-1) one row, given as `_CONTRIBUTION` selects it."""
        dims = tuple(str(value) for value in contribution[:7])
        sums = self.groups.get(dims)
        if sums is None:
            sums = self.groups[dims] = [0] * len(ROLLUP_SUMS)
        sums[0] += sign
        for index, value in enumerate(contribution[7:], 1):
            sums[index] += sign * int(value)

    async def write(self, conn: Connection) -> None:
        for rollup in _ROLLUPS:
            groups: dict[tuple[str, ...], list[int]] = {}
            for dims, sums in self.groups.items():
                total = groups.setdefault(rollup.project(dims), [0] * len(ROLLUP_SUMS))
                for index, value in enumerate(sums):
                    total[index] += value
            await _write_rollup(conn, rollup, groups)
        self.groups.clear()


async def _write_rollup(conn: Connection, rollup: _Rollup, groups: dict[tuple[str, ...], list[int]]) -> None:
    # in primary-key order, so two transactions touching the same groups lock them in one order
    changes = sorted((dims, sums) for dims, sums in groups.items() if any(sums))
    for start in range(0, len(changes), _HOURLY_CHUNK):
        chunk = changes[start : start + _HOURLY_CHUNK]
        await conn.execute(rollup.upsert(len(chunk)), [value for dims, sums in chunk for value in (*dims, *sums)])
    emptied = [dims for dims, sums in changes if sums[0] < 0]
    for start in range(0, len(emptied), _CHUNK):  # a group a row left (e.g. for another provider) may be empty
        part = emptied[start : start + _CHUNK]
        marks = ", ".join("(" + ", ".join("?" for _ in rollup.dimensions) + ")" for _ in part)
        await conn.execute(
            f"DELETE FROM {rollup.table} WHERE requests = 0 AND ({', '.join(rollup.dimensions)}) IN (VALUES {marks})",
            [value for dims in part for value in dims],
        )


def _clean_text(value: Any) -> Any:
    """PostgreSQL text holds no NUL and neither backend holds a lone surrogate: store what can be stored."""
    if type(value) is str:
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        if not storable_text(value):
            value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def row_values(row: GatewayRow, received_at: datetime) -> tuple[Any, ...]:
    values = list(record_to_values(row.record))
    for index in _NOT_STORED_AT:
        del values[index]
    head = (
        row.key_id,
        row.team_id,
        row.customer_id,
        RowSource(row.source).value,
        json.dumps(row.tags, sort_keys=True),
        row.instance_id,
        to_iso(received_at),
    )
    return tuple(_clean_text(v) for v in (*head, *values))


# Ledger batches up to this many rows run on the event loop's own SQLite connection (`write_requests`).
INLINE_ROWS = 64


async def write_requests(
    db: Database,
    rows: Sequence[GatewayRow],
    tokens: Mapping[tuple[str, str | None], int] | None = None,
    definitions: BudgetDefinitions | None = None,
) -> list[GatewayRow]:
    """Insert rows, or update them by (key id, row id) while pending: the ledger sink writes each pending, then
    final, in batches. `request_hourly` takes each row that becomes final in the same transaction.

    A row whose (key id, row id) is already a finished row is not written, nor a pending row of another instance
    (two requests with one id in flight at once). Returned are those of them that are another request: a client
    reused a finished or in-flight request's `x-ccgate-request-id` (the caller stores them under a fresh id). Not
    returned, and dropped: a finished row of the same request (this instance's own write, retried after a
    connection broke mid-commit) and an ingested row (the sidecar synced this request first: its row stands, and
    budgets were charged once, see `admission.claim_charge`).

    A row's `charge` (its request's settle) is done in the same transaction, unless the row is returned: its
    reservation goes, and what the row's cost adds to what the row was already charged (by a sync that came first,
    a recovery, or this very write committed once before) goes into its budgets -- one spend upsert per budget and
    bucket for the whole batch, in the budgets' fixed order. The settle and the row are one write, not two.

    `tokens` ((key id, team id) -> finished requests' tokens) count toward tokens-per-minute limits: on SQLite in
    the same transaction (the batch is one SQLite job, see `one_trip`), on PostgreSQL one statement each after it
    (its own row-lock order, see `admission.add_tokens`; one that fails is logged and lost, never counted twice).
    """
    if not rows:
        return []
    now = utcnow()
    sqlite = db.backend == "sqlite"
    budget_ids = sorted({i for row in rows if row.charge is not None for i in row.charge.reservation.budget_ids})
    cached: dict[str, Budget] | None = None
    if budget_ids and not sqlite:  # PostgreSQL: from this process's definitions, not a round trip in the transaction
        cached = await (definitions or BudgetDefinitions()).by_ids(db, budget_ids)

    async def job(conn: Connection) -> list[GatewayRow]:
        # one SQLite job (inline on the event loop or on the database thread), never one hop per statement
        written: set[tuple[str, str]] = set()
        reused: list[GatewayRow] = []
        # the rows this batch may overwrite, locked (a recovery elsewhere cannot finish them meanwhile): an
        # interrupted row the same request now finishes leaves the hourly sums before its final enters them
        existing = await _existing_rows(conn, db, rows)
        finished = {
            slot: found[3 : 3 + _CONTRIBUTION_WIDTH]
            for slot, found in existing.items()
            if found[2] != RequestStatus.PENDING.value
        }
        charged: dict[tuple[str, str], int] = {}  # what each row with a settle was already charged
        for row in rows:
            if row.charge is not None:
                slot = (row.key_id, row.record.id)
                found = existing.get(slot)
                charged[slot] = _charged_before(row, None if found is None else found[3 + _CONTRIBUTION_WIDTH :])
        hourly = _Hourly()
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            sql = _WRITE_INSERT + ", ".join(_WRITE_MARKS for _ in chunk) + _UPSERT_TAIL
            params = [value for row in chunk for value in _write_values(row, now, charged)]
            for returned in await conn.fetch(sql, params):
                slot = (str(returned[0]), str(returned[1]))
                written.add(slot)
                before = finished.pop(slot, None)
                if before is not None:
                    hourly.add(before, -1)
                if returned[2] != RequestStatus.PENDING.value:
                    finished[slot] = returned[3:]
                    hourly.add(returned[3:], 1)
        for row in rows:
            slot = (row.key_id, row.record.id)
            if slot in written:
                continue
            # read again: the row may have come after `_existing_rows` read (PostgreSQL: a sync of this very
            # request committed while this batch waited to insert it), and what it was charged with it
            found = await conn.fetchone(
                "SELECT source, charged_nanos, charged_by, instance_id, started_at FROM requests "
                "WHERE key_id = ? AND id = ?",
                slot,
            )
            if found is None:
                continue
            if slot in charged:
                charged[slot] = _charged_before(row, found)
            if found[0] == RowSource.INGESTED.value:
                continue
            if (found[3], found[4]) != (row.instance_id, to_iso(row.record.started_at)):
                reused.append(row)
        if charged:  # a returned row is another request's id: its charge goes with it, under its fresh id
            carried = {id(row) for row in reused}
            settling = [row for row in rows if row.charge is not None and id(row) not in carried]
            await _settle_with_rows(conn, settling, written, charged, cached, now, open_first=not sqlite)
        # after the spend rows: the hourly rows are the last locks any transaction takes (`instances.recover_dead`,
        # `ingest`), so a batch never holds one while it waits for a spend row a recovery or a sync holds
        await hourly.write(conn)
        if sqlite and tokens:
            for (key_id, team_id), count in tokens.items():
                await add_tokens_sqlite(conn, key_id, team_id, count, now)
        return reused

    # a usual batch (a few dozen rows) on the event loop's own SQLite connection; a backlog's batch of hundreds
    # (after the database was away) on the database thread, not blocking the loop for tens of milliseconds
    reused = await db.one_trip(job, inline=len(rows) <= INLINE_ROWS)
    if not sqlite and tokens:
        for (key_id, team_id), count in tokens.items():
            try:
                await add_tokens(db, key_id, team_id, count, now)
            # the rows are written: never count their tokens twice (nor fail the batch, which would write them
            # again); refused: a rate limit deleted meanwhile
            except (DatabaseUnavailableError, ConstraintError) as error:
                log.error("cannot count %d tokens toward rate limits: %s", count, error.message)
    return reused


def _charged_before(row: GatewayRow, found: Sequence[Any] | None) -> int:
    """What the row's request was already charged, given the stored row of its id as (source, charged_nanos,
    charged_by, instance_id, started_at), or None: by a sync of it that came first ('ingest'), by another
    instance's recovery of this instance's row ('recovery'), or by this very write committed once already (a
    retry after the connection broke mid-commit). Anything else there is another request: nothing of this one."""
    if found is None:
        return 0
    source, charged, charged_by, instance, started = found
    same_request = (
        (source == RowSource.INGESTED.value and charged_by == "ingest")
        or (charged_by == "recovery" and instance == row.instance_id)
        or (charged_by == "settle" and instance == row.instance_id and started == to_iso(row.record.started_at))
    )
    return int(charged or 0) if same_request else 0


def _write_values(row: GatewayRow, received_at: datetime, charged: Mapping[tuple[str, str], int]) -> tuple[Any, ...]:
    """`row_values` plus the charge mark the row gets if written: its cost, or what it was already charged if more."""
    if row.charge is None:
        return (*row_values(row, received_at), None, None)
    before = charged[(row.key_id, row.record.id)]
    return (*row_values(row, received_at), max(before, row.charge.nanos), "settle")


# A budget's bucket row made if missing, without adding to it (PostgreSQL, see `_settle_with_rows`).
_SPEND_OPEN = (
    "INSERT INTO budget_spend (budget_id, bucket_start, spent_nanos) "
    "SELECT id, CAST(? AS TEXT), 0 FROM budgets WHERE id = ? ON CONFLICT (budget_id, bucket_start) DO NOTHING"
)
# Spend added to a budget's bucket, if the budget still exists (one deleted meanwhile is skipped, as a settle does).
_SPEND_ADD = (
    "INSERT INTO budget_spend (budget_id, bucket_start, spent_nanos) "
    "SELECT id, CAST(? AS TEXT), CAST(? AS BIGINT) FROM budgets WHERE id = ? "
    "ON CONFLICT (budget_id, bucket_start) DO UPDATE SET spent_nanos = budget_spend.spent_nanos + excluded.spent_nanos"
)


async def _settle_with_rows(
    conn: Connection,
    rows: Sequence[GatewayRow],
    written: set[tuple[str, str]],
    charged: Mapping[tuple[str, str], int],
    cached: Mapping[str, Budget] | None,
    now: datetime,
    *,
    open_first: bool = False,
) -> None:
    """The settles of `rows` (each has a `charge`), in the transaction that wrote them: reservations deleted,
    what each still owes summed per budget and bucket and added in the budgets' fixed order (lock rank, id), so
    two batches, or a batch and a lone settle, never wait on each other in a cycle.

    `open_first` (PostgreSQL): every missing bucket row is made before any is added to. Inserting one takes its
    budget's row (key share, for the foreign key); a recovery or a sync takes the budget rows (for update) and
    then the spend rows, so a batch holding one spend row while waiting for another budget's row for a new bucket
    closed a cycle with them."""
    owed: dict[str, int] = {}
    for row in rows:
        assert row.charge is not None
        slot = (row.key_id, row.record.id)
        before = charged[slot]
        due = max(0, row.charge.nanos - before)
        if slot not in written and row.charge.nanos > before and before:
            # not written (a sync of it came first, or this write committed once already): the mark goes up
            await conn.execute(
                "UPDATE requests SET charged_nanos = ?, charged_by = 'settle' WHERE key_id = ? AND id = ?",
                (row.charge.nanos, row.key_id, row.record.id),
            )
        for budget_id in row.charge.reservation.budget_ids:
            owed[budget_id] = owed.get(budget_id, 0) + due
    reservation_ids = [
        row.charge.reservation.id for row in rows if row.charge is not None and not row.charge.keep_reservation
    ]
    for start in range(0, len(reservation_ids), _CHUNK):
        chunk = reservation_ids[start : start + _CHUNK]
        await conn.execute(f"DELETE FROM reservations WHERE id IN ({', '.join('?' for _ in chunk)})", chunk)
    ids = sorted(budget_id for budget_id, nanos in owed.items() if nanos)
    if not ids:
        return
    if cached is None:
        budgets = {b.id: b for b in await load_budgets(conn, f"id IN ({', '.join('?' for _ in ids)})", ids)}
    else:
        budgets = {budget_id: cached[budget_id] for budget_id in ids if budget_id in cached}
    ordered = sorted(budgets.values(), key=lambda b: (b.level.rank, b.id))
    buckets = [to_iso(current_window(b, now)[2]) for b in ordered]
    if open_first:
        await conn.executemany(_SPEND_OPEN, [(bucket, b.id) for bucket, b in zip(buckets, ordered, strict=True)])
    await conn.executemany(_SPEND_ADD, [(bucket, owed[b.id], b.id) for bucket, b in zip(buckets, ordered, strict=True)])


async def _existing_rows(conn: Connection, db: Database, rows: Sequence[GatewayRow]) -> dict[tuple[str, str], Row]:
    """The batch's rows that exist: (key id, id, status, hourly contribution..., source, charged_nanos, charged_by,
    instance_id, started_at); every one locked in (key id, row id) order, the order `instances.recover_dead` locks
    them in. (A join on a VALUES list: SQLite scans the whole table for a row-value `IN (VALUES ...)`.)"""
    found: dict[tuple[str, str], Row] = {}
    slots = sorted({(row.key_id, row.record.id) for row in rows})
    lock = " FOR UPDATE OF r" if db.backend == "postgresql" else ""
    for start in range(0, len(slots), _CHUNK):
        chunk = slots[start : start + _CHUNK]
        marks = ", ".join("(?, ?)" for _ in chunk)
        for row in await conn.fetch(
            f"WITH wanted (k, i) AS (VALUES {marks}) SELECT r.key_id, r.id, r.status, {_CONTRIBUTION}, "
            "r.source, r.charged_nanos, r.charged_by, r.instance_id, r.started_at FROM wanted "
            f"JOIN requests r ON r.key_id = wanted.k AND r.id = wanted.i ORDER BY r.key_id, r.id{lock}",
            [value for slot in chunk for value in slot],
        ):
            found[(str(row[0]), str(row[1]))] = row
    return found


def validate_record(record: RequestRecord) -> str | None:
    """Why an ingested row cannot be stored, or None. The server validates the JSON; this guards the database."""
    if not isinstance(record.id, str) or not 0 < len(record.id) <= MAX_ROW_ID or not record.id.isprintable():
        return "id must be 1 to 128 printable characters"
    if record.status == RequestStatus.PENDING:
        return "a pending row cannot be ingested; send it once it is finished"
    usage = record.usage
    for name in _TOKEN_COLUMNS:
        value = getattr(usage, name)
        if type(value) is not int or not 0 <= value <= MAX_TOKENS:
            return f"{name} must be a whole number from 0 to {MAX_TOKENS}"
    if record.cost.nanos is not None and not 0 <= record.cost.nanos < 2**63:
        return "cost must not be negative"
    return None


def validate_tags(tags: object) -> str | None:
    if not isinstance(tags, dict) or len(tags) > MAX_TAGS:
        return f"tags must be at most {MAX_TAGS} NAME=VALUE pairs"
    for name, value in tags.items():
        if not (isinstance(name, str) and isinstance(value, str)) or not 0 < len(name) <= MAX_TAG_TEXT:
            return "tag names and values must be text"
        if len(value) > MAX_TAG_TEXT:
            return f"tag values are at most {MAX_TAG_TEXT} characters"
    return None


async def _synced(conn: Connection, key_id: str, now: datetime) -> None:
    """A batch from this key arrived (whatever it held): when each key last synced, for whoami and the admin."""
    await conn.execute("UPDATE virtual_keys SET last_sync_at = ? WHERE id = ?", (to_iso(now), key_id))


async def last_syncs(db: Database, key_id: str | None = None) -> dict[str, datetime]:
    """Key id -> when the gateway last took a usage batch from it (keys that never synced are absent)."""
    where = " AND id = ?" if key_id is not None else ""
    rows = await db.fetch(
        f"SELECT id, last_sync_at FROM virtual_keys WHERE last_sync_at IS NOT NULL{where}",
        [key_id] if key_id is not None else [],
    )
    return {str(row[0]): from_iso(str(row[1])) for row in rows}


async def ingest(
    db: Database,
    *,
    key_id: str,
    team_id: str | None,
    customer_id: str | None,
    records: Sequence[tuple[RequestRecord, dict[str, str]]],
) -> IngestResult:
    """Store synced rows once per (key id, row id), attributed to this key whatever they claim.

    A row already there (replayed, or proxied by the gateway and now synced) is `known` and left alone. New
    rows' cost is added to the key's, team's and customer's budgets at the windows of their start times (the
    developer paid with their own credentials, so provider budgets are not charged). The caller re-prices
    each record from its tokens before handing it over.
    """
    rejected: list[str] = []
    rows: list[GatewayRow] = []
    seen: set[str] = set()
    repeated = 0  # the same id twice in one batch: the second is known
    for record, tags in records:
        reason = validate_record(record) or validate_tags(tags)
        if reason is not None:
            rejected.append(str(record.id)[:MAX_ROW_ID])
            continue
        if record.id in seen:
            repeated += 1
            continue
        seen.add(record.id)
        rows.append(GatewayRow(record, key_id, team_id, customer_id, RowSource.INGESTED, dict(tags)))
    now = utcnow()
    # its own short transaction, never inside one that holds budget rows: no lock order to keep
    async with db.transaction() as conn:
        await _synced(conn, key_id, now)
    if not rows:
        return IngestResult(sent=0, known=repeated, rejected=len(rejected), rejected_ids=tuple(rejected))
    new_ids: set[str] = set()
    hourly = _Hourly()
    async with db.transaction() as conn:
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            sql = (
                _INSERT
                + ", ".join(_ROW_MARKS for _ in chunk)
                + f" ON CONFLICT (key_id, id) DO NOTHING RETURNING id, {_CONTRIBUTION}"
            )
            params = [value for row in chunk for value in row_values(row, now)]
            returned = await conn.fetch(sql, params)
            inserted = [str(r[0]) for r in returned]
            for r in returned:  # never pending: `validate_record` refuses those
                hourly.add(r[1:], 1)
            new_ids.update(inserted)
            if inserted:  # charged here, once: a later settle of the same request adds only the rest
                await conn.execute(
                    "UPDATE requests SET charged_nanos = coalesce(cost_nanos, 0), charged_by = 'ingest' "
                    f"WHERE key_id = ? AND id IN ({', '.join('?' for _ in inserted)})",
                    [key_id, *inserted],
                )
        # the budget rows after the request rows, as `instances.recover_dead` and a ledger batch take them (a
        # batch holding this very row waits for a budget row when it adds the first spend to a bucket)
        budgets = await load_budgets(
            conn,
            "(level = 'customer' AND target_id = ?) OR (level = 'team' AND target_id = ?) "
            "OR (level = 'key' AND target_id = ?)",
            (customer_id, team_id, key_id),
            lock=db.for_update,
        )
        await _charge_rows(conn, db, budgets, [row for row in rows if row.record.id in new_ids])
        await hourly.write(conn)
    return IngestResult(
        sent=len(new_ids),
        known=len(rows) - len(new_ids) + repeated,
        rejected=len(rejected),
        rejected_ids=tuple(rejected),
    )


async def _charge_rows(conn: Connection, db: Database, budgets: Sequence[Any], rows: Sequence[GatewayRow]) -> None:
    for budget in budgets:
        per_bucket: dict[datetime, int] = {}
        for row in rows:
            nanos = row.record.cost.nanos or 0
            if nanos:
                bucket = current_window(budget, row.record.started_at)[2]
                per_bucket[bucket] = per_bucket.get(bucket, 0) + nanos
        for bucket, nanos in per_bucket.items():
            await charge(conn, db, [budget.id], nanos, bucket)


async def get_request(db: Database, key_id: str, row_id: str) -> GatewayRow | None:
    row = await db.fetchone(
        f"SELECT {', '.join(COLUMNS)} FROM requests WHERE key_id = ? AND id = ?",
        (key_id, row_id),
    )
    if row is None:
        return None
    data = dict(zip(COLUMNS, row, strict=True))
    sidecar = {("source" if c == "origin" else c): data[c] for c in _RECORD_COLUMNS}
    sidecar["synced_at"] = None
    sidecar["tags"] = data["tags"] if data["tags"] not in (None, "{}") else None
    sidecar["source"] = sidecar["source"] or "gateway"
    return GatewayRow(
        record=row_to_record(sidecar),
        key_id=str(data["key_id"]),
        team_id=data["team_id"],
        customer_id=data["customer_id"],
        source=RowSource(data["source"]),
        tags=json.loads(data["tags"]),
        instance_id=data["instance_id"],
    )


async def recover_pending(
    db: Database, *, instance_id: str | None = None, started_before: datetime | None = None
) -> int:
    """Mark pending rows `interrupted` (their usage so far stays): a dead instance's, or any older than a bound."""
    if instance_id is None and started_before is None:
        raise ValueError("say whose pending rows: instance_id or started_before")
    where, params = ["status = 'pending'"], [to_iso(utcnow())]
    if instance_id is not None:
        where.append("instance_id = ?")
        params.append(instance_id)
    if started_before is not None:
        where.append("started_at < ?")
        params.append(to_iso(started_before))
    async with db.transaction() as conn:
        recovered = await conn.fetch(
            f"UPDATE requests SET status = 'interrupted', ended_at = coalesce(ended_at, ?) WHERE {' AND '.join(where)}"
            f" RETURNING {_CONTRIBUTION}",
            params,
        )
        await add_hourly(conn, recovered)
    return len(recovered)


async def add_hourly(conn: Connection, contributions: Sequence[Row]) -> None:
    """Rows that just became final (selected as `hourly_contribution()`) enter `request_hourly`, in `conn`'s
    transaction: whoever finishes a row adds it, once."""
    hourly = _Hourly()
    for contribution in contributions:
        hourly.add(contribution, 1)
    await hourly.write(conn)


def hourly_contribution() -> str:
    """The select list `add_hourly` takes, over the columns of `requests`."""
    return _CONTRIBUTION


# --- roll-ups and retention --------------------------------------------------------------------------------------

_SUMS = """
    count(*), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), coalesce(sum(cache_read_tokens), 0),
    coalesce(sum(cache_write_5m_tokens + cache_write_1h_tokens), 0), coalesce(sum(cost_nanos), 0),
    coalesce(sum(CASE WHEN cost_nanos IS NULL THEN 1 ELSE 0 END), 0),
    coalesce(sum(CASE WHEN cost_nanos IS NOT NULL AND price_quality = 'estimated' THEN 1 ELSE 0 END), 0),
    coalesce(sum(CASE WHEN coalesce(origin, 'gateway') NOT IN ('sidecar', 'gateway') THEN 1 ELSE 0 END), 0)
"""
_ROLLUP_SUMS = """
    coalesce(sum(requests), 0), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
    coalesce(sum(cache_read_tokens), 0), coalesce(sum(cache_write_tokens), 0), coalesce(sum(cost_nanos), 0),
    coalesce(sum(unpriced_requests), 0), coalesce(sum(estimated_requests), 0), coalesce(sum(imported_requests), 0)
"""


def _day_text(day: date) -> str:
    return day.isoformat()


async def refresh_rollups(db: Database, *, since: date, until: date) -> None:
    """Recompute the per-UTC-day sums for days in [since, until) from the raw rows (finished rows only)."""
    async with db.transaction() as conn:
        await _refresh(conn, since, until)


async def _refresh(conn: Connection, since: date, until: date) -> None:
    low = to_iso(datetime(since.year, since.month, since.day, tzinfo=UTC))
    high = to_iso(datetime(until.year, until.month, until.day, tzinfo=UTC))
    await conn.execute("DELETE FROM request_rollups WHERE day >= ? AND day < ?", (_day_text(since), _day_text(until)))
    await conn.execute(
        "INSERT INTO request_rollups (day, key_id, team_id, customer_id, project, model, provider, requests, "
        "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_nanos, unpriced_requests, "
        "estimated_requests, imported_requests) "
        f"SELECT substr(started_at, 1, 10), key_id, coalesce(team_id, ''), coalesce(customer_id, ''), "
        f"coalesce(project, ''), coalesce(requested_model, ''), coalesce(provider, ''), {_SUMS} FROM requests "
        "WHERE started_at >= ? AND started_at < ? AND status != 'pending' "
        "GROUP BY substr(started_at, 1, 10), key_id, coalesce(team_id, ''), coalesce(customer_id, ''), "
        "coalesce(project, ''), coalesce(requested_model, ''), coalesce(provider, '')",
        (low, high),
    )


async def prune_requests(db: Database, *, before: date) -> int:
    """Keep roll-ups for ever, raw rows from `before` (a UTC day) on: delete the older finished rows.

    `request_hourly` already holds them. The per-day `request_rollups` (what the previous release reads) takes
    their sums added to what it has, never recomputed from the raw rows left: a row synced late for an already
    pruned day must not wipe that day's earlier sums.
    """
    cut = _day_iso(before)
    async with db.transaction() as conn:
        if await conn.fetchone("SELECT 1 FROM requests WHERE started_at < ? LIMIT 1", (cut,)) is None:
            return 0
        await conn.execute(
            "INSERT INTO request_rollups (day, key_id, team_id, customer_id, project, model, provider, requests, "
            "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_nanos, unpriced_requests, "
            "estimated_requests, imported_requests) "
            f"SELECT substr(started_at, 1, 10), key_id, coalesce(team_id, ''), coalesce(customer_id, ''), "
            f"coalesce(project, ''), coalesce(requested_model, ''), coalesce(provider, ''), {_SUMS} FROM requests "
            "WHERE started_at < ? AND status != 'pending' "
            "GROUP BY substr(started_at, 1, 10), key_id, coalesce(team_id, ''), coalesce(customer_id, ''), "
            "coalesce(project, ''), coalesce(requested_model, ''), coalesce(provider, '') "
            "ON CONFLICT (day, key_id, team_id, customer_id, project, model, provider) DO UPDATE SET "
            + ", ".join(f"{c} = request_rollups.{c} + excluded.{c}" for c in ROLLUP_SUMS),
            (cut,),
        )
        gone = await conn.execute("DELETE FROM requests WHERE started_at < ? AND status != 'pending'", (cut,))
        previous = await _raw_since(conn)
        if previous is None or previous < from_iso(cut):
            await conn.execute("DELETE FROM gateway_meta WHERE name = 'raw_since'")
            await conn.execute("INSERT INTO gateway_meta (name, value) VALUES ('raw_since', ?)", (cut,))
    return gone


async def rebuild_hourly(db: Database, *, since: datetime | None = None) -> tuple[datetime | None, int]:
    """Recompute `request_hourly` from the raw rows for the hours from `since` (all by default) on, then the day
    roll-ups from the hours: from the day of `since`, or all of them (the days a release that knows no days
    missed may lie before the raw rows' retention).

    Hours before the raw rows' retention are kept as they are (their rows are gone). Returns the first hour
    rebuilt (None: all) and how many hourly rows it now holds from there.
    """
    async with db.transaction() as conn:
        raw_since = await _raw_since(conn)
        low = None if since is None else floor_hour(since)
        if raw_since is not None and (low is None or low < raw_since):
            low = raw_since
        where, params = ("", []) if low is None else (" AND started_at >= ?", [to_iso(low)])
        if low is None:
            await conn.execute("DELETE FROM request_hourly")
        else:
            await conn.execute("DELETE FROM request_hourly WHERE hour >= ?", (_hour_text(low),))
        await conn.execute(
            f"INSERT INTO request_hourly ({', '.join(_HOURLY_COLUMNS)}) "
            f"SELECT substr(started_at, 1, 13), key_id, coalesce(team_id, ''), coalesce(customer_id, ''), "
            f"coalesce(project, ''), coalesce(requested_model, ''), coalesce(provider, ''), {_SUMS} FROM requests "
            f"WHERE status != 'pending'{where} "
            "GROUP BY substr(started_at, 1, 13), key_id, coalesce(team_id, ''), coalesce(customer_id, ''), "
            "coalesce(project, ''), coalesce(requested_model, ''), coalesce(provider, '')",
            params,
        )
        await _rebuild_daily(conn, None if since is None else floor_hour(since).strftime("%Y-%m-%d"))
        count = await conn.fetchone(
            "SELECT count(*) FROM request_hourly" + ("" if low is None else " WHERE hour >= ?"),
            [] if low is None else [_hour_text(low)],
        )
    return low, int(count[0]) if count else 0


async def _rebuild_daily(conn: Connection, first_day: str | None) -> None:
    """The day roll-ups from `request_hourly`, for the days from `first_day` (None: all)."""
    for rollup in _ROLLUPS[1:]:
        if first_day is None:
            await conn.execute(f"DELETE FROM {rollup.table}")
        else:
            await conn.execute(f"DELETE FROM {rollup.table} WHERE day >= ?", (first_day,))
        dims = ", ".join(_HOURLY_DIMENSIONS[i] for i in rollup.picks[1:])
        await conn.execute(
            f"INSERT INTO {rollup.table} ({', '.join((*rollup.dimensions, *ROLLUP_SUMS))}) "
            f"SELECT substr(hour, 1, 10), {dims}, {', '.join(f'sum({c})' for c in ROLLUP_SUMS)} FROM request_hourly"
            + ("" if first_day is None else " WHERE hour >= ?")
            + f" GROUP BY substr(hour, 1, 10), {dims}",
            [] if first_day is None else [first_day + "T00"],
        )


def _day_iso(day: date) -> str:
    return to_iso(datetime(day.year, day.month, day.day, tzinfo=UTC))


# --- reports -----------------------------------------------------------------------------------------------------

_RAW_KEYS = {
    "key": "coalesce(k.name, r.key_id)",
    "team": "coalesce(t.name, r.team_id, '')",
    "customer": "coalesce(c.name, r.customer_id, '')",
    "project": "coalesce(r.project, '')",
    "model": "coalesce(r.requested_model, '')",
    "provider": "coalesce(r.provider, '')",
    "session": "coalesce(r.session_id, '')",
}
_ROLLUP_KEYS = {
    "key": "coalesce(k.name, r.key_id)",
    "team": "coalesce(t.name, nullif(r.team_id, ''), '')",
    "customer": "coalesce(c.name, nullif(r.customer_id, ''), '')",
    "project": "r.project",
    "model": "r.model",
    "provider": "r.provider",
}
# groupings whose key is a name: (id column, table holding the names)
_NAMED = {"key": ("key_id", "virtual_keys"), "team": ("team_id", "teams"), "customer": ("customer_id", "customers")}
_JOINS = (
    " LEFT JOIN virtual_keys k ON k.id = r.key_id LEFT JOIN teams t ON t.id = r.team_id"
    " LEFT JOIN customers c ON c.id = r.customer_id"
)


def check_grouping(by: str | None) -> None:
    if by is None or by in GROUPINGS or (by.startswith("tag:") and len(by) > 4):
        return
    raise UserInputError(f"cannot group by {by!r}", hint=f"use --by with one of: {', '.join(GROUPINGS)}, tag:NAME")


def _slot_length(tz: tzinfo, since: datetime, until: datetime) -> int:
    """Group raw rows by UTC hour (13 characters), or by minute where the zone is off the hour."""
    for moment in (since, until):
        offset = moment.astimezone(tz).utcoffset() or timedelta(0)
        if offset % timedelta(hours=1):
            return 16
    return 13


def _hour_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H")


def whole_hour_zone(tz: tzinfo, since: datetime, until: datetime) -> bool:
    """Whether every UTC hour in [since, until) falls within one local day in `tz`: its offset is whole hours at
    both ends and at each UTC midnight between (zones change offset a few times a year at most)."""
    moment = since
    while True:
        offset = moment.astimezone(tz).utcoffset() or timedelta(0)
        if offset % timedelta(hours=1):
            return False
        if moment >= until:
            return True
        moment = min(until, floor_hour(moment).replace(hour=0) + timedelta(days=1))


async def report(
    db: Database,
    *,
    since: datetime,
    until: datetime,
    by: str | None,
    tz: tzinfo = UTC,
    team_id: str | None = None,
) -> CostReport:
    """Spend in [since, until), grouped; `tz` (the org's zone) makes `day`. `team_id` limits it to one team.

    Whole UTC days come from `request_daily` (or its per-team-and-model sums), the whole hours around them from
    `request_hourly` (by local day in a zone other than UTC: hours only), plus the pending rows there (through
    their partial index); the partial hours at either end, and groupings the hours lack (session, tag; day in a
    zone off the hour), from raw rows. Before the raw rows' retention only roll-ups exist: the range is taken to
    whole hours there, and a session or tag is ''.
    """
    check_grouping(by)
    sums: dict[str, Totals] = {}

    def add(key: str, row: Sequence[Any]) -> None:
        sums[key] = sums.get(key, Totals()) + Totals.from_row(row)

    team_filter = " AND r.team_id = ?" if team_id else ""
    extra = [team_id] if team_id else []
    async with db.transaction() as conn:
        if db.backend == "postgresql":  # one snapshot for the hours and the raw rows
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        raw_since = await _raw_since(conn)
        low = max(since, raw_since) if raw_since else since
        if raw_since and since < raw_since:  # pruned: only hours exist
            edge = min(until, raw_since)
            await _rollup_groups(conn, by, floor_hour(since), ceil_hour(edge), tz, team_filter, extra, add)
        hours_usable = by is None or by in _ROLLUP_KEYS or (by == "day" and whole_hour_zone(tz, low, until))
        first, last = ceil_hour(low), floor_hour(until)
        if not hours_usable or first >= last:
            if low < until:
                await _raw_groups(conn, by, low, until, tz, team_filter, extra, add)
        else:
            if low < first:
                await _raw_groups(conn, by, low, first, tz, team_filter, extra, add)
            await _rollup_groups(conn, by, first, last, tz, team_filter, extra, add)
            pending = f" AND r.status = 'pending'{team_filter}"
            await _raw_groups(conn, by, first, last, tz, pending, extra, add)
            if last < until:
                await _raw_groups(conn, by, last, until, tz, team_filter, extra, add)
    groups: list[tuple[GroupKey, Totals]] = [(key or NONE_KEY, totals) for key, totals in sums.items()]
    if by == "day":
        groups.sort(key=lambda group: str(group[0]))
    elif by is not None:
        groups.sort(key=lambda group: (-group[1].cost_nanos, -group[1].requests, group[0]))
    total = sum((t for _, t in groups), Totals())
    return CostReport(since=since, until=until, by=by, total=total, groups=groups if by else [])


async def _raw_since(conn: Connection) -> datetime | None:
    row = await conn.fetchone("SELECT value FROM gateway_meta WHERE name = 'raw_since'")
    return None if row is None else from_iso(str(row[0]))


async def _raw_groups(
    conn: Connection,
    by: str | None,
    low: datetime,
    high: datetime,
    tz: tzinfo,
    team_filter: str,
    extra: list[Any],
    add: Any,
) -> None:
    where = f" WHERE r.started_at >= ? AND r.started_at < ?{team_filter}"
    params = [to_iso(low), to_iso(high), *extra]
    if by is None:
        for row in await conn.fetch(f"SELECT {_SUMS} FROM requests r{where}", params):
            add("", row)
        return
    if by in _RAW_KEYS:
        key = _RAW_KEYS[by]
        for row in await conn.fetch(f"SELECT {key}, {_SUMS} FROM requests r{_JOINS}{where} GROUP BY {key}", params):
            add(str(row[0]), row[1:])
        return
    if by == "day":
        length = _slot_length(tz, low, high)
        slot = f"substr(r.started_at, 1, {length})"
        for row in await conn.fetch(f"SELECT {slot}, {_SUMS} FROM requests r{where} GROUP BY {slot}", params):
            text = str(row[0]) + (":00:00Z" if length == 13 else ":00Z")
            add(from_iso(text).astimezone(tz).date().isoformat(), row[1:])
        return
    tag = by[4:]
    for row in await conn.fetch(f"SELECT r.tags, {_SUMS} FROM requests r{where} GROUP BY r.tags", params):
        try:
            value = json.loads(row[0]).get(tag)
        except (ValueError, AttributeError):
            value = None
        add("" if value is None else str(value), row[1:])


def _ceil_day(moment: datetime) -> datetime:
    floor = floor_hour(moment).replace(hour=0)
    return floor if floor == moment else floor + timedelta(days=1)


def rollup_parts(low: datetime, high: datetime) -> list[tuple[str, datetime, datetime]]:
    """Whole UTC hours [low, high) as (slot, low, high) ranges: the whole UTC days within from a day roll-up
    (`day`), the hours at either end from `request_hourly` (`hour`). Reports and the dashboard both read this way."""
    if low >= high:
        return []
    first_day, last_day = _ceil_day(low), floor_hour(high).replace(hour=0)
    if first_day >= last_day:
        return [("hour", low, high)]
    parts: list[tuple[str, datetime, datetime]] = [("day", first_day, last_day)]
    if low < first_day:
        parts.insert(0, ("hour", low, first_day))
    if last_day < high:
        parts.append(("hour", last_day, high))
    return parts


def slot_text(slot: str, moment: datetime) -> str:
    """A roll-up slot's key for a UTC hour or day start: `2026-12-07T16` (hour) or `2026-12-07` (day)."""
    return _hour_text(moment) if slot == "hour" else _hour_text(moment)[:10]


def utc_days_zone(tz: tzinfo, first: datetime, last: datetime) -> bool:
    """Whether each UTC day from `first` to `last` (UTC midnights) is one local day in `tz`: its offset is 0 at
    every UTC midnight between (zones change offset a few times a year at most, never twice within a day)."""
    if tz is UTC:  # an all-time report starts in 1970: no walk through every day for the common case
        return True
    moment = first
    while moment <= last:
        if moment.astimezone(tz).utcoffset():
            return False
        moment += timedelta(days=1)
    return True


async def _rollup_groups(
    conn: Connection,
    by: str | None,
    low: datetime,
    high: datetime,
    tz: tzinfo,
    team_filter: str,
    extra: list[Any],
    add: Any,
) -> None:
    """The finished rows of whole UTC hours [low, high): the whole UTC days within from a day roll-up, the hours
    at either end from `request_hourly`. Grouped by local day, days serve only where they are the zone's days."""
    parts = rollup_parts(low, high)
    if by == "day" and any(slot == "day" and not utc_days_zone(tz, a, b) for slot, a, b in parts):
        parts = [("hour", low, high)]
    for slot, part_low, part_high in parts:
        await _slot_groups(conn, slot, by, part_low, part_high, tz, team_filter, extra, add)


def _day_table(by: str | None) -> str:
    """The narrow per-team-and-model days where they have what `by` needs (sums only, or one of those)."""
    if by is None or by in ("team", "model", "day", "session") or by.startswith("tag:"):
        return "request_daily_team_model"
    return "request_daily"


async def _slot_groups(
    conn: Connection,
    slot: str,
    by: str | None,
    low: datetime,
    high: datetime,
    tz: tzinfo,
    team_filter: str,
    extra: list[Any],
    add: Any,
) -> None:
    """The finished rows of [low, high) from `request_hourly` (slot `hour`: whole hours) or a day roll-up (slot
    `day`: whole UTC days; by day only where those are local days). No session or tag there: ''."""
    table = "request_hourly" if slot == "hour" else _day_table(by)
    where = f" WHERE r.{slot} >= ? AND r.{slot} < ?{team_filter}"
    params = [slot_text(slot, low), slot_text(slot, high), *extra]
    if by is None or by.startswith("tag:") or by == "session":
        for row in await conn.fetch(f"SELECT {_ROLLUP_SUMS} FROM {table} r{where}", params):
            add("", row)
        return
    if by == "day":
        sql = f"SELECT r.{slot}, {_ROLLUP_SUMS} FROM {table} r{where} GROUP BY r.{slot}"
        for row in await conn.fetch(sql, params):
            local = str(row[0]) if slot == "day" else from_iso(f"{row[0]}:00:00Z").astimezone(tz).date().isoformat()
            add(local, row[1:])
        return
    if by in _NAMED:  # grouped by id, then named: a join per group, not per roll-up row
        column, names_table = _NAMED[by]
        sql = f"SELECT r.{column}, {_ROLLUP_SUMS} FROM {table} r{where} GROUP BY r.{column}"
        groups = await conn.fetch(sql, params)
        ids = sorted({str(row[0]) for row in groups if row[0]})
        names: dict[str, str] = {}
        for start in range(0, len(ids), _CHUNK):
            part = ids[start : start + _CHUNK]
            marks = ", ".join("?" for _ in part)
            found = await conn.fetch(f"SELECT id, name FROM {names_table} WHERE id IN ({marks})", part)
            names.update((str(i), str(n)) for i, n in found)
        for row in groups:
            add(names.get(str(row[0]), str(row[0])), row[1:])
        return
    key = _ROLLUP_KEYS[by]
    sql = f"SELECT {key}, {_ROLLUP_SUMS} FROM {table} r{where} GROUP BY {key}"
    for row in await conn.fetch(sql, params):
        add(str(row[0]), row[1:])


def local_day_bounds(day: date, tz: tzinfo) -> tuple[datetime, datetime]:
    return local_midnight(day, tz), local_midnight(day + timedelta(days=1), tz)
