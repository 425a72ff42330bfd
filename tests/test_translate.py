"""Unit tests for the Anthropic <-> OpenAI translator: every mapping, with plain data."""

from __future__ import annotations

import copy
import json
from typing import Any, cast

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from ccgate.core.records import Usage
from ccgate.core.usage import usage_from_openai
from ccgate.errors import InvalidRequestError
from ccgate.wire.sse import SSEDecoder
from ccgate.wire.translate import (
    OpenAIStreamTranslator,
    ToolIdMap,
    anthropic_to_openai_request,
    estimate_input_tokens,
    openai_error_to_anthropic,
    openai_stream_to_anthropic_events,
    openai_to_anthropic_response,
)

MODEL = "claude-haiku-4-5"
_EVENT = TypeAdapter(RawMessageStreamEvent)


# ---------------------------------------------------------------------------------------------------------------
# helpers


def req(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 256, "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return body


def translate(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    out, _ = anthropic_to_openai_request(body, target_model="gpt-test", **kwargs)
    return out


def decode(chunks: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    decoder = SSEDecoder()
    events = [e for c in chunks for e in decoder.feed(c)] + decoder.flush()
    out: list[tuple[str, dict[str, Any]]] = []
    for event in events:
        data = event.json()
        assert event.event is not None and event.event == data["type"], "the SSE event name must match its type"
        out.append((event.event, data))
    return out


def check_grammar(events: list[tuple[str, dict[str, Any]]], *, model: str = MODEL) -> None:
    """Anthropic's stream grammar: message_start, blocks one at a time with rising indices, message_delta, stop."""
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    open_index: int | None = None
    next_index = 0
    for name, data in events:
        if name != "error":
            _EVENT.validate_python(data) if name != "ping" else None
        if name == "message_start":
            assert data["message"]["model"] == model
            assert data["message"]["content"] == []
        elif name == "content_block_start":
            assert open_index is None, "a block started before the previous one stopped"
            assert data["index"] == next_index
            open_index = next_index
            next_index += 1
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        elif name == "message_delta":
            assert open_index is None
    assert open_index is None


def accumulate(chunks: list[bytes]) -> dict[str, Any]:
    """What the anthropic SDK's stream helpers build from these events; each tool block's partial_json must
    also add up to complete JSON equal to its input (the SDK's partial parser alone would accept a truncation)."""
    snapshot: Any = None
    buffers: dict[int, bytes] = {}
    partial: dict[int, str] = {}
    for name, data in decode(chunks):
        if name == "ping":
            continue
        assert name != "error", data
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            partial[data["index"]] = partial.get(data["index"], "") + data["delta"]["partial_json"]
        snapshot = accumulate_event(
            event=cast(RawMessageStreamEvent, data), current_snapshot=snapshot, json_bufs=buffers
        )
    assert snapshot is not None
    message = canonical(snapshot.to_dict())
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            assert json.loads(partial[index]) == block["input"]
    return message


def canonical(message: dict[str, Any]) -> dict[str, Any]:
    return Message.model_validate(message).model_dump(mode="json", exclude_none=True)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}],
    }
    base.update(extra)
    return base


def usage_chunk(prompt: int = 10, completion: int = 5, cached: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"id": "chatcmpl-abc123", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test",
            "choices": [], "usage": usage}  # fmt: skip


def tool_delta(
    index: int, *, id: str | None = None, name: str | None = None, args: str | None = None
) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index}
    if id is not None:
        call["id"] = id
        call["type"] = "function"
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if args is not None:
        function["arguments"] = args
    call["function"] = function
    return {"tool_calls": [call]}


def run_stream(
    chunks: list[dict[str, Any]], id_map: ToolIdMap | None = None
) -> tuple[list[bytes], OpenAIStreamTranslator]:
    translator = OpenAIStreamTranslator(requested_model=MODEL, id_map=id_map or ToolIdMap(seed="s"), message_id="msg_1")
    out: list[bytes] = []
    for c in chunks:
        out.extend(translator.feed(c))
    out.extend(translator.finish())
    return out, translator


def completion(
    message: dict[str, Any], finish: str | None = "stop", usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        "usage": usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def respond(resp: dict[str, Any], id_map: ToolIdMap | None = None) -> dict[str, Any]:
    return openai_to_anthropic_response(resp, requested_model=MODEL, id_map=id_map or ToolIdMap(seed="s"))


# ---------------------------------------------------------------------------------------------------------------
# request: system, text, images


def test_system_string_becomes_first_system_message() -> None:
    out = translate(req(system="Be terse."))
    assert out["messages"][0] == {"role": "system", "content": "Be terse."}
    assert out["messages"][1] == {"role": "user", "content": "hi"}
    assert out["model"] == "gpt-test"


def test_system_blocks_are_joined_and_cache_control_removed() -> None:
    system = [
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": "Project rules.", "cache_control": {"type": "ephemeral"}},
    ]
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]
    out = translate(req(system=system, messages=messages))
    assert out["messages"][0] == {"role": "system", "content": "You are Claude Code.\n\nProject rules."}
    assert "cache_control" not in json.dumps(out)


