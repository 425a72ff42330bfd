"""Budgets enforced by the running sidecar: exact under concurrency, 402 that stops Claude Code, never blocking
count_tokens or HEAD."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from scripted_upstream import SSE, StreamReply, TextReply, Usage, text_events
from sidecar_harness import Harness, running_sidecar

from ccgate.core.settings import BudgetSettings, Config

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
        # the upstream sends a ping (message_start would shrink the reservation), then holds the stream open
        harness.upstream.enqueue(StreamReply(events=[SSE("ping", {"type": "ping"})], then="hang"))
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
    from ccgate.local.paths import resolve_paths

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


def budget_config(limit: str, *, wait: float = 30.0) -> Config:
    from ccgate.core.settings import SidecarSettings

    return replace(budget(limit), sidecar=SidecarSettings(budget_wait_seconds=wait))


async def post_stream(session: aiohttp.ClientSession, harness: Harness, payload: dict[str, Any]) -> tuple[int, str]:
    async with session.post(f"{harness.url}/v1/messages", json=payload, headers=harness.headers) as resp:
        return resp.status, await resp.text()


def claude_code_body() -> dict[str, Any]:
    """The size and shape of a real Claude Code request: Opus, 64K max_tokens, ~80 KB of conversation and tools."""
    tools = [
        {"name": f"Tool{i}", "description": "d" * 1_500, "input_schema": {"type": "object", "properties": {}}}
        for i in range(24)
    ]
    return {
        "model": "claude-opus-4-8",
        "max_tokens": 64_000,
        "stream": True,
        "tools": tools,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 42_000}]}],
    }


async def test_requests_billed_beyond_their_bytes_still_overshoot_by_at_most_one() -> None:
    """Tiny bodies that reference an image by URL are billed far more input tokens than they have bytes: the
    reservation must bound that (the model's context window), or 100 concurrent ones overspend freely."""
    limit_nanos = 50_000_000  # $0.05
    billed = Usage(input_tokens=20_000, output_tokens=20)  # claude-haiku-4-5: $0.0201 a request
    one_request = 20_000 * 1_000 + 20 * 5_000
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/chart.png"}}
    payload = body() | {"stream": True, "messages": [{"role": "user", "content": [image]}]}
    async with running_sidecar(config=budget("0.05")) as harness:
        harness.upstream.enqueue(*(TextReply("ok", usage=billed) for _ in range(100)))
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(post_stream(session, harness, payload) for _ in range(100)))
        served = [text for status, text in results if status == 200]
        assert all(status in (200, 402) for status, _ in results)
        spent = sum(row["cost_nanos"] for row in harness.rows())
        assert len(served) >= limit_nanos // one_request  # every request that fitted was served
        assert spent <= limit_nanos + one_request


async def test_claude_code_sized_requests_wait_for_progressing_streams_instead_of_a_402() -> None:
    """Each reserves ~$2.4 (80 KB at the 1h cache-write rate, 64K output at $25/MTok) and costs $0.06, so only
    two fit a $5 budget at once. The others wait for them -- longer than `budget_wait_seconds` in all, since the
    streams in flight keep moving -- and none gets a 402 while most of the budget is unspent."""
    billed = Usage(input_tokens=3_000, cache_read_input_tokens=70_000, output_tokens=400)  # $0.06
    slow = [TextReply("ok", usage=billed, pieces=["a"] * 15, event_delay=0.05) for _ in range(8)]
    async with running_sidecar(config=budget_config("5", wait=0.5)) as harness:
        harness.upstream.enqueue(*slow)
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(post_stream(session, harness, claude_code_body()) for _ in range(8)))
        assert [status for status, _ in results] == [200] * 8, [text for _, text in results if "error" in text]
        assert sum(row["cost_nanos"] for row in harness.rows()) == 8 * 60_000_000


