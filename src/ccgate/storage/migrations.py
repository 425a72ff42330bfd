"""The ledger's schema as append-only numbered migrations, each applied once and recorded in `_migrations`.

Never edit a migration that has shipped: add `m00N_...` below the last one instead (a reused name is refused).
Every statement is plain SQL frozen in time (no references to constants that may change later).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ccgate.core.records import to_iso, utcnow


class SqlDatabase(Protocol):
    """What migrations and the import's bulk writes use of the ledger: sqlite-utils' `Database`, or
    `storage.ledger.PlainLedger` where loading sqlite-utils would be most of the cost (import)."""

    @property
    def conn(self) -> sqlite3.Connection: ...

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] | None = ..., /) -> sqlite3.Cursor: ...


Migration = Callable[[SqlDatabase], None]


class MigrationSet:
    """A named, ordered set of migrations for one schema; a name is refused twice at definition time.

    The ledger is the only set today; the gateway's store keeps its own set (and its own table) beside it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps: list[Migration] = []

    def __call__(self, function: Migration) -> Migration:
        """Register `function` as the next migration (a decorator); they run in the order they are defined."""
        if any(step.__name__ == function.__name__ for step in self.steps):
            raise ValueError(f"migration {function.__name__!r} is already in the {self.name!r} set: give it a new name")
        self.steps.append(function)
        return function

    def names(self) -> list[str]:
        return [step.__name__ for step in self.steps]


LEDGER = MigrationSet("ledger")
migration = LEDGER  # `@migration` registers a ledger migration
MIGRATIONS = LEDGER.steps  # the same list, under its former name


@migration
def m001_requests(db: SqlDatabase) -> None:
    db.execute(
        """
        CREATE TABLE requests (
            id TEXT PRIMARY KEY,
            started_at TEXT NOT NULL,
            ended_at TEXT,
            source TEXT NOT NULL DEFAULT 'sidecar',
            session_id TEXT,
            project TEXT,
            launch_id TEXT,
            tier TEXT,
            requested_model TEXT,
            provider TEXT,
            routed_model TEXT,
            endpoint TEXT NOT NULL DEFAULT 'messages',
            stream INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL,
            http_status INTEGER,
            error_type TEXT,
            error_message TEXT,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_5m_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
            web_searches INTEGER NOT NULL DEFAULT 0,
            cost_nanos INTEGER,
            price_quality TEXT NOT NULL DEFAULT 'unpriced',
            priced_model TEXT,
            cost_note TEXT,
            ttfb_ms REAL,
            latency_ms REAL,
            upstream_message_id TEXT,
            upstream_request_id TEXT,
            attempts TEXT NOT NULL DEFAULT '[]',
            synced_at TEXT
        )
        """
    )


@migration
def m002_request_indexes(db: SqlDatabase) -> None:
    db.execute("CREATE INDEX requests_started_at ON requests (started_at)")
    db.execute("CREATE INDEX requests_session ON requests (session_id, started_at)")
    db.execute("CREATE INDEX requests_upstream_message_id ON requests (upstream_message_id)")
    # Tiny partial indexes: start-up recovery finds leftover pending rows, and the cost report names the
    # unpriced models, without scanning the table.
    db.execute("CREATE INDEX requests_pending ON requests (status) WHERE status = 'pending'")
    db.execute(
        "CREATE INDEX requests_unpriced ON requests (started_at, routed_model, requested_model) "
        "WHERE cost_nanos IS NULL"
    )


