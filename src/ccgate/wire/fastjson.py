"""The one home of orjson and msgspec: JSON on the proxy's hot path (request bodies, every SSE event).

The standard library stays the reference: whatever orjson refuses and `json` accepts (NaN, lone surrogates,
integers beyond 64 bits on output) goes through `json`, so switching never turns a valid request into an error.
`read_head` reads only the few fields the proxy needs from a request body, checking the rest is JSON without
building it: a Claude Code body is mostly conversation the proxy forwards untouched.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import orjson

__all__ = ["NestedTooDeep", "dumps", "loads", "read_head"]


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