def test_system_entries_inside_messages_stay_in_place() -> None:
    messages = [
        {"role": "system", "content": "reminder one"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": [{"type": "text", "text": "reminder two"}]},
        {"role": "user", "content": "again"},
    ]
    out = translate(req(system="top", messages=messages))
    assert [(m["role"], m["content"]) for m in out["messages"]] == [
        ("system", "top"),
        ("system", "reminder one"),
        ("user", "hi"),
        ("assistant", "hello"),
        ("system", "reminder two"),
        ("user", "again"),
    ]


def test_text_blocks_collapse_to_a_string() -> None:
    content = [{"type": "text", "text": "<system-reminder>x</system-reminder>"}, {"type": "text", "text": "do it"}]
    out = translate(req(messages=[{"role": "user", "content": content}]))
    assert out["messages"] == [{"role": "user", "content": "<system-reminder>x</system-reminder>\ndo it"}]


def test_images_base64_and_url() -> None:
    content = [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.png"}},
    ]
    out = translate(req(messages=[{"role": "user", "content": content}]))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}},
    ]


def test_image_from_files_api_is_refused_with_a_hint() -> None:
    content = [{"type": "image", "source": {"type": "file", "file_id": "file_1"}}]
    with pytest.raises(InvalidRequestError, match="image source type 'file'") as info:
        translate(req(messages=[{"role": "user", "content": content}]))
    assert info.value.hint and "anthropic" in info.value.hint


def test_documents_text_and_pdf() -> None:
    content = [
        {"type": "document", "title": "notes", "source": {"type": "text", "media_type": "text/plain", "data": "abc"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
    ]
    out = translate(req(messages=[{"role": "user", "content": content}]))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "notes\nabc"},
        {"type": "file", "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
    ]


def test_unknown_block_type_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="'hologram'"):
        translate(req(messages=[{"role": "user", "content": [{"type": "hologram"}]}]))


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL},
        {"model": MODEL, "messages": "hi"},
        {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]},
        {"model": MODEL, "messages": [{"role": "user", "content": 3}]},
        {"model": MODEL, "messages": [], "stop_sequences": "END"},
    ],
)
def test_malformed_requests_raise_invalid_request(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError):
        translate(body)


def test_input_body_is_not_mutated() -> None:
    body = req(
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        tools=[{"name": "t", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
        stream=True,
    )
    before = copy.deepcopy(body)
    translate(body)
    assert body == before


# ---------------------------------------------------------------------------------------------------------------
# request: tools, tool_use, tool_result


def conversation_with_tools() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "list files"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Running ls."},
                {"type": "tool_use", "id": "toolu_01A", "name": "Bash", "input": {"command": "ls"}},
                {"type": "tool_use", "id": "call_xyz", "name": "Read", "input": {"path": "é.txt"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "a.txt\nb.txt"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_xyz",
                    "content": [{"type": "text", "text": "no such file"}],
                    "is_error": True,
                },
                {"type": "text", "text": "now summarise"},
            ],
        },
    ]


def test_tool_use_and_tool_result_ids_are_preserved() -> None:
    out = translate(req(messages=conversation_with_tools()))
    msgs = out["messages"]
    assert msgs[1] == {
        "role": "assistant",
        "content": "Running ls.",
        "tool_calls": [
            {"id": "toolu_01A", "type": "function", "function": {"name": "Bash", "arguments": '{"command":"ls"}'}},
            {"id": "call_xyz", "type": "function", "function": {"name": "Read", "arguments": '{"path":"é.txt"}'}},
        ],
    }
    assert msgs[2] == {"role": "tool", "tool_call_id": "toolu_01A", "content": "a.txt\nb.txt"}
    assert msgs[3] == {"role": "tool", "tool_call_id": "call_xyz", "content": "Error: no such file"}
    assert msgs[4] == {"role": "user", "content": "now summarise"}
    assert len(msgs) == 5


def test_assistant_with_only_tool_use_has_null_content() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "T", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
    ]
    msgs = translate(req(messages=messages))["messages"]
    assert msgs[1]["content"] is None
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert msgs[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": ""}
    assert len(msgs) == 3, "a user message holding only tool results adds no empty user message"


def test_tool_result_text_before_tool_results_goes_after_tool_messages() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "T", "input": {"a": 1}}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "before"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"},
            ],
        },
    ]
    msgs = translate(req(messages=messages))["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "user"]
    assert msgs[3]["content"] == "before"


def test_tool_result_images_move_to_a_user_message() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}
    messages = [
        {"role": "user", "content": "shot"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Screenshot", "input": {}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "taken"}, image]}
            ],
        },
    ]
    msgs = translate(req(messages=messages))["messages"]
    assert msgs[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "taken"}
    assert msgs[3]["role"] == "user"
    assert {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}} in msgs[3]["content"]


def test_ids_too_long_for_openai_are_hashed_consistently() -> None:
    long_id = "toolu_" + "x" * 60
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": long_id, "name": "T", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": long_id, "content": "ok"}]},
    ]
    out, id_map = anthropic_to_openai_request(req(messages=messages), target_model="m")
    call_id = out["messages"][1]["tool_calls"][0]["id"]
    assert call_id != long_id and len(call_id) <= 40
    assert out["messages"][2]["tool_call_id"] == call_id
    assert id_map.to_anthropic_ids[call_id] == long_id


