"""The one home of orjson and msgspec: JSON on the proxy's hot path (request bodies, every SSE event).

The standard library stays the reference: whatever orjson refuses and `json` accepts (NaN, lone surrogates,
integers beyond 64 bits on output) goes through `json`, so switching never turns a valid request into an error.
`read_head` reads only the few fields the proxy needs from a request body, checking the rest is JSON without
building it: a Claude Code body is mostly conversation the proxy forwards untouched.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import msgspec
import orjson

__all__ = [
    "NestedTooDeep",
    "TranscriptLine",
    "TranscriptUsage",
    "dumps",
    "loads",
    "read_head",
    "read_transcript_line",
    "read_transcript_lines",
]


class NestedTooDeep(ValueError):
    """JSON nested past what `json` handles (~1,000 levels; orjson stops at 1,024): as unreadable as malformed
    JSON, and a ValueError like it, so no caller turns it into a 500."""


class _MessagesHead(msgspec.Struct):
    """The fields of a Messages request the proxy itself reads; any type, the proxy checks them."""

    model: Any = None
    stream: Any = None
    max_tokens: Any = None
    metadata: Any = None
    speed: Any = None
    # kept as their JSON text, never built: budget reservations only scan them (`budgets.scan_body`)
    tools: msgspec.Raw = msgspec.Raw()
    mcp_servers: msgspec.Raw = msgspec.Raw()


_HEAD_DECODER = msgspec.json.Decoder(_MessagesHead)


def read_head(data: bytes) -> dict[str, Any]:
    """`model`, `stream`, `max_tokens`, `metadata` and `speed` of a JSON object, and `tools` and `mcp_servers` as
    their JSON text (bytes; None when absent or null); ValueError if msgspec refuses it.

    msgspec refuses a little more than `json` accepts (NaN, lone surrogate escapes): callers fall back to a
    full `loads` before calling a body malformed. It does not check UTF-8 inside strings it skips; the body is
    forwarded as sent, and the provider judges that.
    """
    try:
        head = _HEAD_DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:  # nesting past ~1000 levels
        raise ValueError(str(exc)) from exc
    return {
        "model": head.model,
        "stream": head.stream,
        "max_tokens": head.max_tokens,
        "metadata": head.metadata,
        "speed": head.speed,
        "tools": _raw_or_none(head.tools),
        "mcp_servers": _raw_or_none(head.mcp_servers),
    }


def _raw_or_none(raw: msgspec.Raw) -> bytes | None:
    text = bytes(raw)
    return None if not text or text == b"null" else text


# A token count as the importer accepts it without further checks: a whole number >= 0 (null reads as absent).
# Anything else (a float, a bool, -5, "abc") makes msgspec refuse the line and the caller's full reading decide.
_Count = Annotated[int, msgspec.Meta(ge=0)]


class _CacheCreation(msgspec.Struct):
    ephemeral_5m_input_tokens: _Count | None = None
    ephemeral_1h_input_tokens: _Count | None = None


class _ServerToolUse(msgspec.Struct):
    web_search_requests: _Count | None = None


class TranscriptUsage(msgspec.Struct):
    """An Anthropic `usage` object whose counts are all usable (None where absent or null)."""

    input_tokens: _Count | None = None
    output_tokens: _Count | None = None
    cache_read_input_tokens: _Count | None = None
    cache_creation_input_tokens: _Count | None = None
    cache_creation: _CacheCreation | None = None
    server_tool_use: _ServerToolUse | None = None
    speed: Any = None

    def to_dict(self) -> dict[str, Any]:
        """The object as `usage_from_anthropic` reads it (a null count and an absent one read the same)."""
        creation, server = self.cache_creation, self.server_tool_use
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_creation": None
            if creation is None
            else {
                "ephemeral_5m_input_tokens": creation.ephemeral_5m_input_tokens,
                "ephemeral_1h_input_tokens": creation.ephemeral_1h_input_tokens,
            },
            "server_tool_use": None if server is None else {"web_search_requests": server.web_search_requests},
            "speed": self.speed,
        }


class _TranscriptMessage(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    usage: TranscriptUsage | None = None


class TranscriptLine(msgspec.Struct, rename="camel"):
    """The fields of a Claude Code transcript line that `import` reads; the rest (the content: most of the bytes)
    is checked as JSON and skipped, never built."""

    type: Any = None
    message: _TranscriptMessage | None = None
    request_id: str | None = None
    session_id: str | None = None
    cwd: str | None = None
    timestamp: str | None = None


_TRANSCRIPT_DECODER = msgspec.json.Decoder(TranscriptLine)


def read_transcript_line(line: bytes) -> TranscriptLine:
    """The line's fields, typed; ValueError when msgspec refuses it, then the caller reads it fully with `loads`.

    msgspec refuses more than `loads` (a float or negative count, a field of another type, NaN, lone surrogate
    escapes, deep nesting), never less, except that it does not check UTF-8 in strings it skips: callers
    check the bytes are UTF-8 first.
    """
    try:
        return _TRANSCRIPT_DECODER.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise ValueError(str(exc)) from exc


def read_transcript_lines(data: bytes) -> list[TranscriptLine]:
    """`read_transcript_line` for every JSON value in `data` at once (one call instead of one per line); ValueError
    when msgspec refuses any of them. Values are separated by any whitespace, newlines included, and blank lines
    yield nothing: the caller checks that each line is one object before relying on one value per line."""
    try:
        return _TRANSCRIPT_DECODER.decode_lines(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise ValueError(str(exc)) from exc


def loads(data: bytes | str) -> Any:
    """Parse JSON to read values from it.

    orjson reads an integer beyond 64 bits as a float, so a client's document that is sent on re-encoded must be
    parsed with `json.loads` instead (the proxy does that for rewritten and translated requests).
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(data)  # its error, if any, is the one callers already handle (ValueError)
        except RecursionError as exc:
            raise NestedTooDeep("JSON nested too deeply") from exc


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (`separators=(",", ":")`, `ensure_ascii=False`), keys in insertion order."""
    try:
        return orjson.dumps(value)
    except TypeError:  # JSONEncodeError: an integer beyond 64 bits, a lone surrogate, a non-str key
        return json.dumps(value, separators=(",", ":")).encode()
