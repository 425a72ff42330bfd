"""Attacks on the gateway's batched write paths: admissions that go together in one call of
``ccgate_reserve_many_v1`` (PostgreSQL), and settles written with their final ledger rows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from gateway_testing import StoreFactory, acme_dev, admit_key, finished_record, until_waiting

from ccgate.core.records import to_iso
from ccgate.storage.gateway import Admitted, GatewayRow, GatewayStore, Waiting
from ccgate.storage.gateway.admission import ReserveBatcher
from ccgate.storage.gateway.db import DatabaseUnavailableError, PostgresDatabase, Row
from ccgate.storage.gateway.records import KeyIdentity


async def _admit_at(store: GatewayStore, who: KeyIdentity, bound: int, now: datetime) -> object:
    return (await admit_key(store, who, bound, take_rate=False, now=now))[1]


async def test_a_batch_straddling_a_window_edge_holds_no_more_than_the_limit(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose admissions fall on both sides of a budget's window edge reads the budget once per window;
    what an admission holds is held in every window (a hold is not per window), so the batch never admits past
    the limit. (It was added to the one window's figures only: the fourth of four 10,000 holds on 30,000 went
    in.)"""
    if store.db.backend != "postgresql":
        return
    monkeypatch.setattr(ReserveBatcher, "MAX_IN_FLIGHT", 1)
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=30_000, period="1d")
    edge = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    before, after = edge - timedelta(seconds=1), edge + timedelta(seconds=1)
    await _admit_at(store, who, 0, before)  # the budget's definition read and kept
    # the first goes alone, the other three together: after the edge, before it, after it again
    results = await asyncio.gather(*(_admit_at(store, who, 10_000, at) for at in (before, after, before, after)))
    assert [type(result) for result in results] == [Admitted, Admitted, Admitted, Waiting]
    held = await store.db.fetchone("SELECT sum(amount_nanos) FROM reservations")
    assert held is not None and int(held[0]) == 30_000


async def test_a_batch_takes_rate_counters_in_the_order_token_counting_does(
    open_store: StoreFactory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two keys of one team with rate limits in one batch: the batch takes every counter row it will move before
    it moves any, in (level, id) order, the order `add_tokens` takes a key's and then its team's. It took them
    admission by admission (the first key's, the team's, then the second key's), so a token count holding the
    second key's counter and waiting for the team's closed a cycle: PostgreSQL broke it by failing the whole
    batch, and every admission in it answered 503."""
    store = await open_store()
    if store.db.backend != "postgresql":
        return
    import asyncpg

    monkeypatch.setattr(ReserveBatcher, "MAX_IN_FLIGHT", 1)
    dev = await acme_dev(store)
    ops = await store.authenticate_key((await store.create_key(team="core", name="ops")).plaintext)
    assert ops is not None
    limits = {
        name: (await store.set_rate_limit(level=level, target=name, rpm=1_000, tpm=None)).id
        for level, name in (("key", "dev"), ("key", "ops"), ("team", "core"))
    }
    now = datetime.now(UTC)
    minute = to_iso(now.replace(second=0, microsecond=0))

    async def admit(who: KeyIdentity, take_rate: bool) -> object:
        return await admit_key(store, who, 1_000, take_rate=take_rate, now=now)

    for who in (dev, ops):  # the counter rows exist, the definitions are read
        await admit(who, True)
    counting = await asyncpg.connect(db_url)
    try:
        tokens = counting.transaction()
        await tokens.start()
        # add_tokens(ops, core) halfway: the key's counter taken, the team's next
        update = "UPDATE rate_counters SET tokens = tokens + 1 WHERE rate_limit_id = $1 AND minute = $2"
        await counting.execute(update, limits["ops"], minute)
        # the first admission goes alone, the other two (dev, then ops) together
        batch = asyncio.gather(admit(dev, False), admit(dev, True), admit(ops, True), return_exceptions=True)
        await until_waiting(counting, what="the batch (for the ops counter)")
        await counting.execute(update, limits["core"], minute)
        await tokens.commit()
        results = await batch
    finally:
        await counting.close()
    assert [type(result) for result in results] == [tuple, tuple, tuple], results


async def test_a_batch_whose_reply_is_lost_after_it_committed_leaves_no_hold_behind(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: the connection breaks after the batch's transaction committed, before its answer arrives.
    Every admission in it gets the error (none hangs), and the holds it made, which no request knows about, are
    given back: left, they were renewed with the instance's other holds for as long as it lived, and the
    budget stayed reserved."""
    if store.db.backend != "postgresql":
        return
    monkeypatch.setattr(ReserveBatcher, "MAX_IN_FLIGHT", 1)
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=100_000, period="1d")
    now = datetime.now(UTC)
    await _admit_at(store, who, 0, now)  # the definitions read and kept
    await store.db.execute("DELETE FROM reservations")
    fetch = PostgresDatabase.fetch

    async def reply_lost(self: PostgresDatabase, sql: str, params: Sequence[object] = ()) -> list[Row]:
        rows = await fetch(self, sql, params)
        if "ccgate_reserve_many_v1" in sql:
            raise DatabaseUnavailableError("lost the gateway's PostgreSQL: ConnectionResetError")
        return rows

    monkeypatch.setattr(PostgresDatabase, "fetch", reply_lost)
    results = await asyncio.gather(*(_admit_at(store, who, 10_000, now) for _ in range(4)), return_exceptions=True)
    assert [type(result) for result in results] == [DatabaseUnavailableError] * 4
    monkeypatch.setattr(PostgresDatabase, "fetch", fetch)
    for _ in range(500):  # given back in the background
        held = await store.db.fetchone("SELECT count(*) FROM reservations WHERE amount_nanos > 0")
        if held is not None and held[0] == 0:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("holds no request knows about are still there")


async def test_a_rate_limit_deleted_while_a_batch_counts_its_tokens_fails_nothing(
    store: GatewayStore, db_url: str
) -> None:
    """PostgreSQL: a batch's rows and settles are committed, then its tokens are counted toward the key's rate
    limit, which an admin deletes meanwhile: the count is refused (its counter row's limit is gone). The rows
    are written, so the batch must not fail (its writer would write, and count, them all again)."""
    if store.db.backend != "postgresql":
        return
    import asyncpg

    who = await acme_dev(store)
    limit = await store.set_rate_limit(level="key", target="dev", rpm=None, tpm=1_000_000)
    record = finished_record("r1", 1_000)
    row = GatewayRow(record, who.key.id, who.team.id, who.team.customer_id, instance_id="gw-1")
    other = await asyncpg.connect(db_url)
    try:
        deleting = other.transaction()
        await deleting.start()
        await other.execute("DELETE FROM rate_counters WHERE rate_limit_id = $1", limit.id)
        await other.execute("DELETE FROM rate_limits WHERE id = $1", limit.id)
        batch = asyncio.ensure_future(store.write_requests([row], {(who.key.id, who.team.id): 15}))
        await until_waiting(other, what="the token count (for the rate limit's row)")
        await deleting.commit()
        assert await batch == []
    finally:
        await other.close()
    found = await store.db.fetchone("SELECT status FROM requests WHERE id = 'r1'")
    assert found is not None and found[0] == "ok"