def _rollup_upsert(row: str, sign: str) -> str:
    """One row's contribution (`row` is `new` or `old`, `sign` is "" or "-") added into its hour bucket.

    Used by m003 and m005: changing it would change shipped migrations.
    """
    return f"""
        INSERT INTO request_rollups (
            bucket, model, provider, project, session, requests, input_tokens, output_tokens,
            cache_read_tokens, cache_write_tokens, cost_nanos, unpriced_requests, estimated_requests,
            imported_requests
        ) VALUES (
            substr({row}.started_at, 1, 13) || ':00:00.000000Z',
            coalesce({row}.requested_model, ''), coalesce({row}.provider, ''), coalesce({row}.project, ''),
            coalesce({row}.session_id, ''),
            {sign}1, {sign}{row}.input_tokens, {sign}{row}.output_tokens, {sign}{row}.cache_read_tokens,
            {sign}({row}.cache_write_5m_tokens + {row}.cache_write_1h_tokens),
            {sign}coalesce({row}.cost_nanos, 0),
            {sign}({row}.cost_nanos IS NULL),
            {sign}({row}.cost_nanos IS NOT NULL AND {row}.price_quality = 'estimated'),
            {sign}({row}.source NOT IN ('sidecar', 'gateway'))
        )
        ON CONFLICT (bucket, model, provider, project, session) DO UPDATE SET
            requests = requests + excluded.requests,
            input_tokens = input_tokens + excluded.input_tokens,
            output_tokens = output_tokens + excluded.output_tokens,
            cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
            cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
            cost_nanos = cost_nanos + excluded.cost_nanos,
            unpriced_requests = unpriced_requests + excluded.unpriced_requests,
            estimated_requests = estimated_requests + excluded.estimated_requests,
            imported_requests = imported_requests + excluded.imported_requests;
    """  # noqa: S608


_ROLLUP_PRUNE = """
    DELETE FROM request_rollups
    WHERE bucket = substr(old.started_at, 1, 13) || ':00:00.000000Z'
      AND model = coalesce(old.requested_model, '') AND provider = coalesce(old.provider, '')
      AND project = coalesce(old.project, '') AND session = coalesce(old.session_id, '')
      AND requests = 0;
"""


@migration
def m003_hourly_rollups(db: SqlDatabase) -> None:
    """Per-UTC-hour sums kept exact by triggers, so `cost month` reads thousands of rows, not millions.

    Reports take whole hours from here and the ragged ends of a range (and of local days in zones with
    half-hour offsets) from `requests`. Keys are '' where the request's value is NULL.
    """
    db.execute(
        """
        CREATE TABLE request_rollups (
            bucket TEXT NOT NULL,
            model TEXT NOT NULL,
            provider TEXT NOT NULL,
            project TEXT NOT NULL,
            session TEXT NOT NULL,
            requests INTEGER NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cache_read_tokens INTEGER NOT NULL,
            cache_write_tokens INTEGER NOT NULL,
            cost_nanos INTEGER NOT NULL,
            unpriced_requests INTEGER NOT NULL,
            estimated_requests INTEGER NOT NULL,
            imported_requests INTEGER NOT NULL,
            PRIMARY KEY (bucket, model, provider, project, session)
        ) WITHOUT ROWID
        """
    )
    watched = (
        "started_at, requested_model, provider, project, session_id, source, input_tokens, output_tokens, "
        "cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cost_nanos, price_quality"
    )
    db.execute(f"CREATE TRIGGER requests_rollup_insert AFTER INSERT ON requests BEGIN {_rollup_upsert('new', '')} END")
    db.execute(
        f"CREATE TRIGGER requests_rollup_update AFTER UPDATE OF {watched} ON requests BEGIN "
        f"{_rollup_upsert('old', '-')} {_ROLLUP_PRUNE} {_rollup_upsert('new', '')} END"
    )
    db.execute(
        f"CREATE TRIGGER requests_rollup_delete AFTER DELETE ON requests BEGIN "
        f"{_rollup_upsert('old', '-')} {_ROLLUP_PRUNE} END"
    )
    db.execute(
        """
        INSERT INTO request_rollups
        SELECT substr(started_at, 1, 13) || ':00:00.000000Z', coalesce(requested_model, ''),
               coalesce(provider, ''), coalesce(project, ''), coalesce(session_id, ''),
               count(*), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens),
               sum(cache_write_5m_tokens + cache_write_1h_tokens), coalesce(sum(cost_nanos), 0),
               sum(cost_nanos IS NULL), sum(cost_nanos IS NOT NULL AND price_quality = 'estimated'),
               sum(source NOT IN ('sidecar', 'gateway'))
        FROM requests GROUP BY 1, 2, 3, 4, 5
        """
    )


