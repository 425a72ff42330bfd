"""Budget alerts: which thresholds a spend crossed (once per window, across instances) and the guarded POST.

A webhook URL is an admin's (or a team admin's) input, so the gateway must not become a way to reach what
only it can reach: every address the host resolves to is checked at send time, and the connection goes to
exactly the checked addresses (the resolver is the check, so a DNS answer that changes in between cannot slip
past it). Loopback, private, link-local (cloud metadata), shared and reserved addresses are refused unless the
gateway was started with `--allow-private-webhooks`. Redirects are never followed; the URL is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from ccgate.core.records import to_iso
from ccgate.core.webhooks import is_public, literal_address, refused_host
from ccgate.storage.gateway.store import GatewayStore
from ccgate.storage.reports import usd_string

log = logging.getLogger("ccgate.gateway")

TIMEOUT = aiohttp.ClientTimeout(total=10)
PRIVATE_HINT = "serve the gateway with --allow-private-webhooks to post to private addresses"

Post = Callable[[str, dict[str, Any]], Coroutine[Any, Any, None]]


class WebhookTargetRefused(OSError):
    """The webhook's host is, or resolves to, an address the gateway does not post to."""


class GuardedResolver(AbstractResolver):
    """Resolves like the default resolver, then refuses the whole answer if any address is not public."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self.allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if not self.allow_private:
            for answer in answers:
                address = literal_address(answer["host"].split("%", 1)[0])
                if address is None or not is_public(address):
                    raise WebhookTargetRefused(f"the webhook host resolves to a non-public address ({address})")
        return answers

    async def close(self) -> None:
        await self._inner.close()


class Webhooks:
    """One per process: the guarded session, and the alert checks running in the background."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(allow_private=allow_private), use_dns_cache=False, limit=20
        )
        self.session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, timeout=TIMEOUT
        )
        self._tasks: set[asyncio.Task[None]] = set()

    async def post(self, url: str, payload: dict[str, Any]) -> None:
        """One alert; failures are logged by budget id (the URL is often a secret itself, as Slack's are)."""
        budget = payload.get("budget_id")
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            host = ""
        why = "it has no host" if not host else None if self.allow_private else refused_host(host)
        if why is not None:
            log.error("the alert webhook of budget %s was not sent: %s; %s", budget, why, PRIVATE_HINT)
            return
        try:
            async with self.session.post(url, json=payload, allow_redirects=False) as reply:
                if 300 <= reply.status < 400:
                    log.error("the alert webhook of budget %s answered a redirect, which is not followed", budget)
                elif reply.status >= 400:
                    log.error("the alert webhook of budget %s answered HTTP %d", budget, reply.status)
        except aiohttp.ClientConnectorError as error:
            if isinstance(error.os_error, WebhookTargetRefused):
                log.error("the alert webhook of budget %s was not sent: %s; %s", budget, error.os_error, PRIVATE_HINT)
            else:
                log.error("the alert webhook of budget %s failed: %s", budget, type(error).__name__)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.error("the alert webhook of budget %s failed: %s", budget, type(error).__name__)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run an alert check without holding up the request that caused it; `close` waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            if not done.cancelled() and done.exception() is not None:
                log.error("a budget alert check failed: %s", done.exception())

        task.add_done_callback(finished)

    async def close(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.session.close()


async def check_alerts(
    store: GatewayStore,
    post: Post,
    *,
    key_id: str,
    team_id: str | None,
    customer_id: str | None,
    provider_id: str | None = None,
    only: tuple[str, ...] | None = None,
    moments: Sequence[datetime] | None = None,
) -> None:
    """Post each threshold the spent of a budget applying to this key has crossed, once per window across
    instances (`claim_alert`); `only` narrows it to some budgets. Proxied and ingested spend both come here.
    Without `moments` the current windows are checked (a settle charges now); with them, every window one of
    them falls in (ingested rows are charged at their start times, which may be in earlier windows)."""
    who: dict[str, Any] = {"key_id": key_id, "team_id": team_id, "customer_id": customer_id, "provider_id": provider_id}
    if moments is None:
        views = await store.budget_views(**who)
    else:
        views = await store.budget_views_at(moments, **who)
    for view in views:
        budget, state = view.budget, view.state
        if (only is not None and budget.id not in only) or budget.webhook_url is None or state.limit_nanos <= 0:
            continue
        for threshold in budget.thresholds:
            if state.spent_nanos < threshold * state.limit_nanos:
                continue
            if not await store.claim_alert(budget.id, view.window_start, threshold):
                continue
            await post(
                budget.webhook_url,
                {
                    "type": "budget_alert",
                    "budget_id": budget.id,
                    "level": budget.level.value,
                    "target_id": budget.target_id,
                    "label": budget.label,
                    "threshold": str(threshold),
                    "limit_usd": usd_string(state.limit_nanos),
                    "spent_usd": usd_string(state.spent_nanos),
                    "window_start": to_iso(view.window_start),
                    "resets_at": to_iso(state.resets_at),
                },
            )
