"""The local ledger: one SQLite row per request, opened through sqlite-utils in WAL mode.

`RequestRecord` <-> row conversion lives here, so every reader and writer agrees on the flattened columns.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ccgate.core.records import (
    Attempt,
    Cost,
    PriceQuality,
    RequestRecord,
    RequestStatus,
    Usage,
    from_iso,
    to_iso,
    utcnow,
)
from ccgate.core.usage import MAX_TOKENS
from ccgate.errors import LedgerError

if TYPE_CHECKING:
    from sqlite_utils import Database

TABLE = "requests"
# Seconds a connection waits for another writer's lock before giving up (SQLite's busy timeout).
BUSY_TIMEOUT_S = 10.0

COLUMNS: tuple[str, ...] = (
    "id",
    "started_at",
    "ended_at",
    "source",
    "session_id",
    "project",
    "launch_id",
    "tier",
    "requested_model",
    "provider",
    "routed_model",
    "endpoint",
    "stream",
    "status",
    "http_status",
    "error_type",
    "error_message",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "web_searches",
    "cost_nanos",
    "price_quality",
    "priced_model",
    "cost_note",
    "ttfb_ms",
    "latency_ms",
    "upstream_message_id",
    "upstream_request_id",
    "attempts",
    "synced_at",
    "speed",
    "tags",
)


def record_to_values(record: RequestRecord) -> tuple[Any, ...]:
    """A record flattened into ledger columns, in `COLUMNS` order (usage and cost spread out, attempts as JSON).

    Positional, for the writer: binding 33 named parameters costs more than the insert itself.
    """
    usage, cost = record.usage, record.cost
    ended_at, synced_at = record.ended_at, record.synced_at
    # a member is taken as is (calling the enum costs ~0.4 µs); anything else must convert, or the write fails
    status, quality = record.status, cost.quality
    return (
        record.id,
        to_iso(record.started_at),
        None if ended_at is None else to_iso(ended_at),
        record.source,
        record.session_id,
        record.project,
        record.launch_id,
        record.tier,
        record.requested_model,
        record.provider,
        record.routed_model,
        record.endpoint,
        int(record.stream),
        status.value if type(status) is RequestStatus else RequestStatus(status).value,
        record.http_status,
        record.error_type,
        record.error_message,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_5m_tokens,
        usage.cache_write_1h_tokens,
        usage.web_searches,
        cost.nanos,
        quality.value if type(quality) is PriceQuality else PriceQuality(quality).value,
        cost.priced_model,
        cost.note,
        record.ttfb_ms,
        record.latency_ms,
        record.upstream_message_id,
        record.upstream_request_id,
        encode_attempts(record.attempts),
        None if synced_at is None else to_iso(synced_at),
        usage.speed,
        record.tags,
    )


# Token counts (NOT NULL): an unstorable value is clamped into 0..MAX_TOKENS (usage.py).
_COUNT_COLUMNS = frozenset(
    (
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
        "web_searches",
    )
)
# Other NOT NULL columns with a neutral value; id, started_at and status have none.
_NEUTRAL = {"stream": 0, "endpoint": "messages", "price_quality": PriceQuality.UNPRICED.value, "attempts": "[]"}
_REQUIRED = frozenset(("id", "started_at", "status"))
_INT64 = range(-(2**63), 2**63)


def storable_text(text: str) -> bool:
    """False for text SQLite cannot store: a lone surrogate such as `\\ud800` is valid JSON but not UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _storable(value: Any) -> bool:
    if value is None or type(value) is float:
        return True
    if type(value) is int:
        return value in _INT64
    if type(value) is str:
        return storable_text(value)
    return False


def storable_values(record: RequestRecord) -> tuple[tuple[Any, ...], tuple[str, ...]] | None:
    """`record_to_values` with every value SQLite cannot store replaced, and the names of the columns replaced.

    The writer's last resort after a write failed twice: token counts are clamped into 0..MAX_TOKENS, an
    unstorable cost becomes NULL (unpriced), text that is not valid UTF-8 keeps what it can, any other value
    becomes NULL (or its column's neutral value); `cost_note` names the columns changed. None when nothing
    needs replacing (the failure was not a value) or the record cannot be stored at all (its id, start time
    or status is wrong: ccgate's own values, never a provider's).
    """
    try:
        values = list(record_to_values(record))
    except Exception:
        return None
    replaced: list[str] = []
    for index, column in enumerate(COLUMNS):
        value = values[index]
        fixed: Any
        if column in _COUNT_COLUMNS:
            if type(value) is int and 0 <= value <= MAX_TOKENS:
                continue
            fixed = MAX_TOKENS if isinstance(value, int) and value > MAX_TOKENS else 0
        elif _storable(value):
            continue
        elif column in _REQUIRED:
            return None
        elif type(value) is str:
            fixed = value.encode("utf-8", "replace").decode("utf-8")
        elif column == "cost_nanos":
            fixed = None
            values[COLUMNS.index("price_quality")] = PriceQuality.UNPRICED.value
        else:
            fixed = _NEUTRAL.get(column)
        values[index] = fixed
        replaced.append(column)
    if not replaced:
        return None
    note_at = COLUMNS.index("cost_note")
    note = f"ledger could not store {', '.join(replaced)} as reported; stored clamped or empty"
    previous = values[note_at]
    values[note_at] = f"{note} ({previous})" if previous and "cost_note" not in replaced else note
    return tuple(values), tuple(replaced)


