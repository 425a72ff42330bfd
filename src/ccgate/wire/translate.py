"""Translate Anthropic Messages requests into OpenAI chat completions, and the replies (streamed or not) back.

Pure code: dicts in, dicts (or encoded SSE bytes) out, no I/O. The sidecar and the gateway call it for every
OpenAI-compatible target (groq, openai, openrouter, deepseek, ollama, ...).

Choices made here, each covered by tests:

- Tool ids are passed through unchanged whenever both sides accept them, so a provider sees its own ids again
  on the next turn. Ids a provider cannot take (over OpenAI's 40-character limit) become a stable hash; ids a
  provider returns empty, duplicated or with characters Anthropic rejects become stable `toolu_...` ids.
  Tool names over OpenAI's 64-character limit are shortened with a hash and mapped back on the reply.
- Anthropic server tools (tools with a `type`, e.g. `web_search_20250305`, `code_execution_*`, `bash_*`,
  `text_editor_*`) run inside Anthropic's API or have Anthropic-defined schemas, so they have no OpenAI
  equivalent: they are removed from `tools` and the model works without them. A request that cannot work
  without them is refused with InvalidRequestError: `tool_choice` forcing a server tool (or forcing any tool
  when only server tools were offered), history holding `server_tool_use` / `*_tool_result` / `mcp_*` blocks,
  or `mcp_servers`. `context_management` (server-side context editing) is dropped: the provider simply sees
  the whole history.
- `thinking` / `redacted_thinking` blocks and the `thinking` parameter are dropped going out; no thinking is ever
  invented coming back (providers' `reasoning_content` is ignored).
- In a streamed reply text is forwarded as it arrives; tool calls are held until the provider finishes them
  (its `finish_reason`, or the end of the stream) and then emitted one block at a time, in index order, each
  with its complete arguments. That serialises interleaved parallel calls and lets invalid argument JSON be
  repaired exactly as in the non-streamed reply (`{"_raw": "<what the provider sent>"}`), so the streamed and
  the non-streamed message are always identical.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ccgate.core.records import Usage
from ccgate.core.usage import usage_from_openai
from ccgate.errors import InvalidRequestError
from ccgate.wire import fastjson
from ccgate.wire.sse import SSEDecoder, encode_sse

__all__ = [
    "OpenAIStreamTranslator",
    "ToolIdMap",
    "anthropic_to_openai_request",
    "estimate_input_tokens",
    "openai_error_to_anthropic",
    "openai_stream_to_anthropic_events",
    "openai_to_anthropic_response",
]

_ROUTE_HINT = "route this model to an Anthropic provider (`ccgate model set TIER anthropic/MODEL`) to use it"

# Anthropic accepts tool_use ids matching this; OpenAI accepts any string up to 40 characters.
_ANTHROPIC_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_PROVIDER_ID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_MAX_FUNCTION_NAME = 64

_SERVER_BLOCK_TYPES = frozenset({"server_tool_use", "mcp_tool_use", "mcp_tool_result", "container_upload"})

_IMAGE_TOKENS = 1600  # a typical image's token cost, for the local estimate


def _digest(*parts: str, size: int = 24) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:size]


@dataclass
class ToolIdMap:
    """Per-request translation state: tool ids and tool names in both directions, and the stop sequences asked for.

    `anthropic_to_openai_request` fills it; the reply translators read it. Generated ids derive from `seed` and
    a counter, so translating the same reply twice with equal seeds gives equal ids (streamed or not).
    """

    seed: str = field(default_factory=lambda: uuid.uuid4().hex)
    stop_sequences: tuple[str, ...] = ()
    to_provider_ids: dict[str, str] = field(default_factory=dict)
    to_anthropic_ids: dict[str, str] = field(default_factory=dict)
    to_provider_names: dict[str, str] = field(default_factory=dict)
    to_anthropic_names: dict[str, str] = field(default_factory=dict)
    _issued: set[str] = field(default_factory=set)
    _generated: int = 0

    def provider_id(self, anthropic_id: str) -> str:
        """The id to send upstream for an Anthropic tool_use id (same input, same output)."""
        known = self.to_provider_ids.get(anthropic_id)
        if known is not None:
            return known
        provider = anthropic_id if _PROVIDER_ID.match(anthropic_id) else f"call_{_digest(anthropic_id)}"
        self.to_provider_ids[anthropic_id] = provider
        self.to_anthropic_ids.setdefault(provider, anthropic_id)
        return provider

    def anthropic_id(self, provider_id: str | None) -> str:
        """The tool_use id for one tool call in a reply; unusable or repeated provider ids get a fresh stable id.

        Repeated means within this reply or anywhere in the conversation sent: providers that number their calls
        per reply (`call_0`) would otherwise reuse an id of an earlier turn, which Anthropic refuses as a
        duplicate once the conversation goes there.
        """
        pid = provider_id or ""
        candidate = self.to_anthropic_ids.get(pid, pid) if pid else ""
        if (
            not candidate
            or not _ANTHROPIC_ID.match(candidate)
            or candidate in self._issued
            or candidate in self.to_provider_ids  # a tool_use id of the conversation's history
        ):
            while True:
                self._generated += 1
                candidate = f"toolu_{_digest(self.seed, str(self._generated))}"
                if candidate not in self._issued:
                    break
        self._issued.add(candidate)
        if pid:
            self.to_provider_ids.setdefault(candidate, pid)
        return candidate

    def provider_name(self, name: str) -> str:
        """Function names over OpenAI's 64-character limit are shortened with a hash suffix."""
        known = self.to_provider_names.get(name)
        if known is not None:
            return known
        short = name if len(name) <= _MAX_FUNCTION_NAME else f"{name[:55]}_{_digest(name, size=8)}"
        self.to_provider_names[name] = short
        self.to_anthropic_names[short] = name
        return short

    def anthropic_name(self, name: str) -> str:
        return self.to_anthropic_names.get(name, name)


