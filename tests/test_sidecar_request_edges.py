"""Requests and replies at the edges: JSON nested past any parser, query strings that must stay as sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp import web
from scripted_upstream import RawReply, text_events
from sidecar_harness import Harness, running_sidecar
from yarl import URL

from ccgate.core.settings import Config, TierSettings

DEPTH = 100_000
DEEP_OBJECT = '{"a":' * DEPTH + "1" + "}" * DEPTH
DEEP_ARRAY = "[" * DEPTH + "]" * DEPTH
HAIKU_TO_OPENAI = Config(tiers={"haiku": TierSettings("haiku", ("openai/gpt-4o-mini",))})
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


@asynccontextmanager
async def raw_openai(replies: list[tuple[int, str, bytes]]) -> AsyncIterator[str]:
    """An OpenAI-compatible upstream answering each request with the next (status, content type, bytes)."""

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        status, content_type, data = replies.pop(0)
        return web.Response(body=data, status=status, headers={"content-type": content_type})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


def completion(arguments: str) -> bytes:
    call = {"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": "ARGS"}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    reply = {
        "id": "chatcmpl-1",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }
    return json.dumps(reply).replace('"ARGS"', json.dumps(arguments)).encode()


def tool_call_chunks(arguments_json: str) -> bytes:
    """A stream whose tool call's `arguments` is a JSON object (some providers send that), not a string."""
    head = {"id": "chatcmpl-1", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    call = '{"index":0,"id":"call_1","type":"function","function":{"name":"Bash","arguments":' + arguments_json + "}}"
    chunk = '{"id":"chatcmpl-1","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"tool_calls":[' + call + "]}}]}"
    return f"data: {json.dumps(head)}\n\ndata: {chunk}\n\ndata: [DONE]\n\n".encode()


async def test_deeply_nested_json_from_an_openai_provider_is_never_a_500() -> None:
    deep_error = b'{"error":' + DEEP_OBJECT.encode() + b"}"
    deep_but_orjson_readable = '{"a":' * 1010 + "1" + "}" * 1010  # past what json.dumps writes back
    replies = [
        (200, "application/json", completion(DEEP_OBJECT)),
        (400, "application/json", deep_error),
        (200, "text/event-stream", tool_call_chunks(deep_but_orjson_readable)),
    ]
    async with raw_openai(replies) as base_url:
        environ = {"CCGATE_OPENAI_BASE_URL": base_url, "CCGATE_OPENAI_API_KEY": "sk-openai-secret"}
        async with running_sidecar(config=HAIKU_TO_OPENAI, environ=environ) as harness:
            haiku = json.dumps({**body(), "model": "claude-haiku-4-5"})
            status, data = await post_raw(harness, "/v1/messages", haiku.encode())
            assert status == 200
            [tool_use] = json.loads(data)["content"]
            assert tool_use["input"] == {"_raw": DEEP_OBJECT}  # kept verbatim, as any unreadable arguments
            status, data = await post_raw(harness, "/v1/messages", haiku.encode())
            assert_invalid_request(status, data)
            streamed = json.dumps({**body(stream=True), "model": "claude-haiku-4-5"})
            status, data = await post_raw(harness, "/v1/messages", streamed.encode())
            assert status == 200
            assert b"event: error" in data and b"nested too deeply" in data
            rows = harness.rows()
    assert [(row["status"], row["http_status"]) for row in rows] == [("ok", 200), ("error", 400), ("error", 200)]
    assert "nested too deeply" in rows[2]["error_message"]


async def _raw_exchange(url: str, head: bytes) -> bytes:
    """One request written byte for byte (a client library would refuse these bytes); the whole answer."""
    import asyncio

    host, port = URL(url).host, URL(url).port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


@pytest.mark.parametrize("value", [b"\xff\xfe", b"cgt-\xc3", b"\x80" * 40])
async def test_a_token_header_of_bytes_that_are_not_utf8_is_a_401_not_a_500(value: bytes) -> None:
    """aiohttp decodes such bytes to surrogates, which cannot be encoded again: a 500 and a traceback before."""
    async with running_sidecar() as harness:
        answer = await _raw_exchange(
            harness.url,
            b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-ccgate-token: " + value + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 401 Unauthorized", answer[:300]
        assert b"authentication_error" in rest
        assert harness.upstream.requests == []
