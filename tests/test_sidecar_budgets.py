"""Budgets enforced by the running sidecar: exact under concurrency, 402 that stops Claude Code, never blocking
count_tokens or HEAD."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from scripted_upstream import StreamReply, TextReply, Usage, text_events
from sidecar_harness import Harness, running_sidecar

from ccgate.config import BudgetSettings, Config

# claude-haiku-4-5 at $1 in / $5 out per MTok: 100 input + 20 output tokens cost 200 micro-dollars.
ONE_REQUEST_NANOS = (100 * 1 + 20 * 5) * 1000


def budget(limit: str) -> Config:
    return Config(budgets=(BudgetSettings(period="daily", limit_usd=Decimal(limit)),))


def body(max_tokens: int = 50, model: str = "claude-haiku-4-5") -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}


async def post(
    session: aiohttp.ClientSession, harness: Harness, payload: dict[str, Any]
) -> tuple[int, dict[str, str], Any]:
    async with session.post(f"{harness.url}/v1/messages", json=payload, headers=harness.headers) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.json(content_type=None)


async def test_fifty_concurrent_requests_overshoot_by_at_most_one() -> None:
    limit_nanos = 700_000  # room for three and a half requests
    async with running_sidecar(config=budget("0.0007")) as harness:
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(post(session, harness, body()) for _ in range(50)))
        served = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        assert 3 <= len(served) <= 4
        for status, headers, payload in refused:
            assert status == 402
            assert headers["x-should-retry"] == "false"
            assert payload["error"]["type"] == "billing_error"
            message = payload["error"]["message"]
            assert "daily budget" in message and "ccgate budget set daily" in message
            assert "credit balance" not in message
        rows = harness.rows()
        spent = sum(row["cost_nanos"] for row in rows)
        assert len(rows) == 50  # refused requests are rows too (status error, billing_error, cost 0)
        refused_rows = [row for row in rows if row["status"] == "error"]
        assert len(refused_rows) == len(refused)
        assert all(r["error_type"] == "billing_error" and r["http_status"] == 402 for r in refused_rows)
        assert all(r["cost_nanos"] == 0 for r in refused_rows)
        assert len(harness.upstream.messages_requests) == len(served)  # refused ones never reached it
        assert spent <= limit_nanos + ONE_REQUEST_NANOS
        async with aiohttp.ClientSession() as session:
            status = await (await session.get(f"{harness.url}/_ccgate/status", headers=harness.headers)).json()
        (state,) = status["budgets"]
        assert state["spent_nanos"] == spent  # the guard's accounting agrees with the ledger
        assert state["reserved_nanos"] == 0


async def test_ten_parallel_agents_wait_instead_of_failing() -> None:
    # Each request reserves up to ~$0.16 (32k output tokens at $5/MTok) but really costs $0.0002:
    # ten of them reserve more than the $1 budget while almost nothing is spent.
    async with running_sidecar(config=budget("1")) as harness:
        harness.upstream.enqueue(*(TextReply("ok", usage=Usage(100, 20), event_delay=0.02) for _ in range(10)))
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(post(session, harness, body(max_tokens=32_000)) for _ in range(10)))
        assert [status for status, _, _ in results] == [200] * 10
        assert len(harness.rows()) == 10


async def test_a_reservation_is_bounded_whatever_max_tokens_says() -> None:
    """max_tokens beyond any model's output (an exact 31-digit integer, say) reserves 1M output tokens, and one
    that is not a positive integer (a bool, a string) reserves the 64K default."""
    import json

    async def reserved() -> int:
        async with session.get(f"{harness.url}/_ccgate/status", headers=harness.headers) as resp:
            return int((await resp.json())["budgets"][0]["reserved_nanos"])

    async def reserved_in_flight(raw: bytes) -> int:
        for _ in range(500):  # the previous request's reservation ends when the sidecar sees its client go
            if await reserved() == 0:
                break
            await asyncio.sleep(0.01)
        # the upstream sends a few events, then holds the stream open: the reservation lives until we leave
        harness.upstream.enqueue(StreamReply(events=text_events("ok")[:3], then="hang"))
        headers = {**harness.headers, "content-type": "application/json"}
        async with session.post(f"{harness.url}/v1/messages", data=raw, headers=headers) as response:
            assert response.status == 200
            assert await response.content.readany()
            return await reserved()

    # claude-haiku-4-5: every body byte may be a token at the 1h cache-write rate ($2/MTok), output at $5/MTok
    def bound(raw: bytes, output_tokens: int) -> int:
        return len(raw) * 2_000 + output_tokens * 5_000

    async with running_sidecar(config=budget("1000")) as harness, aiohttp.ClientSession() as session:
        for max_tokens, output_bound in ((10**30, 1_000_000), (True, 64_000), ("9", 64_000), (2_000, 2_000)):
            raw = json.dumps(body() | {"max_tokens": max_tokens, "stream": True}).encode()
            assert await reserved_in_flight(raw) == bound(raw, output_bound), max_tokens


async def test_exhausted_budget_never_blocks_count_tokens_or_head() -> None:
    async with running_sidecar(config=budget("0.0001")) as harness, aiohttp.ClientSession() as session:
        assert (await post(session, harness, body()))[0] == 200  # a lone request may overshoot, once
        status, headers, _ = await post(session, harness, body())
        assert status == 402 and headers["x-should-retry"] == "false"
        async with session.head(f"{harness.url}/") as resp:
            assert resp.status == 200
        async with session.post(
            f"{harness.url}/v1/messages/count_tokens", json=body(), headers=harness.headers
        ) as resp:
            assert resp.status == 200


async def test_unpriced_model_cannot_slip_past_a_budget() -> None:
    async with running_sidecar(config=budget("5")) as harness, aiohttp.ClientSession() as session:
        status, headers, payload = await post(session, harness, body(model="mystery-model-1"))
        assert status == 402
        assert headers["x-should-retry"] == "false"
        assert "ccgate price set mystery-model-1" in payload["error"]["message"]
        assert harness.upstream.messages_requests == []


async def test_unpriced_model_without_budget_is_recorded_as_unpriced_not_zero() -> None:
    async with running_sidecar() as harness, aiohttp.ClientSession() as session:
        status, _, _ = await post(session, harness, body(model="mystery-model-1"))
        assert status == 200
        (row,) = harness.rows()
        assert row["cost_nanos"] is None
        assert row["price_quality"] == "unpriced"


async def test_crossing_the_warning_threshold_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    # $0.001 a day, warning from 50 %: each request costs $0.0002, so the third one crosses it
    config = Config(budgets=(BudgetSettings(period="daily", limit_usd=Decimal("0.001"), warn_at=Decimal("0.5")),))
    caplog.set_level(logging.WARNING, logger="ccgate.sidecar")
    async with running_sidecar(config=config) as harness, aiohttp.ClientSession() as session:
        for expected_warnings in (0, 0, 1, 1):
            assert (await post(session, harness, body()))[0] == 200
            warnings = [r for r in caplog.records if "warning from 50%" in r.getMessage()]
            assert len(warnings) == expected_warnings
        assert "daily budget" in warnings[0].getMessage()


async def test_a_provider_reporting_absurd_usage_is_estimated_recorded_and_agreed_on() -> None:
    """2**62 tokens once overflowed the ledger's integers: the row was dropped while the guard kept the huge cost,
    so every later request got 402 and the ledger disagreed. Clamped to 10**9 tokens it still cost ~$6,000 and
    exhausted the budget. Now counts past any model's limits are replaced by an estimate from the request, the
    row says so, and guard and ledger hold the same small cost."""
    from ccgate.sidecar.app import PROXY

    absurd = Usage(input_tokens=2**62, output_tokens=2**62)
    async with running_sidecar(config=budget("100000")) as harness:
        harness.upstream.enqueue(TextReply("ok", usage=absurd), TextReply("ok", usage=absurd), TextReply("ok"))
        async with aiohttp.ClientSession() as session:
            streamed = {**body(), "stream": True}
            async with session.post(f"{harness.url}/v1/messages", json=streamed, headers=harness.headers) as resp:
                assert resp.status == 200
                await resp.read()
            assert (await post(session, harness, body()))[0] == 200  # non-streaming, same usage
            assert (await post(session, harness, body()))[0] == 200  # not refused over a cost nobody recorded
            async with session.get(f"{harness.url}/_ccgate/status", headers=harness.headers) as resp:
                (state,) = (await resp.json())["budgets"]
        rows = harness.rows()
        assert [row["status"] for row in rows] == ["ok", "ok", "ok"]
        for row in rows[:2]:
            assert 0 < row["input_tokens"] < 1_000 and 0 < row["output_tokens"] <= body()["max_tokens"]
            assert 0 < row["cost_nanos"] < 10 * ONE_REQUEST_NANOS
            assert row["price_quality"] == "estimated"
            assert "past any context window" in row["cost_note"]
            assert "past any model's output limit" in row["cost_note"]
        assert rows[2]["cost_nanos"] == ONE_REQUEST_NANOS and rows[2]["price_quality"] == "priced"
        assert state["spent_nanos"] == sum(row["cost_nanos"] for row in rows)
        assert harness.app[PROXY].deps.ledger.failed_writes == 0  # type: ignore[attr-defined]


async def test_a_misspelt_budget_edit_leaves_the_running_budget_in_force() -> None:
    from ccgate.paths import resolve_paths

    config_file = resolve_paths().ensure().config_file
    config_file.write_text('[[budgets]]\nperiod = "daily"\nlimit = "0.0001"\n')
    async with running_sidecar() as harness, aiohttp.ClientSession() as session:
        assert (await post(session, harness, body()))[0] == 200  # a lone request may overshoot, once
        assert (await post(session, harness, body()))[0] == 402
        config_file.write_text('[[budget]]\nperiod = "daily"\nlimit = "1000"\n')
        async with session.post(f"{harness.url}/_ccgate/reload", headers=harness.headers) as resp:
            assert resp.status != 200
            message = (await resp.json())["error"]["message"]
        assert "budget is not a ccgate setting" in message and "did you mean budgets?" in message
        assert (await post(session, harness, body()))[0] == 402  # the old budget, not none at all
