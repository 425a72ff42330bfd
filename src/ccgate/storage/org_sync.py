"""The ledger side of the usage sync to an org gateway: the cursor, the next batch, and marking rows synced.

Delivery is at least once and the gateway ingests idempotently per (key, row id), so every row counts exactly
once there: a row is marked synced only after the gateway answered for it, and a batch that was stored but
whose answer was lost (gateway or sidecar killed) is sent again and comes back `known`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ccgate.core.records import to_iso, utcnow
from ccgate.storage.ledger import COLUMNS

if TYPE_CHECKING:
    from sqlite_utils import Database

# Ledger columns a sync row carries: the gateway prices rows itself and takes the rest as the sidecar's
# bookkeeping, so cost and sync state stay home.
SYNC_COLUMNS: tuple[str, ...] = tuple(
    c for c in COLUMNS if c not in ("cost_nanos", "price_quality", "priced_model", "cost_note", "synced_at", "attempts")
)


@dataclass(frozen=True, slots=True)
class SyncState:
    gateway: str
    key_prefix: str | None
    mode: str | None
    logged_in_at: str
    cursor: int
    last_sync_at: str | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Backlog:
    rows: int
    cost_nanos: int
    rejected: int


def start(db: Database, gateway: str, key_prefix: str | None, mode: str | None = None) -> None:
    """At login: sync from here on. Rows already in the ledger go only with `ccgate sync --since DATE`; a row
    still pending (its request runs now) is after login."""
    with db.conn:
        pending = db.conn.execute("SELECT min(rowid) FROM requests WHERE status = 'pending'").fetchone()[0]
        newest = db.conn.execute("SELECT max(rowid) FROM requests").fetchone()[0] or 0
        cursor = pending - 1 if pending is not None else newest
        db.conn.execute(
            "INSERT INTO org_sync (id, gateway, key_prefix, mode, logged_in_at, cursor) VALUES (1, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET gateway = excluded.gateway, key_prefix = excluded.key_prefix, "
            "mode = excluded.mode, "
            "logged_in_at = excluded.logged_in_at, cursor = CASE WHEN org_sync.gateway = excluded.gateway "
            "THEN org_sync.cursor ELSE excluded.cursor END, last_error = NULL",
            (gateway, key_prefix, mode, to_iso(utcnow()), cursor),
        )


def stop(db: Database) -> None:
    with db.conn:
        db.conn.execute("DELETE FROM org_sync")


def state(db: Database) -> SyncState | None:
    try:
        row = db.conn.execute(
            "SELECT gateway, key_prefix, mode, logged_in_at, cursor, last_sync_at, last_error "
            "FROM org_sync WHERE id = 1"
        ).fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else SyncState(*row)


def backlog(db: Database, since: datetime | None = None) -> Backlog:
    """Finished rows waiting to be synced (after login, or from `since`), their local cost, and rows refused."""
    current = state(db)
    if current is None:
        return Backlog(0, 0, 0)
    where, params = _unsynced(current.cursor, since)
    rows, cost = db.conn.execute(
        f"SELECT count(*), coalesce(sum(cost_nanos), 0) FROM requests WHERE {where}",  # noqa: S608
        params,
    ).fetchone()
    rejected = db.conn.execute("SELECT count(*) FROM sync_rejections").fetchone()[0]
    return Backlog(int(rows), int(cost), int(rejected))


def _unsynced(cursor: int, since: datetime | None) -> tuple[str, tuple[Any, ...]]:
    if since is None:
        return "rowid > ? AND synced_at IS NULL AND status != 'pending'", (cursor,)
    return (
        "(rowid > ? OR started_at >= ?) AND synced_at IS NULL AND status != 'pending'",
        (cursor, to_iso(since)),
    )


def next_batch(db: Database, limit: int, since: datetime | None = None) -> list[dict[str, Any]]:
    """Up to `limit` finished, unsynced rows in ledger order, as the gateway's ingest reads them."""
    current = state(db)
    if current is None:
        return []
    where, params = _unsynced(current.cursor, since)
    cursor = db.conn.execute(
        f"SELECT {', '.join(SYNC_COLUMNS)} FROM requests WHERE {where} ORDER BY rowid LIMIT ?",  # noqa: S608
        (*params, limit),
    )
    names = [d[0] for d in cursor.description]
    rows = []
    for values in cursor.fetchall():
        row = {name: value for name, value in zip(names, values, strict=True) if value is not None}
        row["stream"] = bool(row.get("stream"))
        _tags_as_object(row)
        rows.append(row)
    return rows


