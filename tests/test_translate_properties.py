"""Properties of the translator: nothing is lost going out, and any chunking of a stream gives the same message.

Streams are assembled with the anthropic SDK's own accumulation (`accumulate_event`, what `messages.stream()`
uses), offline.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, cast

from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccgate.wire.sse import SSEDecoder
from ccgate.wire.translate import (
    OpenAIStreamTranslator,
    ToolIdMap,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)

SETTINGS = settings(deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])
MODEL = "claude-haiku-4-5"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
tool_inputs = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
texts = st.text(min_size=1, max_size=24)
tool_ids = st.from_regex(r"[A-Za-z0-9_-]{1,60}", fullmatch=True)
tool_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,79}", fullmatch=True)
images = st.builds(
    lambda data, as_url: (
        {"type": "image", "source": {"type": "url", "url": f"https://img.test/{data}.png"}}
        if as_url
        else {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    ),
    st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True),
    st.booleans(),
)
cache = st.sampled_from([{}, {"cache_control": {"type": "ephemeral"}}])


# ---------------------------------------------------------------------------------------------------------------
# requests


@st.composite
def anthropic_requests(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(tool_names, min_size=0, max_size=4, unique=True))
    tools: list[dict[str, Any]] = [
        {"name": n, "description": draw(texts), "input_schema": {"type": "object"}, **draw(cache)} for n in names
    ]
    if draw(st.booleans()):
        tools.append({"type": "web_search_20250305", "name": "web_search", "max_uses": 3})
    used_ids: set[str] = set()
    messages: list[dict[str, Any]] = []
    pending_results: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 4)) == 0:
            messages.append({"role": "system", "content": draw(texts)})
        user: list[dict[str, Any]] = [
            {"type": "tool_result", "tool_use_id": tool_id, "content": draw(texts), "is_error": draw(st.booleans())}
            if draw(st.booleans())
            else {"type": "tool_result", "tool_use_id": tool_id, "content": [{"type": "text", "text": draw(texts)}]}
            for tool_id in pending_results
        ]
        user += draw(st.lists(st.one_of(texts.map(lambda t: {"type": "text", "text": t}), images), max_size=3))
        if not user:
            user = [{"type": "text", "text": draw(texts)}]
        messages.append({"role": "user", "content": user})
        pending_results = []
        assistant: list[dict[str, Any]] = []
        if draw(st.booleans()):
            assistant.append({"type": "thinking", "thinking": draw(texts), "signature": "sig"})
        assistant += [{"type": "text", "text": t} for t in draw(st.lists(texts, max_size=2))]
        for _ in range(draw(st.integers(0, 3)) if names else 0):
            tool_id = draw(tool_ids.filter(lambda i: i not in used_ids))
            used_ids.add(tool_id)
            pending_results.append(tool_id)
            assistant.append(
                {"type": "tool_use", "id": tool_id, "name": draw(st.sampled_from(names)), "input": draw(tool_inputs)}
            )
        if not assistant:
            assistant = [{"type": "text", "text": draw(texts)}]
        messages.append({"role": "assistant", "content": assistant})
    final_user: list[dict[str, Any]] = [
        {"type": "tool_result", "tool_use_id": tool_id, "content": draw(texts)} for tool_id in pending_results
    ]
    if final_user:
        messages.append({"role": "user", "content": final_user})
    else:
        messages.append({"role": "user", "content": draw(texts)})

    body: dict[str, Any] = {"model": MODEL, "max_tokens": draw(st.integers(1, 64000)), "messages": messages}
    system = draw(st.one_of(st.none(), texts, st.lists(texts.map(lambda t: {"type": "text", "text": t}), max_size=3)))
    if system is not None:
        body["system"] = system
    if tools:
        body["tools"] = tools
        choices = [{"type": "auto"}, {"type": "none"}] + ([{"type": "any"}] if names else [])
        choices += [{"type": "tool", "name": n} for n in names]
        body["tool_choice"] = draw(st.sampled_from(choices))
    for key, strategy in (
        ("temperature", st.floats(0, 1)),
        ("top_p", st.floats(0, 1)),
        ("stop_sequences", st.lists(texts, max_size=3)),
        ("stream", st.booleans()),
        ("metadata", st.just({"user_id": "u"})),
    ):
        if draw(st.booleans()):
            body[key] = draw(strategy)
    return body


_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ALLOWED_KEYS = {
    "model",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "stream",
    "stream_options",
    "user",
}


def assert_valid_openai_request(out: dict[str, Any]) -> None:
    """The rules OpenAI's API enforces on a chat completions body (the ones a translation can break)."""
    json.dumps(out)
    assert set(out) <= _ALLOWED_KEYS
    if "stream_options" in out:
        assert out.get("stream") is True
    function_names = {tool["function"]["name"] for tool in out.get("tools", [])}
    for tool in out.get("tools", []):
        assert tool["type"] == "function" and _FUNCTION_NAME.match(tool["function"]["name"])
        assert isinstance(tool["function"]["parameters"], dict)
    choice = out.get("tool_choice")
    if isinstance(choice, dict):
        assert choice["function"]["name"] in function_names
    else:
        assert choice in (None, "auto", "none", "required")
        assert choice is None or function_names
    awaiting: set[str] = set()
    previous_role = None
    for message in out["messages"]:
        role = message["role"]
        assert role in ("system", "user", "assistant", "tool")
        if role == "tool":
            assert previous_role in ("assistant", "tool") and message["tool_call_id"] in awaiting
            awaiting.discard(message["tool_call_id"])
            assert isinstance(message["content"], str)
        else:
            assert not awaiting, "every tool call is answered right after the assistant message"
        if role == "assistant":
            assert message["content"] is None or isinstance(message["content"], str)
            calls = message.get("tool_calls", [])
            assert message["content"] is not None or calls
            for call in calls:
                assert call["type"] == "function" and len(call["id"]) <= 40
                assert _FUNCTION_NAME.match(call["function"]["name"])
                assert isinstance(json.loads(call["function"]["arguments"]), dict)
            awaiting = {call["id"] for call in calls}
            assert len(awaiting) == len(calls)
        if role in ("system", "user"):
            content = message["content"]
            if isinstance(content, list):
                for part in content:
                    assert part["type"] in ("text", "image_url", "file")
                    if part["type"] == "image_url":
                        assert part["image_url"]["url"].startswith(("data:image/", "https://"))
            else:
                assert isinstance(content, str)
        previous_role = role


