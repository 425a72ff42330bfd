"""Budget-alert webhooks: fired by proxied and ingested spend, never to private addresses unless allowed, never
redirected, and their URLs (secrets, often) shown and audited redacted."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from admin_testing import AdminCaller, admin_parent_app
from aiohttp import web
from gateway_harness import ADMIN_TOKEN, running_gateway
from hypothesis import given, settings
from hypothesis import strategies as st
from scripted_upstream import TextReply, Usage

from ccgate.core.records import new_request_id, to_iso
from ccgate.core.webhooks import is_public, redact_webhook_url, refused_host
from ccgate.gateway.webhooks import GuardedResolver, Webhooks, WebhookTargetRefused
from ccgate.storage.gateway import GatewayStore

MODEL = "claude-sonnet-4-5"
SECRET_URL = "https://user:pass-secret@hooks.example.com/services/T000/B000/path-secret?token=query-secret#frag"


@asynccontextmanager
async def receiver() -> AsyncIterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """A webhook receiver on loopback: `/hook` records, `/redirect` answers 302 to `/hook`."""
    received: list[tuple[str, dict[str, Any]]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((request.path, await request.json()))
        return web.Response(text="ok")

    async def redirect(request: web.Request) -> web.Response:
        received.append((request.path, await request.json()))
        raise web.HTTPFound("/hook")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/redirect", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", received
    finally:
        await runner.cleanup()


def _row(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": new_request_id(),
        "started_at": (datetime.now(UTC) - timedelta(seconds=5)).isoformat(),
        "status": "ok",
        "requested_model": MODEL,
        "routed_model": MODEL,
        "provider": "anthropic",
        "input_tokens": 1000,
        "output_tokens": 100,  # $0.0045 at Sonnet's prices
    }
    row.update(fields)
    return row


def _resolves_to_loopback(name: str) -> bool:
    try:
        found = socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in found)


async def _wait_for(received: list[Any], count: int) -> None:
    for _ in range(200):
        if len(received) >= count:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # and nothing more arrives


async def test_spend_ingested_through_v1_usage_fires_the_alerts_once_per_window(db_url: str) -> None:
    async with (
        receiver() as (base, received),
        running_gateway(db_url, allow_private_webhooks=True) as gateway,
        aiohttp.ClientSession() as http,
    ):
        await gateway.store.create_budget(
            level="team",
            target="core",
            limit_nanos=10_000_000,  # $0.01: two rows cross 80 %, three cross 100 %
            period="1d",
            thresholds=[Decimal("0.8"), Decimal("1")],
            webhook_url=f"{base}/hook",
        )
        reporter = await gateway.store.create_key(team="core", name="rae", mode="report")  # her own credentials
        headers = {"x-api-key": reporter.plaintext}
        for batch in ([_row(), _row()], [_row()], [_row(), _row()]):
            async with http.post(f"{gateway.url}/v1/usage", json={"rows": batch}, headers=headers) as reply:
                assert reply.status == 200
                assert (await reply.json())["sent"] == len(batch)
            await _wait_for(received, 1)
        await _wait_for(received, 2)
    assert sorted(alert["threshold"] for _, alert in received) == ["0.8", "1"]
    assert {alert["label"] for _, alert in received} == {"daily team budget"}


async def test_rows_synced_late_fire_the_alerts_of_the_window_they_fall_in_once(db_url: str) -> None:
    """A sidecar that was offline syncs yesterday's rows today: they are charged to yesterday's window, and that
    window's thresholds fire (once each, whatever is replayed), not today's."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)
    late = (yesterday + timedelta(hours=20)).isoformat()
    async with (
        receiver() as (base, received),
        running_gateway(db_url, allow_private_webhooks=True) as gateway,
        aiohttp.ClientSession() as http,
    ):
        reporter = await gateway.store.create_key(team="core", name="rae", mode="report")
        await gateway.store.create_budget(
            level="key",
            target="rae",
            limit_nanos=10_000_000,  # $0.01: two rows ($0.0045 each) cross 80 %, three cross 100 %
            period="1d",
            thresholds=[Decimal("0.8"), Decimal("1")],
            webhook_url=f"{base}/hook",
        )
        headers = {"x-api-key": reporter.plaintext}
        # replayed: known, nothing new; the row of today ($0.0045) stays under today's 80 %
        first = [_row(started_at=late), _row(started_at=late)]
        for batch, fired in (
            (first, 1),
            (first, 1),
            ([_row(started_at=late), _row()], 2),
            ([_row(started_at=late)], 2),
        ):
            async with http.post(f"{gateway.url}/v1/usage", json={"rows": batch}, headers=headers) as reply:
                assert reply.status == 200
            await _wait_for(received, fired)
    alerts = [alert for _, alert in received]
    assert [(a["threshold"], a["window_start"]) for a in alerts] == [
        ("0.8", to_iso(yesterday)),
        ("1", to_iso(yesterday)),
    ]
    assert Decimal(alerts[1]["spent_usd"]) == Decimal("0.0135") and alerts[1]["resets_at"] == to_iso(today)


