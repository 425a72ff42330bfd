"""The ledger side of `import claude-code`: rows written in bulk, roll-ups summed once, and where each transcript
was read up to.

A first import writes tens of thousands of rows at once. Row by row, each paid the roll-up trigger's upsert and a
random-page write per index; here one transaction drops the trigger (and, when the import outweighs the ledger,
the secondary indexes), inserts, adds the new rows into the roll-ups with one grouped upsert and puts everything
back. DDL is transactional in SQLite: a kill at any point leaves the ledger as it was before, or as it is after.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccgate.core.records import to_iso, utcnow

if TYPE_CHECKING:
    from ccgate.storage.migrations import SqlDatabase

# One imported row, in this order (see `IMPORT_INSERT`): the columns an import sets; the rest keep their defaults
# (endpoint 'messages', stream 0, attempts '[]', NULL), and the constants are written by the statement itself.
IMPORT_ROW = (
    "id",
    "started_at",  # also ended_at
    "session_id",
    "project",
    "tier",
    "requested_model",  # also routed_model
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
    "upstream_message_id",
    "upstream_request_id",
    "speed",
)
# Fewer bound values than `insert_records` (binding a NULL costs Python's sqlite3 an adaptation look-up).
IMPORT_INSERT = """
    INSERT OR IGNORE INTO requests (
        id, started_at, ended_at, source, session_id, project, tier, requested_model, provider, routed_model,
        status, http_status, input_tokens, output_tokens, cache_read_tokens, cache_write_5m_tokens,
        cache_write_1h_tokens, web_searches, cost_nanos, price_quality, priced_model, cost_note,
        upstream_message_id, upstream_request_id, speed
    ) VALUES (
        ?1, ?2, ?2, 'import', ?3, ?4, ?5, ?6, 'anthropic', ?6, 'ok', 200, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
        ?16, ?17, ?18, ?19
    )
"""

# The new rows (rowid above the mark taken under the write lock) summed per roll-up key, the way the
# `requests_rollup_insert` trigger adds each one. Used only while that trigger is exactly the one this was
# written against (`_trigger_sql`), so a later migration that changes it falls back to the trigger itself.
_ROLLUP_NEW_ROWS = """
    INSERT INTO request_rollups (
        bucket, model, provider, project, session, requests, input_tokens, output_tokens, cache_read_tokens,
        cache_write_tokens, cost_nanos, unpriced_requests, estimated_requests, imported_requests
    )
    SELECT substr(started_at, 1, 13) || ':00:00.000000Z', coalesce(requested_model, ''), coalesce(provider, ''),
           coalesce(project, ''), coalesce(session_id, ''),
           count(*), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens),
           sum(cache_write_5m_tokens + cache_write_1h_tokens), sum(coalesce(cost_nanos, 0)),
           sum(cost_nanos IS NULL), sum(cost_nanos IS NOT NULL AND price_quality = 'estimated'),
           sum(source NOT IN ('sidecar', 'gateway'))
    FROM requests WHERE rowid > ? AND status != 'pending'
    GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (bucket, model, provider, project, session) DO UPDATE SET
        requests = requests + excluded.requests,
        input_tokens = input_tokens + excluded.input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
        cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
        cost_nanos = cost_nanos + excluded.cost_nanos,
        unpriced_requests = unpriced_requests + excluded.unpriced_requests,
        estimated_requests = estimated_requests + excluded.estimated_requests,
        imported_requests = imported_requests + excluded.imported_requests
"""
_ROLLUP_TRIGGER = "requests_rollup_insert"
# Rows per transaction: the sidecar's writer waits for the lock meanwhile (it keeps its rows in memory and
# retries, but a transaction of a million rows would hold it for tens of seconds).
BATCH_ROWS = 50_000
# Below this many rows the trigger's per-row work is cheaper than dropping and re-creating it.
BULK_MIN_ROWS = 2_000
# SQLite's page cache (KiB) while a bulk import writes: enough for the indexes of a few hundred thousand rows
BULK_CACHE_KIB = 64 * 1024


def _trigger_sql() -> str:
    """The roll-up insert trigger's SQL exactly as migration m005 created it."""
    from ccgate.storage.migrations import _rollup_upsert

    return (
        f"CREATE TRIGGER {_ROLLUP_TRIGGER} AFTER INSERT ON requests WHEN new.status != 'pending' "
        f"BEGIN {_rollup_upsert('new', '')} END"
    )


@dataclass(frozen=True, slots=True)
class FileMark:
    """How far `import` read a transcript: `resume_at` is the end of the last whole line read, `tail_hash` a
    digest of its first bytes and of those just before `resume_at` (to tell a file that grew from one rewritten).
    `inode`, `resume_at` and `tail_hash` are None for marks written before they were kept."""

    path: str
    size: int
    mtime_ns: int
    inode: int | None = None
    resume_at: int | None = None
    tail_hash: bytes | None = None


_MARK_COLUMNS = "path, size, mtime_ns, inode, resume_at, tail_hash"


