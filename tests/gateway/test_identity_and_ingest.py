"""`GET /v1/me` and `POST /v1/usage`: who a key is, and sidecar rows stored once, attributed to the caller."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from gateway_harness import Gateway, running_gateway

from ccgate.core.records import new_request_id

MODEL = "claude-sonnet-4-5"


def _row(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": new_request_id(),
        "started_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "ended_at": datetime.now(UTC).isoformat(),
        "source": "sidecar",
        "session_id": "s-1",
        "project": "/home/ada/app",
        "requested_model": MODEL,
        "provider": "anthropic",
        "routed_model": MODEL,
        "stream": True,
        "status": "ok",
        "http_status": 200,
        "input_tokens": 1000,
        "output_tokens": 100,
        "cache_read_tokens": 0,
        "cache_write_5m_tokens": 0,
        "cache_write_1h_tokens": 0,
        "cost_nanos": 1,  # what the sidecar claims; the gateway prices the tokens itself
        "tags": {"ticket": "ABC-1"},
    }
    row.update(fields)
    return row


async def _post(
    http: aiohttp.ClientSession, gateway: Gateway, key: str, body: Any, *, raw: bytes | None = None
) -> tuple[int, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    async with http.post(
        f"{gateway.url}/v1/usage", data=data, headers={"x-api-key": key, "content-type": "application/json"}
    ) as reply:
        return reply.status, await reply.json()


async def test_me_says_who_the_key_is_and_what_is_left(db_url: str) -> None:
    async with running_gateway(db_url) as gateway, aiohttp.ClientSession() as http:
        await gateway.store.create_budget(level="team", target="core", limit_nanos=5_000_000_000, period="1d")
        await gateway.store.update_key("ada", allowed_models=["claude-*"], tier_overrides={"haiku": "groq/llama"})
        async with http.get(f"{gateway.url}/v1/me", headers={"x-api-key": gateway.keys["ada"]}) as reply:
            assert reply.status == 200
            me = await reply.json()
        assert (me["key"], me["team"], me["customer"], me["mode"]) == ("ada", "core", "acme", "proxy")
        assert me["allowed_models"] == ["claude-*"]
        assert me["tier_overrides"] == {"haiku": "groq/llama"}
        (budget,) = me["budgets"]
        assert (budget["level"], budget["limit_usd"], budget["spent_usd"], budget["left_usd"]) == (
            "team",
            "5.000000000",
            "0.000000000",
            "5.000000000",
        )
        assert budget["resets_at"].endswith("Z")
        assert gateway.keys["ada"] not in json.dumps(me)
        async with http.get(f"{gateway.url}/v1/me", headers={"x-api-key": "sk-cg-nope"}) as reply:
            assert reply.status == 401


async def test_a_batch_replayed_three_times_is_stored_once_and_repriced(db_url: str) -> None:
    async with running_gateway(db_url) as gateway, aiohttp.ClientSession() as http:
        await gateway.store.create_budget(level="key", target="ada", limit_nanos=10**12, period="1d")
        rows = [_row(), _row(output_tokens=500)]
        results = [await _post(http, gateway, gateway.keys["ada"], {"rows": rows}) for _ in range(3)]
        assert results[0] == (200, {"sent": 2, "known": 0, "rejected": []})
        assert results[1] == results[2] == (200, {"sent": 0, "known": 2, "rejected": []})
        stored = await gateway.rows("ada")
        assert sorted(row.record.id for row in stored) == sorted(row["id"] for row in rows)
        assert all(row.record.cost.nanos and row.record.cost.nanos > 1 for row in stored)
        assert {row.source for row in stored} == {"ingested"}
        assert stored[0].tags == {"ticket": "ABC-1"}
        (view,) = await gateway.store.budget_views(key_id=await gateway.key_id("ada"), team_id=None, customer_id=None)
        assert view.state.spent_nanos == sum(row.record.cost.nanos or 0 for row in stored)


async def test_a_row_proxied_then_synced_is_counted_once(db_url: str) -> None:
    async with running_gateway(db_url) as gateway, aiohttp.ClientSession() as http:
        key = gateway.keys["ada"]
        client = gateway.client(key, default_headers={"x-ccgate-request-id": "sidecar-row-7"})
        await client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}])
        await gateway.flush()
        status, result = await _post(http, gateway, key, {"rows": [_row(id="sidecar-row-7")]})
        assert (status, result) == (200, {"sent": 0, "known": 1, "rejected": []})
        (row,) = await gateway.rows("ada")
        assert row.source == "proxied"


async def test_rows_claiming_another_key_are_the_callers(db_url: str) -> None:
    async with running_gateway(db_url) as gateway, aiohttp.ClientSession() as http:
        bob = await gateway.key_id("bob")
        claim = _row(id="claims-bob", key_id=bob, key="bob", team_id="other", customer_id="other")
        status, result = await _post(http, gateway, gateway.keys["ada"], {"rows": [claim]})
        assert (status, result) == (200, {"sent": 1, "known": 0, "rejected": []})
        (row,) = await gateway.rows("ada")
        team = await gateway.store.get_team("core")
        assert (row.record.id, row.key_id, row.team_id) == ("claims-bob", await gateway.key_id("ada"), team.id)
        assert await gateway.rows("bob") == []


async def test_bad_batches_and_rows_are_refused_with_a_reason_and_nothing_stored(db_url: str) -> None:
    async with running_gateway(db_url) as gateway, aiohttp.ClientSession() as http:
        key = gateway.keys["ada"]
        for body, raw in (
            (None, b"not json"),
            ([], None),
            ({"rows": "x"}, None),
            ({"rows": [], "extra": 1}, None),
            ({"rows": [_row() for _ in range(1001)]}, None),
        ):
            status, result = await _post(http, gateway, key, body, raw=raw)
            assert status == 400, body
            assert result["error"]["type"] == "invalid_request_error"
        bad = [
            _row(input_tokens=-1),
            _row(output_tokens=10**12),
            _row(output_tokens=True),
            _row(status="pending"),
            _row(status="ok'; DROP TABLE requests; --"),
            _row(started_at="yesterday"),
            _row(started_at="1999-01-01T00:00:00Z"),
            _row(id=""),
            _row(id="x" * 129),
            _row(tags={"k": 1}),
            _row(project="p\x00"),
            _row(unknown_field=1),
            "not an object",
        ]
        status, result = await _post(http, gateway, key, {"rows": bad})
        assert status == 200
        assert (result["sent"], result["known"], len(result["rejected"])) == (0, 0, len(bad))
        assert all(item["why"] for item in result["rejected"])
        odd = _row(id="name'); DROP TABLE requests; --", project='"; SELECT 1; --', tags={"q'": "\"x'"})
        status, result = await _post(http, gateway, key, {"rows": [odd]})
        assert result == {"sent": 1, "known": 0, "rejected": []}
        (row,) = await gateway.rows("ada")
        assert (row.record.id, row.record.project, row.tags) == (odd["id"], odd["project"], odd["tags"])
        status, result = await _post(http, gateway, "sk-cg-wrong", {"rows": [_row()]})
        assert status == 401


async def test_raw_rows_past_the_retention_are_rolled_up_and_still_reported(db_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    async with (
        running_gateway(db_url, keep_days=1, retention_interval_seconds=0.2) as gateway,
        aiohttp.ClientSession() as http,
    ):
        old = _row(id="old-row", started_at=(datetime.now(UTC) - timedelta(days=3)).isoformat())
        _, result = await _post(http, gateway, gateway.keys["ada"], {"rows": [old, _row(id="new-row")]})
        assert result["sent"] == 2
        for _ in range(100):
            ids = [row.record.id for row in await gateway.rows("ada")]
            if ids == ["new-row"]:
                break
            await asyncio.sleep(0.1)
        assert ids == ["new-row"]
        report = await gateway.store.report(
            since=datetime.now(UTC) - timedelta(days=10), until=datetime.now(UTC) + timedelta(days=1), by="key"
        )
        assert report.total.requests == 2