def test_tools_become_functions() -> None:
    tools = [
        {
            "name": "Bash",
            "description": "Run a command",
            "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
            "cache_control": {"type": "ephemeral"},
        },
        {"name": "NoSchema"},
        {"type": "custom", "name": "Custom", "input_schema": {"type": "object"}},
    ]
    out = translate(req(tools=tools))
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "Bash",
                "description": "Run a command",
                "parameters": {
                    "type": "object",
                    "properties": {"command": {"type": "string"}},
                    "required": ["command"],
                },
            },
        },
        {"type": "function", "function": {"name": "NoSchema", "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "Custom", "parameters": {"type": "object"}}},
    ]


def test_long_tool_names_are_shortened_and_mapped_back() -> None:
    name = "mcp__plugin_some_long_server_name__" + "really_long_tool_name_" * 3
    assert len(name) > 64
    out, id_map = anthropic_to_openai_request(
        req(tools=[{"name": name, "input_schema": {"type": "object"}}], tool_choice={"type": "tool", "name": name}),
        target_model="m",
    )
    short = out["tools"][0]["function"]["name"]
    assert len(short) <= 64
    assert out["tool_choice"] == {"type": "function", "function": {"name": short}}
    call = {"id": "call_1", "type": "function", "function": {"name": short, "arguments": "{}"}}
    message = respond(completion({"content": None, "tool_calls": [call]}, "tool_calls"), id_map)
    assert message["content"][0]["name"] == name


TOOL = [{"name": "Bash", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "tool", "name": "Bash"}, {"type": "function", "function": {"name": "Bash"}}, None),
        ({"type": "none"}, "none", None),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
    ],
)
def test_tool_choice_variants(choice: dict[str, Any], expected: Any, parallel: bool | None) -> None:
    out = translate(req(tools=TOOL, tool_choice=choice))
    assert out["tool_choice"] == expected
    assert out.get("parallel_tool_calls") == parallel


def test_no_tools_means_no_tool_choice() -> None:
    out = translate(req(tool_choice={"type": "auto"}))
    assert "tools" not in out and "tool_choice" not in out


def test_unknown_tool_choice_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="tool_choice"):
        translate(req(tools=TOOL, tool_choice={"type": "sometimes"}))


# ---------------------------------------------------------------------------------------------------------------
# request: sampling, streaming, thinking, metadata


def test_sampling_parameters_and_stop_sequences() -> None:
    body = req(max_tokens=1000, temperature=0.2, top_p=0.9, top_k=40, stop_sequences=["END", "\n\nHuman:"])
    out, id_map = anthropic_to_openai_request(body, target_model="m")
    assert out["max_tokens"] == 1000
    assert out["temperature"] == 0.2
    assert out["top_p"] == 0.9
    assert out["stop"] == ["END", "\n\nHuman:"]
    assert "top_k" not in out
    assert id_map.stop_sequences == ("END", "\n\nHuman:")


def test_max_tokens_field_can_be_renamed() -> None:
    out = translate(req(max_tokens=77), max_tokens_field="max_completion_tokens")
    assert out["max_completion_tokens"] == 77 and "max_tokens" not in out


def test_stream_asks_for_usage() -> None:
    assert translate(req(stream=True))["stream_options"] == {"include_usage": True}
    assert translate(req(stream=True))["stream"] is True
    assert "stream_options" not in translate(req(stream=True), stream_usage=False)
    plain = translate(req())
    assert "stream" not in plain and "stream_options" not in plain


def test_thinking_is_dropped() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "secret plan", "signature": "abc"},
                {"type": "redacted_thinking", "data": "ZZZ"},
            ],
        },
        {"role": "user", "content": "q2"},
        {
            "role": "assistant",
            "content": [{"type": "thinking", "thinking": "more", "signature": "s"}, {"type": "text", "text": "A"}],
        },
    ]
    out = translate(req(messages=messages, thinking={"type": "enabled", "budget_tokens": 2000}))
    dumped = json.dumps(out)
    assert "secret plan" not in dumped and "ZZZ" not in dumped and "thinking" not in dumped
    assert [m["role"] for m in out["messages"]] == ["user", "user", "assistant"]
    assert out["messages"][2] == {"role": "assistant", "content": "A"}


def test_metadata_user_id_becomes_a_pseudonym() -> None:
    user_id = json.dumps({"device_id": "dev", "session_id": "sess-123"})
    out = translate(req(metadata={"user_id": user_id}))
    assert out["user"].startswith("ccgate-")
    assert "sess-123" not in json.dumps(out)
    assert "metadata" not in out
    assert translate(req(metadata={"user_id": user_id}))["user"] == out["user"]
    assert "user" not in translate(req(metadata={}))


# ---------------------------------------------------------------------------------------------------------------
# request: Anthropic server tools and context management


