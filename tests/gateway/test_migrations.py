"""Schema migrations: applied once under a lock by concurrent instances, failures recorded and rolled back."""

from __future__ import annotations

import asyncio

import pytest

from ccgate.storage.gateway import MigrationError, connect
from ccgate.storage.gateway.migrate import Migration, apply, check, load_migrations


async def test_two_concurrent_appliers_migrate_once(db_url: str) -> None:
    first, second = await connect(db_url), await connect(db_url)
    try:
        assert not (await check(first)).current
        results = await asyncio.gather(apply(first), apply(second), apply(first))
        names = [m.name for m in load_migrations()]
        assert sorted(n for applied in results for n in applied) == sorted(names)
        status = await check(second)
        assert status.current
        assert status.applied == tuple(names)
        rows = await first.fetch("SELECT name, status FROM gateway_migrations")
        assert sorted(rows) == sorted((name, "applied") for name in names)
        assert await apply(second) == []
    finally:
        await first.close()
        await second.close()


async def test_failed_migration_is_rolled_back_and_reported(db_url: str) -> None:
    db = await connect(db_url)
    try:
        good = load_migrations()
        broken = [
            *good,
            Migration("0002_broken", "CREATE TABLE half_done (id TEXT);\nALTER TABLE no_such_table ADD COLUMN x TEXT;"),
        ]
        with pytest.raises(MigrationError, match="0002_broken"):
            await apply(db, broken)
        status = await check(db, broken)
        assert not status.current
        assert [name for name, _ in status.failed] == ["0002_broken"]
        assert status.pending == ()
        # the failed migration left nothing behind; the good one before it stays applied
        tables = await db.fetch(
            "SELECT name FROM sqlite_master WHERE name = 'half_done'"
            if db.backend == "sqlite"
            else "SELECT tablename FROM pg_tables WHERE tablename = 'half_done'"
        )
        assert tables == []
        fixed = [*good, Migration("0002_broken", "CREATE TABLE half_done (id TEXT);")]
        assert await apply(db, fixed) == ["0002_broken"]
        assert (await check(db, fixed)).current
        # a database migrated by a newer release says so
        assert (await check(db, good)).unknown == ("0002_broken",)
    finally:
        await db.close()


def test_migration_files_are_numbered_in_sequence() -> None:
    names = [m.name for m in load_migrations()]
    assert names[0] == "0001_initial"
    numbers = [int(n[:4]) for n in names]
    assert numbers == sorted(set(numbers))
