"""Attacks on the gateway's batched write paths: admissions that go together in one call of
``ccgate_reserve_many_v1`` (PostgreSQL), and settles written with their final ledger rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from gateway_testing import StoreFactory, acme_dev

from ccgate.storage.gateway import Admitted, GatewayStore, Waiting
from ccgate.storage.gateway.admission import ReserveBatcher
from ccgate.storage.gateway.records import KeyIdentity

TTL = timedelta(minutes=5)


async def _admit_at(store: GatewayStore, who: KeyIdentity, bound: int, now: datetime) -> object:
    _, result = await store.admit(
        key_id=who.key.id,
        team_id=who.team.id,
        customer_id=who.customer.id if who.customer else None,
        provider_id=None,
        bound_nanos=bound,
        instance_id="i1",
        ttl=TTL,
        take_rate=False,
        now=now,
    )
    return result


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
