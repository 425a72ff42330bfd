"""Types shared by the gateway store tests."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from ccgate.storage.gateway import GatewayStore

# `await open_store(**GatewayStore.open kwargs)`: another "instance" on the test's database
StoreFactory = Callable[..., Coroutine[Any, Any, GatewayStore]]
