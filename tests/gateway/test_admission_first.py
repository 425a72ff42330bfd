"""On SQLite a request's admission goes ahead of queued settles and ledger writes (they run after replies, the
admission before one): jobs are counted in the order the database thread ran them, never timed. Ordinary jobs
are delayed, never starved, lost or doubled."""

from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta

import pytest
from gateway_testing import acme_dev

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.storage.gateway import Admitted, GatewayRow, GatewayStore
from ccgate.storage.gateway.db import (
    INLINE_CHECKPOINT_EVERY,
    RESTART_EVERY,
    URGENT_RUN,
    DatabaseThread,
    SQLiteDatabase,
)
from ccgate.storage.gateway.records import KeyIdentity

TTL = timedelta(minutes=5)
NOW = datetime.now(UTC)


async def _org(store: GatewayStore) -> KeyIdentity:
    identity = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    await store.create_budget(level="key", target="dev", limit_nanos=10**12, period="1d")
    await store.set_rate_limit(level="key", target="dev", rpm=10_000, tpm=None)
    return identity


def _row(who: KeyIdentity, row_id: str) -> GatewayRow:
    record = RequestRecord(
        id=row_id,
        started_at=NOW,
        ended_at=NOW + timedelta(seconds=1),
        requested_model="claude-sonnet-4-5",
        provider="anthropic",
        status=RequestStatus.OK,
        usage=Usage(input_tokens=100, output_tokens=100),
        cost=Cost(1_000, PriceQuality.PRICED),
    )
    return GatewayRow(record, who.key.id, who.team.id, who.customer.id if who.customer else None)


async def _admitted(store: GatewayStore, who: KeyIdentity, *, take_rate: bool = True) -> Admitted:
    _, result = await store.admit(
        key_id=who.key.id,
        team_id=who.team.id,
        customer_id=who.customer.id if who.customer else None,
        provider_id=None,
        bound_nanos=5_000,
        instance_id="i1",
        ttl=TTL,
        take_rate=take_rate,
    )
    assert isinstance(result, Admitted)
    return result


async def _transactions(db: SQLiteDatabase, where: str = "thread") -> list[list[str]]:
    """From now on, every statement one of the database's connections runs, grouped by job: the database
    thread's ("thread", a job is a transaction) or the event loop's own ("inline")."""
    groups: list[list[str]] = []

    # inline jobs of one turn of the loop share a transaction, each behind its own savepoint: a job is one
    opens = "BEGIN" if where == "thread" else "SAVEPOINT"

    def trace(statement: str) -> None:
        if statement.startswith(opens):
            if not groups or groups[-1]:  # a BEGIN that found the lock taken ran nothing
                groups.append([])
        elif groups:
            groups[-1].append(statement)

    if where == "thread":
        await db._call(lambda: db._c().set_trace_callback(trace))
    else:
        assert db._inline is not None
        db._inline.set_trace_callback(trace)
    return groups


async def _blocked(db: SQLiteDatabase, *, hold_lock: bool = True) -> tuple[threading.Event, asyncio.Future[None]]:
    """A job that keeps the database thread busy until the event is set: inside a transaction (holding SQLite's
    write lock) or, without `hold_lock`, outside any."""
    go, running = threading.Event(), threading.Event()

    def wait(_: object = None) -> None:
        running.set()
        go.wait(timeout=60)

    task: asyncio.Future[None] = (
        asyncio.ensure_future(db.run_transaction(wait)) if hold_lock else asyncio.wrap_future(db._executor.submit(wait))
    )
    while not running.is_set():
        await asyncio.sleep(0.001)
    return go, task


async def _queued(count: int) -> None:
    """Let every task created so far reach its wait (each needs a few turns of the loop)."""
    for _ in range(count * 4 + 10):
        await asyncio.sleep(0)


def _ran(groups: list[list[str]], prefix: str) -> int:
    return sum(any(s.startswith(prefix) for s in group) for group in groups)


async def test_admissions_settles_and_ledger_writes_run_on_the_event_loop_while_the_thread_is_busy(
    store: GatewayStore,
) -> None:
    """They need SQLite's write lock, not the database thread: with the thread busy on something else (a long
    dashboard read, say) they still run, on the loop's own connection."""
    if not isinstance(store.db, SQLiteDatabase):
        pytest.skip("SQLite's inline transactions")
    who = await _org(store)
    inline = await _transactions(store.db, "inline")
    go, blocker = await _blocked(store.db, hold_lock=False)
    try:
        hold = await asyncio.wait_for(_admitted(store, who), 30)
        await asyncio.wait_for(store.settle(hold.reservation, 1_000), 30)
        await asyncio.wait_for(store.write_requests([_row(who, "r1")]), 30)
        assert not blocker.done()
    finally:
        go.set()
        await blocker
    assert [
        _ran(inline, p) for p in ("INSERT INTO reservations", "DELETE FROM reservations", "INSERT INTO requests")
    ] == [
        1,
        1,
        1,
    ]


