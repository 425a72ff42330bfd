"""On SQLite a request's admission goes ahead of queued settles and ledger writes (they run after replies, the
admission before one): jobs are counted in the order the database thread ran them, never timed. Ordinary jobs
are delayed, never starved, lost or doubled."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.storage.gateway import Admitted, GatewayRow, GatewayStore
from ccgate.storage.gateway.db import URGENT_RUN, PriorityLock, SQLiteDatabase
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


async def _order(lock: PriorityLock, kinds: str) -> list[str]:
    """Queue one waiter per letter (u: urgent, o: ordinary) behind a holder; the order they got the lock in."""
    got: list[str] = []
    await lock.acquire()

    async def one(name: str) -> None:
        async with lock.hold(urgent=name.startswith("u")):
            got.append(name)

    tasks = [asyncio.create_task(one(f"{kind}{i}")) for i, kind in enumerate(kinds)]
    await _queued(len(tasks))
    lock.release()
    await asyncio.gather(*tasks)
    assert not lock.locked()
    return got


async def test_urgent_waiters_go_first_and_ordinary_ones_still_get_their_turn() -> None:
    assert await _order(PriorityLock(), "oouo") == ["u2", "o0", "o1", "o3"]
    many = await _order(PriorityLock(), "o" + "u" * (URGENT_RUN + 3))
    assert many.index("o0") == URGENT_RUN  # after a full run of urgent ones, never later
    assert len(many) == URGENT_RUN + 4


async def test_a_cancelled_waiter_neither_keeps_nor_loses_the_lock() -> None:
    lock = PriorityLock()
    await lock.acquire()
    gone = asyncio.create_task(lock.acquire(urgent=True))
    after = asyncio.create_task(lock.acquire())
    await _queued(2)
    gone.cancel()
    await _queued(1)
    lock.release()
    await after
    assert lock.locked()
    lock.release()
    assert not lock.locked()
    # handed the lock and cancelled before it woke: it passes the lock on
    await lock.acquire()
    handed = asyncio.create_task(lock.acquire(urgent=True))
    next_one = asyncio.create_task(lock.acquire())
    await _queued(2)
    lock.release()
    handed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handed
    await next_one
    lock.release()
    assert not lock.locked()