def _marks_from(rows: Iterable[Sequence[Any]]) -> dict[str, FileMark]:
    return {
        str(row[0]): FileMark(
            str(row[0]),
            int(row[1]),
            int(row[2]),
            None if row[3] is None else int(row[3]),
            None if row[4] is None else int(row[4]),
            None if row[5] is None else bytes(row[5]),
        )
        for row in rows
    }


def load_marks(db: SqlDatabase) -> dict[str, FileMark]:
    """Every transcript an earlier import read, by path: one query."""
    return _marks_from(db.execute(f"SELECT {_MARK_COLUMNS} FROM import_files"))  # noqa: S608


def peek_marks(ledger_file: Path) -> dict[str, FileMark] | None:
    """`load_marks` without opening the ledger for writing (no sqlite-utils, no migration): a re-run that finds
    nothing changed stops here. None when the ledger is missing, older than this code, or cannot be read now."""
    if not ledger_file.exists():
        return None
    from urllib.parse import quote

    from ccgate.storage.migrations import schema_is_current

    try:
        conn = sqlite3.connect(f"file:{quote(str(ledger_file))}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        if not schema_is_current(conn):
            return None
        return _marks_from(conn.execute(f"SELECT {_MARK_COLUMNS} FROM import_files"))  # noqa: S608
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _save_marks(conn: sqlite3.Connection, marks: Iterable[FileMark]) -> None:
    from ccgate.storage.ledger import storable_text

    now = to_iso(utcnow())
    conn.executemany(
        "INSERT INTO import_files (path, size, mtime_ns, inode, resume_at, tail_hash, read_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET size = excluded.size, "
        "mtime_ns = excluded.mtime_ns, inode = excluded.inode, resume_at = excluded.resume_at, "
        "tail_hash = excluded.tail_hash, read_at = excluded.read_at",
        [
            (mark.path, mark.size, mark.mtime_ns, mark.inode, mark.resume_at, mark.tail_hash, now)
            for mark in marks
            if storable_text(mark.path)
        ],
    )


def insert_import_rows(db: SqlDatabase, rows: Sequence[tuple[Any, ...]], marks: Iterable[FileMark] = ()) -> int:
    """Insert `IMPORT_ROW` tuples (existing ids are left alone) and then record `marks`; returns rows inserted.

    Each batch is one write transaction; the marks go in with the last one, so a file is never marked read
    while rows read from it are missing: after a kill, the next run reads it again and finds the rows it has.
    """
    conn = db.conn
    inserted = 0
    batches = [rows[start : start + BATCH_ROWS] for start in range(0, len(rows), BATCH_ROWS)] or [rows]
    (cache,) = conn.execute("PRAGMA cache_size").fetchone()
    if len(rows) >= BULK_MIN_ROWS:
        # the id index takes the rows in random order and the dropped indexes are rebuilt by sorting: with
        # SQLite's default 2 MB page cache both spill (~0.1 s CPU of a 44,000-row import)
        conn.execute(f"PRAGMA cache_size = {-BULK_CACHE_KIB}")
    try:
        for number, batch in enumerate(batches, 1):
            inserted += _insert_transaction(conn, batch, marks if number == len(batches) else None)
    finally:
        conn.execute(f"PRAGMA cache_size = {int(cache)}")
    return inserted


def _insert_transaction(
    conn: sqlite3.Connection, batch: Sequence[tuple[Any, ...]], marks: Iterable[FileMark] | None
) -> int:
    if conn.in_transaction:
        conn.commit()
    conn.execute("BEGIN IMMEDIATE")
    try:
        inserted = _insert_batch(conn, batch)
        if marks is not None:
            _save_marks(conn, marks)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return inserted


def _insert_batch(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    if not rows:
        return 0
    if len(rows) < BULK_MIN_ROWS:
        return conn.executemany(IMPORT_INSERT, rows).rowcount
    (before,) = conn.execute("SELECT coalesce(max(rowid), 0) FROM requests").fetchone()
    dropped = _drop_for_bulk(conn, big=len(rows) >= before)
    inserted = conn.executemany(IMPORT_INSERT, rows).rowcount
    if any(kind == "trigger" for kind, _sql in dropped):
        conn.execute(_ROLLUP_NEW_ROWS, (before,))
    for _kind, sql in dropped:
        conn.execute(sql)
    return inserted


def _drop_for_bulk(conn: sqlite3.Connection, *, big: bool) -> list[tuple[str, str]]:
    """Drop the roll-up insert trigger when it is the one `_ROLLUP_NEW_ROWS` stands in for, and, for an import
    at least as large as the ledger (`big`), the secondary indexes of `requests` (rebuilt in one sorted pass
    instead of a random-page write per row). Returns (kind, SQL) of each, to re-create them."""
    dropped: list[tuple[str, str]] = []
    found = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'requests' AND sql IS NOT NULL "
        "AND ((type = 'trigger' AND name = ?) OR (type = 'index' AND ?))",
        (_ROLLUP_TRIGGER, int(big)),
    ).fetchall()
    for kind, name, sql in found:
        if kind == "trigger" and sql != _trigger_sql():
            continue  # changed since: let it do its own work, row by row
        conn.execute(f'DROP {"TRIGGER" if kind == "trigger" else "INDEX"} "{name}"')
        dropped.append((str(kind), str(sql)))
    return dropped