def _contents(out: dict[str, Any], role: str) -> str:
    pieces: list[str] = []
    for message in out["messages"]:
        if message["role"] == role:
            content = message["content"]
            if isinstance(content, str):
                pieces.append(content)
            elif isinstance(content, list):
                pieces += [part.get("text", "") for part in content]
    return "\x00".join(pieces)


@SETTINGS
@given(anthropic_requests())
def test_any_request_maps_to_a_valid_request_that_keeps_everything(body: dict[str, Any]) -> None:
    out, id_map = anthropic_to_openai_request(body, target_model="gpt-x")
    assert_valid_openai_request(out)
    system_text, user_text = _contents(out, "system"), _contents(out, "user")
    assistant_text, tool_text = _contents(out, "assistant"), _contents(out, "tool")
    system = body.get("system")
    for text in [system] if isinstance(system, str) else [b["text"] for b in system or []]:
        assert text in system_text
    calls = {call["id"]: call["function"] for message in out["messages"] for call in message.get("tool_calls", [])}
    results = {m["tool_call_id"]: m["content"] for m in out["messages"] if m["role"] == "tool"}
    image_count = 0
    for message in body["messages"]:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            if block["type"] == "text":
                haystack = {"system": system_text, "user": user_text, "assistant": assistant_text}[message["role"]]
                assert block["text"] in haystack
            elif block["type"] == "image":
                image_count += 1
            elif block["type"] == "tool_use":
                function = calls[id_map.provider_id(block["id"])]
                assert id_map.anthropic_name(function["name"]) == block["name"]
                assert json.loads(function["arguments"]) == block["input"]
            elif block["type"] == "tool_result":
                result = results[id_map.provider_id(block["tool_use_id"])]
                inner = block["content"]
                text = inner if isinstance(inner, str) else inner[0]["text"]
                assert text in result
                assert text in tool_text
    assert json.dumps(out).count('"type": "image_url"') == image_count
    keys, types = _keys_and_types(out)
    assert not keys & {"cache_control", "thinking", "signature", "metadata"}
    assert not types & {"thinking", "redacted_thinking", "web_search_20250305", "image", "tool_use", "tool_result"}
    assert "web_search" not in {tool["function"]["name"] for tool in out.get("tools", [])}


