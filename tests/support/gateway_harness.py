"""An in-process gateway in front of a scripted upstream, both on 127.0.0.1 port 0, with a small org in it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anthropic
from aiohttp import web
from scripted_upstream import ScriptedUpstream

from ccgate.gateway import keys
from ccgate.gateway.app import LEDGER, GatewaySettings, create_app, create_runner
from ccgate.storage.gateway import GatewayRow, GatewayStore

PROVIDER_KEY = "sk-ant-provider-secret-0123456789"
ADMIN_TOKEN = "cg-admin-bootstrap-secret-0123456789"


@dataclass
class Gateway:
    app: web.Application
    url: str
    upstream: ScriptedUpstream
    keys: dict[str, str] = field(default_factory=dict)  # developer name -> plaintext virtual key

    @property
    def store(self) -> GatewayStore:
        return self.app[keys.STORE]

    def client(self, key: str, **kwargs: Any) -> anthropic.AsyncAnthropic:
        kwargs.setdefault("max_retries", 0)
        return anthropic.AsyncAnthropic(base_url=self.url, api_key=key, **kwargs)

    async def flush(self) -> None:
        assert await self.app[LEDGER].flush(10.0)

    async def rows(self, key_name: str | None = None) -> list[GatewayRow]:
        """Every row (of one key), oldest first, after the ledger wrote what it queued."""
        await self.flush()
        db = self.store.db
        if key_name is None:
            found = await db.fetch("SELECT key_id, id FROM requests ORDER BY started_at, id")
        else:
            found = await db.fetch(
                "SELECT key_id, id FROM requests WHERE key_id = ? ORDER BY started_at, id",
                (await self.key_id(key_name),),
            )
        rows = [await self.store.get_request(str(k), str(i)) for k, i in found]
        return [row for row in rows if row is not None]

    async def key_id(self, name: str) -> str:
        return (await self.store.get_key(name)).id


async def make_org(store: GatewayStore) -> dict[str, str]:
    """Customer acme, team core with developers ada and bob (proxy mode); returns their plaintext keys."""
    await store.create_customer("acme")
    await store.create_team("core", customer="acme")
    created = {}
    for name in ("ada", "bob"):
        created[name] = (await store.create_key(team="core", name=name)).plaintext
    return created


@asynccontextmanager
async def running_gateway(
    db_url: str,
    *,
    upstream: ScriptedUpstream | None = None,
    environ: Mapping[str, str] | None = None,
    org: bool = True,
    seen: list[tuple[str, str]] | None = None,
    **settings: Any,
) -> AsyncIterator[Gateway]:
    """`seen`, when given, collects (method, path) of every request the gateway receives."""
    own_upstream = upstream is None
    upstream = upstream or ScriptedUpstream()
    if own_upstream:
        await upstream.start()
    env = {
        "CCGATE_ANTHROPIC_BASE_URL": upstream.url,
        "CCGATE_ANTHROPIC_API_KEY": PROVIDER_KEY,
        "CCGATE_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        **(environ or {}),
    }
    settings.setdefault("migrate", True)
    app = create_app(GatewaySettings(db_url=db_url, environ=env, **settings))
    if seen is not None:
        collected = seen

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            collected.append((request.method, request.path))
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.insert(0, count)
    runner = create_runner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        gateway = Gateway(app, f"http://127.0.0.1:{port}", upstream)
        if org:
            gateway.keys = await make_org(gateway.store)
        yield gateway
    finally:
        await runner.cleanup()
        if own_upstream:
            await upstream.stop()