def test_server_tools_are_stripped() -> None:
    tools = [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        {"type": "code_execution_20250825", "name": "code_execution"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        *TOOL,
    ]
    out = translate(req(tools=tools, tool_choice={"type": "auto"}))
    assert [t["function"]["name"] for t in out["tools"]] == ["Bash"]
    assert "web_search" not in json.dumps(out)


def test_only_server_tools_leave_no_tools_and_no_choice() -> None:
    out = translate(req(tools=[{"type": "web_search_20250305", "name": "web_search"}], tool_choice={"type": "auto"}))
    assert "tools" not in out and "tool_choice" not in out


def test_tool_choice_forcing_a_server_tool_is_refused() -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search"}, *TOOL]
    with pytest.raises(InvalidRequestError, match="web_search") as info:
        translate(req(tools=tools, tool_choice={"type": "tool", "name": "web_search"}))
    assert info.value.status == 400 and info.value.hint


def test_tool_choice_any_with_only_server_tools_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="server tools"):
        translate(req(tools=[{"type": "web_search_20250305", "name": "web_search"}], tool_choice={"type": "any"}))


@pytest.mark.parametrize(
    "block",
    [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "x", "server_name": "s", "input": {}},
    ],
)
def test_history_with_server_tool_blocks_is_refused(block: dict[str, Any]) -> None:
    messages = [
        {"role": "user", "content": "search"},
        {"role": "assistant", "content": [{"type": "text", "text": "searching"}, block]},
        {"role": "user", "content": "thanks"},
    ]
    with pytest.raises(InvalidRequestError, match=block["type"]):
        translate(req(messages=messages))


def test_context_management_is_dropped_and_mcp_servers_refused() -> None:
    out = translate(req(context_management={"edits": [{"type": "clear_tool_uses_20250919"}]}))
    assert "context_management" not in json.dumps(out)
    with pytest.raises(InvalidRequestError, match="mcp_servers"):
        translate(req(mcp_servers=[{"type": "url", "url": "https://mcp.test", "name": "x"}]))


# ---------------------------------------------------------------------------------------------------------------
# non-streamed reply


def test_text_reply() -> None:
    message = respond(completion({"content": "Hello!"}))
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["model"] == MODEL
    assert message["id"].startswith("msg_")
    assert message["content"] == [{"type": "text", "text": "Hello!"}]
    assert message["stop_reason"] == "end_turn" and message["stop_sequence"] is None
    Message.model_validate(message)


def test_tool_call_reply_keeps_ids_and_parses_arguments() -> None:
    calls = [
        {"id": "call_A", "type": "function", "function": {"name": "Bash", "arguments": '{"command": "ls"}'}},
        {"id": "call_B", "type": "function", "function": {"name": "Read", "arguments": ""}},
    ]
    message = respond(completion({"content": "Let me look.", "tool_calls": calls}, "tool_calls"))
    assert message["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_A", "name": "Bash", "input": {"command": "ls"}},
        {"type": "tool_use", "id": "call_B", "name": "Read", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize("arguments", ['{"a": ', "[1, 2]", '"text"', "null", "not json"])
def test_unusable_arguments_are_kept_raw(arguments: str) -> None:
    call = {"id": "call_A", "type": "function", "function": {"name": "T", "arguments": arguments}}
    message = respond(completion({"content": None, "tool_calls": [call]}, "tool_calls"))
    assert message["content"][0]["input"] == {"_raw": arguments}


def test_empty_duplicate_and_invalid_provider_ids_get_stable_unique_ids() -> None:
    calls = [
        {"id": "", "type": "function", "function": {"name": "A", "arguments": "{}"}},
        {"id": "dup", "type": "function", "function": {"name": "B", "arguments": "{}"}},
        {"id": "dup", "type": "function", "function": {"name": "C", "arguments": "{}"}},
        {"id": "functions.D:3", "type": "function", "function": {"name": "D", "arguments": "{}"}},
        {"type": "function", "function": {"name": "E", "arguments": "{}"}},
    ]
    resp = completion({"content": None, "tool_calls": calls}, "tool_calls")
    ids = [block["id"] for block in respond(resp)["content"]]
    assert ids[1] == "dup"
    assert len(set(ids)) == 5
    assert all(i.startswith("toolu_") for i in (ids[0], ids[2], ids[3], ids[4]))
    assert ids == [block["id"] for block in respond(resp)["content"]], "same seed, same ids"
    other = [block["id"] for block in respond(resp, ToolIdMap(seed="other"))["content"]]
    assert other[0] != ids[0]


def test_provider_id_round_trips_through_the_next_request() -> None:
    id_map = ToolIdMap(seed="s")
    call = {"id": "", "type": "function", "function": {"name": "A", "arguments": "{}"}}
    tool_use = respond(completion({"content": None, "tool_calls": [call]}, "tool_calls"), id_map)["content"][0]
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [tool_use]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "ok"}]},
    ]
    out = translate(req(messages=messages))
    assert out["messages"][1]["tool_calls"][0]["id"] == out["messages"][2]["tool_call_id"] == tool_use["id"]


def test_a_provider_reusing_an_id_from_an_earlier_turn_gets_a_fresh_one() -> None:
    """Providers that number calls per reply answer `call_0` again; the history already holds a tool_use
    `call_0`, and Anthropic refuses a conversation with the same id twice."""
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_0", "name": "A", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_0", "content": "ok"}]},
    ]
    _, id_map = anthropic_to_openai_request(req(messages=messages), target_model="gpt-test")
    call = {"id": "call_0", "type": "function", "function": {"name": "A", "arguments": "{}"}}
    resp = completion({"content": None, "tool_calls": [call]}, "tool_calls")
    (tool_use,) = respond(resp, id_map)["content"]
    assert tool_use["id"] != "call_0" and tool_use["id"].startswith("toolu_")
    # the next request maps the fresh id back to what the provider called it
    history = [*messages, {"role": "assistant", "content": [tool_use]}]
    history.append(
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "2"}]}
    )
    out = translate(req(messages=history))
    assert out["messages"][3]["tool_calls"][0]["id"] == out["messages"][4]["tool_call_id"]