@pytest.mark.parametrize("writes", [1, 6])
async def test_jobs_kept_out_by_the_threads_transaction_run_after_it_once_each_in_the_order_they_asked(
    store: GatewayStore, writes: int
) -> None:
    """While a job on the thread holds the write lock, inline jobs wait for that job (not in the thread's queue,
    where they would hold the lock longer and keep the next ones out), then run on the loop: nothing lost or
    doubled."""
    if not isinstance(store.db, SQLiteDatabase):
        pytest.skip("SQLite's inline transactions")
    who = await _org(store)
    held = [await _admitted(store, who) for _ in range(writes)]
    inline = await _transactions(store.db, "inline")
    thread = await _transactions(store.db, "thread")
    go, blocker = await _blocked(store.db)
    later: list[asyncio.Task[object]] = [asyncio.create_task(store.settle(hold.reservation, 1_000)) for hold in held]
    later += [asyncio.create_task(store.write_requests([_row(who, f"r{i}")])) for i in range(writes)]
    await _queued(len(later))
    admission = asyncio.create_task(_admitted(store, who))
    await _queued(1)
    assert not any(task.done() for task in [*later, admission])
    go.set()
    fresh = await admission
    await blocker
    await asyncio.gather(*later)
    assert thread[1:] == []  # nothing went to the thread after the blocker
    assert len(inline) == 1 + 2 * writes
    assert _ran(inline[:writes], "DELETE FROM reservations") == writes  # in the order they asked
    assert _ran(inline[writes : 2 * writes], "INSERT INTO requests") == writes
    assert any(s.startswith("INSERT INTO reservations") and fresh.reservation.id in s for s in inline[-1])
    (spent,) = await store.db.fetch("SELECT sum(amount_nanos) FROM reservations")
    assert spent[0] == 5_000
    views = await store.budget_views(key_id=who.key.id, team_id=who.team.id, customer_id=None)
    assert {v.state.spent_nanos for v in views} == {1_000 * writes}


