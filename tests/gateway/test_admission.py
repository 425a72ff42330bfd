"""Budget admission in the database: exact under concurrency across two instances, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

from gateway_testing import StoreFactory

from ccgate.storage.gateway import Admitted, GatewayStore, Refused, Waiting
from ccgate.storage.gateway.records import KeyIdentity

TTL = timedelta(minutes=5)


async def _org(store: GatewayStore, *, team_limit: int, period: str = "1d") -> KeyIdentity:
    await store.create_customer("acme")
    await store.create_team("core", customer="acme")
    created = await store.create_key(team="core", name="dev")
    await store.create_budget(level="team", target="core", limit_nanos=team_limit, period=period)
    identity = await store.authenticate_key(created.plaintext)
    assert identity is not None
    return identity


async def _reserve(store: GatewayStore, who: KeyIdentity, bound: int, **kwargs: object) -> Admitted | Waiting | Refused:
    return await store.reserve(
        key_id=who.key.id,
        team_id=who.team.id,
        customer_id=who.customer.id if who.customer else None,
        provider_id=None,
        bound_nanos=bound,
        instance_id=str(kwargs.get("instance", "i1")),
        ttl=kwargs.get("ttl", TTL),  # type: ignore[arg-type]
        now=kwargs.get("now"),  # type: ignore[arg-type]
    )


async def _spent(store: GatewayStore, who: KeyIdentity) -> tuple[int, int]:
    views = await store.budget_views(
        key_id=who.key.id, team_id=who.team.id, customer_id=who.customer.id if who.customer else None
    )
    (view,) = views
    return view.state.spent_nanos, view.state.reserved_nanos


async def test_fifty_concurrent_requests_across_two_instances_overshoot_by_at_most_one(
    open_store: StoreFactory,
) -> None:
    first = await open_store()
    second = await open_store(migrate_now=False)
    cost, bound = 3_000, 4_000
    limit = 10_000  # room for about three requests
    who = await _org(first, team_limit=limit)
    admitted: list[str] = []
    refused: list[Refused] = []

    async def one(store: GatewayStore, index: int) -> None:
        for _ in range(2_000):
            result = await _reserve(store, who, bound, instance=f"instance-{id(store)}")
            if isinstance(result, Admitted):
                admitted.append(result.reservation.id)
                await asyncio.sleep(random.random() / 100)
                await store.shrink(result.reservation, cost)
                assert await store.settle(result.reservation, cost)
                return
            if isinstance(result, Refused):
                refused.append(result)
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"request {index} waited for ever")

    await asyncio.gather(*(one(first if i % 2 else second, i) for i in range(50)))
    spent, reserved = await _spent(first, who)
    assert reserved == 0
    assert spent == cost * len(admitted)
    assert spent <= limit + cost
    assert len(admitted) + len(refused) == 50
    assert len(admitted) >= 3
    assert all(r.blocking.state.spent_nanos >= limit for r in refused)
    # refused requests never held anything: no reservation rows are left, and none was made for them
    assert await first.db.fetch("SELECT id FROM reservations") == []
    assert len(set(admitted)) == len(admitted)


async def test_spent_equal_to_the_limit_refuses_the_next(store: GatewayStore) -> None:
    who = await _org(store, team_limit=9_000)
    for _ in range(3):
        result = await _reserve(store, who, 3_000)
        assert isinstance(result, Admitted)
        await store.settle(result.reservation, 3_000)
    assert await _spent(store, who) == (9_000, 0)
    refused = await _reserve(store, who, 1)
    assert isinstance(refused, Refused)
    state = refused.blocking.state
    assert (state.limit_nanos, state.spent_nanos) == (9_000, 9_000)
    assert state.resets_at > datetime.now(UTC)
    assert refused.blocking.budget.level == "team"


async def test_fit_exactly_at_the_limit_then_wait_while_reserved(store: GatewayStore) -> None:
    who = await _org(store, team_limit=9_000)
    first = await _reserve(store, who, 4_500)
    second = await _reserve(store, who, 4_500)  # spent + reserved + bound == limit: fits
    assert isinstance(first, Admitted) and isinstance(second, Admitted)
    third = await _reserve(store, who, 1)
    assert isinstance(third, Waiting)
    assert third.blocking.state.reserved_nanos == 9_000
    await store.release(first.reservation)
    assert isinstance(await _reserve(store, who, 1), Admitted)


async def test_lone_request_is_admitted_when_nothing_is_in_flight(store: GatewayStore) -> None:
    who = await _org(store, team_limit=1_000)
    lone = await _reserve(store, who, 50_000)
    assert isinstance(lone, Admitted)
    assert isinstance(await _reserve(store, who, 1), Waiting)


async def test_an_instance_reservations_lapse_after_expiry_unless_renewed(store: GatewayStore) -> None:
    who = await _org(store, team_limit=10_000)
    start = datetime.now(UTC)
    dead = await _reserve(store, who, 10_000, instance="dead", ttl=timedelta(seconds=30), now=start)
    live = await _reserve(store, who, 0, instance="live", ttl=timedelta(seconds=30), now=start)
    assert isinstance(dead, Admitted) and isinstance(live, Admitted)
    assert isinstance(await _reserve(store, who, 1, now=start + timedelta(seconds=10)), Waiting)
    assert await store.renew("live", ttl=timedelta(seconds=60), now=start + timedelta(seconds=20)) == 1
    later = start + timedelta(seconds=31)
    after_lapse = await _reserve(store, who, 5_000, now=later)
    assert isinstance(after_lapse, Admitted)  # the dead instance's hold no longer counts
    assert await store.expire(now=later) == 1  # only the dead one is deleted; the renewed one lives on
    rows = await store.db.fetch("SELECT instance_id FROM reservations ORDER BY instance_id")
    assert [r[0] for r in rows] == ["i1", "live"]
    # renewing never resurrects a lapsed hold
    assert await store.renew("dead", ttl=timedelta(seconds=60), now=later) == 0


async def test_settle_of_a_lapsed_reservation_still_counts_the_spend(store: GatewayStore) -> None:
    who = await _org(store, team_limit=10_000)
    start = datetime.now(UTC)
    result = await _reserve(store, who, 2_000, ttl=timedelta(seconds=1), now=start)
    assert isinstance(result, Admitted)
    await store.expire(now=start + timedelta(seconds=2))
    assert not await store.settle(result.reservation, 1_500)
    assert (await _spent(store, who))[0] == 1_500


async def test_every_level_counts_and_the_first_in_lock_order_is_reported(store: GatewayStore) -> None:
    who = await _org(store, team_limit=100_000)
    provider = await store.put_provider("anthropic", kind="anthropic")
    await store.create_budget(level="customer", target="acme", limit_nanos=5_000, period="1mo")
    await store.create_budget(level="key", target="dev", limit_nanos=5_000, period="1h")
    await store.create_budget(level="provider", target="anthropic", limit_nanos=5_000, period="1w", calendar=False)
    result = await store.reserve(
        key_id=who.key.id,
        team_id=who.team.id,
        customer_id=who.customer.id if who.customer else None,
        provider_id=provider.id,
        bound_nanos=5_000,
        instance_id="i",
        ttl=TTL,
    )
    assert isinstance(result, Admitted)
    assert [v.budget.level for v in result.budgets] == ["customer", "team", "key", "provider"]
    await store.settle(result.reservation, 5_000)
    views = await store.budget_views(
        key_id=who.key.id,
        team_id=who.team.id,
        customer_id=who.customer.id if who.customer else None,
        provider_id=provider.id,
    )
    assert [v.state.spent_nanos for v in views] == [5_000, 5_000, 5_000, 5_000]
    refused = await store.reserve(
        key_id=who.key.id,
        team_id=who.team.id,
        customer_id=None,
        provider_id=provider.id,
        bound_nanos=1,
        instance_id="i",
        ttl=TTL,
    )
    assert isinstance(refused, Refused)
    assert refused.blocking.budget.level == "key"  # customer not passed: team has room, key is next in order


async def test_override_and_reset_apply_to_the_current_window(store: GatewayStore) -> None:
    who = await _org(store, team_limit=1_000)
    (budget,) = await store.list_budgets(level="team")
    result = await _reserve(store, who, 1_000)
    assert isinstance(result, Admitted)
    await store.settle(result.reservation, 1_000)
    assert isinstance(await _reserve(store, who, 1), Refused)
    await store.override_budget(budget.id, limit_nanos=2_000, actor="finance")
    assert isinstance(await _reserve(store, who, 1), Admitted)
    next_window = datetime.now(UTC) + timedelta(days=2)
    assert (await store.get_budget(budget.id)).effective_limit(next_window) == 1_000
    await store.reset_budget(budget.id, actor="finance")
    assert (await _spent(store, who))[0] == 0
    actions = [entry.action for entry in await store.list_audit()]
    assert actions[:2] == ["budget.reset", "budget.override"]


async def test_alert_fires_once_per_window_and_threshold(open_store: StoreFactory) -> None:
    first = await open_store()
    second = await open_store(migrate_now=False)
    await _org(first, team_limit=1_000)
    (budget,) = await first.list_budgets()
    window = datetime(2026, 12, 7, tzinfo=UTC)
    from decimal import Decimal

    claims = await asyncio.gather(
        *(s.claim_alert(budget.id, window, Decimal("0.8")) for s in (first, second, first, second))
    )
    assert sorted(claims) == [False, False, False, True]
    assert await first.claim_alert(budget.id, window, Decimal(1))
    assert await first.claim_alert(budget.id, window + timedelta(days=1), Decimal("0.8"))
