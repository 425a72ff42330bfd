"""The database seam itself: placeholders, script splitting, and SQLite transactions under cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ccgate.storage.gateway import SQLiteDatabase, connect
from ccgate.storage.gateway.db import ConstraintError, SyncConnection, split_script, to_numbered


def test_placeholders_are_numbered_outside_quotes() -> None:
    assert to_numbered("SELECT ? , '?', \"a?\" FROM t WHERE x = ? AND y = '??'") == (
        "SELECT $1 , '?', \"a?\" FROM t WHERE x = $2 AND y = '??'"
    )


def test_scripts_split_on_complete_statements() -> None:
    script = "-- a comment; with a semicolon\nCREATE TABLE a (x TEXT DEFAULT ';');\n\nCREATE INDEX i ON a (x);\n"
    assert [s.strip() for s in split_script(script)] == [
        "-- a comment; with a semicolon\nCREATE TABLE a (x TEXT DEFAULT ';');",
        "CREATE INDEX i ON a (x);",
    ]


async def test_a_commit_cancelled_before_it_ran_still_ends_the_transaction(tmp_path: Path) -> None:
    db = await connect(f"sqlite://{tmp_path / 'seam.db'}")
    assert isinstance(db, SQLiteDatabase)
    try:
        await db.execute("CREATE TABLE t (x INTEGER)")
        gate = threading.Event()
        reached_commit = asyncio.Event()

        async def body() -> None:
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO t VALUES (1)")
                # keep the database thread busy, so the COMMIT queues behind this and has not started when the
                # caller is cancelled
                db._executor.submit(gate.wait, 30)
                reached_commit.set()

        task = asyncio.create_task(body())
        await reached_commit.wait()
        await asyncio.sleep(0)  # the task submits its COMMIT and awaits it
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with db.transaction() as conn:  # would fail: "cannot start a transaction within a transaction"
            assert await conn.fetch("SELECT count(*) FROM t") == [(1,)]
    finally:
        gate.set()
        await db.close()


async def test_postgresql_without_its_driver_is_one_line_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`pip install .` leaves out asyncpg (the `postgres` extra): say how to get it instead of an ImportError."""
    import sys

    from ccgate.errors import UserInputError

    monkeypatch.setitem(sys.modules, "asyncpg", None)  # what an absent package looks like to `import`
    with pytest.raises(UserInputError, match="asyncpg") as caught:
        await connect("postgresql://nobody@127.0.0.1:1/none")
    assert "ccgate[postgres]" in (caught.value.hint or "")


async def _seam_db(tmp_path: Path) -> SQLiteDatabase:
    db = await connect(f"sqlite://{tmp_path / 'group.db'}")
    assert isinstance(db, SQLiteDatabase)
    await db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    await db.execute(
        "CREATE TABLE child (x INTEGER, parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    await db.execute("INSERT INTO parent VALUES (1)")
    return db


def _insert(value: int, parent: int = 1, fail: bool = False) -> Callable[[SyncConnection], int]:
    def job(conn: SyncConnection) -> int:
        conn.execute("INSERT INTO child VALUES (?, ?)", (value, parent))
        if fail:
            raise ValueError("this job fails after its insert")
        return value

    return job


async def test_inline_jobs_of_one_turn_of_the_loop_share_one_commit(tmp_path: Path) -> None:
    db = await _seam_db(tmp_path)
    try:
        assert db._inline is not None
        bounds: list[str] = []
        db._inline.set_trace_callback(lambda sql: bounds.append(sql.split()[0]))
        assert await asyncio.gather(*(db.run_transaction(_insert(i), inline=True) for i in range(5))) == [0, 1, 2, 3, 4]
        assert bounds.count("BEGIN") == 1 and bounds.count("COMMIT") == 1 and bounds.count("SAVEPOINT") == 5
        assert await db.fetch("SELECT count(*) FROM child") == [(5,)]
    finally:
        await db.close()


async def test_a_failing_job_in_a_shared_commit_is_undone_alone(tmp_path: Path) -> None:
    db = await _seam_db(tmp_path)
    try:
        results = await asyncio.gather(
            db.run_transaction(_insert(1), inline=True),
            db.run_transaction(_insert(2, fail=True), inline=True),
            db.run_transaction(_insert(3), inline=True),
            return_exceptions=True,
        )
        assert results[0] == 1 and results[2] == 3 and isinstance(results[1], ValueError)
        assert await db.fetch("SELECT x FROM child ORDER BY x") == [(1,), (3,)]
    finally:
        await db.close()


async def test_a_shared_commit_that_fails_fails_every_job_in_it_and_keeps_none(tmp_path: Path) -> None:
    """The commit is what makes a job's work last: no caller hears "done" before it, and when it fails (here a
    deferred foreign key; a full disk alike) every job of the group hears the error and nothing is stored."""
    db = await _seam_db(tmp_path)
    try:
        results = await asyncio.gather(
            db.run_transaction(_insert(1), inline=True),
            db.run_transaction(_insert(2, parent=99), inline=True),  # refused only at COMMIT
            return_exceptions=True,
        )
        assert all(isinstance(result, ConstraintError) for result in results), results
        assert await db.fetch("SELECT count(*) FROM child") == [(0,)]
        assert await db.run_transaction(_insert(4), inline=True) == 4  # the connection is usable again
        assert await db.fetch("SELECT x FROM child") == [(4,)]
    finally:
        await db.close()
