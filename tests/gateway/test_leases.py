"""Budget leases (`gateway.leases`): a busy key's requests admitted from memory while its budgets are far from
their limits -- with budgets and rate limits exactly as exact as when each request is admitted on its own."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from gateway_testing import StoreFactory, acme_dev, budget_state, finished_record, key_meta, one_rate_minute

from ccgate.errors import BudgetExceededError, RateLimitedError
from ccgate.gateway import admission as gateway_admission
from ccgate.gateway.admission import GatewayAdmission, Hold
from ccgate.gateway.ledger import GatewayLedger, Owner
from ccgate.storage.gateway import GatewayStore
from ccgate.storage.gateway.records import KeyIdentity

TTL = timedelta(minutes=5)
MODEL = "claude-sonnet-4-5"


@pytest.fixture(autouse=True)
def short_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_admission, "LEASE_LIFE_S", 0.3)


def _count_admissions(store: GatewayStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bound each round trip to the database asked for."""
    asked: list[int] = []
    real = store.admit

    async def counted(**kwargs: Any) -> Any:
        asked.append(kwargs["bound_nanos"])
        return await real(**kwargs)

    monkeypatch.setattr(store, "admit", counted)
    return asked


async def _settled(store: GatewayStore, who: KeyIdentity, expected: list[tuple[int, int]]) -> None:
    """Poll (about 10 s) until the budgets read `expected`: leases end and settles are written in the background."""
    state: list[tuple[int, int]] = []
    for _ in range(200):
        state = await budget_state(store, who)
        if state == expected and not await store.db.fetch("SELECT id FROM reservations"):
            return
        await asyncio.sleep(0.05)
    rows = await store.db.fetch("SELECT id, amount_nanos FROM reservations")
    raise AssertionError(f"budgets {state} (reservations {rows}), expected {expected} and none")


async def test_far_from_its_limits_a_key_is_admitted_from_a_lease(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    asked = _count_admissions(store, monkeypatch)
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, rate_limited=frozenset)
    holds = [await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL) for _ in range(40)]
    # the first learns the room; the second takes a lease for 64 such requests, which admits the other 38
    assert asked == [10_000, 10_000 * 65]
    assert await budget_state(store, who) == [(0, 10_000 * 66)]
    for index, hold in enumerate(holds):
        admission.settle(hold, 1_000 + index)
    # the lease ends: its unused part goes back, then its row once its requests' spend is written
    await _settled(store, who, [(sum(1_000 + index for index in range(40)), 0)])
    await admission.close()


async def test_two_instances_spend_a_budget_to_the_last_nano_with_leases(store: GatewayStore) -> None:
    """Leases while the room is large, each request on its own near the limit; requests that only leases or holds
    keep out wait for them rather than fail: the budget is spent exactly, never past it."""
    who = await acme_dev(store)
    bound, limit = 100, 100_000
    await store.create_budget(level="team", target="core", limit_nanos=limit, period="1d")
    instances = [
        GatewayAdmission(store, f"gw-{n}", ttl=TTL, wait_timeout=5.0, max_wait=30.0, rate_limited=frozenset)
        for n in (1, 2)
    ]
    admitted = [0, 0]
    refused = [0, 0]

    async def worker(n: int) -> None:
        admission = instances[n]
        while True:
            try:
                hold = await admission.admit(key_meta(who), reserve_nanos=bound, model=MODEL)
            except BudgetExceededError:
                refused[n] += 1
                return
            admitted[n] += 1
            await asyncio.sleep(0)
            admission.settle(hold, bound)
            await asyncio.sleep(0.005)  # settles get written meanwhile, within a lease's life

    await asyncio.wait_for(asyncio.gather(*(worker(n % 2) for n in range(16))), 120)
    await _settled(store, who, [(limit, 0)])
    assert sum(admitted) == limit // bound
    assert all(admitted) and sum(refused) == 16
    for admission in instances:
        await admission.close()


async def test_a_budget_change_ends_this_instances_leases_at_once(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    who = await acme_dev(store)
    budget = await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, rate_limited=frozenset)
    monkeypatch.setattr(gateway_admission, "LEASE_LIFE_S", 60.0)
    first = await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL)
    leased = await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL)
    assert leased.lease is not None
    admission.settle(first, 5_000)
    admission.settle(leased, 5_000)
    for _ in range(100):
        if (await budget_state(store, who))[0][0] == 10_000:
            break
        await asyncio.sleep(0.05)
    await store.update_budget(budget.id, limit_nanos=10_000)
    # the lease still has room for 63 such requests, but the budget is spent now
    with pytest.raises(BudgetExceededError):
        await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL)
    await admission.close()


