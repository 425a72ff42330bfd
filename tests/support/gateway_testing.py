"""Types shared by the gateway store tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from ccgate.storage.gateway import GatewayStore
from ccgate.storage.gateway.records import KeyIdentity

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
