"""The scripted upstream behaves like Anthropic's Messages API as the official SDK sees it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import anthropic
import pytest
from anthropic.types import ToolParam
from scripted_upstream import (
    SSE,
    ErrorReply,
    Script,
    ScriptedUpstream,
    StreamReply,
    TextReply,
    ToolUseReply,
    Usage,
    text_events,
)

from ccgate.wire.sse import SSEDecoder

SUPPORT = Path(__file__).parent / "support" / "scripted_upstream.py"


def client(upstream: ScriptedUpstream) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=upstream.url, api_key="sk-ant-dummy", max_retries=0)


async def test_streaming_text_with_usage_is_recorded_and_echoes_model() -> None:
    usage = Usage(input_tokens=11, output_tokens=7, cache_read_input_tokens=5, cache_write_1h_tokens=3)
    async with ScriptedUpstream() as upstream:
        upstream.enqueue(TextReply("hello there", usage=usage))
        async with client(upstream).messages.stream(
            model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    assert text == "hello there"
    assert final.model == "claude-haiku-4-5"
    assert final.id.startswith("msg_")
    assert final.usage.input_tokens == 11
    assert final.usage.output_tokens == 7
    assert final.usage.cache_read_input_tokens == 5
    assert final.usage.cache_creation_input_tokens == 3
    assert final.usage.cache_creation is not None
    assert final.usage.cache_creation.ephemeral_1h_input_tokens == 3
    [request] = upstream.messages_requests
    # this SDK version sends the key as a bearer token; Claude Code uses x-api-key
    credentials = request.headers.get("x-api-key") or request.headers.get("authorization", "")
    assert credentials.endswith("sk-ant-dummy")
    assert request.json["messages"] == [{"role": "user", "content": "hi"}]
    assert request.stream


async def test_non_streaming_reply_and_unique_ids() -> None:
    async with ScriptedUpstream() as upstream:
        sdk = client(upstream)
        first = await sdk.messages.create(model="m-1", max_tokens=5, messages=[{"role": "user", "content": "a"}])
        second = await sdk.messages.with_raw_response.create(
            model="m-2", max_tokens=5, messages=[{"role": "user", "content": "b"}]
        )
    assert first.model == "m-1"
    assert first.content[0].type == "text"
    assert second.headers["request-id"].startswith("req_")
    assert (await second.parse()).id != first.id


async def test_error_reply_reaches_sdk_as_its_error_class() -> None:
    async with ScriptedUpstream() as upstream:
        upstream.enqueue(ErrorReply(429, "rate_limit_error", "slow down", headers={"retry-after": "7"}))
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client(upstream).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.response.headers["retry-after"] == "7"
    assert "slow down" in str(caught.value)


async def test_tool_use_stream_assembles_input() -> None:
    async with ScriptedUpstream() as upstream:
        upstream.enqueue(ToolUseReply(text="Running it."))
        async with client(upstream).messages.stream(
            model="m", max_tokens=50, messages=[{"role": "user", "content": "go"}]
        ) as stream:
            final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    tool = final.content[1]
    assert tool.type == "tool_use"
    assert tool.name == "Bash"
    assert tool.id.startswith("toolu_")
    assert tool.input == {"command": "echo hello-from-tool", "description": "echo"}


async def test_default_reply_follows_claude_code_tool_loop() -> None:
    tools: list[ToolParam] = [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}]
    async with ScriptedUpstream() as upstream:
        sdk = client(upstream)
        call = await sdk.messages.create(
            model="m", max_tokens=50, tools=tools, messages=[{"role": "user", "content": "please run echo"}]
        )
        tool = call.content[-1]
        assert tool.type == "tool_use"
        answer = await sdk.messages.create(
            model="m",
            max_tokens=50,
            tools=tools,
            messages=[
                {"role": "user", "content": "please run echo"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "hello-from-tool\n"}],
                },
            ],
        )
    assert answer.content[0].type == "text"
    assert "hello-from-tool" in answer.content[0].text


async def test_scripts_match_selectively_and_byte_chunking_keeps_events() -> None:
    events = text_events("abc", usage=Usage(input_tokens=2, output_tokens=1))
    async with ScriptedUpstream() as upstream:
        upstream.enqueue(
            Script(StreamReply(events, chunking=[7, 1, 300, 2]), match=lambda r: r.model == "chunky"),
        )
        async with aiohttp.ClientSession() as session:
            plain = await session.post(f"{upstream.url}/v1/messages", json={"model": "plain", "messages": []})
            assert (await plain.json())["model"] == "plain"
            response = await session.post(
                f"{upstream.url}/v1/messages", json={"model": "chunky", "stream": True, "messages": []}
            )
            raw = await response.read()
            count = await session.post(f"{upstream.url}/v1/messages/count_tokens", json={"messages": []})
            assert "input_tokens" in await count.json()
            head = await session.head(upstream.url + "/")
            assert head.status == 200
    decoder = SSEDecoder()
    decoded = decoder.feed(raw) + decoder.flush()
    assert [e.event for e in decoded] == [e.event for e in events]
    assert decoded[0].json()["message"]["model"] == "chunky"
    assert upstream.scripts == []


async def test_stream_cut_then_close_and_then_hang() -> None:
    async with ScriptedUpstream() as upstream:
        upstream.enqueue(
            TextReply("x", cut_after_events=2, then="close"), TextReply("y", cut_after_events=1, then="hang")
        )
        async with aiohttp.ClientSession() as session:
            closed = await session.post(f"{upstream.url}/v1/messages", json={"model": "m", "stream": True})
            with pytest.raises(aiohttp.ClientPayloadError):
                await closed.read()
            hung = await session.post(f"{upstream.url}/v1/messages", json={"model": "m", "stream": True})
            await upstream.wait_for_requests(2)
            first = await hung.content.readuntil(b"\n\n")
            assert b"message_start" in first
            await asyncio.wait_for(upstream.hanging.wait(), 10)
            hung.close()


async def test_handler_callable_and_in_stream_delay() -> None:
    seen: list[str] = []

    def handler(request: object) -> TextReply:
        seen.append("called")
        return TextReply("from handler", event_delay=0.001)

    async with ScriptedUpstream(handler) as upstream:
        reply = await client(upstream).messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert seen == ["called"]
    assert reply.content[0].type == "text"
    assert reply.content[0].text == "from handler"


def test_sse_event_encoding_is_anthropic_framing() -> None:
    assert SSE("ping", {"type": "ping"}).encode() == b'event: ping\ndata: {"type":"ping"}\n\n'


async def test_runs_standalone_with_port_file(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    record = tmp_path / "requests.jsonl"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SUPPORT),
        "--port-file",
        str(port_file),
        "--record",
        str(record),
        stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if port_file.exists():
                break
            await asyncio.sleep(0.05)
        port = int(port_file.read_text())
        sdk = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{port}", api_key="sk-ant-dummy", max_retries=0)
        message = await sdk.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert message.model == "m"
    finally:
        process.terminate()
        await process.wait()
    assert '"path": "/v1/messages"' in record.read_text()
