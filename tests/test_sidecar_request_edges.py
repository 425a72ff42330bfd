"""Requests and replies at the edges: JSON nested past any parser, query strings that must stay as sent."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anthropic
import pytest
from scripted_upstream import RawReply, text_events
from sidecar_harness import Harness, running_sidecar
from yarl import URL

DEPTH = 100_000
DEEP_OBJECT = '{"a":' * DEPTH + "1" + "}" * DEPTH
DEEP_ARRAY = "[" * DEPTH + "]" * DEPTH
CLIENT_HEADERS = {"x-api-key": "sk-ant-user-key", "anthropic-version": "2023-06-01"}


def body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-opus-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


async def post_raw(harness: Harness, path: str, data: bytes) -> tuple[int, bytes]:
    headers = {**harness.headers, **CLIENT_HEADERS, "content-type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        # encoded=True: the client itself must not normalise the query (it would decode %2F, say)
        session.post(URL(f"{harness.url}{path}", encoded=True), data=data, headers=headers) as response,
    ):
        return response.status, await response.read()


def assert_invalid_request(status: int, data: bytes) -> None:
    assert status == 400
    envelope = json.loads(data)
    assert envelope["type"] == "error"
    assert envelope["error"]["type"] == "invalid_request_error"


async def test_a_deeply_nested_user_id_only_loses_the_session_id() -> None:
    async with running_sidecar() as harness:
        client = anthropic.AsyncAnthropic(
            base_url=harness.url, api_key="sk-ant-user-key", default_headers=harness.headers, max_retries=0
        )
        reply = await client.messages.create(
            model="claude-opus-4-5",
            max_tokens=64,
            messages=[{"role": "user", "content": "hi"}],
            metadata={"user_id": DEEP_OBJECT},
        )
        assert reply.content
        [row] = harness.rows()
        assert harness.upstream.messages_requests[0].json["metadata"]["user_id"] == DEEP_OBJECT
    assert row["status"] == "ok"
    assert row["session_id"] is None


@pytest.mark.parametrize(
    "raw",
    [
        # the whole body, metadata, and a message, each nested past any parser's limit
        f'{{"model":"claude-opus-4-5","max_tokens":5,"messages":{DEEP_ARRAY}}}',
        f'{{"model":"claude-opus-4-5","max_tokens":5,"metadata":{DEEP_OBJECT},"messages":[]}}',
        DEEP_ARRAY,
    ],
)
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_a_deeply_nested_body_is_a_400_in_anthropics_envelope(raw: str, path: str) -> None:
    async with running_sidecar() as harness:
        status, data = await post_raw(harness, path, raw.encode())
        assert_invalid_request(status, data)
        assert harness.upstream.requests == []


async def test_a_deeply_nested_launch_registration_is_a_400() -> None:
    async with running_sidecar() as harness:
        status, data = await post_raw(harness, "/_ccgate/launches", DEEP_OBJECT.encode())
        assert_invalid_request(status, data)


async def test_a_deeply_nested_upstream_error_is_passed_on_and_recorded() -> None:
    deep_error = b'{"type":"error","error":' + DEEP_OBJECT.encode() + b"}"
    async with running_sidecar() as harness:
        harness.upstream.enqueue(RawReply(deep_error, status=400))
        status, data = await post_raw(harness, "/v1/messages", json.dumps(body()).encode())
        assert (status, data) == (400, deep_error)
        [row] = harness.rows()
    assert (row["status"], row["http_status"], row["error_type"]) == ("error", 400, "http_400")


async def test_a_deeply_nested_stream_event_is_passed_on_and_recorded() -> None:
    events = text_events("Hello", model="claude-opus-4-5", message_id="msg_01deep")
    head = b"".join(event.encode() for event in events[:-2])  # up to message_delta
    deep_delta = b'event: message_delta\ndata: {"type":"message_delta","delta":' + DEEP_OBJECT.encode() + b"}\n\n"
    async with running_sidecar() as harness:
        harness.upstream.enqueue(RawReply(head + deep_delta, content_type="text/event-stream"))
        status, data = await post_raw(harness, "/v1/messages", json.dumps(body(stream=True)).encode())
        assert (status, data) == (200, head + deep_delta)
        [row] = harness.rows()
    # message_delta could not be read: the reply counts as cut, its output estimated from the bytes seen
    assert (row["status"], row["error_type"]) == ("interrupted", "stream_incomplete")
    assert row["upstream_message_id"] == "msg_01deep"
    assert row["output_tokens"] > 0


@pytest.mark.parametrize(
    "query",
    [
        "a=1%23frag&b=2",
        "beta=true&q=x+y%2Bz%20w&path=%2Fetc%2F&amp=%26&u=%E2%9C%93&empty=&flag",
        "beta=true&raw=a:b@c/d?e",
    ],
)
async def test_the_query_string_reaches_the_provider_exactly_as_sent(query: str) -> None:
    async with running_sidecar() as harness:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            status, _ = await post_raw(harness, f"{path}?{query}", json.dumps(body()).encode())
            assert status == 200
        seen = [request.raw_path for request in harness.upstream.requests]
    assert seen == [f"/v1/messages?{query}", f"/v1/messages/count_tokens?{query}"]