async def test_with_another_process_holding_the_write_lock_every_job_waits_for_it_and_runs_once(
    store: GatewayStore,
) -> None:
    """Another instance on the same file holds SQLite's write lock: the first job goes to the database thread,
    which waits for the lock with SQLite's busy timeout (the event loop never does); the rest wait for that job,
    then run. None fails as "database is locked", none runs twice."""
    if not isinstance(store.db, SQLiteDatabase):
        pytest.skip("SQLite's write lock")
    import sqlite3

    who = await _org(store)
    held = [await _admitted(store, who) for _ in range(4)]
    thread = await _transactions(store.db, "thread")
    inline = await _transactions(store.db, "inline")
    other = sqlite3.connect(store.db.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        later: list[asyncio.Task[object]] = [
            asyncio.create_task(store.settle(hold.reservation, 1_000)) for hold in held
        ]
        later += [asyncio.create_task(store.write_requests([_row(who, f"w{i}")])) for i in range(2)]
        later.append(asyncio.create_task(_admitted(store, who)))
        await _queued(len(later))
        await asyncio.sleep(0.2)  # the thread is in SQLite's busy wait by now (no assertion depends on it)
        assert not any(task.done() for task in later)
    finally:
        other.execute("COMMIT")
        other.close()
    await asyncio.gather(*later)
    both = [*thread, *inline]
    assert _ran(thread, "") >= 1
    assert [
        _ran(both, p) for p in ("DELETE FROM reservations", "INSERT INTO requests", "INSERT INTO reservations")
    ] == [
        4,
        2,
        1,
    ]
    views = await store.budget_views(key_id=who.key.id, team_id=who.team.id, customer_id=None)
    assert {v.state.spent_nanos for v in views} == {4_000}


async def test_a_waiting_requests_retry_runs_after_the_settles_it_waits_for(store: GatewayStore) -> None:
    """`reserve` (a waiting request's next attempt) asked after a settle runs after it, never before."""
    if not isinstance(store.db, SQLiteDatabase):
        pytest.skip("the SQLite thread's job order")
    who = await _org(store)
    hold = await _admitted(store, who)
    inline = await _transactions(store.db, "inline")
    go, blocker = await _blocked(store.db)
    settling = asyncio.create_task(store.settle(hold.reservation, 1_000))
    await _queued(1)
    retry = asyncio.create_task(
        store.reserve(
            key_id=who.key.id,
            team_id=who.team.id,
            customer_id=None,
            provider_id=None,
            bound_nanos=5_000,
            instance_id="i1",
            ttl=TTL,
        )
    )
    await _queued(1)
    go.set()
    await asyncio.gather(blocker, settling, retry)
    assert any("DELETE FROM reservations" in s for s in inline[0])
    assert any(s.startswith("INSERT INTO reservations") for s in inline[1])


def _busy(thread: DatabaseThread) -> tuple[threading.Event, Future[None]]:
    """A job running on the thread until the event is set (later jobs queue behind it)."""
    running, go = threading.Event(), threading.Event()

    def block() -> None:
        running.set()
        go.wait(timeout=60)

    job = thread.submit(block)
    assert running.wait(timeout=60)
    return go, job


def _order(kinds: str) -> list[str]:
    """Queue one job per letter (u: urgent, o: ordinary) behind a running one; the order the thread ran them."""
    thread = DatabaseThread("test-db")
    got: list[str] = []
    go, first = _busy(thread)
    jobs = [
        (thread.submit_urgent if kind == "u" else thread.submit)(functools.partial(got.append, f"{kind}{i}"))
        for i, kind in enumerate(kinds)
    ]
    go.set()
    for job in [first, *jobs]:
        job.result(timeout=60)
    thread.shutdown()
    return got


def test_urgent_jobs_go_first_and_ordinary_ones_still_get_their_turn() -> None:
    assert _order("oouo") == ["u2", "o0", "o1", "o3"]
    many = _order("o" + "u" * (URGENT_RUN + 3))
    assert many.index("o0") == URGENT_RUN  # after a full run of urgent ones, never later
    assert len(many) == URGENT_RUN + 4
    assert _order("uuoo") == ["u0", "u1", "o2", "o3"]  # each queue first come first served


def test_a_cancelled_job_never_runs_and_the_rest_do() -> None:
    thread = DatabaseThread("test-db")
    ran: list[str] = []
    go, _ = _busy(thread)
    gone = thread.submit_urgent(lambda: ran.append("gone"))
    after = thread.submit(lambda: ran.append("after"))
    assert gone.cancel()
    go.set()
    after.result(timeout=60)
    thread.shutdown()
    assert ran == ["after"]


def test_a_shut_down_thread_runs_what_was_queued_and_refuses_more() -> None:
    thread = DatabaseThread("test-db")
    go = threading.Event()
    thread.submit(go.wait, 60)
    queued = thread.submit(lambda: "ran")
    failing = thread.submit(lambda: 1 // 0)
    go.set()
    thread.shutdown()
    assert queued.result(timeout=60) == "ran"
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=60)
    with pytest.raises(RuntimeError):
        thread.submit(lambda: None)


async def test_jobs_never_land_inside_an_open_multi_job_transaction(store: GatewayStore) -> None:
    """`transaction()` spans several jobs on the thread: one-job transactions and plain statements that arrive
    meanwhile run after its COMMIT, not between its statements (BEGIN inside a transaction would fail)."""
    if not isinstance(store.db, SQLiteDatabase):
        pytest.skip("the SQLite thread's job order")
    db = store.db
    who = await _org(store)
    trips = await _transactions(db)
    others: list[asyncio.Task[object]] = []
    async with db.transaction() as conn:
        await conn.execute("UPDATE teams SET name = name")
        others.append(asyncio.create_task(_admitted(store, who)))
        others.append(asyncio.create_task(store.write_requests([_row(who, "late")])))
        others.append(asyncio.create_task(db.fetch("SELECT count(*) FROM requests")))
        await _queued(len(others))
        await conn.execute("UPDATE teams SET name = name")
    await asyncio.gather(*others)
    assert trips[0] == ["UPDATE teams SET name = name", "UPDATE teams SET name = name", "COMMIT"]
    assert any(s.startswith("INSERT INTO reservations") for s in trips[1])


async def test_the_wal_stays_bounded_under_a_steady_stream_of_inline_commits(store: GatewayStore) -> None:
    """Inline transactions never checkpoint (an fsync on the event loop); the thread does, every
    `INLINE_CHECKPOINT_EVERY` of them, and every `RESTART_EVERY`th of those lets the log restart while commits
    go on (passive checkpoints alone never caught up: the WAL grew by hundreds of MB a minute)."""
    if not isinstance(store.db, SQLiteDatabase):
        pytest.skip("SQLite's write-ahead log")
    who = await _org(store)
    wal = store.db.path.with_name(store.db.path.name + "-wal")
    cycle = RESTART_EVERY // 2  # rounds between two restarts: a round is two commits per iteration
    sizes: list[int] = []
    for _ in range(3 * cycle):
        for _ in range(INLINE_CHECKPOINT_EVERY):
            hold = await _admitted(store, who, take_rate=False)
            await store.settle(hold.reservation, 1)
            await asyncio.sleep(0)  # inline jobs never suspend: let other tasks (the checkpoint) run, as a server does
            # a runaway log fails here, not after it filled the disk (once, in a full suite run, it reached 46 GB)
            assert wal.stat().st_size < 256 * 2**20, sizes
        sizes.append(wal.stat().st_size)
    # the log restarts: its file keeps the size of the longest stretch between two restarts, it does not grow
    # with every stretch (without restarts the last size would be about three times the first cycle's)
    assert max(sizes[2 * cycle :]) <= 1.5 * max(sizes[: cycle + 1]), sizes