@migration
def m004_drop_message_id_index(db: SqlDatabase) -> None:
    """Every metered request paid a write to a random page of this index; `import` now finds metered message
    ids through `started_at` instead.
    """
    db.execute("DROP INDEX IF EXISTS requests_upstream_message_id")


@migration
def m005_rollups_without_pending_rows(db: SqlDatabase) -> None:
    """Roll-ups hold finished rows only; reports add the few still pending from `requests`.

    Every request is written ahead as pending and finished later: with pending rows in the roll-ups that was
    an upsert at the insert and a subtract, prune and add at the finish, ~10 µs of the ledger writer's CPU per
    request. Now the insert costs nothing and the finish one upsert. Reuses m003's SQL helpers unchanged.
    """
    watched = (
        "started_at, requested_model, provider, project, session_id, source, input_tokens, output_tokens, "
        "cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cost_nanos, price_quality, status"
    )
    for name in ("requests_rollup_insert", "requests_rollup_update", "requests_rollup_delete"):
        db.execute(f"DROP TRIGGER IF EXISTS {name}")
    db.execute(
        "CREATE TRIGGER requests_rollup_insert AFTER INSERT ON requests WHEN new.status != 'pending' "
        f"BEGIN {_rollup_upsert('new', '')} END"
    )
    db.execute(
        f"CREATE TRIGGER requests_rollup_finish AFTER UPDATE OF {watched} ON requests "
        f"WHEN old.status = 'pending' AND new.status != 'pending' BEGIN {_rollup_upsert('new', '')} END"
    )
    db.execute(
        f"CREATE TRIGGER requests_rollup_update AFTER UPDATE OF {watched} ON requests "
        "WHEN old.status != 'pending' AND new.status != 'pending' "
        f"BEGIN {_rollup_upsert('old', '-')} {_ROLLUP_PRUNE} {_rollup_upsert('new', '')} END"
    )
    db.execute(
        f"CREATE TRIGGER requests_rollup_reopen AFTER UPDATE OF {watched} ON requests "
        "WHEN old.status != 'pending' AND new.status = 'pending' "
        f"BEGIN {_rollup_upsert('old', '-')} {_ROLLUP_PRUNE} END"
    )
    db.execute(
        "CREATE TRIGGER requests_rollup_delete AFTER DELETE ON requests WHEN old.status != 'pending' "
        f"BEGIN {_rollup_upsert('old', '-')} {_ROLLUP_PRUNE} END"
    )
    db.execute("DELETE FROM request_rollups")
    db.execute(
        """
        INSERT INTO request_rollups
        SELECT substr(started_at, 1, 13) || ':00:00.000000Z', coalesce(requested_model, ''),
               coalesce(provider, ''), coalesce(project, ''), coalesce(session_id, ''),
               count(*), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens),
               sum(cache_write_5m_tokens + cache_write_1h_tokens), coalesce(sum(cost_nanos), 0),
               sum(cost_nanos IS NULL), sum(cost_nanos IS NOT NULL AND price_quality = 'estimated'),
               sum(source NOT IN ('sidecar', 'gateway'))
        FROM requests WHERE status != 'pending' GROUP BY 1, 2, 3, 4, 5
        """
    )


@migration
def m006_speed(db: SqlDatabase) -> None:
    """Fast mode (`usage.speed = "fast"`) is billed at a multiple of the standard rates: keep what each request
    ran at, so a cost can be explained and recomputed."""
    db.execute("ALTER TABLE requests ADD COLUMN speed TEXT")


@migration
def m007_request_tags(db: SqlDatabase) -> None:
    """Launch tags (`ccgate launch --tag ticket=ABC-1`) as a JSON object per row; NULL without tags.

    The partial index holds tagged rows only: `cost --by tag:K` reads them and takes the untagged remainder
    from the roll-ups, and untagged traffic pays nothing for it.
    """
    db.execute("ALTER TABLE requests ADD COLUMN tags TEXT")
    db.execute("CREATE INDEX requests_tagged ON requests (started_at) WHERE tags IS NOT NULL")