@pytest.mark.parametrize(
    ("finish", "has_tools", "expected"),
    [
        ("stop", False, "end_turn"),
        ("length", False, "max_tokens"),
        ("tool_calls", True, "tool_use"),
        ("function_call", True, "tool_use"),
        ("content_filter", False, "refusal"),
        (None, False, "end_turn"),
        ("stop", True, "tool_use"),
        ("length", True, "max_tokens"),
    ],
)
def test_stop_reasons(finish: str | None, has_tools: bool, expected: str) -> None:
    message: dict[str, Any] = {"content": "x"}
    if has_tools:
        message["tool_calls"] = [{"id": "c", "type": "function", "function": {"name": "T", "arguments": "{}"}}]
    assert respond(completion(message, finish))["stop_reason"] == expected


def test_stop_sequence_is_reported_when_the_provider_names_it() -> None:
    id_map = ToolIdMap(seed="s", stop_sequences=("END",))
    resp = completion({"content": "partial"}, "stop")
    resp["choices"][0]["stop_reason"] = "END"  # vLLM's extension
    message = respond(resp, id_map)
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")
    resp["choices"][0]["stop_reason"] = "OTHER"
    assert respond(resp, id_map)["stop_reason"] == "end_turn"
    del resp["choices"][0]["stop_reason"]
    assert respond(resp, id_map)["stop_reason"] == "end_turn"


def test_usage_with_cached_tokens() -> None:
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 50,
        "total_tokens": 1050,
        "prompt_tokens_details": {"cached_tokens": 800},
    }
    message = respond(completion({"content": "x"}, usage=usage))
    assert message["usage"] == {
        "input_tokens": 200,
        "output_tokens": 50,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 800,
    }


def test_usage_conventions() -> None:
    assert usage_from_openai(None) == Usage()
    assert usage_from_openai({"prompt_tokens": 10, "completion_tokens": 2}) == Usage(10, 2)
    deepseek = {"prompt_tokens": 100, "completion_tokens": 1, "prompt_cache_hit_tokens": 60}
    assert usage_from_openai(deepseek) == Usage(input_tokens=40, output_tokens=1, cache_read_tokens=60)
    weird = {"prompt_tokens": 5, "completion_tokens": None, "prompt_tokens_details": {"cached_tokens": 9}}
    assert usage_from_openai(weird) == Usage(input_tokens=0, output_tokens=0, cache_read_tokens=5)
    assert usage_from_openai(deepseek).total_input_tokens == 100


def test_reasoning_is_never_turned_into_thinking() -> None:
    message = respond(completion({"content": "answer", "reasoning_content": "let me think", "reasoning": "x"}))
    assert message["content"] == [{"type": "text", "text": "answer"}]


def test_legacy_function_call_and_refusal() -> None:
    message = respond(
        completion({"content": None, "function_call": {"name": "T", "arguments": '{"a":1}'}}, "function_call")
    )
    assert message["content"][0]["name"] == "T" and message["content"][0]["input"] == {"a": 1}
    assert message["stop_reason"] == "tool_use"
    refused = respond(completion({"content": None, "refusal": "I can't help with that."}, "content_filter"))
    assert refused["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert refused["stop_reason"] == "refusal"


def test_empty_reply_is_still_a_valid_message() -> None:
    message = respond({"id": "x", "choices": []})
    assert message["content"] == [] and message["stop_reason"] == "end_turn"
    Message.model_validate(message)


# ---------------------------------------------------------------------------------------------------------------
# streamed reply


TEXT_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({}, "stop"),
    usage_chunk(12, 3, cached=4),
]


def test_text_stream_events() -> None:
    translator = OpenAIStreamTranslator(requested_model=MODEL, id_map=ToolIdMap(), message_id="msg_x")
    assert not translator.started
    first = translator.feed(TEXT_STREAM[0])
    assert translator.started
    assert [name for name, _ in decode(first)] == ["message_start"], "message_start goes out at the first chunk"
    out = list(first)
    for c in TEXT_STREAM[1:]:
        out.extend(translator.feed(c))
    out.extend(translator.finish())
    events = decode(out)
    check_grammar(events)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0][1]["message"]["id"] == "msg_x"
    assert events[5][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[5][1]["usage"] == {
        "input_tokens": 8,
        "output_tokens": 3,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 4,
    }
    assert translator.usage == Usage(input_tokens=8, output_tokens=3, cache_read_tokens=4)
    assert translator.usage_reported
    assert accumulate(out)["content"] == [{"type": "text", "text": "Hello"}]
    assert translator.finish() == [] and translator.feed(TEXT_STREAM[1]) == []


def test_tool_call_stream_emits_valid_json_and_matches_non_stream() -> None:
    chunks = [
        chunk({"role": "assistant", "content": None}),
        chunk(tool_delta(0, id="call_1", name="Bash", args="")),
        chunk(tool_delta(0, args='{"comm')),
        chunk(tool_delta(0, args='and": "ls -la"}')),
        chunk({}, "tool_calls"),
        usage_chunk(),
    ]
    out, _ = run_stream(chunks)
    events = decode(out)
    check_grammar(events)
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert json.loads(partial) == {"command": "ls -la"}
    streamed = accumulate(out)
    call = {"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": '{"command": "ls -la"}'}}
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    full = openai_to_anthropic_response(
        completion({"content": None, "tool_calls": [call]}, "tool_calls", usage),
        requested_model=MODEL,
        id_map=ToolIdMap(seed="s"),
        message_id="msg_1",
    )
    assert streamed == canonical(full)