# ---------------------------------------------------------------------------------------------------------------
# Request: Anthropic -> OpenAI


def _block_text(block: Mapping[str, Any]) -> str:
    text = block.get("text")
    return text if isinstance(text, str) else ""


def _text_of_system(system: Any) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        texts = [
            block if isinstance(block, str) else _block_text(block) for block in system if isinstance(block, str | dict)
        ]
        return "\n\n".join(text for text in texts if text)
    raise InvalidRequestError("`system` must be a string or a list of text blocks")


def _image_url(block: Mapping[str, Any]) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequestError("an image block has no `source`")
    kind = source.get("type")
    if kind == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif kind == "url":
        url = str(source.get("url", ""))
    else:
        raise InvalidRequestError(
            f"image source type {kind!r} cannot be sent to an OpenAI-compatible provider",
            hint="send the image as base64 or a URL, or " + _ROUTE_HINT,
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _document_parts(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequestError("a document block has no `source`")
    title = block.get("title")
    title = title if isinstance(title, str) else ""
    kind = source.get("type")
    if kind == "text":
        return [{"type": "text", "text": "\n".join(t for t in (title, str(source.get("data", ""))) if t)}]
    if kind == "content":
        inner = source.get("content")
        head = [{"type": "text", "text": title}] if title else []
        if isinstance(inner, str):
            return [*head, {"type": "text", "text": inner}]
        if isinstance(inner, list):
            return [*head, *_content_parts(inner, where="a document")]
    if kind == "base64":
        data_url = f"data:{source.get('media_type', 'application/pdf')};base64,{source.get('data', '')}"
        return [{"type": "file", "file": {"filename": title or "document.pdf", "file_data": data_url}}]
    raise InvalidRequestError(
        f"document source type {kind!r} cannot be sent to an OpenAI-compatible provider",
        hint="send the document inline (text or base64), or " + _ROUTE_HINT,
    )


def _is_server_block(kind: str) -> bool:
    return kind in _SERVER_BLOCK_TYPES or (kind.endswith("_tool_result") and kind != "tool_result")


def _refuse_block(kind: str, where: str) -> InvalidRequestError:
    if _is_server_block(kind):
        return InvalidRequestError(
            f"the conversation holds a `{kind}` block from an Anthropic server tool, "
            "which an OpenAI-compatible provider cannot replay",
            hint=_ROUTE_HINT,
        )
    return InvalidRequestError(
        f"content block type {kind!r} in {where} cannot be sent to an OpenAI-compatible provider", hint=_ROUTE_HINT
    )


def _content_parts(blocks: Iterable[Any], *, where: str) -> list[dict[str, Any]]:
    """User-visible content blocks (text, image, document, search_result) as OpenAI content parts."""
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, str):
            parts.append({"type": "text", "text": block})
            continue
        if not isinstance(block, dict):
            raise InvalidRequestError(f"a content block in {where} is not an object")
        kind = str(block.get("type", ""))
        if kind == "text":
            parts.append({"type": "text", "text": _block_text(block)})
        elif kind == "image":
            parts.append(_image_url(block))
        elif kind == "document":
            parts.extend(_document_parts(block))
        elif kind == "search_result":
            texts = [str(block.get("title", "")), str(block.get("source", ""))]
            inner = block.get("content")
            if isinstance(inner, list):
                texts.extend(_block_text(b) for b in inner if isinstance(b, dict))
            parts.append({"type": "text", "text": "\n".join(t for t in texts if t)})
        elif kind not in ("thinking", "redacted_thinking"):
            raise _refuse_block(kind, where)
    return parts


def _parts_to_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Plain text stays a string (several providers reject part lists); anything else keeps its parts."""
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def _tool_result_message(block: Mapping[str, Any], id_map: ToolIdMap) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One tool_result -> the `tool` message, plus any images it held (tool messages carry text only)."""
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise InvalidRequestError("a tool_result block has no `tool_use_id`")
    content = block.get("content")
    if content is None:
        parts: list[dict[str, Any]] = []
    elif isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = _content_parts(content, where="a tool_result")
    else:
        raise InvalidRequestError("a tool_result's `content` must be a string or a list of blocks")
    text = "\n".join(part["text"] for part in parts if part["type"] == "text")
    extra = [part for part in parts if part["type"] != "text"]
    if block.get("is_error"):
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": id_map.provider_id(tool_use_id), "content": text}, extra


def _user_messages(content: Any, id_map: ToolIdMap) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise InvalidRequestError("a message's `content` must be a string or a list of blocks")
    messages: list[dict[str, Any]] = []
    tool_extras: list[dict[str, Any]] = []
    others: list[Any] = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            message, extra = _tool_result_message(block, id_map)
            messages.append(message)
            tool_extras.extend(extra)
        else:
            others.append(block)
    parts = _content_parts(others, where="a user message")
    if tool_extras:
        parts = [{"type": "text", "text": "(images returned by the tools above)"}, *tool_extras, *parts]
    # OpenAI wants tool messages straight after the assistant's tool_calls, so they go first.
    if parts or not messages:
        messages.append({"role": "user", "content": _parts_to_content(parts)})
    return messages


def _assistant_message(content: Any, id_map: ToolIdMap) -> dict[str, Any] | None:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise InvalidRequestError("a message's `content` must be a string or a list of blocks")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            texts.append(block)
            continue
        if not isinstance(block, dict):
            raise InvalidRequestError("a content block in an assistant message is not an object")
        kind = str(block.get("type", ""))
        if kind == "text":
            texts.append(_block_text(block))
        elif kind == "tool_use":
            tool_id, name = block.get("id"), block.get("name")
            if not isinstance(tool_id, str) or not tool_id or not isinstance(name, str) or not name:
                raise InvalidRequestError("a tool_use block needs an `id` and a `name`")
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False, separators=(",", ":"))
            function = {"name": id_map.provider_name(name), "arguments": arguments}
            tool_calls.append({"id": id_map.provider_id(tool_id), "type": "function", "function": function})
        elif kind not in ("thinking", "redacted_thinking"):
            raise _refuse_block(kind, "an assistant message")
    text = "\n".join(t for t in texts if t)
    if not text and not tool_calls:
        return None  # only thinking: nothing the provider could use
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def _convert_tools(tools: Any, id_map: ToolIdMap) -> tuple[list[dict[str, Any]], set[str]]:
    """Custom tools -> functions; returns them and the names of the server tools that were removed."""
    if tools is None:
        return [], set()
    if not isinstance(tools, list):
        raise InvalidRequestError("`tools` must be a list")
    functions: list[dict[str, Any]] = []
    removed: set[str] = set()
    for tool in tools:
        if not isinstance(tool, dict):
            raise InvalidRequestError("each entry of `tools` must be an object")
        name, kind = tool.get("name"), tool.get("type")
        if kind not in (None, "custom"):
            removed.add(str(name or kind))
            continue
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("a tool has no `name`")
        function: dict[str, Any] = {"name": id_map.provider_name(name)}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        schema = tool.get("input_schema")
        function["parameters"] = schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
        functions.append({"type": "function", "function": function})
    return functions, removed