async def test_a_webhook_on_a_private_address_is_not_posted_to_by_default(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with receiver() as (base, received), running_gateway(db_url) as gateway:
        gateway.upstream.handler = lambda _: TextReply("ok", usage=Usage(input_tokens=1000, output_tokens=1000))
        port = base.rsplit(":", 1)[1]
        # stored directly (the admin API refuses them already): a literal, `localhost`, a number that is 127.0.0.1,
        # and a name that only the resolver can tell is loopback (this machine's name, where it is one)
        urls = [f"{base}/hook", f"http://localhost:{port}/hook", f"http://2130706433:{port}/hook"]
        name = socket.gethostname()
        if name != "localhost" and _resolves_to_loopback(name):
            urls.append(f"http://{name}:{port}/hook")
        for url in urls:
            await gateway.store.create_budget(
                level="key", target="ada", limit_nanos=1, period="1d", thresholds=[Decimal(1)], webhook_url=url
            )
        client = gateway.client(gateway.keys["ada"])
        await client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
        for _ in range(100):
            if caplog.text.count("alert webhook of budget") >= len(urls):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
    assert received == []
    assert caplog.text.count("alert webhook of budget") == len(urls), caplog.text
    assert caplog.text.count("was not sent") >= len(urls) - 1  # aiohttp itself refuses the number
    assert "--allow-private-webhooks" in caplog.text
    assert port not in caplog.text.replace(f"http://127.0.0.1:{port}", "")  # no URL in the log


async def test_names_are_checked_at_send_time_by_the_resolver_itself() -> None:
    with pytest.raises(WebhookTargetRefused):
        await GuardedResolver(allow_private=False).resolve("localhost", 80)
    assert await GuardedResolver(allow_private=True).resolve("localhost", 80)


async def test_redirects_are_not_followed(caplog: pytest.LogCaptureFixture) -> None:
    async with receiver() as (base, received):
        webhooks = Webhooks(allow_private=True)
        try:
            await webhooks.post(f"{base}/redirect", {"budget_id": "b1"})
        finally:
            await webhooks.close()
    assert [path for path, _ in received] == ["/redirect"]
    assert "redirect" in caplog.text and "not followed" in caplog.text


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # shared address space
        ("0.0.0.0", False),  # noqa: S104 - an address to judge, not to bind
        ("224.0.0.1", False),  # multicast
        ("::1", False),
        ("fe80::1", False),
        ("fd00:ec2::254", False),  # AWS metadata over IPv6
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_hosts_refused_before_resolving() -> None:
    assert refused_host("localhost") and refused_host("LOCALHOST.") and refused_host("a.localhost")
    assert refused_host("127.0.0.1") and refused_host("[::1]") and refused_host("169.254.169.254")
    assert refused_host("hooks.example.com") is None and refused_host("8.8.8.8") is None


def test_redacted_urls_keep_scheme_host_and_a_common_first_segment() -> None:
    assert redact_webhook_url(SECRET_URL) == "https://hooks.example.com/services/…"
    assert redact_webhook_url("https://discord.com/api/webhooks/1/abc") == "https://discord.com/api/…"
    assert redact_webhook_url("https://h.example/abc123token") == "https://h.example/…"
    assert redact_webhook_url("https://h.example:8443/alerts") == "https://h.example:8443/alerts"
    assert redact_webhook_url("https://h.example/abcdefghijklmnop") == "https://h.example/…"
    assert redact_webhook_url("https://h.example/alerts?key=1") == "https://h.example/alerts/…"
    assert redact_webhook_url("http://[::1]:9/x") == "http://[::1]:9/…"
    assert redact_webhook_url(None) is None


async def test_webhook_urls_are_shown_and_audited_redacted_and_stored_as_given(
    store: GatewayStore, aiohttp_client: Any
) -> None:
    api = AdminCaller(await aiohttp_client(admin_parent_app(store)))
    assert (await api("POST", "/teams", {"name": "core"}))[0] == 201
    body = {"level": "team", "target": "core", "amount_usd": "5", "period": "1d", "thresholds": ["1"]}
    status, created = await api("POST", "/budgets", {**body, "webhook_url": SECRET_URL})
    assert status == 201, created
    budget_id = created["budgets"][0]["id"]
    assert created["budgets"][0]["webhook_url"] == "https://hooks.example.com/services/…"
    other = "https://hooks.example.com/services/T1/B1/second-secret"
    assert (await api("PATCH", f"/budgets/{budget_id}", {"webhook_url": other}))[0] == 200
    await api("GET", "/budgets")
    await api("GET", f"/budgets/{budget_id}")
    await api("GET", "/audit")
    shown = "\n".join(api.seen)
    audited = json.dumps([entry.after for entry in await store.list_audit()])
    for secret in ("pass-secret", "path-secret", "query-secret", "frag", "T000", "second-secret"):
        assert secret not in shown
        assert secret not in audited
    assert (await store.get_budget(budget_id)).webhook_url == other  # used as given
    # what the API showed cannot be sent back as a URL, and a private host is refused up front
    status, answer = await api(
        "PATCH", f"/budgets/{budget_id}", {"webhook_url": "https://hooks.example.com/services/…"}
    )
    assert status == 400 and "redacted" in answer["error"]["message"]
    for private in ("http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]/x", "http://169.254.169.254/x"):
        status, answer = await api("POST", "/budgets", {**body, "webhook_url": private})
        assert status == 400 and "--allow-private-webhooks" in answer["error"]["hint"], private
    assert (await store.get_budget(budget_id)).webhook_url == other


async def test_the_gateway_admin_api_accepts_private_webhooks_when_allowed(db_url: str) -> None:
    body = {"level": "team", "target": "core", "amount_usd": "1", "period": "1d", "webhook_url": "http://10.0.0.5/x"}
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        running_gateway(db_url, allow_private_webhooks=True) as gateway,
        aiohttp.ClientSession() as http,
        http.post(f"{gateway.url}/admin/v1/budgets", json=body, headers=headers) as reply,
    ):
        assert reply.status == 201, await reply.text()


