"""The gateway's admission seam on a real store: a client that leaves mid-admission leaves no hold behind."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from ccgate.gateway.admission import GatewayAdmission
from ccgate.proxy.engine import ClientMeta
from ccgate.storage.gateway import GatewayStore


async def test_a_hold_committed_as_the_client_leaves_is_released(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create_team("core")
    key = (await store.create_key(team="core", name="ada")).key
    await store.create_budget(level="team", target="core", limit_nanos=10**9, period="1d")
    committed = asyncio.Event()
    real_admit = store.admit

    async def slow_admit(**kwargs: Any) -> Any:
        result = await real_admit(**kwargs)  # rate counted and hold committed in the database ...
        committed.set()
        await asyncio.sleep(0.5)  # ... but the answer is still on its way when the client goes away
        return result

    monkeypatch.setattr(store, "admit", slow_admit)
    admission = GatewayAdmission(store, "instance-1", ttl=timedelta(minutes=5))
    meta = ClientMeta(extra={"key_id": key.id, "team_id": key.team_id})
    admitting = asyncio.create_task(admission.admit(meta, reserve_nanos=1_000, model="claude-sonnet-4-5"))
    await committed.wait()
    admitting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await admitting
    held: list[Any] = []
    for _ in range(50):  # the late answer arrives, and its hold is given back (before any shutdown)
        await asyncio.sleep(0.1)
        held = await store.db.fetch("SELECT id FROM reservations WHERE amount_nanos > 0")
        if not held:
            break
    assert held == []
    await admission.close()


async def test_a_waiter_keeps_waiting_while_another_instance_renews_its_hold(store: GatewayStore) -> None:
    await store.create_team("core")
    key = (await store.create_key(team="core", name="ada")).key
    await store.create_budget(level="team", target="core", limit_nanos=1_000, period="1d")
    meta = ClientMeta(extra={"key_id": key.id, "team_id": key.team_id})
    ttl = timedelta(seconds=0.9)  # renewed every 0.3 s while instance A lives
    first = GatewayAdmission(store, "instance-a", ttl=ttl, wait_timeout=1.0)
    second = GatewayAdmission(store, "instance-b", ttl=ttl, wait_timeout=1.0)
    heartbeat = asyncio.create_task(first.run_heartbeat())
    try:
        long_stream = await first.admit(meta, reserve_nanos=900, model="claude-sonnet-4-5")
        waiting = asyncio.create_task(second.admit(meta, reserve_nanos=900, model="claude-sonnet-4-5"))
        await asyncio.sleep(2.5)  # well past wait_timeout: only A's renewals show its request is alive
        assert not waiting.done(), waiting
        first.settle(long_stream, 100)
        admitted = await asyncio.wait_for(waiting, 30)
        assert admitted.reservation is not None
        second.settle(admitted, 100)
    finally:
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)
        await first.close()
        await second.close()
