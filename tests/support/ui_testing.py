"""A browser-less client of the gateway's dashboard: signs in, keeps the cookie, reads each form's CSRF token."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiohttp

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.storage.gateway import GatewayRow, GatewayStore

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class UiClient:
    """Talks to /ui as a same-origin browser would (Origin and Sec-Fetch-Site on every POST)."""

    def __init__(self, base: str) -> None:
        self.base = base
        # the gateway listens on an IP address: a default jar keeps no cookie for one
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def __aenter__(self) -> UiClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.close()

    @property
    def same_origin(self) -> dict[str, str]:
        return {"Origin": self.base, "Sec-Fetch-Site": "same-origin"}

    async def sign_in(self, token: str) -> aiohttp.ClientResponse:
        response = await self.http.post(
            self.base + "/ui/login", data={"token": token}, headers=self.same_origin, allow_redirects=False
        )
        await response.read()
        if response.status == 303:
            await self.get("/ui/")
        return response

    async def get(self, path: str, **kwargs: Any) -> tuple[aiohttp.ClientResponse, str]:
        kwargs.setdefault("allow_redirects", False)
        response = await self.http.get(self.base + path, **kwargs)
        text = await response.text()
        found = CSRF.search(text)
        if found:
            self.csrf = found.group(1)
        return response, text

    async def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True, headers: dict[str, str] | None = None
    ) -> tuple[aiohttp.ClientResponse, str]:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf", self.csrf)
        response = await self.http.post(
            self.base + path,
            data=form,
            headers=self.same_origin if headers is None else headers,
            allow_redirects=False,
        )
        return response, await response.text()


async def seed_rows(
    store: GatewayStore,
    key_name: str,
    moments: Sequence[datetime],
    *,
    model: str = "claude-sonnet-4-5",
    project: str | None = "/work/api",
    nanos: int | None = 1_234_567,
    status: RequestStatus = RequestStatus.OK,
) -> list[GatewayRow]:
    """Finished rows of one key at the given moments, written as the gateway's ledger writes them."""
    key = await store.get_key(key_name)
    team = await store.get_team(key.team_id)
    quality = PriceQuality.PRICED if nanos is not None else PriceQuality.UNPRICED
    rows = [
        GatewayRow(
            record=RequestRecord(
                started_at=moment,
                ended_at=moment,
                source="gateway",
                project=project,
                requested_model=model,
                provider="anthropic",
                routed_model=model,
                status=status,
                http_status=200,
                usage=Usage(input_tokens=100 + index, output_tokens=10, cache_read_tokens=1000),
                cost=Cost(nanos=nanos, quality=quality),
            ),
            key_id=key.id,
            team_id=team.id,
            customer_id=team.customer_id,
        )
        for index, moment in enumerate(moments)
    ]
    await store.write_requests(rows)
    return rows


async def seed_dashboard(store: GatewayStore) -> None:
    """A second team and key, rows over the last 40 days (one unpriced), a team budget."""
    from datetime import timedelta

    from ccgate.core.records import utcnow

    now = utcnow().replace(minute=0, second=0, microsecond=0)
    await store.create_team("web")
    await store.create_key(team="web", name="cy")
    await seed_rows(store, "ada", [now - timedelta(hours=h) for h in range(0, 60, 3)])
    await seed_rows(store, "bob", [now - timedelta(days=d) for d in range(0, 40, 2)], model="claude-haiku-4-5")
    await seed_rows(store, "cy", [now - timedelta(minutes=5)], project=None, nanos=None)
    await store.create_budget(level="team", target="core", limit_nanos=50_000_000, period="1mo")
