"""No secret -- virtual key, provider key, admin token, encryption key -- in any response, log line or stored row."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from decimal import Decimal

import aiohttp
import pytest
from gateway_harness import ADMIN_TOKEN, PROVIDER_KEY, running_gateway
from scripted_upstream import ErrorReply, TextReply, Usage

from ccgate.storage.gateway import GatewayStore, generate_secret_key

MODEL = "claude-sonnet-4-5"
STORED_PROVIDER_KEY = "sk-or-stored-provider-secret-42"


async def _dump(store: GatewayStore) -> str:
    """Every table's every row, as text."""
    if store.db.backend == "sqlite":
        tables = [r[0] for r in await store.db.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")]
    else:
        tables = [
            r[0]
            for r in await store.db.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
    assert "requests" in tables
    parts = []
    for table in tables:
        parts.append(repr(await store.db.fetch(f'SELECT * FROM "{table}"')))  # noqa: S608 - names from the catalog
    return "\n".join(parts)


async def test_no_secret_reaches_a_response_a_log_line_or_the_database(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_key = generate_secret_key()
    env = {"CCGATE_GATEWAY_SECRET_KEY": secret_key}
    seen: list[str] = []
    now = datetime.now(UTC).isoformat()
    async with (
        running_gateway(db_url, environ=env, key_cache_seconds=0, metrics_per_key=True) as gateway,
        aiohttp.ClientSession() as http,
    ):
        store = gateway.store
        await store.put_provider("openrouter", kind="openai", api_key=STORED_PROVIDER_KEY)
        ada, bob = gateway.keys["ada"], gateway.keys["bob"]
        near_miss = ada[:-4] + "abcd"
        hook = "http://127.0.0.1:9/hook?token=hook-secret-0123456789"  # nothing listens: its failure is logged
        await store.create_budget(
            level="key", target="bob", limit_nanos=1, period="1d", thresholds=[Decimal("1")], webhook_url=hook
        )
        await store.set_rate_limit(level="key", target="ada", rpm=3, tpm=None)
        await asyncio.sleep(0.3)  # the gateway re-reads which keys have rate limits
        gateway.upstream.enqueue(
            TextReply("fine", usage=Usage(input_tokens=100, output_tokens=5)),
            ErrorReply(401, "authentication_error", "invalid x-api-key"),
        )
        body = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
        calls: list[tuple[str, str, dict[str, str], object]] = [
            ("POST", "/v1/messages", {"x-api-key": ada}, body),
            ("POST", "/v1/messages", {"x-api-key": ada}, {**body, "stream": True}),  # the upstream's 401
            ("POST", "/v1/messages", {"x-api-key": near_miss}, body),
            ("POST", "/v1/messages", {"authorization": f"Bearer {near_miss}"}, body),
            ("POST", "/v1/messages", {"x-api-key": bob}, body),
            ("POST", "/v1/messages", {"x-api-key": bob}, body),  # 402
            ("POST", "/v1/messages", {"x-api-key": ada}, {**body, "model": "openrouter-only/x"}),
            ("POST", "/v1/messages", {"x-api-key": ada}, body),  # 429
            ("POST", "/v1/messages", {"x-api-key": ada}, {"model": 5}),
            ("POST", "/v1/messages", {"x-api-key": ada, "x-ccgate-request-id": bob}, body),
            ("POST", "/v1/messages/count_tokens", {"x-api-key": ada}, body),
            ("GET", "/v1/me", {"x-api-key": ada}, None),
            ("POST", "/v1/usage", {"x-api-key": ada}, {"rows": [{"id": ada, "status": "ok"}]}),
            ("POST", "/v1/usage", {"x-api-key": ada}, {"rows": [{"id": ada, "status": "ok", "started_at": now}]}),
            ("GET", "/admin/anything", {"authorization": f"Bearer {ADMIN_TOKEN}"}, None),
            ("GET", "/readyz", {}, None),
            ("GET", "/metrics", {"authorization": f"Bearer {ADMIN_TOKEN}"}, None),
            ("GET", "/nope", {"x-api-key": ada}, None),
        ]
        for method, path, headers, payload in calls:
            async with http.request(method, gateway.url + path, headers=headers, json=payload) as reply:
                seen.append(json.dumps(dict(reply.headers)) + (await reply.read()).decode(errors="replace"))
        await gateway.flush()
        assert len(await store.db.fetch("SELECT id FROM requests")) >= 5  # the traffic left its rows
        stored = await _dump(store)
    logs = "\n".join(record.getMessage() + str(record.exc_info or "") for record in caplog.records)
    responses = "\n".join(seen)
    assert "alert webhook of budget" in logs  # the alert was tried, and its URL (a secret too) is not logged
    assert "hook-secret-0123456789" not in logs + responses
    assert "fine" in responses  # the traffic did happen
    for secret in (ada, bob, near_miss, PROVIDER_KEY, STORED_PROVIDER_KEY, ADMIN_TOKEN, secret_key):
        assert secret not in responses
        assert secret not in logs
        assert secret not in stored
