"""Types shared by the gateway store tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.proxy.engine import ClientMeta
from ccgate.storage.gateway import GatewayStore
from ccgate.storage.gateway.records import AdmissionResult, KeyIdentity, RateDecision

# `await open_store(**GatewayStore.open kwargs)`: another "instance" on the test's database
StoreFactory = Callable[..., Coroutine[Any, Any, GatewayStore]]


async def acme_dev(store: GatewayStore) -> KeyIdentity:
    """Customer `acme`, its team `core` and that team's key `dev`, as the data plane sees the key."""
    await store.create_customer("acme")
    await store.create_team("core", customer="acme")
    created = await store.create_key(team="core", name="dev")
    identity = await store.authenticate_key(created.plaintext)
    assert identity is not None
    return identity


async def until_waiting(watcher: Any, count: int = 1, what: str = "a transaction") -> None:
    """Poll PostgreSQL (`watcher`: an asyncpg connection of the test's own) until `count` other backends wait on a
    lock: the moment a deadlock test lets the holder go. No timing: about 10 s of polling, then a failure."""
    for _ in range(2_000):
        waiting = await watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{what} never waited for a lock ({count} waiting expected)")


def key_meta(who: KeyIdentity, request_id: str | None = None) -> ClientMeta:
    """A request of the key as the data plane hands it to the admission."""
    extra = {"key_id": who.key.id, "team_id": who.team.id, "customer_id": who.team.customer_id or ""}
    return ClientMeta(extra=extra, request_id=request_id)


def finished_record(
    row_id: str, nanos: int, *, input_tokens: int = 10, output_tokens: int = 5, model: str = "claude-sonnet-4-5"
) -> RequestRecord:
    """A request's final row, ended now, costing `nanos`."""
    now = datetime.now(UTC)
    return RequestRecord(
        id=row_id,
        started_at=now,
        ended_at=now,
        requested_model=model,
        provider="anthropic",
        status=RequestStatus.OK,
        usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
        cost=Cost(nanos, PriceQuality.PRICED),
    )


async def budget_state(store: GatewayStore, who: KeyIdentity) -> list[tuple[int, int]]:
    """(spent, reserved) of each budget that applies to the key."""
    views = await store.budget_views(key_id=who.key.id, team_id=who.team.id, customer_id=who.team.customer_id)
    return [(view.state.spent_nanos, view.state.reserved_nanos) for view in views]


def one_rate_minute(monkeypatch: Any) -> None:
    """Every request of the test in one rate-limit minute, 50 s before its end, whenever the test runs."""
    from ccgate.gateway import admission as gateway_admission
    from ccgate.storage.gateway import store as store_module

    moment = datetime.now(UTC).replace(second=10, microsecond=0)
    monkeypatch.setattr(gateway_admission, "utcnow", lambda: moment)
    monkeypatch.setattr(store_module, "utcnow", lambda: moment)


async def admit_key(
    store: GatewayStore,
    who: KeyIdentity,
    bound: int,
    *,
    take_rate: bool = True,
    instance: str = "i1",
    now: datetime | None = None,
) -> tuple[RateDecision, AdmissionResult | None]:
    """One admission of the key on the store (rate limit and reservation, one round trip), holds kept 5 minutes."""
    return await store.admit(
        key_id=who.key.id,
        team_id=who.team.id,
        customer_id=who.customer.id if who.customer else None,
        provider_id=None,
        bound_nanos=bound,
        instance_id=instance,
        ttl=timedelta(minutes=5),
        take_rate=take_rate,
        now=now,
    )