async def test_a_lease_counts_request_slots_and_gives_back_the_unused(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    await store.set_rate_limit(level="team", target="core", rpm=100_000, tpm=None)
    one_rate_minute(monkeypatch)
    asked = _count_admissions(store, monkeypatch)
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, rate_limited=lambda: frozenset({who.team.id}))
    holds = [await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL) for _ in range(2)]
    for _ in range(100):  # the lease's slots are counted in the background
        if admission._leases and next(iter(admission._leases.values())).rated:
            break
        await asyncio.sleep(0.01)
    holds += [await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL) for _ in range(10)]
    assert len(asked) == 2
    for hold in holds:
        admission.settle(hold, 1_000)
    await _settled(store, who, [(12_000, 0)])
    counted = await store.db.fetchone("SELECT sum(requests) FROM rate_counters")
    assert counted is not None and int(counted[0]) == 12  # 256 counted for the lease, 246 given back
    await admission.close()


async def test_near_a_rate_limit_every_request_is_counted_on_its_own(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_rate_minute(monkeypatch)
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    await store.set_rate_limit(level="team", target="core", rpm=6, tpm=None)
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, rate_limited=lambda: frozenset({who.team.id}))
    holds: list[Hold] = []
    for _ in range(6):
        holds.append(await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL))
        await asyncio.sleep(0.02)  # a lease's slots, if any, are counted meanwhile
    with pytest.raises(RateLimitedError):
        await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL)
    for hold in holds:
        admission.settle(hold, 1_000)
    await _settled(store, who, [(6_000, 0)])
    counted = await store.db.fetchone("SELECT sum(requests) FROM rate_counters")
    assert counted is not None and int(counted[0]) == 6
    await admission.close()


async def test_leased_requests_settle_with_their_rows(store: GatewayStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the ledger, as the data plane does it: spend written with each row, never as a settle of its own,
    the lease's row left alone until the lease ends."""
    who = await acme_dev(store)
    await store.create_budget(level="key", target="dev", limit_nanos=10**12, period="1d")
    await store.create_budget(level="customer", target="acme", limit_nanos=10**12, period="1mo")
    ledger = GatewayLedger(store, "gw-1")
    ledger.start()
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, carrier=ledger, rate_limited=frozenset)

    async def no_lone_settle(*args: object, **kwargs: object) -> bool:
        raise AssertionError("a settle was written on its own, not with its row")

    monkeypatch.setattr(store, "settle", no_lone_settle)
    owner = Owner(who.key.id, who.team.id, who.team.customer_id)
    for index in range(20):
        hold = await admission.admit(key_meta(who, f"r{index}"), reserve_nanos=50_000, model=MODEL)
        assert (hold.lease is not None) == (index > 0)
        record = finished_record(f"r{index}", 2_000 + index)
        admission.settle(hold, 2_000 + index)
        ledger.enqueue(owner, record)
    spent = sum(2_000 + index for index in range(20))
    await _settled(store, who, [(spent, 0), (spent, 0)])
    charged = await store.db.fetchone("SELECT sum(charged_nanos), count(*) FROM requests")
    assert charged is not None and (int(charged[0]), int(charged[1])) == (spent, 20)
    await admission.close()
    await ledger.close()


async def test_closing_an_instance_gives_its_leases_back(open_store: StoreFactory) -> None:
    store = await open_store()
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, rate_limited=frozenset)
    for _ in range(2):
        admission.settle(await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL), 3_000)
    await admission.close()
    assert await budget_state(store, who) == [(6_000, 0)]
    assert await store.db.fetch("SELECT id FROM reservations") == []


async def test_a_key_with_requests_seconds_apart_takes_no_lease(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease pays off only for a busy key: for one request now and then it would be two more writes each."""
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    monkeypatch.setattr(gateway_admission, "LEASE_LIFE_S", 0.05)
    asked = _count_admissions(store, monkeypatch)
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, rate_limited=frozenset)
    for _ in range(3):
        hold = await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL)
        assert hold.lease is None
        admission.settle(hold, 1_000)
        await asyncio.sleep(0.1)
    assert asked == [10_000] * 3
    await _settled(store, who, [(3_000, 0)])
    await admission.close()


async def test_a_burst_after_a_pause_takes_a_lease(store: GatewayStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key quiet for longer than a lease's life, then many requests at once: the second of them takes a lease
    (another is in flight), and the rest are admitted from it."""
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
    monkeypatch.setattr(gateway_admission, "LEASE_LIFE_S", 0.2)
    asked = _count_admissions(store, monkeypatch)
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, rate_limited=frozenset)
    admission.settle(await admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL), 1_000)
    await asyncio.sleep(0.3)
    holds = await asyncio.gather(
        *(admission.admit(key_meta(who), reserve_nanos=10_000, model=MODEL) for _ in range(20))
    )
    assert len(asked) == 3  # the first of the burst alone, the second with a lease, which admits the other 18
    for hold in holds:
        admission.settle(hold, 1_000)
    await _settled(store, who, [(21_000, 0)])
    await admission.close()
