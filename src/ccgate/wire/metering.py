"""Metering on the side of a stream: reads usage from Anthropic SSE without touching the bytes.

Only `message_start`, `message_delta` and `error` events are parsed; every other event is skipped with a
substring test, so the per-chunk cost stays in C code.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ccgate.core.records import NO_USAGE, Usage
from ccgate.core.usage import (
    anthropic_sides_reported,
    anthropic_usage_issues,
    merge_anthropic_usage,
    usage_from_anthropic,
)
from ccgate.wire import fastjson
from ccgate.wire.sse import EventTooLarge

# An event is read only if its text holds one of these; every other event is skipped unparsed.
_READ_MARKERS = (b"message_start", b"message_delta", b'"error"')
# the first two share a prefix: one search for it finds both (and skips `message_stop`)
_MESSAGE = b"message_"
_MESSAGE_KINDS = (b"start", b"delta")


def _block_around(text: bytes, at: int) -> tuple[int, int]:
    """(start, end) of the blank-line-separated block of `text` that holds position `at`."""
    start = text.rfind(b"\n\n", 0, at)
    stop = text.find(b"\n\n", at)
    return (0 if start < 0 else start + 2, len(text) if stop < 0 else stop)


def _blocks_to_read(text: bytes) -> list[tuple[int, int]]:
    """(start, end) of each blank-line-separated block of `text` that holds one of `_READ_MARKERS`, in stream
    order, each once.

    Found with `find` from each marker outwards, so a chunk carrying a whole stream (as a fast local upstream
    sends it) costs a few C-level searches, not a split into every event: two, as `message_start` and
    `message_delta` are found by their common prefix.
    """
    spans: list[tuple[int, int]] = []
    at = text.find(_MESSAGE)
    while at >= 0:
        if text[at + 8 : at + 13] in _MESSAGE_KINDS:
            span = _block_around(text, at)
            spans.append(span)
            at = text.find(_MESSAGE, span[1])
        else:
            at = text.find(_MESSAGE, at + 8)
    at = text.find(b'"error"')
    if at < 0:
        return spans
    errors = set(spans)
    while at >= 0:
        span = _block_around(text, at)
        errors.add(span)
        at = text.find(b'"error"', span[1])
    return sorted(errors)


class AnthropicStreamMeter:
    """Feed it every chunk sent to the client; it keeps the usage, message id and stop reason seen so far.

    `max_event_bytes`: the most an unfinished event may hold; past it `feed` raises `EventTooLarge` (after reading
    the events complete in that chunk), so an upstream that never ends an event cannot grow the buffer for ever.
    """

    __slots__ = (
        "_limit",
        "_parts",
        "_pending",
        "_tail",
        "bytes_after_start",
        "error_message",
        "error_type",
        "finished",
        "message_id",
        "model",
        "scanned",
        "started",
        "stop_reason",
        "usage",
        "usage_issues",
    )

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._limit = max_event_bytes
        # The bytes of an event still incomplete, as received: joined only once its end arrives, so an event of
        # N bytes in pieces costs O(N), not a copy and a search of everything so far per piece.
        self._parts: list[bytes] = []
        self._pending = 0
        self._tail = b""  # the last bytes buffered: an event's end may straddle two pieces
        self.usage = NO_USAGE
        self.message_id: str | None = None
        self.model: str | None = None
        self.stop_reason: str | None = None
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.finished = False
        self.started = False
        self.bytes_after_start = 0
        # bytes searched or copied so far: stays within a small multiple of the stream's size (tests check it)
        self.scanned = 0
        # which side of the usage ("input", "output") the provider reported unusably, and how: for the proxy
        self.usage_issues: dict[str, str] = {}

    def feed(self, chunk: bytes) -> bool:
        """Returns True when this chunk changed the usage (the caller may then persist progress)."""
        if self.started:
            self.bytes_after_start += len(chunk)
        if not self._parts:
            if chunk.endswith(b"\n\n"):
                if b"message_" not in chunk and b'"error"' not in chunk:
                    return False  # whole events, none of them read here: the usual content delta
                if b"\r" not in chunk:  # whole LF-framed events: read as they are, no copy, no search for an end
                    self.scanned += len(chunk)
                    changed = self._read_blocks(chunk)
                    self._check()
                    return changed
            buffer = chunk
        else:
            # what is buffered holds no event end (it would have been read): only the chunk and the seam can
            seam = self._tail + chunk[:3]
            self.scanned += len(chunk) + len(seam)
            if not (b"\n\n" in chunk or b"\r\n\r\n" in chunk or b"\n\n" in seam or b"\r\n\r\n" in seam):
                self._keep(chunk)
                self._check()
                return False
            self._parts.append(chunk)
            buffer = b"".join(self._parts)
            self._parts, self._pending, self._tail = [], 0, b""
        self.scanned += len(buffer)
        end = buffer.rfind(b"\n\n")
        crlf_end = buffer.rfind(b"\r\n\r\n")
        if crlf_end > end:
            end = crlf_end + 2
        if end < 0:
            self._keep(buffer)
            self._check()
            return False
        complete, rest = buffer[: end + 2], buffer[end + 2 :]
        if rest:
            self._keep(rest)
        # most chunks are content deltas: two substring tests (C speed) rule them out
        if b"message_" not in complete and b'"error"' not in complete:
            self._check()
            return False
        if b"\r" in complete:
            complete = complete.replace(b"\r\n", b"\n")
        changed = self._read_blocks(complete)
        self._check()
        return changed

    def _read_blocks(self, complete: bytes) -> bool:
        """Read the events of `complete` (whole LF-framed events) that matter here; True if the usage changed."""
        changed = False
        for start, stop in _blocks_to_read(complete):
            was_started = self.started
            changed |= self._event(complete[start:stop])
            if self.started and not was_started:
                # what came with message_start in this chunk is output too (a fast upstream sends it together)
                self.bytes_after_start += len(complete) - stop + self._pending
        return changed

    def _keep(self, data: bytes) -> None:
        self._parts.append(data)
        self._pending += len(data)
        self._tail = (self._tail + data[-3:])[-3:]

    def _check(self) -> None:
        """Refuse an unfinished event past the limit; what it held is dropped (it is never read)."""
        if self._limit is not None and self._pending > self._limit:
            held = self._pending
            self._parts, self._pending, self._tail = [], 0, b""
            raise EventTooLarge(held, self._limit)

    def flush(self) -> bool:
        """End of stream: an event without its trailing blank line still counts."""
        rest = b"".join(self._parts)
        self._parts, self._pending, self._tail = [], 0, b""
        return self._event(rest.replace(b"\r\n", b"\n")) if rest.strip() else False

    def _event(self, block: bytes) -> bool:
        data_lines = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
        if not data_lines:
            return False
        try:
            payload = fastjson.loads(b"\n".join(data_lines))
        except ValueError:
            return False
        if not isinstance(payload, dict):
            return False
        kind = payload.get("type")
        if kind == "message_start":
            message = _object(payload.get("message"))
            self.started = True
            self.message_id = _text(message.get("id"))
            self.model = _text(message.get("model"))
            self.usage = usage_from_anthropic(message.get("usage"))
            self.usage_issues = anthropic_usage_issues(message.get("usage"), required=True)
            return True
        if kind == "message_delta":
            self.stop_reason = _text(_object(payload.get("delta")).get("stop_reason")) or self.stop_reason
            usage = payload.get("usage")
            if isinstance(usage, dict):
                self.usage = merge_anthropic_usage(self.usage, usage)
                settled = anthropic_sides_reported(usage)
                issues = {side: why for side, why in self.usage_issues.items() if side not in settled}
                self.usage_issues = {**issues, **anthropic_usage_issues(usage, required=False)}
                self.finished = True
                return True
            return False
        if kind == "error":
            error = _object(payload.get("error"))
            self.error_type = _text(error.get("type")) or "api_error"
            self.error_message = _text(error.get("message"))
            return False
        return False

    def estimated_output_tokens(self) -> int:
        """For a stream cut before `message_delta`: the provider bills what it generated, which only the bytes
        seen can tell. About 100 bytes of framing per delta event and ~4 characters per token."""
        return max(self.usage.output_tokens, (self.bytes_after_start * 2) // 9 // 4)


class MeteredMessage(NamedTuple):
    """What a non-streaming Messages response says about itself."""

    usage: Usage
    message_id: str | None
    stop_reason: str | None
    # sides ("input", "output") whose usage is missing or unusable, each with why (see `anthropic_usage_issues`)
    usage_issues: dict[str, str]


def meter_message(body: bytes) -> MeteredMessage:
    """Usage, message id, stop reason and usage issues of a non-streaming Messages response."""
    try:
        payload = fastjson.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        why = "the provider's reply is not a JSON object"
        return MeteredMessage(Usage(), None, None, {"input": why, "output": why})
    raw = payload.get("usage")
    return MeteredMessage(
        usage_from_anthropic(raw),
        _text(payload.get("id")),
        _text(payload.get("stop_reason")),
        anthropic_usage_issues(raw, required=True),
    )


def _object(value: Any) -> dict[str, Any]:
    """A JSON object the provider was meant to send; anything else reads as empty, never as an AttributeError."""
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    """An id, name or reason: a string or nothing (a provider's odd value must not reach the ledger as a list)."""
    return value if isinstance(value, str) else None


def error_type_of(body: bytes) -> tuple[str | None, str | None]:
    """The Anthropic error type and message of an error response body, if it has the envelope."""
    try:
        payload = fastjson.loads(body)
    except ValueError:
        return None, None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        return _text(error.get("type")), _text(error.get("message"))
    return None, None