def test_tool_call_without_arguments_streams_empty_object() -> None:
    out, _ = run_stream([chunk(tool_delta(0, id="call_1", name="Now")), chunk({}, "tool_calls")])
    partial = [d["delta"]["partial_json"] for n, d in decode(out) if n == "content_block_delta"]
    assert partial == ["{}"]


def test_interleaved_parallel_tool_calls_become_sequential_blocks() -> None:
    chunks = [
        chunk({"role": "assistant", "content": "Checking both."}),
        chunk(tool_delta(0, id="call_a", name="Read", args='{"pa')),
        chunk(tool_delta(1, id="call_b", name="Grep", args='{"pat')),
        chunk(tool_delta(0, args='th": "a.py"}')),
        chunk(tool_delta(1, args='tern": "def"}')),
        chunk({}, "tool_calls"),
        usage_chunk(),
    ]
    out, _ = run_stream(chunks)
    events = decode(out)
    check_grammar(events)
    message = accumulate(out)
    assert message["content"] == [
        {"type": "text", "text": "Checking both."},
        {"type": "tool_use", "id": "call_a", "name": "Read", "input": {"path": "a.py"}},
        {"type": "tool_use", "id": "call_b", "name": "Grep", "input": {"pattern": "def"}},
    ]
    assert message["stop_reason"] == "tool_use"