def record_to_row(record: RequestRecord) -> dict[str, Any]:
    """`record_to_values` by column name."""
    return dict(zip(COLUMNS, record_to_values(record), strict=True))


def encode_attempts(attempts: Sequence[Attempt]) -> str:
    """The `attempts` column: what `json.dumps` of each attempt's `asdict` writes, built directly (asdict copies
    deeply and cost ~11 µs of the writer thread per row)."""
    if not attempts:
        return "[]"
    if type(attempts) is tuple:  # a record's own (frozen values): most rows hold one of a few
        try:
            return _encoded_attempts(attempts)
        except TypeError:  # a value that cannot be a cache key (never one ccgate makes): written all the same
            pass
    return _encode_attempts(attempts)


@functools.lru_cache(maxsize=256)
def _encoded_attempts(attempts: tuple[Attempt, ...]) -> str:
    return _encode_attempts(attempts)


def _encode_attempts(attempts: Sequence[Attempt]) -> str:
    return _COMPACT_JSON.encode(
        [
            {"provider": attempt.provider, "model": attempt.model, "status": attempt.status, "error": attempt.error}
            for attempt in attempts
        ]
    )


# `json.dumps(..., separators=(",", ":"))`, without making an encoder per call
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def decode_attempts(text: str | None) -> tuple[Attempt, ...]:
    if not text:
        return ()
    return tuple(
        Attempt(provider=item["provider"], model=item["model"], status=item.get("status"), error=item.get("error"))
        for item in json.loads(text)
    )


def row_to_record(row: dict[str, Any]) -> RequestRecord:
    """Inverse of `record_to_row`; extra keys (such as `rowid`) are ignored."""
    ended_at, synced_at = row.get("ended_at"), row.get("synced_at")
    return RequestRecord(
        id=row["id"],
        started_at=from_iso(row["started_at"]),
        ended_at=None if ended_at is None else from_iso(ended_at),
        source=row.get("source") or "sidecar",
        session_id=row.get("session_id"),
        project=row.get("project"),
        launch_id=row.get("launch_id"),
        tier=row.get("tier"),
        requested_model=row.get("requested_model"),
        provider=row.get("provider"),
        routed_model=row.get("routed_model"),
        endpoint=row.get("endpoint") or "messages",
        stream=bool(row.get("stream")),
        status=RequestStatus(row["status"]),
        http_status=row.get("http_status"),
        error_type=row.get("error_type"),
        error_message=row.get("error_message"),
        usage=Usage(
            input_tokens=row.get("input_tokens") or 0,
            output_tokens=row.get("output_tokens") or 0,
            cache_read_tokens=row.get("cache_read_tokens") or 0,
            cache_write_5m_tokens=row.get("cache_write_5m_tokens") or 0,
            cache_write_1h_tokens=row.get("cache_write_1h_tokens") or 0,
            web_searches=row.get("web_searches") or 0,
            speed=row.get("speed"),
        ),
        cost=Cost(
            nanos=row.get("cost_nanos"),
            quality=PriceQuality(row.get("price_quality") or PriceQuality.UNPRICED.value),
            priced_model=row.get("priced_model"),
            note=row.get("cost_note"),
        ),
        ttfb_ms=row.get("ttfb_ms"),
        latency_ms=row.get("latency_ms"),
        upstream_message_id=row.get("upstream_message_id"),
        upstream_request_id=row.get("upstream_request_id"),
        attempts=decode_attempts(row.get("attempts")),
        synced_at=None if synced_at is None else from_iso(synced_at),
        tags=row.get("tags"),
    )