def _keys_and_types(value: Any) -> tuple[set[str], set[str]]:
    keys: set[str] = set()
    types: set[str] = set()
    if isinstance(value, dict):
        keys |= set(value)
        if isinstance(value.get("type"), str):
            types.add(value["type"])
        items = list(value.values())
    else:
        items = value if isinstance(value, list) else []
    for item in items:
        k, t = _keys_and_types(item)
        keys, types = keys | k, types | t
    return keys, types


# ---------------------------------------------------------------------------------------------------------------
# streams


arguments = st.one_of(tool_inputs.map(lambda d: json.dumps(d, ensure_ascii=False)), st.text(max_size=20))
calls_strategy = st.lists(
    st.tuples(st.sampled_from(["", "dup", "call_1", "call_2", "call_3", "bad:id"]), tool_names, arguments),
    max_size=4,
)


def _split(draw: st.DrawFn, text: str) -> list[str]:
    if not text:
        return []
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=min(5, len(text)))))
    bounds = [0, *[c for c in cuts if 0 < c < len(text)], len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-prop",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-x",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


@st.composite
def replies(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A non-streamed reply and one arbitrary chunking of the same reply as a stream."""
    text = draw(st.text(max_size=40))
    calls = draw(calls_strategy)
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter", None]))
    prompt = draw(st.integers(0, 10_000))
    usage = draw(
        st.one_of(
            st.none(),
            st.builds(
                lambda cached, out: {
                    "prompt_tokens": prompt,
                    "completion_tokens": out,
                    "total_tokens": prompt + out,
                    "prompt_tokens_details": {"cached_tokens": cached},
                },
                st.integers(0, prompt),
                st.integers(0, 5000),
            ),
        )
    )
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}} for cid, name, args in calls
        ]
    full = {
        "id": "chatcmpl-prop",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }

    # one sequence of deltas per source, merged in a random order that keeps each sequence's own order
    sequences: list[list[dict[str, Any]]] = [[{"content": piece} for piece in _split(draw, text)]]
    for index, (cid, name, args) in enumerate(calls):
        pieces = _split(draw, args) or [""]
        first = {"index": index, "id": cid, "type": "function", "function": {"name": name, "arguments": pieces[0]}}
        rest = [{"index": index, "function": {"arguments": piece}} for piece in pieces[1:]]
        sequences.append([{"tool_calls": [call]} for call in [first, *rest]])
    deltas: list[dict[str, Any]] = []
    while any(sequences):
        live = [s for s in sequences if s]
        deltas.append(draw(st.sampled_from(live)).pop(0))
    chunks = [_chunk({"role": "assistant", "content": ""})] + [_chunk(d) for d in deltas]
    if finish is not None:
        chunks.append(_chunk({}, finish))
    if usage is not None:
        if draw(st.booleans()):
            chunks.append({"id": "chatcmpl-prop", "object": "chat.completion.chunk", "choices": [], "usage": usage})
        else:
            chunks[-1]["usage"] = usage  # some providers put usage on the last chunk
    return full, chunks


def _assemble(encoded: bytes, cuts: list[int]) -> dict[str, Any]:
    decoder = SSEDecoder()
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(encoded)), len(encoded)]
    events = [e for a, b in itertools.pairwise(bounds) for e in decoder.feed(encoded[a:b])]
    events += decoder.flush()
    snapshot: Any = None
    buffers: dict[int, bytes] = {}
    partial: dict[int, str] = {}
    open_block: int | None = None
    for event in events:
        data = event.json()
        assert event.event == data["type"]
        if data["type"] == "ping":
            continue
        if data["type"] == "content_block_start":
            assert open_block is None
            open_block = data["index"]
        elif data["type"] == "content_block_stop":
            assert open_block == data["index"]
            open_block = None
        elif data["type"] == "content_block_delta":
            assert open_block == data["index"]
            if data["delta"]["type"] == "input_json_delta":
                partial[data["index"]] = partial.get(data["index"], "") + data["delta"]["partial_json"]
        snapshot = accumulate_event(
            event=cast(RawMessageStreamEvent, data), current_snapshot=snapshot, json_bufs=buffers
        )
    assert events[-1].event == "message_stop"
    message = Message.model_validate(snapshot.to_dict()).model_dump(mode="json", exclude_none=True)
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            assert json.loads(partial[index]) == block["input"]
    return message


@SETTINGS
@given(replies(), st.lists(st.integers(0, 100_000), max_size=8))
def test_any_chunking_assembles_into_the_non_streamed_message(
    reply: tuple[dict[str, Any], list[dict[str, Any]]], byte_cuts: list[int]
) -> None:
    full, chunks = reply
    stops = ("END",)
    translator = OpenAIStreamTranslator(
        requested_model=MODEL, id_map=ToolIdMap(seed="p", stop_sequences=stops), message_id="msg_p"
    )
    encoded = b"".join(out for c in chunks for out in translator.feed(c)) + b"".join(translator.finish())
    streamed = _assemble(encoded, byte_cuts)
    expected = openai_to_anthropic_response(
        full, requested_model=MODEL, id_map=ToolIdMap(seed="p", stop_sequences=stops), message_id="msg_p"
    )
    assert streamed == Message.model_validate(expected).model_dump(mode="json", exclude_none=True)
    assert streamed["model"] == MODEL
    assert translator.usage.output_tokens == expected["usage"]["output_tokens"]
    assert translator.usage.cache_read_tokens == expected["usage"]["cache_read_input_tokens"]


usages = st.fixed_dictionaries({"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**5)})
# Chunk shapes around the translator's plain-text fast path: each must translate exactly as the general path does.
chunk_choices = st.fixed_dictionaries(
    {
        "index": st.sampled_from([0, 1, None]),
        "delta": st.dictionaries(
            st.sampled_from(["content", "role", "refusal", "tool_calls"]),
            st.none()
            | texts
            | st.just("")
            | st.just([{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{}"}}]),
            max_size=3,
        ),
    },
    optional={"finish_reason": st.none() | st.sampled_from(["stop", "length", "tool_calls"])},
)
stream_chunks = st.fixed_dictionaries(
    {"id": st.just("chatcmpl-1"), "choices": st.lists(chunk_choices | st.just("junk"), max_size=2)},
    optional={
        "usage": st.none() | usages,
        "x_groq": st.fixed_dictionaries({"usage": usages}),
        "error": st.none() | st.just({"message": "boom"}),
    },
)


# the common chunk, then the same with one thing that must send it down the general path
plain_chunks = st.builds(
    lambda text, extra, delta_extra, index, finish: {
        "id": "chatcmpl-1",
        "choices": [{"index": index, "delta": {"content": text, **delta_extra}, "finish_reason": finish}],
        **extra,
    },
    texts,
    st.just({})
    | st.fixed_dictionaries({"usage": st.none() | usages})
    | st.fixed_dictionaries({"x_groq": st.fixed_dictionaries({"usage": usages})}),
    st.just({})
    | st.fixed_dictionaries({"role": st.just("assistant")})
    | st.fixed_dictionaries({"refusal": st.none() | texts}),
    st.sampled_from([0, 0, 0, None, 1]),
    st.sampled_from([None, None, None, "stop"]),
)


@SETTINGS
@given(chunks=st.lists(plain_chunks | plain_chunks | stream_chunks, max_size=12))
def test_plain_text_fast_path_matches_the_general_path(chunks: list[dict[str, Any]]) -> None:
    fast = OpenAIStreamTranslator(requested_model=MODEL, id_map=ToolIdMap(), message_id="msg_same")
    general = OpenAIStreamTranslator(requested_model=MODEL, id_map=ToolIdMap(), message_id="msg_same")
    general._plain_text = lambda chunk: None  # type: ignore[method-assign]

    def same_ids(events: list[bytes]) -> list[bytes]:  # tool ids are minted at random per translator
        return [re.sub(rb"toolu_[0-9a-f]+", b"toolu_x", event) for event in events]

    for chunk in chunks:
        assert same_ids(fast.feed(chunk)) == same_ids(general.feed(chunk))
        assert fast.usage == general.usage
    assert same_ids(fast.finish()) == same_ids(general.finish())
    assert fast.usage == general.usage
