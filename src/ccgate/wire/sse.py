"""Incremental Server-Sent Events decoding and encoding, shared by the meter and the translator.

Network reads cut events anywhere: one read may hold several events, or end mid-line. The decoder keeps
the partial tail and returns every complete event from each `feed`.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

from ccgate.wire import fastjson

_T = TypeVar("_T")


class SSEEvent(NamedTuple):
    """One event; a named tuple because a stream makes one per chunk (cheaper to build than a dataclass)."""

    event: str | None
    data: str

    def json(self) -> Any:
        return fastjson.loads(self.data)


class EventTooLarge(Exception):
    """An event still unfinished past the limit: a broken or hostile upstream (e.g. one endless line) must not
    make the proxy buffer without bound. Not a ValueError, so no JSON handler swallows it."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a stream event grew past {limit} bytes without ending")
        self.size = size  # bytes of the unfinished event held when it was refused
        self.limit = limit


class SSEDecoder:
    """Feed raw bytes, get complete events back; handles \\n, \\r\\n and \\r line endings.

    `max_event_bytes`: the most an unfinished event (or line) may hold; past it `feed` raises `EventTooLarge`.
    """

    __slots__ = ("_buffer", "_data", "_data_size", "_event", "_limit", "_parts", "_refused", "_waiting", "copied")

    def __init__(self, max_event_bytes: int | None = None) -> None:
        self._buffer = b""
        # reads after `_buffer` that cannot end anything yet: joined once something can, so a long event or line
        # in many small reads costs O(size), not a copy of everything so far per read
        self._parts: list[bytes] = []
        self._waiting = 0  # bytes in `_parts`
        self._event: str | None = None
        self._data: list[str] = []
        self._data_size = 0  # characters in `_data`: an event's many lines count toward the limit too
        self._limit = max_event_bytes
        self._refused = 0  # bytes of the event refused: once past the limit, every later call raises
        self.copied = 0  # bytes copied to join reads: stays linear in the stream's size (tests check it)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._refused:
            self._check(self._refused)
        if not self._buffer:
            buffer = chunk
        elif self._waits(chunk):
            if chunk:
                self._parts.append(chunk)
                self._waiting += len(chunk)
                self._check(len(self._buffer) + self._waiting)
            return []
        else:
            buffer = b"".join([self._buffer, *self._parts, chunk])
            self._parts, self._waiting = [], 0
            self.copied += len(buffer)
        return self._held_back(self._feed(buffer))

    def _held_back(self, events: list[_T]) -> list[_T]:
        """`events`, after checking what stays buffered: past the limit, the events complete in this read are still
        returned (a usage report among them counts) and the next `feed` or `flush` raises."""
        if self._limit is not None and (held := len(self._buffer) + self._data_size) > self._limit:
            if not events:
                self._check(held)
            self._buffer, self._data, self._data_size, self._refused = b"", [], 0, held
        return events

    def _check(self, held: int) -> None:
        if self._limit is not None and held > self._limit:
            self._buffer, self._parts, self._waiting, self._data, self._data_size = b"", [], 0, [], 0
            self._refused = held
            raise EventTooLarge(held, self._limit)

    def _feed(self, buffer: bytes) -> list[SSEEvent]:
        if b"\r" not in buffer and not self._data and self._event is None:
            return self._feed_blocks(buffer)
        if b"\r" in buffer:
            # a lone trailing \r may be the first half of \r\n: keep it for the next read
            keep_cr = buffer.endswith(b"\r")
            if keep_cr:
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                buffer += b"\r"
        events: list[SSEEvent] = []
        start = 0
        while True:
            newline = buffer.find(b"\n", start)
            if newline < 0:
                break
            line = buffer[start:newline]
            start = newline + 1
            self._line(line, events)
        self._buffer = buffer[start:]
        return events

    def _waits(self, chunk: bytes) -> bool:
        """True when `chunk`, after what is buffered, can neither end a line that matters nor an event.

        What is buffered is a partial line (while an event is being read) or a partial event without a blank line
        (between events); a kept trailing \\r, or any \\r in the chunk, is left to the full path.
        """
        last = (self._parts[-1] if self._parts else self._buffer)[-1:]
        if last == b"\r" or b"\r" in chunk:
            return False
        if self._data or self._event is not None:
            return b"\n" not in chunk
        return b"\n\n" not in chunk and not (last == b"\n" and chunk.startswith(b"\n"))

    def feed_data(self, chunk: bytes) -> list[bytes]:
        """Only the `data` of each complete event, as bytes (what a JSON parser takes): the translator's hot path.

        Event names and ids are not returned; a stream whose consumer needs them uses `feed`.
        """
        if self._buffer or self._data or self._event is not None or b"\r" in chunk or self._refused:
            return [event.data.encode() for event in self.feed(chunk)]
        out: list[bytes] = []
        for block in self._complete_blocks(chunk):
            if block.startswith(b"data: ") and b"\n" not in block:
                out.append(block[6:])
            else:
                out.extend(event.data.encode() for event in self._block_events(block))
        return self._held_back(out)

    def _feed_blocks(self, buffer: bytes) -> list[SSEEvent]:
        """Fast path for LF-framed streams: whole events at a time, single-line `data:` events without a loop."""
        events: list[SSEEvent] = []
        for block in self._complete_blocks(buffer):
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append(SSEEvent(None, block[6:].decode("utf-8", errors="replace")))
            else:
                events.extend(self._block_events(block))
        return events

    def _complete_blocks(self, buffer: bytes) -> list[bytes]:
        """The LF-framed events complete in `buffer` (blank-line separated); the rest waits for the next read."""
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return []
        self._buffer = buffer[end + 2 :]
        return buffer[:end].split(b"\n\n")

    def _block_events(self, block: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        for line in block.split(b"\n"):
            self._line(line, events)
        self._line(b"", events)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: a final event without its blank line still counts."""
        if self._refused:
            self._check(self._refused)
        events: list[SSEEvent] = []
        if self._parts:
            self._buffer = b"".join([self._buffer, *self._parts])
            self._parts, self._waiting = [], 0
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r"), events)
            self._buffer = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data or self._event is not None:
                events.append(SSEEvent(self._event, "\n".join(self._data)))
            self._event = None
            self._data = []
            self._data_size = 0
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            text = value.decode("utf-8", errors="replace")
            self._data.append(text)
            self._data_size += len(text)
        elif name == b"event":
            self._event = value.decode("utf-8", errors="replace")


def encode_sse(event: str | None, data: Any) -> bytes:
    """One event in Anthropic's framing: `event:` line, compact JSON `data:` line, blank line."""
    payload = data.encode() if isinstance(data, str) else fastjson.dumps(data)
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + payload + b"\n\n"