@migration
def m008_import_files(db: SqlDatabase) -> None:
    """Transcript files `import claude-code` has read to their end (size and mtime then), so a re-run skips
    them unless they changed."""
    db.execute(
        """
        CREATE TABLE import_files (
            path TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            read_at TEXT NOT NULL
        )
        """
    )


@migration
def m009_org_sync(db: SqlDatabase) -> None:
    """Org mode: where this machine's usage sync to the gateway stands, and the rows the gateway refused.

    `org_sync` has at most one row (one gateway at a time); `budgets` is the key's org budgets as `/v1/me` last
    said (JSON), for the status line, which never goes on the network. `cursor` is a low-water mark of `requests.rowid`:
    every row at or below it is synced, refused, or from before login. Rowids, not times: rows imported from
    transcripts arrive late with old times. `sync_rejections` keeps why the gateway refused a row, for
    `ccgate sync` and `whoami` to show; such a row is not sent again.
    """
    db.execute(
        """
        CREATE TABLE org_sync (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            gateway TEXT NOT NULL,
            key_prefix TEXT,
            mode TEXT,
            logged_in_at TEXT NOT NULL,
            cursor INTEGER NOT NULL DEFAULT 0,
            last_sync_at TEXT,
            last_error TEXT,
            budgets TEXT,
            budgets_at TEXT
        )
        """
    )
    db.execute(
        """
        CREATE TABLE sync_rejections (
            request_id TEXT PRIMARY KEY,
            why TEXT NOT NULL,
            at TEXT NOT NULL
        )
        """
    )


@migration
def m010_import_file_offsets(db: SqlDatabase) -> None:
    """Where `import claude-code` stopped in each transcript: a file that only grew is read from there on, and
    one replaced under the same name (another inode) or rewritten (other bytes before that point) from the start.
    """
    db.execute("ALTER TABLE import_files ADD COLUMN inode INTEGER")
    db.execute("ALTER TABLE import_files ADD COLUMN resume_at INTEGER")
    db.execute("ALTER TABLE import_files ADD COLUMN tail_hash BLOB")


@migration
def m011_report_indexes(db: SqlDatabase) -> None:
    """Covering indexes for the two reports that read rows, not roll-ups, over a whole period.

    `cost --what-if` sums each tier's tokens per group: from the first index it reads ~70 bytes per row instead
    of the whole ~600-byte row. The `~` footnote of `cost` counts why estimated rows are estimates: the partial
    index holds only those rows, with what the reasons are told from.
    """
    db.execute(
        "CREATE INDEX requests_usage ON requests (started_at, tier, requested_model, provider, input_tokens, "
        "output_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, web_searches, cost_nanos)"
    )
    db.execute(
        "CREATE INDEX requests_estimated ON requests (started_at, status, cost_note) "
        "WHERE price_quality = 'estimated' AND cost_nanos IS NOT NULL"
    )


def applied_migrations(db: SqlDatabase) -> list[str]:
    found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'").fetchone()
    if found is None:
        return []
    return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid").fetchall()]


def schema_is_current(conn: sqlite3.Connection) -> bool:
    """Whether every migration is recorded. Readers that never migrate (the read-only status line) check this
    first: the report queries assume the latest schema (since m005, pending rows are not in the roll-ups)."""
    try:
        recorded = {row[0] for row in conn.execute("SELECT name FROM _migrations").fetchall()}
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):  # a ledger from before migrations; a locked one is another matter
            return False
        raise
    return all(name in recorded for name in LEDGER.names())


def migrate(db: SqlDatabase) -> list[str]:
    """Apply every migration not yet recorded, all in one write transaction; returns the names applied.

    BEGIN IMMEDIATE takes the write lock before looking, so two processes opening a fresh ledger at once
    (sidecar and `ccgate cost`) cannot both apply the same migration.
    """
    if applied_migrations(db) == LEDGER.names():
        return []
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    applied: list[str] = []
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        done = {row[0] for row in db.execute("SELECT name FROM _migrations").fetchall()}
        for function in LEDGER.steps:
            if function.__name__ in done:
                continue
            function(db)
            db.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (function.__name__, to_iso(utcnow()))
            )
            applied.append(function.__name__)
        db.conn.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    return applied
