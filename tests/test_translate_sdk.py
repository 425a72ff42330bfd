"""The official anthropic SDK, as a client, must accept translated streams: a loopback server plays a provider.

The server takes the SDK's Anthropic request, translates it with `anthropic_to_openai_request`, and answers with
scripted OpenAI chunks (shaped like real ones) sent through `OpenAIStreamTranslator` — the same path the sidecar
takes. The first user message names the scenario.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
from aiohttp import web

from ccgate.wire.sse import SSEDecoder
from ccgate.wire.translate import (
    OpenAIStreamTranslator,
    ToolIdMap,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)

MODEL = "claude-opus-4-8"
TOOLS: list[Any] = [
    {
        "name": "Read",
        "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
    {
        "name": "Grep",
        "description": "Search",
        "input_schema": {"type": "object", "properties": {"pattern": {"type": "string"}}},
    },
]
SPLIT_ARGS = '{"path": "src/café/ünï.py", "n": [1, 2.5, null], "ok": true}'


# ---------------------------------------------------------------------------------------------------------------
# the scripted provider


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-9xYz",
        "object": "chat.completion.chunk",
        "created": 1735689600,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {
        "id": "chatcmpl-9xYz",
        "object": "chat.completion.chunk",
        "created": 1735689600,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


def _call(index: int, *, id: str | None = None, name: str | None = None, args: str = "") -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if id is not None:
        call.update(id=id, type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


def scenario_chunks(name: str) -> list[dict[str, Any]]:
    role = _chunk({"role": "assistant", "content": "", "refusal": None})
    if name == "text":
        return [
            role,
            _chunk({"content": "Hello"}),
            _chunk({"content": ", world."}),
            _chunk({}, "stop"),
            _usage(20, 4, 8),
        ]
    if name == "one-tool":
        return [
            role,
            _chunk({"content": "Reading it."}),
            _chunk(_call(0, id="call_r1", name="Read")),
            _chunk(_call(0, args='{"pa')),
            _chunk(_call(0, args='th": "README.md"}')),
            _chunk({}, "tool_calls"),
            _usage(30, 12),
        ]
    if name == "parallel":
        return [
            _chunk({"role": "assistant", "content": None}),
            _chunk(_call(0, id="call_p0", name="Read")),
            _chunk(_call(1, id="call_p1", name="Grep")),
            _chunk(_call(1, args='{"pattern": ')),
            _chunk(_call(0, args='{"path": ')),
            _chunk(_call(0, args='"a.py"}')),
            _chunk(_call(1, args='"TODO"}')),
            _chunk({}, "tool_calls"),
            _usage(40, 20),
        ]
    if name.startswith("split:"):
        cut = int(name.split(":")[1])
        return [
            _chunk({"role": "assistant", "content": None}),
            _chunk(_call(0, id="call_s", name="Read", args=SPLIT_ARGS[:cut])),
            _chunk(_call(0, args=SPLIT_ARGS[cut:])),
            _chunk({}, "tool_calls"),
            _usage(10, 10),
        ]
    if name == "max-tokens":
        return [role, _chunk({"content": "This answer is cut"}), _chunk({}, "length"), _usage(15, 5)]
    if name == "error-chunk":
        error = {"error": {"message": "The server is overloaded, try again", "type": "server_error", "code": None}}
        return [role, _chunk({"content": "partial"}), error]
    raise AssertionError(f"unknown scenario {name}")


def equivalent_completion(name: str) -> dict[str, Any]:
    """The non-streamed reply the same provider would give for a scenario."""
    text = ""
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    usage = None
    for chunk in scenario_chunks(name):
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices", []):
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(
                    call["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                )
                slot["id"] = call.get("id") or slot["id"]
                slot["function"]["name"] = call["function"].get("name") or slot["function"]["name"]
                slot["function"]["arguments"] += call["function"].get("arguments", "")
            finish = choice["finish_reason"] or finish
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {
        "id": "chatcmpl-9xYz",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }


def _upstream_bytes(chunks: list[dict[str, Any]], cut_after: int | None) -> bytes:
    events = [f"data: {json.dumps(c)}\n\n" for c in chunks]
    if cut_after is None:
        events.append("data: [DONE]\n\n")
    else:
        events = events[:cut_after]
    return "".join(events).encode()


async def handle_messages(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    seen: list[dict[str, Any]] = request.app[SEEN]
    openai_body, id_map = anthropic_to_openai_request(body, target_model="gpt-4o-mini", id_map=ToolIdMap(seed="t"))
    seen.append(openai_body)
    first = body["messages"][0]["content"]
    name = first if isinstance(first, str) else first[0]["text"]
    cut_after = None
    if name == "cut":  # the provider's connection drops after the first text delta
        name, cut_after = "text", 2
    if not body.get("stream"):
        message = openai_to_anthropic_response(
            equivalent_completion(name), requested_model=body["model"], id_map=id_map
        )
        return web.json_response(message)

    response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await response.prepare(request)
    translator = OpenAIStreamTranslator(requested_model=body["model"], id_map=id_map)
    decoder = SSEDecoder()
    raw = _upstream_bytes(scenario_chunks(name), cut_after)
    done = False
    for start in range(0, len(raw), 7):  # the provider's bytes arrive in small, arbitrary reads
        for event in decoder.feed(raw[start : start + 7]):
            if event.data == "[DONE]":
                done = True
                break
            for out in translator.feed(event.json()):
                await response.write(out)
        if done or translator.finished:
            break
    if done:
        for out in translator.finish():
            await response.write(out)
    elif not translator.finished:
        for out in translator.error("api_error", "the provider closed the stream early"):
            await response.write(out)
    await response.write_eof()
    return response


SEEN = web.AppKey("seen", list[dict[str, Any]])


@pytest.fixture
async def client() -> AsyncIterator[tuple[anthropic.AsyncAnthropic, list[dict[str, Any]]]]:
    app = web.Application()
    app[SEEN] = []
    app.router.add_post("/v1/messages", handle_messages)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    sdk = anthropic.AsyncAnthropic(base_url=f"http://{host}:{port}", api_key="test", max_retries=0)
    try:
        yield sdk, app[SEEN]
    finally:
        await sdk.close()
        await runner.cleanup()


Client = tuple[anthropic.AsyncAnthropic, list[dict[str, Any]]]


async def stream_final(sdk: anthropic.AsyncAnthropic, scenario: str, **kwargs: Any) -> anthropic.types.Message:
    """The SDK's final message; also checks each tool block's partial_json adds up to complete, valid JSON
    (the SDK's own partial parser would accept truncated JSON)."""
    partial: dict[int, str] = {}
    async with sdk.messages.stream(
        model=MODEL, max_tokens=512, messages=[{"role": "user", "content": scenario}], **kwargs
    ) as stream:
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partial[event.index] = partial.get(event.index, "") + event.delta.partial_json
        message = await stream.get_final_message()
    for index, block in enumerate(message.content):
        if block.type == "tool_use":
            assert json.loads(partial[index]) == block.input
    return message


async def non_streamed(sdk: anthropic.AsyncAnthropic, scenario: str, **kwargs: Any) -> anthropic.types.Message:
    message = await sdk.messages.create(
        model=MODEL, max_tokens=512, messages=[{"role": "user", "content": scenario}], **kwargs
    )
    assert isinstance(message, anthropic.types.Message)
    return message


def same(streamed: anthropic.types.Message, plain: anthropic.types.Message) -> None:
    assert streamed.model_dump(exclude={"id"}) == plain.model_dump(exclude={"id"})


# ---------------------------------------------------------------------------------------------------------------
# tests


async def test_text(client: Client) -> None:
    sdk, seen = client
    message = await stream_final(sdk, "text", system="Be brief.")
    assert message.model == MODEL
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Hello, world.")]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens, message.usage.cache_read_input_tokens) == (
        12,
        4,
        8,
    )
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}
    assert seen[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    same(message, await non_streamed(sdk, "text", system="Be brief."))


async def test_text_events_reach_the_sdk_incrementally(client: Client) -> None:
    sdk, _ = client
    async with sdk.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "text"}]
    ) as stream:
        pieces = [text async for text in stream.text_stream]
    assert pieces == ["Hello", ", world."]


