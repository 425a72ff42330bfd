"""On SQLite a request's admission goes ahead of queued settles and ledger writes (they run after replies, the
admission before one): jobs are counted in the order the database thread ran them, never timed. Ordinary jobs
are delayed, never starved, lost or doubled."""

from __future__ import annotations

import asyncio
import functools
import threading
from datetime import UTC, datetime, timedelta

import pytest

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.storage.gateway import Admitted, GatewayRow, GatewayStore
from ccgate.storage.gateway.db import URGENT_RUN, DatabaseThread, SQLiteDatabase
from ccgate.storage.gateway.records import KeyIdentity

TTL = timedelta(minutes=5)
NOW = datetime.now(UTC)


async def _org(store: GatewayStore) -> KeyIdentity:
    await store.create_customer("acme")
    await store.create_team("core", customer="acme")
    created = await store.create_key(team="core", name="dev")
    identity = await store.authenticate_key(created.plaintext)
    assert identity is not None
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


async def _transactions(db: SQLiteDatabase) -> list[list[str]]:
    """From now on, every statement the connection runs, grouped by transaction (BEGIN IMMEDIATE ... COMMIT)."""
    groups: list[list[str]] = []

    def trace(statement: str) -> None:  # on the database thread
        if statement.startswith("BEGIN"):
            groups.append([])
        elif groups:
            groups[-1].append(statement)

    await db._call(lambda: db._c().set_trace_callback(trace))
    return groups


async def _blocked(db: SQLiteDatabase) -> tuple[threading.Event, asyncio.Task[None]]:
    """A job that holds the database thread (and its lock) until the event is set."""
    go, running = threading.Event(), threading.Event()

    def wait(_: object) -> None:
        running.set()
        go.wait(timeout=60)

    task = asyncio.create_task(db.run_transaction(wait))
    while not running.is_set():
        await asyncio.sleep(0.001)
    return go, task


async def _queued(count: int) -> None:
    """Let every task created so far reach its wait for the lock (each needs a few turns of the loop)."""
    for _ in range(count * 4 + 10):
        await asyncio.sleep(0)


@pytest.mark.parametrize("writes", [1, 6])
async def test_an_admission_is_not_queued_behind_settles_and_ledger_writes(store: GatewayStore, writes: int) -> None:
    if not isinstance(store.db, SQLiteDatabase):
        pytest.skip("the SQLite thread's job order (PostgreSQL runs transactions side by side)")
    who = await _org(store)
    held = [await _admitted(store, who) for _ in range(writes)]
    trips = await _transactions(store.db)
    go, blocker = await _blocked(store.db)
    later: list[asyncio.Task[object]] = [asyncio.create_task(store.settle(hold.reservation, 1_000)) for hold in held]
    later += [asyncio.create_task(store.write_requests([_row(who, f"r{i}")])) for i in range(writes)]
    await _queued(len(later))
    admission = asyncio.create_task(_admitted(store, who))
    await _queued(1)
    go.set()
    fresh = await admission
    await blocker
    await asyncio.gather(*later)
    jobs = trips[1:]  # after the blocker's
    assert len(jobs) == 1 + 2 * writes
    assert any(s.startswith("INSERT INTO reservations") and fresh.reservation.id in s for s in jobs[0])
    assert sum(any("DELETE FROM reservations" in s for s in job) for job in jobs[1:]) == writes
    assert sum(any(s.startswith("INSERT INTO requests") for s in job) for job in jobs[1:]) == writes
    # nothing lost or doubled: every settle charged once, the fresh hold still held
    (spent,) = await store.db.fetch("SELECT sum(amount_nanos) FROM reservations")
    assert spent[0] == 5_000
    views = await store.budget_views(key_id=who.key.id, team_id=who.team.id, customer_id=None)
    assert {v.state.spent_nanos for v in views} == {1_000 * writes}


async def test_a_waiting_requests_retry_queues_behind_the_settles_it_waits_for(store: GatewayStore) -> None:
    """`reserve` (a waiting request's next attempt) is not urgent: the settle queued before it runs first."""
    if not isinstance(store.db, SQLiteDatabase):
        pytest.skip("the SQLite thread's job order")
    who = await _org(store)
    hold = await _admitted(store, who)
    trips = await _transactions(store.db)
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
    assert any("DELETE FROM reservations" in s for s in trips[1])
    assert any(s.startswith("INSERT INTO reservations") for s in trips[2])


def _order(kinds: str) -> list[str]:
    """Queue one job per letter (u: urgent, o: ordinary) behind a running one; the order the thread ran them."""
    thread = DatabaseThread("test-db")
    got: list[str] = []
    running, go = threading.Event(), threading.Event()

    def block() -> None:
        running.set()
        go.wait(timeout=60)

    first = thread.submit(block)
    assert running.wait(timeout=60)
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
    running, go = threading.Event(), threading.Event()
    thread.submit(lambda: (running.set(), go.wait(timeout=60)))
    assert running.wait(timeout=60)
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
