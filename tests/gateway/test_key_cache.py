"""The per-request shortcuts: unknown keys from a negative cache (reads capped per address); no budget, no hold."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from gateway_harness import running_gateway

from ccgate.errors import AuthenticationError, RateLimitedError
from ccgate.gateway.admission import GatewayAdmission
from ccgate.gateway.auth import KeyCache
from ccgate.proxy.seams import ClientMeta
from ccgate.storage.gateway import GatewayStore
from ccgate.storage.gateway.records import AdmissionResult, KeyIdentity, RateDecision


class CountingStore(GatewayStore):
    """The real store, counting its key look-ups."""

    reads = 0

    async def authenticate_key(self, plaintext: str, *, now: datetime | None = None) -> KeyIdentity | None:
        self.reads += 1
        return await super().authenticate_key(plaintext, now=now)


async def test_unknown_keys_are_cached_and_capped_per_address(store: GatewayStore) -> None:
    counting = CountingStore(store.db)
    await counting.create_team("core")
    valid = (await counting.create_key(team="core", name="ada")).plaintext
    cache = KeyCache(counting, unknown_per_second=0.001)  # one look-up per address, then (practically) none
    assert (await cache.authenticate(valid, "10.0.0.1")).key.name == "ada"
    with pytest.raises(AuthenticationError):
        await cache.authenticate("sk-cg-unknown-1", "10.0.0.1")
    assert counting.reads == 2
    with pytest.raises(AuthenticationError):  # the same unknown key again: from the negative cache
        await cache.authenticate("sk-cg-unknown-1", "10.0.0.2")
    assert counting.reads == 2
    with pytest.raises(RateLimitedError) as limited:  # another unknown key from the same address: no read
        await cache.authenticate("sk-cg-unknown-2", "10.0.0.1")
    assert limited.value.retry_after >= 1
    assert counting.reads == 2
    assert (await cache.authenticate(valid, "10.0.0.1")).key.name == "ada"  # a cached key still passes
    cache.ttl = 0  # and one it knew is re-read even from a throttled address (all clients behind one proxy)
    assert (await cache.authenticate(valid, "10.0.0.1")).key.name == "ada"
    cache.ttl = 60
    reads = counting.reads
    with pytest.raises(AuthenticationError):  # another address has its own allowance
        await cache.authenticate("sk-cg-unknown-2", "10.0.0.2")
    assert counting.reads == reads + 1


async def test_a_key_scanner_gets_429_with_retry_after(db_url: str) -> None:
    async with running_gateway(db_url, unknown_keys_per_second=0.001) as gateway, aiohttp.ClientSession() as http:
        statuses: list[int] = []
        for index in range(3):
            async with http.post(
                f"{gateway.url}/v1/messages",
                headers={"x-api-key": f"sk-cg-scan-{index}", "anthropic-version": "2023-06-01"},
                json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            ) as reply:
                statuses.append(reply.status)
                if reply.status == 429:
                    assert int(reply.headers["retry-after"]) >= 1
                    body = await reply.json()
                    assert body["error"]["type"] == "rate_limit_error"
                    break
        assert statuses == [401, 429]  # one look-up of an unknown key allowed, the next refused before any read


class CountingReserves(GatewayStore):
    reserves = 0

    async def reserve(self, **kwargs: Any) -> AdmissionResult:
        self.reserves += 1
        return await super().reserve(**kwargs)

    async def admit(self, **kwargs: Any) -> tuple[RateDecision, AdmissionResult | None]:
        """The first attempt: rate limits and reservation in one round trip."""
        self.reserves += 1
        return await super().admit(**kwargs)


async def test_requests_of_keys_without_any_budget_skip_the_reservation(store: GatewayStore) -> None:
    counting = CountingReserves(store.db)
    await counting.create_customer("acme")
    team = await counting.create_team("core", customer="acme")
    key = (await counting.create_key(team="core", name="ada")).key
    budgeted: frozenset[str] = frozenset()
    admission = GatewayAdmission(counting, "gw-1", ttl=timedelta(seconds=30), budgeted=lambda: budgeted)
    meta = ClientMeta(extra={"key_id": key.id, "team_id": team.id, "customer_id": team.customer_id or ""})
    hold = await admission.admit(meta, reserve_nanos=10, model="m")
    assert hold.reservation is None and counting.reserves == 0
    await counting.create_budget(level="customer", target="acme", limit_nanos=10**9, period="1d")
    budgeted = frozenset({team.customer_id or ""})
    hold = await admission.admit(meta, reserve_nanos=10, model="m")
    assert hold.reservation is not None and counting.reserves == 1
    admission.release(hold)
    await admission.close()