def _tags_as_object(row: dict[str, Any]) -> None:
    """Launch tags travel with their row: the ledger keeps them as JSON text, the gateway takes an object."""
    import json

    text = row.pop("tags", None)
    if not isinstance(text, str):
        return
    try:
        tags = json.loads(text)
    except ValueError:
        return
    if isinstance(tags, dict) and tags:
        row["tags"] = tags


def mark(db: Database, done: Iterable[str], rejected: Sequence[tuple[str, str]]) -> None:
    """The gateway answered for these rows: synced (stored now or known already), or refused with why.

    Then the cursor moves up to just below the oldest row that still waits (pending or unsynced)."""
    now = to_iso(utcnow())
    ids = list(done)
    with db.conn:
        db.conn.executemany("UPDATE requests SET synced_at = ? WHERE id = ?", [(now, i) for i in ids])
        db.conn.executemany(
            "INSERT OR REPLACE INTO sync_rejections (request_id, why, at) VALUES (?, ?, ?)",
            [(i, why[:500], now) for i, why in rejected],
        )
        db.conn.executemany("UPDATE requests SET synced_at = ? WHERE id = ?", [(now, i) for i, _ in rejected])
        _advance(db, now)


def _advance(db: Database, now: str) -> None:
    cursor = db.conn.execute("SELECT cursor FROM org_sync WHERE id = 1").fetchone()
    if cursor is None:
        return
    waiting = db.conn.execute(
        "SELECT min(rowid) FROM requests WHERE rowid > ? AND (synced_at IS NULL OR status = 'pending')",
        (cursor[0],),
    ).fetchone()[0]
    newest = db.conn.execute("SELECT max(rowid) FROM requests").fetchone()[0] or 0
    moved = waiting - 1 if waiting is not None else newest
    db.conn.execute(
        "UPDATE org_sync SET cursor = max(cursor, ?), last_sync_at = ?, last_error = NULL WHERE id = 1", (moved, now)
    )


def failed(db: Database, why: str) -> None:
    with db.conn:
        db.conn.execute("UPDATE org_sync SET last_error = ? WHERE id = 1", (why[:500],))


def rejections(db: Database, limit: int = 20) -> list[tuple[str, str, str]]:
    return [
        (str(a), str(b), str(c))
        for a, b, c in db.conn.execute(
            "SELECT request_id, why, at FROM sync_rejections ORDER BY at DESC LIMIT ?", (limit,)
        ).fetchall()
    ]


def set_mode(db: Database, mode: str) -> None:
    """The key's mode as `/v1/me` last said (the org may change it); the sidecar reads it at start."""
    with db.conn:
        db.conn.execute("UPDATE org_sync SET mode = ? WHERE id = 1", (mode,))


def save_budgets(db: Database, budgets: Sequence[tuple[str, int, int]]) -> None:
    """(name, limit, spent) of each org budget as the gateway just said, for the status line."""
    import json

    data = json.dumps([{"name": n, "limit_nanos": limit, "spent_nanos": spent} for n, limit, spent in budgets])
    with db.conn:
        db.conn.execute("UPDATE org_sync SET budgets = ?, budgets_at = ? WHERE id = 1", (data, to_iso(utcnow())))


def tightest_budget(conn: sqlite3.Connection) -> tuple[str, int, int] | None:
    """(name, limit, spent) of the org budget with the least left: the gateway's spent when it was read plus
    this machine's spend it had not seen then. None without org budgets (or before any were read)."""
    import json

    try:
        row = conn.execute("SELECT budgets, budgets_at, cursor FROM org_sync WHERE id = 1").fetchone()
    except sqlite3.OperationalError:
        return None
    if row is None or not row[0]:
        return None
    try:
        budgets = [(str(b["name"]), int(b["limit_nanos"]), int(b["spent_nanos"])) for b in json.loads(row[0])]
    except (ValueError, KeyError, TypeError):
        return None
    if not budgets:
        return None
    unseen = conn.execute(
        "SELECT coalesce(sum(cost_nanos), 0) FROM requests WHERE rowid > ? AND status != 'pending' "
        "AND (synced_at IS NULL OR synced_at > ?)",
        (row[2], row[1] or ""),
    ).fetchone()[0]
    return min(((n, limit, spent + int(unseen)) for n, limit, spent in budgets), key=lambda b: b[1] - b[2])
