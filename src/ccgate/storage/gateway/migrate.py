"""The gateway schema's numbered plain-SQL migrations: which are pending or failed, and applying them under a lock.

Files live in ``migrations/NNNN_name.sql`` beside this module and run unchanged on SQLite and PostgreSQL. Each
is applied in its own transaction together with its record in ``gateway_migrations``; the whole run holds the
migration lock (PostgreSQL advisory lock, SQLite's write lock), so two instances starting at once do not both
migrate: the second finds the work done. A failure rolls the migration back and is recorded as ``failed`` with
its error, so ``migrate --check`` and a refusing ``serve`` can say which one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from ccgate.core.records import to_iso, utcnow
from ccgate.errors import CcgateError
from ccgate.storage.gateway.db import Connection, Database

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_RECORDS = """
CREATE TABLE IF NOT EXISTS gateway_migrations (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    error TEXT
)
"""


class MigrationError(CcgateError):
    """A migration failed (and was rolled back), or the database is newer than this release."""

    status = 503
    error_type = "api_error"
    should_retry = False


@dataclass(frozen=True, slots=True)
class Migration:
    name: str  # the file name without `.sql`, e.g. `0001_initial`
    sql: str


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """What `migrate --check` reports; `current` is what `serve` requires."""

    applied: tuple[str, ...]
    pending: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]  # (name, error)
    unknown: tuple[str, ...]  # applied by a newer release

    @property
    def current(self) -> bool:
        return not self.pending and not self.failed


def load_migrations() -> list[Migration]:
    """The packaged migration files in order; names must be `NNNN_lowercase.sql`, the first 0001, no number
    twice. A number may be missing (branches reserve theirs); each migration stands on its own, so one that
    arrives later than a higher number still applies as pending."""
    folder = resources.files("ccgate.storage.gateway") / "migrations"
    found = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    migrations: list[Migration] = []
    previous = 0
    for file_name in found:
        match = _NAME.match(file_name)
        number = int(match.group(1)) if match else 0
        if match is None or number <= previous or (previous == 0 and number != 1):
            raise MigrationError(f"migration file {file_name!r} is misnamed or out of sequence")
        previous = number
        migrations.append(Migration(file_name[:-4], (folder / file_name).read_text(encoding="utf-8")))
    return migrations


async def _records(conn: Connection | Database) -> dict[str, tuple[str, str | None]]:
    rows = await conn.fetch("SELECT name, status, error FROM gateway_migrations")
    return {str(name): (str(status), error) for name, status, error in rows}


async def check(db: Database, migrations: list[Migration] | None = None) -> MigrationStatus:
    """Pending, failed and unknown migrations, without changing anything."""
    wanted = migrations if migrations is not None else load_migrations()
    async with db.transaction() as conn:
        await db.lock_migrations(conn)  # so creating the record table never races an applier's
        await conn.execute(_RECORDS)
        records = await _records(conn)
    known = {m.name for m in wanted}
    return MigrationStatus(
        applied=tuple(m.name for m in wanted if records.get(m.name, ("",))[0] == "applied"),
        pending=tuple(m.name for m in wanted if m.name not in records),
        failed=tuple((m.name, records[m.name][1] or "") for m in wanted if records.get(m.name, ("",))[0] == "failed"),
        unknown=tuple(sorted(name for name in records if name not in known)),
    )


async def apply(db: Database, migrations: list[Migration] | None = None) -> list[str]:
    """Apply every pending (or previously failed) migration in order, under the migration lock.

    Returns the names applied by this call (empty when another instance got there first). On a failure the
    migration is rolled back, recorded as failed, and `MigrationError` says which one and why.
    """
    wanted = migrations if migrations is not None else load_migrations()
    applied: list[str] = []
    failure: tuple[str, str] | None = None
    async with db.transaction() as conn:
        await db.lock_migrations(conn)
        await conn.execute(_RECORDS)
    for migration in wanted:
        try:
            async with db.transaction() as conn:
                await db.lock_migrations(conn)
                if (await _records(conn)).get(migration.name, ("",))[0] == "applied":
                    continue
                await db.run_script(conn, migration.sql)
                await conn.execute("DELETE FROM gateway_migrations WHERE name = ?", (migration.name,))
                await conn.execute(
                    "INSERT INTO gateway_migrations (name, status, at, error) VALUES (?, 'applied', ?, NULL)",
                    (migration.name, to_iso(utcnow())),
                )
            applied.append(migration.name)
        except MigrationError:
            raise
        except Exception as error:
            failure = (migration.name, f"{type(error).__name__}: {error}"[:500])
            break
    if failure is not None:
        await _record_failure(db, *failure)
        raise MigrationError(
            f"migration {failure[0]} failed and was rolled back: {failure[1]}",
            hint="fix the cause, then run `ccgate gateway migrate` again",
        )
    return applied


async def _record_failure(db: Database, name: str, error: str) -> None:
    async with db.transaction() as conn:
        await db.lock_migrations(conn)
        await conn.execute("DELETE FROM gateway_migrations WHERE name = ?", (name,))
        await conn.execute(
            "INSERT INTO gateway_migrations (name, status, at, error) VALUES (?, 'failed', ?, ?)",
            (name, to_iso(utcnow()), error),
        )
