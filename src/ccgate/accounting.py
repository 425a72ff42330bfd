"""Metering on the side of a stream: reads usage from Anthropic SSE without touching the bytes.

Only `message_start`, `message_delta` and `error` events are parsed; every other event is skipped with a
substring test, so the per-chunk cost stays in C code.
"""

from __future__ import annotations

from ccgate import fastjson
from ccgate.models import NO_USAGE, Usage
from ccgate.usage import merge_anthropic_usage, usage_from_anthropic

# An event is read only if its text holds one of these; every other event is skipped unparsed.
_READ_MARKERS = (b"message_start", b"message_delta", b'"error"')


def _blocks_holding(text: bytes, markers: tuple[bytes, ...]) -> list[tuple[int, int]]:
    """(start, end) of each blank-line-separated block of `text` that holds a marker, in stream order.

    Found with `find` from each marker outwards, so a chunk carrying a whole stream (as a fast local upstream
    sends it) costs a few C-level searches, not a split into every event.
    """
    spans: set[tuple[int, int]] = set()
    for marker in markers:
        at = text.find(marker)
        while at >= 0:
            start = text.rfind(b"\n\n", 0, at)
            stop = text.find(b"\n\n", at)
            stop = len(text) if stop < 0 else stop
            spans.add((0 if start < 0 else start + 2, stop))
            at = text.find(marker, stop)
    return sorted(spans)


class AnthropicStreamMeter:
    """Feed it every chunk sent to the client; it keeps the usage, message id and stop reason seen so far."""

    __slots__ = (
        "_buffer",
        "bytes_after_start",
        "error_message",
        "error_type",
        "finished",
        "message_id",
        "model",
        "started",
        "stop_reason",
        "usage",
    )

    def __init__(self) -> None:
        self._buffer = b""
        self.usage = NO_USAGE
        self.message_id: str | None = None
        self.model: str | None = None
        self.stop_reason: str | None = None
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.finished = False
        self.started = False
        self.bytes_after_start = 0

    def feed(self, chunk: bytes) -> bool:
        """Returns True when this chunk changed the usage (the caller may then persist progress)."""
        if self.started:
            self.bytes_after_start += len(chunk)
        if not self._buffer and chunk.endswith(b"\n\n") and b"message_" not in chunk and b'"error"' not in chunk:
            return False  # whole events, none of them read here: the usual content delta
        buffer = self._buffer + chunk if self._buffer else chunk
        end = buffer.rfind(b"\n\n")
        crlf_end = buffer.rfind(b"\r\n\r\n")
        if crlf_end > end:
            end = crlf_end + 2
        if end < 0:
            self._buffer = buffer
            return False
        complete, self._buffer = buffer[: end + 2], buffer[end + 2 :]
        # most chunks are content deltas: two substring tests (C speed) rule them out
        if b"message_" not in complete and b'"error"' not in complete:
            return False
        if b"\r" in complete:
            complete = complete.replace(b"\r\n", b"\n")
        changed = False
        for start, stop in _blocks_holding(complete, _READ_MARKERS):
            was_started = self.started
            changed |= self._event(complete[start:stop])
            if self.started and not was_started:
                # what came with message_start in this chunk is output too (a fast upstream sends it together)
                self.bytes_after_start += len(complete) - stop + len(self._buffer)
        return changed

    def flush(self) -> bool:
        """End of stream: an event without its trailing blank line still counts."""
        rest, self._buffer = self._buffer, b""
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
            message = payload.get("message") or {}
            self.started = True
            self.message_id = message.get("id")
            self.model = message.get("model")
            self.usage = usage_from_anthropic(message.get("usage"))
            return True
        if kind == "message_delta":
            delta = payload.get("delta") or {}
            self.stop_reason = delta.get("stop_reason") or self.stop_reason
            usage = payload.get("usage")
            if isinstance(usage, dict):
                self.usage = merge_anthropic_usage(self.usage, usage)
                self.finished = True
                return True
            return False
        if kind == "error":
            error = payload.get("error") or {}
            self.error_type = error.get("type") or "api_error"
            self.error_message = error.get("message")
            return False
        return False

    def estimated_output_tokens(self) -> int:
        """For a stream cut before `message_delta`: the provider bills what it generated, which only the bytes
        seen can tell. About 100 bytes of framing per delta event and ~4 characters per token."""
        return max(self.usage.output_tokens, (self.bytes_after_start * 2) // 9 // 4)


def meter_message(body: bytes) -> tuple[Usage, str | None, str | None]:
    """Usage, message id and stop reason of a non-streaming Messages response; empty usage if unreadable."""
    try:
        payload = fastjson.loads(body)
    except ValueError:
        return Usage(), None, None
    if not isinstance(payload, dict):
        return Usage(), None, None
    return usage_from_anthropic(payload.get("usage")), payload.get("id"), payload.get("stop_reason")


def error_type_of(body: bytes) -> tuple[str | None, str | None]:
    """The Anthropic error type and message of an error response body, if it has the envelope."""
    try:
        payload = fastjson.loads(body)
    except ValueError:
        return None, None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        return error.get("type"), error.get("message")
    return None, None