def _convert_tool_choice(
    choice: Any, functions: list[dict[str, Any]], removed: set[str], id_map: ToolIdMap
) -> tuple[Any, bool | None]:
    """The OpenAI tool_choice (None: leave out) and parallel_tool_calls (None: leave out)."""
    if choice is None:
        return None, None
    if not isinstance(choice, dict):
        raise InvalidRequestError("`tool_choice` must be an object like {'type': 'auto'}")
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") and functions else None
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("`tool_choice` of type 'tool' needs a `name`")
        if name in removed:
            raise InvalidRequestError(
                f"`tool_choice` forces the Anthropic server tool {name!r}, which an OpenAI-compatible provider "
                "does not have",
                hint=_ROUTE_HINT,
            )
        return {"type": "function", "function": {"name": id_map.provider_name(name)}}, parallel
    if kind == "any":
        if not functions:
            raise InvalidRequestError(
                "`tool_choice` requires a tool call but the only tools offered are Anthropic server tools",
                hint=_ROUTE_HINT,
            )
        return "required", parallel
    if kind == "auto":
        return ("auto" if functions else None), parallel
    if kind == "none":
        return ("none" if functions else None), None
    raise InvalidRequestError(f"unknown `tool_choice` type {kind!r}")


def _keep_tool_results_adjacent(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI rejects anything between an assistant's tool_calls and their tool messages, so a system entry
    sitting there (Claude Code puts them anywhere) moves to just after the last of those tool messages."""
    out: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    awaiting: set[str] = set()
    for message in messages:
        if message["role"] == "tool":
            out.append(message)
            awaiting.discard(message["tool_call_id"])
            if not awaiting:
                out.extend(held)
                held = []
            continue
        if awaiting and message["role"] == "system":
            held.append(message)
            continue
        out.extend(held)
        held = []
        awaiting = {call["id"] for call in message.get("tool_calls", ())}
        out.append(message)
    out.extend(held)
    return out


def anthropic_to_openai_request(
    body: dict[str, Any],
    *,
    target_model: str,
    stream_usage: bool = True,
    id_map: ToolIdMap | None = None,
    max_tokens_field: str = "max_tokens",
) -> tuple[dict[str, Any], ToolIdMap]:
    """An Anthropic Messages request body as an OpenAI chat completions body for `target_model`.

    `system` and `role: "system"` entries become system messages in place. A user message's tool_results
    become `tool` messages placed first (OpenAI wants them right after the assistant's tool_calls); text and
    images follow as a user message. Fields with no OpenAI counterpart (`top_k`, `thinking`,
    `context_management`, `container`, `service_tier`, every `cache_control`) are dropped. `metadata.user_id`
    becomes `user` as a hash: a stable pseudonym for the provider's abuse tracking that does not reveal Claude
    Code's account and session ids. `max_tokens_field="max_completion_tokens"` suits OpenAI models that reject
    `max_tokens`. Raises InvalidRequestError when the request cannot be represented (see the module docstring).
    """
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list):
        raise InvalidRequestError("the request has no `messages` list")
    if body.get("mcp_servers"):
        raise InvalidRequestError(
            "`mcp_servers` (Anthropic's MCP connector) cannot be used with an OpenAI-compatible provider",
            hint=_ROUTE_HINT,
        )
    id_map = id_map if id_map is not None else ToolIdMap()
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise InvalidRequestError("`stop_sequences` must be a list of strings")
    id_map.stop_sequences = tuple(stops or ())

    messages: list[dict[str, Any]] = []
    system = _text_of_system(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for entry in raw_messages:
        if not isinstance(entry, dict):
            raise InvalidRequestError("each entry of `messages` must be an object")
        role, content = entry.get("role"), entry.get("content")
        if role == "system":
            text = _text_of_system(content)
            if text:
                messages.append({"role": "system", "content": text})
        elif role == "user":
            messages.extend(_user_messages(content, id_map))
        elif role == "assistant":
            message = _assistant_message(content, id_map)
            if message is not None:
                messages.append(message)
        else:
            raise InvalidRequestError(f"unknown message role {role!r}")

    out: dict[str, Any] = {"model": target_model, "messages": _keep_tool_results_adjacent(messages)}
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        out[max_tokens_field] = max_tokens
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = value
    if stops:
        out["stop"] = list(stops)

    functions, removed = _convert_tools(body.get("tools"), id_map)
    tool_choice, parallel = _convert_tool_choice(body.get("tool_choice"), functions, removed, id_map)
    if functions:
        out["tools"] = functions
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
        if parallel is not None:
            out["parallel_tool_calls"] = parallel

    if body.get("stream"):
        out["stream"] = True
        if stream_usage:
            out["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str) and metadata["user_id"]:
        out["user"] = f"ccgate-{_digest(metadata['user_id'], size=32)}"
    return out, id_map


# ---------------------------------------------------------------------------------------------------------------
# Reply: OpenAI -> Anthropic (shared pieces)


def _anthropic_usage(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cache_read_tokens,
    }


def _reported_usage(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    usage = payload.get("usage")
    if isinstance(usage, dict):
        return usage
    extra = payload.get("x_groq")  # groq reports streamed usage here
    if isinstance(extra, dict) and isinstance(extra.get("usage"), dict):
        groq_usage: Mapping[str, Any] = extra["usage"]
        return groq_usage
    return None


def _parse_arguments(arguments: str) -> dict[str, Any]:
    """Tool arguments as the object Anthropic's `input` must be; anything else is kept verbatim under `_raw`."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):  # RecursionError: nested past ~1,000 levels, unreadable as well
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_raw": arguments}


def _stop_reason(
    finish_reason: Any, choice: Mapping[str, Any], *, has_tool_calls: bool, stop_sequences: Sequence[str]
) -> tuple[str, str | None]:
    if finish_reason in ("tool_calls", "function_call"):
        return "tool_use", None
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "content_filter":
        return "refusal", None
    if has_tool_calls:
        return "tool_use", None  # some providers say "stop" (or nothing) when the reply is tool calls
    # vLLM (`stop_reason`) and SGLang (`matched_stop`) name the stop string that ended the reply; OpenAI does not
    for key in ("stop_reason", "matched_stop"):
        matched = choice.get(key)
        if isinstance(matched, str) and matched in stop_sequences:
            return "stop_sequence", matched
    return "end_turn", None


def _text_from_content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part if isinstance(part, str) else str(part.get("text") or "")
            for part in content
            if isinstance(part, str | dict)
        )
    return ""


def _message_id(provider_id: Any) -> str:
    if isinstance(provider_id, str) and provider_id:
        return f"msg_{_digest(provider_id)}"
    return f"msg_{uuid.uuid4().hex[:24]}"


def _tool_use_block(id_map: ToolIdMap, provider_id: Any, name: str, arguments: str) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": id_map.anthropic_id(provider_id if isinstance(provider_id, str) else None),
        "name": id_map.anthropic_name(name),
        "input": _parse_arguments(arguments),
    }


