"""A served admin API for tests: a small app that opens the store, sets the app keys and mounts `/admin`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestClient

from ccgate.gateway import keys
from ccgate.gateway.admin import create_admin_app
from ccgate.storage.gateway import GatewayStore, KeyCipher

T = TypeVar("T")

BOOTSTRAP = "bootstrap-admin-token-for-tests-0123456789"


def admin_parent_app(store: GatewayStore, bootstrap: str | None = BOOTSTRAP) -> web.Application:
    """What the gateway's main app does for the admin side: the store, the bootstrap token, `/admin`."""
    app = web.Application()
    app[keys.STORE] = store
    if bootstrap is not None:
        app[keys.BOOTSTRAP_ADMIN_TOKEN] = bootstrap
    app.add_subapp("/admin", create_admin_app())
    return app


class AdminCaller:
    """Calls the admin API as a script would, remembering every answer (for the no-secret greps)."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.seen: list[str] = []

    async def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = BOOTSTRAP,
        params: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        if raw is not None:
            headers["Content-Type"] = "application/json"
        response = await self.client.request(
            method,
            "/admin/v1" + path,
            json=body if raw is None and body is not None else None,
            data=raw,
            headers=headers,
            params=params,
        )
        text = await response.text()
        self.seen.append(text)
        data = await response.json(content_type=None)
        return response.status, data


def error_of(body: Any) -> str:
    """The admin envelope's message (asserting the envelope's shape on the way)."""
    assert body["type"] == "error", body
    assert set(body["error"]) == {"type", "message", "hint"}, body
    return str(body["error"]["message"])


@dataclass
class ServedAdmin:
    """A real admin API on 127.0.0.1 in its own thread and loop, for the (blocking) CLI to talk to."""

    url: str
    store: GatewayStore
    run: Callable[[Coroutine[Any, Any, T]], T]


@contextmanager
def served_admin(
    db_url: str, *, cipher: KeyCipher | None = None, bootstrap: str | None = BOOTSTRAP
) -> Iterator[ServedAdmin]:
    """Open the store and serve the admin app on port 0 in a thread; everything closes on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="admin-api", daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=120)

    try:
        store = run(GatewayStore.open(db_url, cipher=cipher))
        runner = web.AppRunner(admin_parent_app(store, bootstrap))
        run(runner.setup())
        try:
            run(web.TCPSite(runner, "127.0.0.1", 0).start())
            port = runner.addresses[0][1]
            yield ServedAdmin(f"http://127.0.0.1:{port}", store, run)
        finally:
            run(runner.cleanup())
            run(store.close())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