def _create_private(path: Path) -> None:
    """The ledger holds project paths and usage: readable by its owner only (SQLite copies the mode to -wal)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def enable_wal(conn: sqlite3.Connection, *, attempts: int = 50) -> None:
    """Switch the file to WAL, tolerating other processes doing the same at the same moment.

    Changing the journal mode needs an exclusive lock, and SQLite answers "database is locked" at once (the
    busy handler is not consulted) while another connection opens or converts the file. Once any process has
    switched it, WAL is persistent, so a retry usually finds the work done.
    """
    import time

    for attempt in range(attempts):
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() == "wal":
                return
            mode = conn.execute("PRAGMA journal_mode = wal").fetchone()[0]
            if str(mode).lower() == "wal":
                return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            if attempt == attempts - 1:
                raise
        time.sleep(min(0.2, 0.005 * (attempt + 1)))
    raise sqlite3.OperationalError("could not switch the ledger to WAL mode: another process keeps it locked")


def open_ledger(path: Path, *, check_same_thread: bool = True) -> Database:
    """Open (creating if needed) and migrate the ledger; WAL + synchronous=NORMAL survive a kill -9."""
    from sqlite_utils import Database

    # no third-party hooks on the ledger connection
    return _open(path, check_same_thread, lambda conn: Database(conn, execute_plugins=False))


class PlainLedger:
    """The ledger through the standard library alone, for a command whose every statement is plain SQL
    (`import claude-code`): importing sqlite-utils is ~0.065 s of such a run. Offers what migrations and
    `storage.importing` use of sqlite-utils' `Database`, with the same connection settings."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.execute("PRAGMA recursive_triggers=on")  # as sqlite-utils' `Database` sets it

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] | None = None, /) -> sqlite3.Cursor:
        return self.conn.execute(sql, () if parameters is None else parameters)

    def close(self) -> None:
        self.conn.close()


def open_plain_ledger(path: Path) -> PlainLedger:
    """`open_ledger` without sqlite-utils."""
    return _open(path, True, PlainLedger)


_Opened = TypeVar("_Opened", "Database", PlainLedger)


def _open(path: Path, check_same_thread: bool, wrap: Callable[[sqlite3.Connection], _Opened]) -> _Opened:
    from ccgate.storage.migrations import migrate

    try:
        _create_private(path)
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=check_same_thread)
        try:
            db = wrap(conn)
            # before anything else: every statement below may meet another process's lock on a fresh file
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            enable_wal(conn)
            db.execute("PRAGMA synchronous=NORMAL")
            migrate(db)
        except BaseException:
            conn.close()
            raise
    except (sqlite3.Error, OSError) as error:
        raise LedgerError(
            f"cannot open the ledger at {path}: {error}",
            hint="check that the file is readable and writable by you; `ccgate doctor` checks its integrity",
        ) from error
    return db


def insert_records(db: Database, records: Iterable[RequestRecord], *, batch_size: int = 500) -> int:
    """Batch insert (for `import`): rows whose id already exists are left alone. Returns rows inserted.

    One transaction per batch; `rowcount` counts the rows inserted, not the roll-up rows the triggers touch.
    """
    sql = (
        f"INSERT OR IGNORE INTO {TABLE} ({', '.join(COLUMNS)}) "  # noqa: S608
        f"VALUES ({', '.join(':' + column for column in COLUMNS)})"
    )
    inserted = 0
    iterator = iter(records)
    while batch := [record_to_row(record) for record in islice(iterator, batch_size)]:
        with db.atomic():
            inserted += db.conn.executemany(sql, batch).rowcount
    return inserted


def recover_pending(db: Database) -> int:
    """Mark rows left `pending` by a crash as `interrupted`, keeping the usage already seen (it was billed)."""
    cursor = db.conn.execute(
        """
        UPDATE requests
        SET status = 'interrupted',
            ended_at = coalesce(ended_at, ?),
            error_type = coalesce(error_type, 'interrupted'),
            error_message = coalesce(error_message, 'ccgate stopped before this request finished')
        WHERE status = 'pending'
        """,
        (to_iso(utcnow()),),
    )
    db.conn.commit()
    return cursor.rowcount


def check_integrity(db: Database, *, full: bool = False) -> str:
    """ "ok" for a healthy ledger, otherwise SQLite's list of problems.

    `PRAGMA quick_check` by default (seconds faster on a large ledger: it skips matching indexes to rows);
    `full` runs `PRAGMA integrity_check`, which also verifies every index entry.
    """
    rows = db.execute("PRAGMA integrity_check" if full else "PRAGMA quick_check").fetchall()
    return "\n".join(str(row[0]) for row in rows)