def openai_to_anthropic_response(
    resp: dict[str, Any], *, requested_model: str, id_map: ToolIdMap, message_id: str | None = None
) -> dict[str, Any]:
    """A non-streamed chat.completion as an Anthropic `message`; the model is always the one the client asked for."""
    choices = resp.get("choices")
    choice: Mapping[str, Any] = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    text = _text_from_content(message.get("content")) + _text_from_content(message.get("refusal"))

    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    raw_calls: list[Any] = list(calls) if isinstance(calls, list) else []
    if isinstance(message.get("function_call"), dict):
        raw_calls.append({"function": message["function_call"]})
    for call in raw_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = "" if arguments is None else json.dumps(arguments)
        content.append(_tool_use_block(id_map, call.get("id"), str(function.get("name") or ""), arguments))

    has_tools = len(content) > bool(text)
    stop_reason, stop_sequence = _stop_reason(
        choice.get("finish_reason"), choice, has_tool_calls=has_tools, stop_sequences=id_map.stop_sequences
    )
    return {
        "id": message_id or _message_id(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": requested_model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _anthropic_usage(usage_from_openai(_reported_usage(resp))),
    }


# ---------------------------------------------------------------------------------------------------------------
# Reply: OpenAI stream -> Anthropic stream


@dataclass
class _PendingCall:
    order: int  # the provider's index when it sends one, else arrival order
    provider_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


# the hot path of a translated stream: format the one varying string instead of dumping a dict
_TEXT_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"text_delta","text":%s}}\n\n'
)
# a delta with only these keys carries nothing but text (`role` comes with the first; a null refusal is common)
_PLAIN_DELTA_KEYS = frozenset({"content", "role", "refusal"})