def test_tool_calls_without_index_or_with_reused_index() -> None:
    no_index = [
        chunk({"tool_calls": [{"id": "call_a", "function": {"name": "A", "arguments": '{"x":'}}]}),
        chunk({"tool_calls": [{"function": {"arguments": "1}"}}]}),
        chunk({"tool_calls": [{"id": "call_b", "function": {"name": "B", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
    ]
    reused = [
        chunk(tool_delta(0, id="call_a", name="A", args='{"x":1}')),
        chunk(tool_delta(0, id="call_b", name="B", args="{}")),
        chunk({}, "tool_calls"),
    ]
    for chunks in (no_index, reused):
        content = accumulate(run_stream(chunks)[0])["content"]
        assert [(b["id"], b["name"], b["input"]) for b in content] == [("call_a", "A", {"x": 1}), ("call_b", "B", {})]


def test_invalid_streamed_arguments_are_repaired_like_the_non_streamed_reply() -> None:
    out, _ = run_stream([chunk(tool_delta(0, id="call_1", name="T", args='{"a": tru')), chunk({}, "tool_calls")])
    assert accumulate(out)["content"][0]["input"] == {"_raw": '{"a": tru'}


def test_usage_arriving_with_the_finish_chunk_and_groq_style() -> None:
    with_finish = chunk({}, "stop", usage={"prompt_tokens": 7, "completion_tokens": 2})
    _, translator = run_stream([chunk({"content": "x"}), with_finish])
    assert translator.usage == Usage(7, 2)
    groq = chunk({}, "stop", x_groq={"id": "req_1", "usage": {"prompt_tokens": 9, "completion_tokens": 4}})
    out, translator = run_stream([chunk({"content": "x"}), groq])
    assert translator.usage == Usage(9, 4)
    assert accumulate(out)["usage"]["input_tokens"] == 9


def test_stream_without_usage_reports_zero_and_says_so() -> None:
    out, translator = run_stream([chunk({"content": "x"}), chunk({}, "stop")])
    assert not translator.usage_reported and translator.usage == Usage()
    check_grammar(decode(out))


@pytest.mark.parametrize(
    ("finish", "expected"), [("length", "max_tokens"), ("content_filter", "refusal"), (None, "end_turn")]
)
def test_stream_stop_reasons(finish: str | None, expected: str) -> None:
    chunks = [chunk({"content": "some text"})]
    if finish:
        chunks.append(chunk({}, finish))
    assert accumulate(run_stream(chunks)[0])["stop_reason"] == expected


def test_stream_stop_sequence_when_named() -> None:
    final = chunk({}, "stop")
    final["choices"][0]["stop_reason"] = "END"
    out, _ = run_stream([chunk({"content": "x"}), final], ToolIdMap(seed="s", stop_sequences=("END",)))
    message = accumulate(out)
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")


def test_empty_stream_still_produces_a_complete_message() -> None:
    out, translator = run_stream([])
    events = decode(out)
    check_grammar(events)
    assert accumulate(out)["content"] == []
    assert translator.started


def test_error_chunk_mid_stream_becomes_an_error_event() -> None:
    translator = OpenAIStreamTranslator(requested_model=MODEL, id_map=ToolIdMap())
    out = translator.feed(chunk({"content": "partial"}))
    out += translator.feed({"error": {"message": "Upstream overloaded", "type": "overloaded_error", "code": None}})
    events = decode(out)
    assert events[-1][0] == "error"
    assert events[-1][1]["error"] == {"type": "overloaded_error", "message": "Upstream overloaded"}
    assert translator.finished and translator.finish() == []


def test_error_method() -> None:
    translator = OpenAIStreamTranslator(requested_model=MODEL, id_map=ToolIdMap())
    translator.feed(chunk({"content": "partial"}))
    events = decode(translator.error("api_error", "connection reset by provider"))
    assert events == [
        ("error", {"type": "error", "error": {"type": "api_error", "message": "connection reset by provider"}})
    ]
    assert translator.finish() == [] and translator.ping() == []


def test_pings_keep_a_long_think_alive() -> None:
    """A reasoning model streams `reasoning_content` the client never sees: without pings the Anthropic stream
    would fall silent for as long as the model thinks."""
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"reasoning_content": "hmm "}) for _ in range(40)]
    chunks += [chunk({"content": "Answer."}), chunk({}, "stop")]
    out, _ = run_stream(chunks)
    events = decode(out)
    assert sum(1 for name, _ in events if name == "ping") >= 4
    check_grammar(events)
    assert accumulate(out)["content"] == [{"type": "text", "text": "Answer."}]


def test_pings_keep_a_long_tool_call_alive() -> None:
    chunks = [chunk(tool_delta(0, id="call_1", name="Write", args='{"content": "'))]
    chunks += [chunk(tool_delta(0, args="x")) for _ in range(40)]
    chunks += [chunk(tool_delta(0, args='"}')), chunk({}, "tool_calls")]
    out, _ = run_stream(chunks)
    events = decode(out)
    assert sum(1 for name, _ in events if name == "ping") >= 4
    check_grammar(events)
    assert accumulate(out)["content"][0]["input"] == {"content": "x" * 40}


def test_every_event_names_the_requested_model_and_never_thinking() -> None:
    chunks = [
        chunk({"role": "assistant", "reasoning_content": "hidden thoughts"}),
        chunk({"content": "hi"}),
        chunk({}, "stop"),
    ]
    out, _ = run_stream(chunks)
    text = b"".join(out).decode()
    assert "thinking" not in text and "hidden thoughts" not in text
    assert "gpt-test" not in text
    assert decode(out)[0][1]["message"]["model"] == MODEL


def sse_bytes(chunks: list[dict[str, Any]], *, crlf: bool = False) -> bytes:
    nl = "\r\n" if crlf else "\n"
    text = "".join(f"data: {json.dumps(c)}{nl}{nl}" for c in chunks) + f": keep-alive{nl}{nl}data: [DONE]{nl}{nl}"
    return text.encode()


def test_raw_sse_convenience_and_crlf() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "é café "}),
        chunk(tool_delta(0, id="call_1", name="T", args='{"k": "ü"}')),
        chunk({}, "tool_calls"),
        usage_chunk(),
    ]
    expected = run_stream(chunks)[0]
    for crlf in (False, True):
        got = openai_stream_to_anthropic_events(
            sse_bytes(chunks, crlf=crlf), requested_model=MODEL, id_map=ToolIdMap(seed="s"), message_id="msg_1"
        )
        assert got == expected


def test_raw_sse_split_at_every_byte_gives_the_same_message() -> None:
    chunks = [
        chunk({"content": "naïve ✓"}),
        chunk(tool_delta(0, id="call_1", name="T", args='{"q": "日本"}')),
        chunk({}, "tool_calls"),
        usage_chunk(),
    ]
    raw = sse_bytes(chunks)
    expected = accumulate(run_stream(chunks)[0])
    for cut in range(1, len(raw)):
        translator = OpenAIStreamTranslator(requested_model=MODEL, id_map=ToolIdMap(seed="s"), message_id="msg_1")
        decoder = SSEDecoder()
        out: list[bytes] = []
        for part in (raw[:cut], raw[cut:]):
            for event in decoder.feed(part):
                if event.data != "[DONE]":
                    out.extend(translator.feed(event.json()))
        out.extend(translator.finish())
        assert accumulate(out) == expected, cut


def test_raw_sse_with_garbage_ends_in_an_error_event() -> None:
    raw = b"data: " + json.dumps(chunk({"content": "x"})).encode() + b"\n\ndata: {not json\n\n"
    events = decode(openai_stream_to_anthropic_events(raw, requested_model=MODEL, id_map=ToolIdMap()))
    assert events[-1][0] == "error"