async def test_one_tool_call(client: Client) -> None:
    sdk, seen = client
    message = await stream_final(sdk, "one-tool", tools=TOOLS)
    assert [b.type for b in message.content] == ["text", "tool_use"]
    tool = message.content[1]
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == ("call_r1", "Read", {"path": "README.md"})
    assert message.stop_reason == "tool_use"
    assert seen[0]["tools"][0]["function"]["name"] == "Read"
    same(message, await non_streamed(sdk, "one-tool", tools=TOOLS))


async def test_two_parallel_tool_calls_with_interleaved_deltas(client: Client) -> None:
    sdk, _ = client
    message = await stream_final(sdk, "parallel", tools=TOOLS)
    blocks = [(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    assert blocks == [("call_p0", "Read", {"path": "a.py"}), ("call_p1", "Grep", {"pattern": "TODO"})]
    assert len(message.content) == 2
    same(message, await non_streamed(sdk, "parallel", tools=TOOLS))


async def test_tool_arguments_split_at_every_boundary(client: Client) -> None:
    sdk, _ = client
    expected = json.loads(SPLIT_ARGS)
    for cut in range(len(SPLIT_ARGS) + 1):
        message = await stream_final(sdk, f"split:{cut}", tools=TOOLS)
        tool = message.content[0]
        assert tool.type == "tool_use" and tool.input == expected, cut


async def test_max_tokens_stop(client: Client) -> None:
    sdk, _ = client
    message = await stream_final(sdk, "max-tokens")
    assert message.stop_reason == "max_tokens"
    assert message.content[0].type == "text" and message.content[0].text == "This answer is cut"
    same(message, await non_streamed(sdk, "max-tokens"))


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [("error-chunk", "overloaded"), ("cut", "closed the stream early")],
)
async def test_upstream_error_mid_stream_reaches_the_sdk(client: Client, scenario: str, expected: str) -> None:
    sdk, _ = client
    seen_text: list[str] = []

    async def consume() -> None:
        async with sdk.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": scenario}]
        ) as stream:
            async for text in stream.text_stream:
                seen_text.append(text)

    with pytest.raises(anthropic.APIStatusError) as info:
        await consume()
    assert expected in str(info.value)
    assert seen_text, "the text before the failure was delivered"


async def test_tool_round_trip_keeps_ids(client: Client) -> None:
    """The ids the SDK got back are the ids the provider sees on the next turn."""
    sdk, seen = client
    first = await stream_final(sdk, "one-tool", tools=TOOLS)
    tool = first.content[1]
    assert tool.type == "tool_use"
    follow_up: list[Any] = [
        {"role": "user", "content": "text"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "# readme"}]},
    ]
    async with sdk.messages.stream(model=MODEL, max_tokens=64, messages=follow_up, tools=TOOLS) as stream:
        await stream.get_final_message()
    sent = seen[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_r1"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_r1", "content": "# readme"}