_SECRET = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=12, max_size=30),  # letters only: still a token
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=12, max_size=30),
)


@given(
    secret=_SECRET,
    where=st.sampled_from(["user", "password", "query", "fragment", "path", "first"]),
    host=st.sampled_from(["hooks.example.com", "10.0.0.1", "[2001:db8::1]", "h.example:8443"]),
)
@settings(deadline=None, max_examples=200)
def test_a_redacted_url_never_holds_a_secret_wherever_it_sits(secret: str, where: str, host: str) -> None:
    url = {
        "user": f"https://{secret}@{host}/hook",
        "password": f"https://u:{secret}@{host}/hook",
        "query": f"https://{host}/hook?token={secret}",
        "fragment": f"https://{host}/hook#{secret}",
        "path": f"https://{host}/services/T1/{secret}",
        "first": f"https://{host}/{secret}/x",
    }[where]
    shown = redact_webhook_url(url)
    assert shown is not None and secret not in shown and shown.startswith("https://")


async def test_earlier_windows_are_seen_with_their_own_spend_and_without_todays_override(store: GatewayStore) -> None:
    """What the alert check reads for late rows: each calendar window's own spend; an override set for today's
    window is not yesterday's limit; a rolling budget is seen as of now only."""
    from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage

    await store.create_team("core")
    key = (await store.create_key(team="core", name="rae", mode="report")).key
    daily = await store.create_budget(level="key", target="rae", limit_nanos=1_000, period="1d")
    await store.create_budget(level="key", target="rae", limit_nanos=5_000, period="1d", calendar=False)
    await store.override_budget(daily.id, limit_nanos=9_000)
    now = datetime.now(UTC)
    yesterday = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(hours=4)

    def row(at: datetime, nanos: int) -> tuple[RequestRecord, dict[str, str]]:
        usage = Usage(input_tokens=1, output_tokens=1)
        cost = Cost(nanos, PriceQuality.PRICED)
        record = RequestRecord(id=new_request_id(), started_at=at, status=RequestStatus.OK, usage=usage, cost=cost)
        return record, {}

    await store.ingest(
        key_id=key.id, team_id=key.team_id, customer_id=None, records=[row(yesterday, 700), row(now, 300)]
    )
    views = await store.budget_views_at(
        [yesterday, yesterday, now], key_id=key.id, team_id=key.team_id, customer_id=None
    )
    seen = sorted((v.budget.calendar, to_iso(v.window_start), v.state.limit_nanos, v.state.spent_nanos) for v in views)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    rolling = [
        v
        for v in await store.budget_views(key_id=key.id, team_id=key.team_id, customer_id=None)
        if not v.budget.calendar
    ]
    assert seen == sorted(
        [
            (True, to_iso(today - timedelta(days=1)), 1_000, 700),
            (True, to_iso(today), 9_000, 300),
            (False, to_iso(rolling[0].window_start), 5_000, rolling[0].state.spent_nanos),
        ]
    )
