"""Types shared by the gateway store tests."""

from __future__ import annotations

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
