"""The gateway server: virtual keys, the per-key router, budgets, rate limits and the ledger, on both databases."""

from __future__ import annotations

import asyncio

import aiohttp
import anthropic
import pytest
from gateway_harness import PROVIDER_KEY, Gateway, running_gateway
from scripted_upstream import TextReply, Usage

from ccgate.core.records import RequestStatus
from ccgate.gateway.app import UPSTREAMS

MODEL = "claude-sonnet-4-5"


async def _ask(gateway: Gateway, key: str, *, stream: bool = False, model: str = MODEL) -> str:
    client = gateway.client(key)
    message: anthropic.types.Message
    if stream:
        async with client.messages.stream(
            model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(
            model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
    block = message.content[0]
    assert block.type == "text"
    return block.text


async def test_a_virtual_key_is_served_metered_and_attributed(db_url: str) -> None:
    async with running_gateway(db_url) as gateway:
        gateway.upstream.enqueue(TextReply("one", usage=Usage(input_tokens=1000, output_tokens=50)))
        gateway.upstream.enqueue(TextReply("two", usage=Usage(input_tokens=2000, output_tokens=70)))
        assert await _ask(gateway, gateway.keys["ada"]) == "one"
        assert await _ask(gateway, gateway.keys["ada"], stream=True) == "two"
        for seen in gateway.upstream.messages_requests:
            # the provider sees the org's key, never the developer's virtual key
            assert seen.headers["x-api-key"] == PROVIDER_KEY
            assert gateway.keys["ada"] not in str(seen.headers)
        rows = await gateway.rows("ada")
        assert [row.record.status for row in rows] == [RequestStatus.OK, RequestStatus.OK]
        assert [row.record.usage.input_tokens for row in rows] == [1000, 2000]
        team = await gateway.store.get_team("core")
        customer = await gateway.store.get_customer("acme")
        assert {(row.team_id, row.customer_id) for row in rows} == {(team.id, customer.id)}
        assert all(row.record.cost.nanos for row in rows)
        assert rows[0].record.source == "gateway"


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
async def test_unknown_and_missing_keys_get_401_without_retry(db_url: str, header: str) -> None:
    async with running_gateway(db_url) as gateway, aiohttp.ClientSession() as http:
        value = "sk-cg-not-a-real-key" if header == "x-api-key" else "Bearer sk-cg-not-a-real-key"
        for headers in ({header: value}, {}):
            async with http.post(
                f"{gateway.url}/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": []}, headers=headers
            ) as reply:
                assert reply.status == 401
                assert reply.headers["x-should-retry"] == "false"
                body = await reply.json()
                assert body["error"]["type"] == "authentication_error"
        assert gateway.upstream.requests == []


async def test_bearer_key_works_like_x_api_key(db_url: str) -> None:
    async with running_gateway(db_url) as gateway:
        client = anthropic.AsyncAnthropic(base_url=gateway.url, auth_token=gateway.keys["bob"], max_retries=0)
        message = await client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
        assert message.content
        seen = gateway.upstream.messages_requests[0].headers
        assert "authorization" not in seen and seen["x-api-key"] == PROVIDER_KEY


async def test_a_revoked_key_is_refused_within_the_cache_bound(db_url: str) -> None:
    async with running_gateway(db_url, key_cache_seconds=0.2) as gateway:
        await _ask(gateway, gateway.keys["ada"])
        await gateway.store.revoke_key("ada")
        await asyncio.sleep(0.3)
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await _ask(gateway, gateway.keys["ada"])
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert len(gateway.upstream.messages_requests) == 1


async def test_a_rotated_key_works_in_its_grace_period(db_url: str) -> None:
    from datetime import timedelta

    async with running_gateway(db_url, key_cache_seconds=0) as gateway:
        old = gateway.keys["ada"]
        new = (await gateway.store.rotate_key("ada", grace=timedelta(hours=1))).plaintext
        assert await _ask(gateway, old) and await _ask(gateway, new)
        newer = (await gateway.store.rotate_key("ada", grace=timedelta(0))).plaintext
        with pytest.raises(anthropic.AuthenticationError):
            await _ask(gateway, new)
        assert await _ask(gateway, newer)
        with pytest.raises(anthropic.AuthenticationError):
            await _ask(gateway, old)


async def test_models_the_key_may_not_use_get_403(db_url: str) -> None:
    async with running_gateway(db_url, key_cache_seconds=0) as gateway:
        await gateway.store.update_key("ada", allowed_models=["claude-sonnet-*"])
        assert await _ask(gateway, gateway.keys["ada"])
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            await _ask(gateway, gateway.keys["ada"], model="claude-opus-4-5")
        assert denied.value.response.headers["x-should-retry"] == "false"
        assert "claude-opus-4-5" in str(denied.value)
        # the routed target is checked too: an override to a model outside the list is refused
        await gateway.store.update_key("ada", tier_overrides={"sonnet": "anthropic/claude-haiku-4-5"})
        with pytest.raises(anthropic.PermissionDeniedError):
            await _ask(gateway, gateway.keys["ada"])
        assert len(gateway.upstream.messages_requests) == 1


async def test_the_orgs_tier_overrides_route_per_team_and_key(db_url: str) -> None:
    async with running_gateway(db_url, key_cache_seconds=0) as gateway:
        await gateway.store.update_team("core", tier_overrides={"sonnet": "anthropic/claude-haiku-4-5"})
        await gateway.store.update_key("bob", tier_overrides={"sonnet": "anthropic/claude-opus-4-5"})
        await _ask(gateway, gateway.keys["ada"])
        await _ask(gateway, gateway.keys["bob"])
        assert [r.model for r in gateway.upstream.messages_requests] == ["claude-haiku-4-5", "claude-opus-4-5"]
        rows = await gateway.rows()
        assert {(row.record.requested_model, row.record.routed_model) for row in rows} == {
            (MODEL, "claude-haiku-4-5"),
            (MODEL, "claude-opus-4-5"),
        }


async def test_a_spent_team_budget_gives_402_naming_it_and_nothing_reaches_the_upstream(db_url: str) -> None:
    async with running_gateway(db_url) as gateway:
        await gateway.store.create_budget(level="team", target="core", limit_nanos=1, period="1d")
        gateway.upstream.enqueue(TextReply("first", usage=Usage(input_tokens=1000, output_tokens=10)))
        assert await _ask(gateway, gateway.keys["ada"]) == "first"  # the lone request may overshoot
        with pytest.raises(anthropic.APIStatusError) as refused:
            await _ask(gateway, gateway.keys["bob"])
        assert refused.value.status_code == 402
        assert refused.value.response.headers["x-should-retry"] == "false"
        body = refused.value.response.json()
        assert body["error"]["type"] == "billing_error"
        message = body["error"]["message"]
        assert "daily team budget reached" in message and "Ask your gateway admin" in message
        assert "credit balance" not in message  # Claude Code would replace the message with its own
        assert len(gateway.upstream.messages_requests) == 1
        rows = await gateway.rows("bob")
        assert [(row.record.http_status, row.record.cost.nanos) for row in rows] == [(402, 0)]
        (view,) = await gateway.store.budget_views(
            key_id=await gateway.key_id("ada"),
            team_id=(await gateway.store.get_team("core")).id,
            customer_id=None,
        )
        assert view.state.reserved_nanos == 0
        assert view.state.spent_nanos == sum((row.record.cost.nanos or 0) for row in await gateway.rows())


async def test_rate_limit_gives_429_with_retry_after_and_count_tokens_is_not_counted(db_url: str) -> None:
    async with running_gateway(db_url, refresh_seconds=0.05) as gateway:
        limit = await gateway.store.set_rate_limit(level="key", target="ada", rpm=1, tpm=None)
        for _ in range(100):  # every instance learns within `refresh_seconds` that this key has a limit
            if limit.target_id in gateway.app[UPSTREAMS].upstreams.rate_limited:
                break
            await asyncio.sleep(0.05)
        client = gateway.client(gateway.keys["ada"])
        for _ in range(3):
            counted = await client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            assert counted.input_tokens > 0
        assert await _ask(gateway, gateway.keys["ada"])
        with pytest.raises(anthropic.RateLimitError) as limited:
            await _ask(gateway, gateway.keys["ada"])
        assert int(limited.value.response.headers["retry-after"]) >= 1
        assert await _ask(gateway, gateway.keys["bob"])  # another key has its own limit


async def test_the_sidecars_request_id_becomes_the_row_id(db_url: str) -> None:
    async with running_gateway(db_url) as gateway:
        client = gateway.client(gateway.keys["ada"], default_headers={"x-ccgate-request-id": "row-from-sidecar-1"})
        await client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
        (row,) = await gateway.rows("ada")
        assert row.record.id == "row-from-sidecar-1"
        assert "x-ccgate-request-id" not in gateway.upstream.messages_requests[0].headers  # not for the provider


async def test_health_readiness_and_head(db_url: str) -> None:
    async with running_gateway(db_url) as gateway, aiohttp.ClientSession() as http:
        async with http.head(f"{gateway.url}/") as reply:
            assert reply.status == 200
        async with http.get(f"{gateway.url}/healthz") as reply:
            assert (await reply.json())["ok"] is True
        async with http.get(f"{gateway.url}/readyz") as reply:
            assert reply.status == 200
        await gateway.store.db.close()  # the database is gone: not ready, and the data plane fails closed
        async with http.get(f"{gateway.url}/readyz") as reply:
            assert reply.status == 503
        headers = {"x-api-key": gateway.keys["ada"]}
        body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        async with http.post(f"{gateway.url}/v1/messages", json=body, headers=headers) as reply:
            assert reply.status == 503
            assert (await reply.json())["type"] == "error"
        assert gateway.upstream.requests == []


async def test_provider_keys_stored_encrypted_are_used_and_env_keys_win(db_url: str) -> None:
    from ccgate.storage.gateway import generate_secret_key

    environ = {"CCGATE_ANTHROPIC_API_KEY": "", "CCGATE_GATEWAY_SECRET_KEY": generate_secret_key()}
    async with running_gateway(db_url, environ=environ, refresh_seconds=0.05) as gateway:
        await gateway.store.put_provider("anthropic", kind="anthropic", api_key="sk-ant-stored-in-the-db")
        stored = await gateway.store.db.fetch("SELECT api_key_encrypted FROM provider_configs")
        assert "sk-ant-stored-in-the-db" not in str(stored)
        for _ in range(100):  # the next refresh picks it up
            await asyncio.sleep(0.05)
            if gateway.app[UPSTREAMS].upstreams.provider_keys.get("anthropic"):
                break
        await _ask(gateway, gateway.keys["ada"])
        assert gateway.upstream.messages_requests[-1].headers["x-api-key"] == "sk-ant-stored-in-the-db"
    secret = {"CCGATE_GATEWAY_SECRET_KEY": environ["CCGATE_GATEWAY_SECRET_KEY"]}
    async with running_gateway(db_url, org=False, environ=secret) as gateway:  # CCGATE_ANTHROPIC_API_KEY wins
        key = (await gateway.store.create_key(team="core", name="cy")).plaintext
        await _ask(gateway, key)
        assert gateway.upstream.messages_requests[-1].headers["x-api-key"] == PROVIDER_KEY


async def test_a_body_past_the_limit_gets_413_in_the_envelope(db_url: str) -> None:
    async with running_gateway(db_url, max_body_mb=1) as gateway, aiohttp.ClientSession() as http:
        body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 2_000_000}]}
        headers = {"x-api-key": gateway.keys["ada"]}
        async with http.post(f"{gateway.url}/v1/messages", json=body, headers=headers) as reply:
            assert reply.status == 413
            assert (await reply.json())["error"]["type"] == "request_too_large"
        assert gateway.upstream.requests == []