async def test_claude_code_sized_requests_are_served_until_the_budget_is_spent_and_overshoot_by_at_most_one() -> None:
    billed = Usage(input_tokens=60_000, output_tokens=24_000)  # claude-opus-4-8: $0.30 + $0.60
    one_request = 900_000_000
    limit_nanos = 5_000_000_000
    async with running_sidecar(config=budget("5")) as harness:
        harness.upstream.enqueue(*(TextReply("ok", usage=billed, event_delay=0.01) for _ in range(20)))
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(post_stream(session, harness, claude_code_body()) for _ in range(20)))
        served = [status for status, _ in results if status == 200]
        refused = [text for status, text in results if status != 200]
        spent = sum(row["cost_nanos"] for row in harness.rows())
        assert len(served) >= limit_nanos // one_request  # no 402 while what is spent leaves room for one more
        assert spent <= limit_nanos + one_request
        assert all("daily budget reached" in text for text in refused)  # refused for spend, never for reservations


async def test_message_start_shrinks_the_reservation_to_the_real_input_but_not_with_server_tools() -> None:
    async def reserved() -> int:
        async with session.get(f"{harness.url}/_ccgate/status", headers=harness.headers) as resp:
            return int((await resp.json())["budgets"][0]["reserved_nanos"])

    async def reserved_after_message_start(payload: dict[str, Any]) -> int:
        for _ in range(500):  # the previous request's reservation ends when the sidecar sees its client go
            if await reserved() == 0:
                break
            await asyncio.sleep(0.01)
        harness.upstream.enqueue(StreamReply(events=text_events("ok", usage=Usage(100, 20))[:3], then="hang"))
        async with session.post(f"{harness.url}/v1/messages", json=payload, headers=harness.headers) as response:
            assert response.status == 200
            seen = b""
            while b"content_block_start" not in seen:
                seen += await response.content.readany()
            return await reserved()

    plain = body(max_tokens=2_000) | {"stream": True}
    searching = plain | {"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]}
    async with running_sidecar(config=budget("1000")) as harness, aiohttp.ClientSession() as session:
        # claude-haiku-4-5: 100 input tokens at $1/MTok, and the output bound stays: 2,000 tokens at $5/MTok
        assert await reserved_after_message_start(plain) == 100 * 1_000 + 2_000 * 5_000
        # a web search's results join the input after message_start: its context-window bound stays, fees too
        bound = 200_000 * 2_000 + 2_000 * 5_000 + 2 * 10_000_000
        assert await reserved_after_message_start(searching) == bound


async def test_a_budget_already_over_is_logged_as_over_not_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # $0.03 a day, warning from 50 %: the first request ($0.02) crosses the warning, the second runs alone (nothing
    # else in flight) and passes the limit
    config = Config(budgets=(BudgetSettings(period="daily", limit_usd=Decimal("0.03"), warn_at=Decimal("0.5")),))
    caplog.set_level(logging.WARNING, logger="ccgate.sidecar")
    async with running_sidecar(config=config) as harness, aiohttp.ClientSession() as session:
        harness.upstream.enqueue(*(TextReply("ok", usage=Usage(20_000, 0)) for _ in range(2)))
        for _ in range(2):
            assert (await post(session, harness, body()))[0] == 200
        assert (await post(session, harness, body()))[0] == 402
    messages = [r.getMessage() for r in caplog.records if "daily budget" in r.getMessage()]
    assert len(messages) == 2
    assert "$0.02 spent of $0.03 (warning from 50%)" in messages[0]
    assert "over its limit: $0.04 spent of $0.03" in messages[1] and "warning" not in messages[1]


async def test_waiting_for_the_first_byte_counts_as_progress() -> None:
    """A long prompt can take the provider a while before its first byte (and a non-streamed reply sends nothing
    until it is whole): requests waiting for its reservation keep waiting."""
    first = text_events("ok", usage=Usage(100, 20))
    late = [SSE(first[0].event, first[0].data, delay=1.5), *first[1:]]
    async with running_sidecar(config=budget_config("0.05", wait=0.3)) as harness:
        harness.upstream.enqueue(StreamReply(events=late), TextReply("ok"))
        # haiku, 64K output at $5/MTok: each reserves ~$0.32, so the second waits for the first to end
        payload = {**body(max_tokens=10_000), "stream": True}
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(
                post_stream(session, harness, payload), post_stream(session, harness, payload)
            )
        assert [status for status, _ in results] == [200, 200], results