class OpenAIStreamTranslator:
    """Feed parsed chat.completion.chunk objects, get encoded Anthropic SSE events back.

    Text is forwarded as it arrives; tool calls are held until the provider finishes them (see the module
    docstring). While chunks bring nothing to forward (tool-call deltas held, reasoning), a `ping` goes out every
    few chunks so the client (and any idle timeout) sees the stream is alive.
    """

    _PING_EVERY = 8

    def __init__(self, *, requested_model: str, id_map: ToolIdMap, message_id: str | None = None) -> None:
        self._model = requested_model
        self._id_map = id_map
        self._message_id = message_id
        self._started = False
        self._finished = False
        self._next_index = 0
        self._text_index: int | None = None
        self._calls: list[_PendingCall] = []
        self._slot_by_index: dict[int, int] = {}
        self._emitted_calls = 0
        self._finish_reason: Any = None
        self._choice: Mapping[str, Any] = {}
        self._usage = Usage()
        self._usage_reported = False
        self._quiet_chunks = 0

    @property
    def started(self) -> bool:
        """Whether any byte has been produced: after that, failing over to another provider is impossible."""
        return self._started

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def usage(self) -> Usage:
        """Usage seen so far, in Anthropic's convention (zero until the provider reports it)."""
        return self._usage

    @property
    def saw_finish_reason(self) -> bool:
        """The provider said why it stopped: without that (and without `[DONE]`) the stream was cut short."""
        return self._finish_reason is not None

    @property
    def usage_reported(self) -> bool:
        """False while the provider has sent no usage (some ignore `stream_options.include_usage`)."""
        return self._usage_reported

    @property
    def message_id(self) -> str | None:
        return self._message_id

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        text = self._plain_text(chunk)
        if text is not None:
            self._quiet_chunks = 0
            return [_TEXT_DELTA % (self._text_index, fastjson.dumps(text))]
        if self._finished or not isinstance(chunk, dict):
            return []
        out: list[bytes] = []
        if not self._started:
            out.extend(self._message_start(chunk))
        if chunk.get("error") is not None and not chunk.get("choices"):
            _, envelope = openai_error_to_anthropic(0, chunk)
            self._finished = True
            out.append(encode_sse("error", envelope))
            return out
        usage = _reported_usage(chunk)
        if usage is not None:
            self._usage = usage_from_openai(usage)
            self._usage_reported = True
        choices = chunk.get("choices")
        held = False
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index") not in (0, None):
                continue  # only the first choice: Claude Code never asks for n > 1
            delta = choice.get("delta")
            if isinstance(delta, dict):
                text = _text_from_content(delta.get("content")) + _text_from_content(delta.get("refusal"))
                if text:
                    out.extend(self._text(text))
                tool_calls = delta.get("tool_calls")
                for call in tool_calls if isinstance(tool_calls, list) else ():
                    if isinstance(call, dict):
                        self._tool_delta(call)
                        held = True
                if isinstance(delta.get("function_call"), dict):
                    self._tool_delta({"index": 0, "function": delta["function_call"]})
                    held = True
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                self._choice = choice
                out.extend(self._close_blocks())
        if out:
            self._quiet_chunks = 0
        elif held or self._started:
            # nothing to show for this chunk (tool-call pieces held back, reasoning a client never sees, an
            # empty delta): a ping every few keeps the client's idle timeout from firing on a long think
            self._quiet_chunks += 1
            if self._quiet_chunks >= self._PING_EVERY:
                self._quiet_chunks = 0
                out.append(encode_sse("ping", {"type": "ping"}))
        return out

    def finish(self) -> list[bytes]:
        """End of the provider's stream ([DONE] or EOF): close blocks, then message_delta and message_stop."""
        if self._finished:
            return []
        out: list[bytes] = []
        if not self._started:
            out.extend(self._message_start({}))
        out.extend(self._close_blocks())
        stop_reason, stop_sequence = _stop_reason(
            self._finish_reason,
            self._choice,
            has_tool_calls=self._emitted_calls > 0,
            stop_sequences=self._id_map.stop_sequences,
        )
        delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        out.append(
            encode_sse(
                "message_delta", {"type": "message_delta", "delta": delta, "usage": _anthropic_usage(self._usage)}
            )
        )
        out.append(encode_sse("message_stop", {"type": "message_stop"}))
        self._finished = True
        return out

    def error(self, error_type: str, message: str) -> list[bytes]:
        """A mid-stream failure as Anthropic's `error` event; the stream is over after it."""
        self._finished = True
        self._started = True
        return [encode_sse("error", {"type": "error", "error": {"type": error_type, "message": message}})]

    def ping(self) -> list[bytes]:
        """A keep-alive event, for a server whose provider has been silent for a while."""
        if self._finished or not self._started:
            return []
        return [encode_sse("ping", {"type": "ping"})]

    # -- internals ---------------------------------------------------------------------------------------------

    def _plain_text(self, chunk: Any) -> str | None:
        """The text of the chunk most of a stream is made of (one choice, a text delta, nothing else), else None.

        Such a chunk inside an open text block needs none of the general path's checks; anything unusual
        (usage, an error, a finish reason, tool calls, another choice) returns None and takes that path.
        """
        if self._text_index is None or self._finished or type(chunk) is not dict:
            return None
        choices = chunk.get("choices")
        if type(choices) is not list or len(choices) != 1 or chunk.get("usage") is not None or "x_groq" in chunk:
            return None
        choice = choices[0]
        if type(choice) is not dict or choice.get("finish_reason") or choice.get("index") not in (0, None):
            return None
        delta = choice.get("delta")
        if type(delta) is not dict or not delta.keys() <= _PLAIN_DELTA_KEYS or delta.get("refusal") is not None:
            return None
        content = delta.get("content")
        return content if type(content) is str and content else None

    def _message_start(self, chunk: Mapping[str, Any]) -> list[bytes]:
        self._started = True
        if self._message_id is None:
            self._message_id = _message_id(chunk.get("id"))
        usage = _reported_usage(chunk)
        if usage is not None:
            self._usage = usage_from_openai(usage)
            self._usage_reported = True
        message: dict[str, Any] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _anthropic_usage(self._usage),
        }
        return [encode_sse("message_start", {"type": "message_start", "message": message})]

    def _text(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._text_index is None:
            self._text_index = self._next_index
            self._next_index += 1
            start = {
                "type": "content_block_start",
                "index": self._text_index,
                "content_block": {"type": "text", "text": ""},
            }
            out.append(encode_sse("content_block_start", start))
        out.append(_TEXT_DELTA % (self._text_index, fastjson.dumps(text)))
        return out

    def _tool_delta(self, call: Mapping[str, Any]) -> None:
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        call_id = call.get("id") if isinstance(call.get("id"), str) else ""
        name = function.get("name") if isinstance(function.get("name"), str) else ""
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        index = call.get("index")
        slot: int | None = None
        if isinstance(index, int) and not isinstance(index, bool):
            slot = self._slot_by_index.get(index)
            # a new id under a known index is a new call (some providers reuse index 0 for every call)
            if slot is not None and call_id and self._calls[slot].provider_id not in ("", call_id):
                slot = None
        else:
            # no index at all: a new id starts a new call, anything else continues the latest held one
            index = None
            if len(self._calls) > self._emitted_calls:
                last = len(self._calls) - 1
                if not call_id or self._calls[last].provider_id in ("", call_id):
                    slot = last
        if slot is None or slot < self._emitted_calls:
            slot = len(self._calls)
            self._calls.append(_PendingCall(order=slot if index is None else index))
        if index is not None:
            self._slot_by_index[index] = slot
        pending = self._calls[slot]
        if call_id and not pending.provider_id:
            pending.provider_id = call_id
        if name and not pending.name:
            pending.name = name
        if arguments:
            pending.arguments.append(arguments)

    def _close_blocks(self) -> list[bytes]:
        out: list[bytes] = []
        if self._text_index is not None:
            out.append(encode_sse("content_block_stop", {"type": "content_block_stop", "index": self._text_index}))
            self._text_index = None
        # parallel calls go out in the provider's index order, whatever order their deltas arrived in
        held = sorted(self._calls[self._emitted_calls :], key=lambda call: call.order)
        self._calls[self._emitted_calls :] = held
        while self._emitted_calls < len(self._calls):
            pending = self._calls[self._emitted_calls]
            self._emitted_calls += 1
            block = _tool_use_block(self._id_map, pending.provider_id, pending.name, "".join(pending.arguments))
            index = self._next_index
            self._next_index += 1
            first = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            partial = json.dumps(block["input"], ensure_ascii=False, separators=(",", ":"))
            delta = {"type": "input_json_delta", "partial_json": partial}
            out.append(
                encode_sse(
                    "content_block_start", {"type": "content_block_start", "index": index, "content_block": first}
                )
            )
            out.append(
                encode_sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            )
            out.append(encode_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        self._slot_by_index.clear()
        return out


def openai_stream_to_anthropic_events(
    raw_sse: bytes, *, requested_model: str, id_map: ToolIdMap, message_id: str | None = None
) -> list[bytes]:
    """A whole OpenAI SSE stream (bytes) as Anthropic SSE events; for tests and non-incremental callers."""
    translator = OpenAIStreamTranslator(requested_model=requested_model, id_map=id_map, message_id=message_id)
    decoder = SSEDecoder()
    out: list[bytes] = []
    for event in [*decoder.feed(raw_sse), *decoder.flush()]:
        data = event.data.strip()
        if not data:
            continue
        if data == "[DONE]":
            break
        try:
            chunk = fastjson.loads(data)
        except ValueError:
            out.extend(translator.error("api_error", "the provider sent a stream event that is not JSON"))
            return out
        out.extend(translator.feed(chunk))
        if translator.finished:
            return out
    out.extend(translator.finish())
    return out


# ---------------------------------------------------------------------------------------------------------------
# Errors and estimates


_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_CONTEXT_OVERFLOW = re.compile(
    r"context[_ ]length|context window|maximum context|too many tokens|prompt is too long|input is too long"
    r"|reduce the length|maximum (?:input|prompt) length|exceeds? the (?:model'?s? )?(?:maximum|context|token)",
    re.IGNORECASE,
)
_SECRETISH = re.compile(r"\b(?:sk|gsk|xai|pk|rk|key)-[A-Za-z0-9_\-*.]{8,}")


def _error_fields(body: bytes | dict[str, Any] | None) -> tuple[str, str]:
    """(message, code-or-type) from the many shapes providers use for errors."""
    data: Any = body
    if isinstance(body, bytes | bytearray):
        text = bytes(body).decode("utf-8", errors="replace").strip()
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            return text[:2000], ""
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return "", ""
    error = data.get("error", data)
    if isinstance(error, str):
        return error, str(data.get("code") or data.get("type") or "")
    if not isinstance(error, dict):
        return "", ""
    message = error.get("message") or error.get("detail") or data.get("message") or data.get("detail") or ""
    if not isinstance(message, str):
        message = json.dumps(message)
    code = error.get("code") or error.get("type") or ""
    return message, str(code)


def openai_error_to_anthropic(status: int, body: bytes | dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    """A provider's error as (HTTP status, Anthropic error envelope).

    A context-length overflow becomes 400 with a message starting "prompt is too long: ", which is what makes
    Claude Code offer to compact. Anything that looks like an API key is redacted from the message.
    `status` 0 means unknown (an error object inside a stream); the type is then inferred from its code.
    """
    message, code = _error_fields(body)
    message = _SECRETISH.sub("[redacted]", message)
    # Claude Code swaps messages holding this phrase for its own Anthropic-specific text
    message = re.sub("credit balance is too low", "credit balance is insufficient", message, flags=re.IGNORECASE)
    lowered = code.lower()
    if not status:
        if "rate_limit" in lowered:
            status = 429
        elif "context_length" in lowered or "invalid_request" in lowered:
            status = 400
        elif "overloaded" in lowered:
            status = 529
        else:
            status = 500
    overflow = status in (400, 413, 422) and bool(_CONTEXT_OVERFLOW.search(message))
    if "context_length_exceeded" in lowered or (overflow and "per minute" not in message.lower()):
        text = message or "the conversation exceeds the routed model's context window"
        return 400, {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": f"prompt is too long: {text}"},
        }
    if status in _STATUS_TYPES:
        error_type = _STATUS_TYPES[status]
    elif 400 <= status < 500:
        error_type = "invalid_request_error"
    else:
        error_type = "api_error"
    if not message:
        message = f"the provider answered HTTP {status} without an error message"
    return status, {"type": "error", "error": {"type": error_type, "message": message}}


_NOT_READ = frozenset({"cache_control", "type", "id", "tool_use_id", "signature", "is_error"})


def _estimate_chars(value: Any) -> tuple[int, int]:
    """(characters, images) of what a model would read in `value`; a loop, not recursion, so no nesting a
    client sends can make it fail."""
    chars = images = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            kind = item.get("type")
            source = item.get("source")
            if kind in ("image", "document") and isinstance(source, dict) and source.get("type") != "text":
                images += 1
                continue
            if kind in ("thinking", "redacted_thinking"):
                continue  # dropped before the provider sees them
            for key, child in item.items():
                if key == "input":
                    chars += len(json.dumps(child, ensure_ascii=False))
                elif key not in _NOT_READ:
                    pending.append(child)
    return chars, images


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """A local input-token estimate (~4 characters a token, images at a flat rate) for count_tokens on routes whose
    provider has no such endpoint; system, messages and tool definitions all count."""
    chars = images = 0
    for key in ("system", "messages"):
        c, i = _estimate_chars(body.get(key))
        chars, images = chars + c, images + i
    tools = body.get("tools")
    if isinstance(tools, list):
        chars += len(json.dumps(tools, ensure_ascii=False))
    messages = body.get("messages")
    overhead = 4 * (len(messages) if isinstance(messages, list) else 0)
    return math.ceil(chars / 4) + images * _IMAGE_TOKENS + overhead