async def test_a_running_streams_hold_shrinks_to_its_real_input_once_message_start_tells_it(db_url: str) -> None:
    async with running_gateway(db_url) as gateway:
        await gateway.store.create_budget(level="team", target="core", limit_nanos=10**12, period="1d")
        gateway.upstream.enqueue(TextReply("long", usage=Usage(input_tokens=10), cut_after_events=3, then="hang"))
        client = gateway.client(gateway.keys["ada"])

        async def stream() -> None:
            async with client.messages.stream(
                model=MODEL, max_tokens=1000, messages=[{"role": "user", "content": "x" * 200_000}]
            ) as events:
                async for _ in events:
                    pass

        task = asyncio.create_task(stream())
        await asyncio.wait_for(gateway.upstream.hanging.wait(), 30)
        amounts: list[int] = []
        for _ in range(100):
            amounts = [int(r[0]) for r in await gateway.store.db.fetch("SELECT amount_nanos FROM reservations")]
            amounts = [amount for amount in amounts if amount]
            if amounts and amounts[0] < 100_000_000:  # 200 KB of prompt reserve ~$0.6; 10 tokens and 1,000 out ~$0.015
                break
            await asyncio.sleep(0.05)
        assert amounts and amounts[0] < 100_000_000
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_provider_without_a_key_is_the_admins_problem_not_a_401(db_url: str) -> None:
    async with (
        running_gateway(db_url, environ={"CCGATE_ANTHROPIC_API_KEY": ""}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        async with http.post(
            f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": gateway.keys["ada"]}
        ) as reply:
            assert reply.status == 503
            assert reply.headers["x-should-retry"] == "false"
            assert "no API key for anthropic" in (await reply.json())["error"]["message"]
        assert gateway.upstream.requests == []


async def test_budget_alerts_fire_once_per_threshold_to_the_webhook(db_url: str) -> None:
    from decimal import Decimal

    from aiohttp import web

    received: list[dict[str, object]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    runner = web.AppRunner(receiver)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook?token=hook-secret"
    try:
        async with running_gateway(db_url, allow_private_webhooks=True) as gateway:  # the receiver is on loopback
            gateway.upstream.handler = lambda _: TextReply("ok", usage=Usage(input_tokens=1000, output_tokens=10))
            await gateway.store.create_budget(
                level="team",
                target="core",
                limit_nanos=10_000_000,  # $0.01: about three requests of $0.00315
                period="1d",
                thresholds=[Decimal("0.5"), Decimal("1")],
                webhook_url=url,
            )
            for _ in range(8):
                try:
                    await _ask(gateway, gateway.keys["ada"])
                except anthropic.APIStatusError as error:
                    assert error.status_code == 402
            for _ in range(100):
                if len(received) >= 2:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
        assert sorted(str(alert["threshold"]) for alert in received) == ["0.5", "1"]
        assert all(alert["label"] == "daily team budget" for alert in received)
    finally:
        await runner.cleanup()
