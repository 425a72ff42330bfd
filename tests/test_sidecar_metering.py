"""What the ledger holds when a provider's usage cannot be believed: unreadable, negative, or past any model."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from scripted_upstream import SSE, JSONReply, RawReply, StreamReply
from sidecar_harness import Harness, running_sidecar

from ccgate.core.records import Usage
from ccgate.core.usage import MAX_PLAUSIBLE_INPUT_TOKENS, MAX_PLAUSIBLE_OUTPUT_TOKENS, implausible_usage

MAX_TOKENS = 1024


def body(*, stream: bool) -> dict[str, Any]:
    return {
        "model": "claude-opus-4-5",
        "max_tokens": MAX_TOKENS,
        "stream": stream,
        "messages": [{"role": "user", "content": "Tell me about the sea. " * 200}],
    }


async def post(harness: Harness, payload: dict[str, Any]) -> tuple[int, bytes]:
    headers = {**harness.headers, "x-api-key": "sk-ant-user-key", "anthropic-version": "2023-06-01"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{harness.url}/v1/messages", json=payload, headers=headers) as response,
    ):
        return response.status, await response.read()


def message(usage: Any) -> dict[str, Any]:
    return {
        "id": "msg_01odd",
        "type": "message",
        "role": "assistant",
        "model": "claude-opus-4-5",
        "content": [{"type": "text", "text": "The sea is large. " * 20}],
        "stop_reason": "end_turn",
        "usage": usage,
    }


def stream_events(start_usage: Any, final_usage: Any) -> list[SSE]:
    start = {"type": "message_start", "message": {**message(start_usage), "content": [], "stop_reason": None}}
    deltas = [
        SSE(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "The sea is large. "}},
        )
        for _ in range(20)
    ]
    return [
        SSE("message_start", start),
        SSE("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
        *deltas,
        SSE("content_block_stop", {"type": "content_block_stop", "index": 0}),
        SSE("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": final_usage}),
        SSE("message_stop", {"type": "message_stop"}),
    ]


def assert_estimated(row: dict[str, Any], *, note: str) -> None:
    """An estimate from the request and the reply: some tokens each way, output within max_tokens, a few cents."""
    assert row["status"] == "ok"
    assert row["price_quality"] == "estimated"
    assert note in row["cost_note"]
    assert row["cost_note"].startswith("tokens estimated: ")
    assert 0 < row["input_tokens"] < 10_000
    assert 0 < row["output_tokens"] <= MAX_TOKENS
    assert 0 < row["cost_nanos"] < 10**9  # under a dollar, not the thousands an absurd count would cost


@pytest.mark.parametrize(
    ("reply", "note"),
    [
        (RawReply(b'{"id": "msg_01cut", "type": "message", "usage": {"input_tok'), "not a JSON object"),
        (RawReply(b"<html>gateway says hi</html>", content_type="text/html"), "not a JSON object"),
        (RawReply(b'{"usage":' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "not a JSON object"),
        (JSONReply(message(None)), "the provider reported no usage"),
        (JSONReply(message({"input_tokens": -40, "output_tokens": -3})), "usage.input_tokens: -40"),
        (JSONReply(message({"input_tokens": 10**12, "output_tokens": 10**15})), "past any context window"),
    ],
)
async def test_a_whole_reply_with_unusable_usage_is_billed_an_estimate(reply: Any, note: str) -> None:
    async with running_sidecar() as harness:
        harness.upstream.enqueue(reply)
        status, data = await post(harness, body(stream=False))
        assert status == 200
        assert data == (reply.body if isinstance(reply, RawReply) else json.dumps(reply.body).encode())
        [row] = harness.rows()
        assert_estimated(row, note=note)


async def test_only_the_unusable_side_is_estimated() -> None:
    usage = {"input_tokens": 300, "cache_read_input_tokens": 1000, "output_tokens": 2_000_000_000_000}
    async with running_sidecar() as harness:
        harness.upstream.enqueue(JSONReply(message(usage)))
        await post(harness, body(stream=False))
        [row] = harness.rows()
    assert (row["input_tokens"], row["cache_read_tokens"]) == (300, 1000)
    assert 0 < row["output_tokens"] <= MAX_TOKENS
    assert row["price_quality"] == "estimated"
    assert "past any model's output limit" in row["cost_note"]


@pytest.mark.parametrize(
    ("start_usage", "final_usage", "note"),
    [
        ({"input_tokens": 5_000_000_000, "output_tokens": 1}, {"output_tokens": 30}, "past any context window"),
        ({"input_tokens": 20, "output_tokens": 1}, {"output_tokens": 10**18}, "past any model's output limit"),
        ({"input_tokens": 20, "output_tokens": 1}, {"output_tokens": -7}, "usage.output_tokens: -7"),
        ({"input_tokens": "many", "output_tokens": 1}, {"output_tokens": 30}, "usage.input_tokens: 'many'"),
        (None, {"output_tokens": 30}, "the provider reported no usage"),
    ],
)
async def test_a_stream_with_unusable_usage_is_billed_an_estimate(
    start_usage: Any, final_usage: Any, note: str
) -> None:
    async with running_sidecar() as harness:
        harness.upstream.enqueue(StreamReply(stream_events(start_usage, final_usage)))
        status, _ = await post(harness, body(stream=True))
        assert status == 200
        [row] = harness.rows()
    assert_estimated(row, note=note)


async def test_believable_usage_is_recorded_as_reported() -> None:
    usage = {"input_tokens": 20, "cache_read_input_tokens": 900_000, "output_tokens": 100_000}
    async with running_sidecar() as harness:
        harness.upstream.enqueue(StreamReply(stream_events(usage, {"output_tokens": 100_000})))
        await post(harness, body(stream=True))
        [row] = harness.rows()
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (20, 900_000, 100_000)
    assert row["price_quality"] == "priced"
    assert row["cost_note"] is None


def test_the_ceilings_sit_above_every_model() -> None:
    at_the_limit = Usage(
        input_tokens=MAX_PLAUSIBLE_INPUT_TOKENS - 2,
        cache_read_tokens=1,
        cache_write_1h_tokens=1,
        output_tokens=MAX_PLAUSIBLE_OUTPUT_TOKENS,
    )
    assert implausible_usage(at_the_limit) == {}
    assert set(implausible_usage(Usage(input_tokens=1, cache_read_tokens=MAX_PLAUSIBLE_INPUT_TOKENS))) == {"input"}
    assert set(implausible_usage(Usage(output_tokens=MAX_PLAUSIBLE_OUTPUT_TOKENS + 1))) == {"output"}


async def test_counts_left_out_of_message_start_and_given_in_message_delta_are_believed() -> None:
    """Some Anthropic-compatible providers count only at the end: the delta settles what the start left out."""
    async with running_sidecar() as harness:
        events = stream_events(None, {"input_tokens": 20, "output_tokens": 30})
        events[1] = replace(events[1], delay=0.2)  # message_start is read (and its progress written) on its own
        harness.upstream.enqueue(StreamReply(events))
        await post(harness, body(stream=True))
        [row] = harness.rows()
    assert (row["input_tokens"], row["output_tokens"]) == (20, 30)
    assert (row["price_quality"], row["cost_note"]) == ("priced", None)


async def test_an_openai_provider_reporting_usage_past_any_model_is_billed_an_estimate() -> None:
    from openai_upstream import OpenAIReply, OpenAIUpstream

    from ccgate.core.settings import Config, TierSettings

    config = Config(tiers={"haiku": TierSettings("haiku", ("openai/gpt-4o-mini",))})
    async with OpenAIUpstream() as openai_mock:
        openai_mock.replies.append(OpenAIReply(prompt_tokens=10**13, completion_tokens=10**13))
        openai_mock.replies.append(OpenAIReply(prompt_tokens=10**13, completion_tokens=10**13))
        environ = {"CCGATE_OPENAI_BASE_URL": openai_mock.base_url, "CCGATE_OPENAI_API_KEY": "sk-openai-secret"}
        async with running_sidecar(config=config, environ=environ) as harness:
            for stream in (False, True):
                status, _ = await post(harness, {**body(stream=stream), "model": "claude-haiku-4-5"})
                assert status == 200
            rows = harness.rows()
    for row in rows:
        assert_estimated(row, note="past any context window")
        assert "past any model's output limit" in row["cost_note"]
