"""The database seam itself: placeholders, script splitting, and SQLite transactions under cancellation."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from ccgate.storage.gateway import SQLiteDatabase, connect
from ccgate.storage.gateway.db import split_script, to_numbered


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