# ---------------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("status", "expected_status", "expected_type"),
    [
        (400, 400, "invalid_request_error"),
        (401, 401, "authentication_error"),
        (402, 402, "billing_error"),
        (403, 403, "permission_error"),
        (404, 404, "not_found_error"),
        (413, 413, "request_too_large"),
        (422, 422, "invalid_request_error"),
        (429, 429, "rate_limit_error"),
        (500, 500, "api_error"),
        (502, 502, "api_error"),
        (503, 503, "overloaded_error"),
        (504, 504, "timeout_error"),
        (529, 529, "overloaded_error"),
    ],
)
def test_error_status_mapping(status: int, expected_status: int, expected_type: str) -> None:
    body = {"error": {"message": "something happened", "type": "x", "code": None}}
    got_status, envelope = openai_error_to_anthropic(status, body)
    assert got_status == expected_status
    assert envelope == {"type": "error", "error": {"type": expected_type, "message": "something happened"}}


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 128000 tokens. However, your messages "
                    "resulted in 130000 tokens.",
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                }
            },
        ),
        (400, {"error": {"message": "Please reduce the length of the messages or completion.", "code": None}}),
        (413, b'{"error":{"message":"prompt has too many tokens for this model"}}'),
        (400, {"object": "error", "message": "The input is too long for the model's context window", "code": 400}),
        (0, {"error": {"message": "context overflow", "code": "context_length_exceeded"}}),
    ],
)
def test_context_overflow_becomes_prompt_is_too_long(status: int, body: Any) -> None:
    got_status, envelope = openai_error_to_anthropic(status, body)
    assert got_status == 400
    assert envelope["error"]["type"] == "invalid_request_error"
    assert envelope["error"]["message"].startswith("prompt is too long: ")


def test_tokens_per_minute_limit_is_not_a_context_overflow() -> None:
    body = {
        "error": {
            "message": "Request too large for model `llama-3.3-70b` on tokens per minute (TPM): Limit 6000, "
            "Requested 30000, please reduce your message size and try again.",
            "type": "tokens",
            "code": "rate_limit_exceeded",
        }
    }
    status, envelope = openai_error_to_anthropic(413, body)
    assert status == 413 and envelope["error"]["type"] == "request_too_large"
    assert not envelope["error"]["message"].startswith("prompt is too long")


def test_error_bodies_of_every_shape() -> None:
    assert (
        openai_error_to_anthropic(502, b"<html>Bad Gateway</html>")[1]["error"]["message"] == "<html>Bad Gateway</html>"
    )
    assert "HTTP 500" in openai_error_to_anthropic(500, None)[1]["error"]["message"]
    assert openai_error_to_anthropic(500, b"")[1]["error"]["type"] == "api_error"
    assert openai_error_to_anthropic(429, {"error": "slow down"})[1]["error"] == {
        "type": "rate_limit_error",
        "message": "slow down",
    }
    list_shaped = cast(Any, [{"error": {"message": "list shaped"}}])  # some gateways wrap the error in a list
    assert openai_error_to_anthropic(400, list_shaped)[1]["error"]["message"] == "list shaped"
    assert openai_error_to_anthropic(418, {"detail": "teapot"})[1]["error"] == {
        "type": "invalid_request_error",
        "message": "teapot",
    }
    assert openai_error_to_anthropic(0, {"error": {"message": "m", "code": "rate_limit_exceeded"}})[0] == 429


def test_error_messages_never_carry_keys_or_claude_codes_magic_phrase() -> None:
    body = {
        "error": {"message": "Incorrect API key provided: sk-proj-abcdefghijklmnop1234. Your credit balance is too low"}
    }
    message = openai_error_to_anthropic(401, body)[1]["error"]["message"]
    assert "abcdefghijklmnop" not in message and "[redacted]" in message
    assert "credit balance is too low" not in message.lower()


# ---------------------------------------------------------------------------------------------------------------
# estimate


def test_estimate_input_tokens_counts_system_messages_tools_and_images() -> None:
    base = estimate_input_tokens(req(messages=[{"role": "user", "content": "x" * 400}]))
    assert 100 <= base <= 120
    with_system = estimate_input_tokens(req(system="y" * 4000, messages=[{"role": "user", "content": "x" * 400}]))
    assert with_system - base >= 1000
    tools = [{"name": "T", "description": "d" * 4000, "input_schema": {"type": "object"}}]
    assert estimate_input_tokens(req(tools=tools, messages=[{"role": "user", "content": "x" * 400}])) - base >= 1000
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 100_000}}
    with_image = estimate_input_tokens(req(messages=[{"role": "user", "content": [image]}]))
    assert 1000 <= with_image <= 2000, "an image costs a flat amount, not its base64 length"
    thinking = {"type": "thinking", "thinking": "z" * 40_000, "signature": "s"}
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [thinking, {"type": "text", "text": "a"}]},
    ]
    assert estimate_input_tokens(req(messages=messages)) < 100, "thinking is dropped, so it is not counted"


# ---------------------------------------------------------------------------------------------------------------
# regressions found by the property tests


def test_system_entry_between_tool_use_and_its_results_moves_after_the_results() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "T", "input": {}}]},
        {"role": "system", "content": "reminder"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]},
    ]
    roles = [m["role"] for m in translate(req(messages=messages))["messages"]]
    assert roles == ["user", "assistant", "tool", "system"]


def test_parallel_calls_come_out_in_index_order_whatever_order_they_started_in() -> None:
    chunks = [
        chunk(tool_delta(0, id="call_a", name="A", args="{}")),
        chunk(tool_delta(2, id="call_c", name="C", args="{}")),
        chunk(tool_delta(1, id="call_b", name="B", args="{}")),
        chunk({}, "tool_calls"),
    ]
    assert [b["name"] for b in accumulate(run_stream(chunks)[0])["content"]] == ["A", "B", "C"]
