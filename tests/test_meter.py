"""The stream meter reads usage from Anthropic SSE however the bytes are cut, and whatever the text says."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ccgate.core.records import Usage
from ccgate.core.usage import merge_anthropic_usage, usage_from_anthropic
from ccgate.wire.metering import _READ_MARKERS, AnthropicStreamMeter, _blocks_to_read
from ccgate.wire.sse import SSEDecoder


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


# text a model may well write: it names the events the meter looks for, with and without quotes
TRICKY_TEXT = st.sampled_from(
    ["hello", "message_start", "message_delta", '"error"', 'data: {"type":"message_delta"}', "\\n\\n", "é ✓"]
)


def anthropic_stream(texts: list[str], input_tokens: int, output_tokens: int, cache_read: int) -> str:
    start_usage = {"input_tokens": input_tokens, "output_tokens": 1, "cache_read_input_tokens": cache_read}
    events = [
        sse(
            "message_start",
            {"type": "message_start", "message": {"id": "msg_01X", "model": "claude-x", "usage": start_usage}},
        ),
        sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
        'event: ping\ndata: {"type": "ping"}\n\n',
    ]
    events += [
        sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"text": text}})
        for text in texts
    ]
    events += [
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": output_tokens}},
        ),
        sse("message_stop", {"type": "message_stop"}),
    ]
    return "".join(events)


def expected(stream: bytes) -> tuple[Usage, str | None, str | None]:
    """The same facts read the slow, obvious way: decode every event, then look at the two that carry usage."""
    usage, message_id, stop_reason = Usage(), None, None
    for event in SSEDecoder().feed(stream):
        payload = event.json()
        if payload.get("type") == "message_start":
            message_id = payload["message"]["id"]
            usage = usage_from_anthropic(payload["message"]["usage"])
        elif payload.get("type") == "message_delta":
            stop_reason = payload["delta"]["stop_reason"]
            usage = merge_anthropic_usage(usage, payload["usage"])
    return usage, message_id, stop_reason


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(point % (len(data) + 1) for point in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(
    texts=st.lists(TRICKY_TEXT, max_size=6),
    tokens=st.tuples(st.integers(0, 10**6), st.integers(0, 10**5), st.integers(0, 10**6)),
    points=st.lists(st.integers(0, 10**4), max_size=12),
    crlf=st.booleans(),
)
def test_usage_is_the_same_however_the_stream_is_cut(
    texts: list[str], tokens: tuple[int, int, int], points: list[int], crlf: bool
) -> None:
    text = anthropic_stream(texts, *tokens)
    stream = (text.replace("\n", "\r\n") if crlf else text).encode()
    meter = AnthropicStreamMeter()
    changes = [meter.feed(chunk) for chunk in cut(stream, points)]
    assert (meter.usage, meter.message_id, meter.stop_reason) == expected(stream)
    assert meter.usage == Usage(input_tokens=tokens[0], output_tokens=tokens[1], cache_read_tokens=tokens[2])
    assert meter.finished and meter.started and meter.model == "claude-x"
    assert 1 <= sum(changes) <= 2  # message_start, then message_delta (the same chunk may hold both)
    assert meter.error_type is None
    if not crlf:  # every byte after message_start is counted towards a cut stream's output estimate, once
        assert meter.bytes_after_start == len(stream) - stream.index(b"\n\n")


def test_the_whole_stream_in_one_chunk_and_an_error_event() -> None:
    meter = AnthropicStreamMeter()
    assert meter.feed(anthropic_stream(["message_delta", '"error"'], 10, 20, 30).encode())
    assert meter.usage == Usage(input_tokens=10, output_tokens=20, cache_read_tokens=30)
    assert meter.stop_reason == "end_turn"

    failing = AnthropicStreamMeter()
    error = sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    failing.feed(anthropic_stream([], 5, 0, 0).split("event: content_block_stop")[0].encode() + error.encode())
    assert (failing.error_type, failing.error_message) == ("overloaded_error", "Overloaded")
    assert failing.usage.input_tokens == 5 and not failing.finished


def test_an_event_without_its_final_blank_line_counts_at_flush() -> None:
    meter = AnthropicStreamMeter()
    stream = anthropic_stream(["hi"], 7, 8, 0).encode()
    meter.feed(stream.removesuffix(b"\n\n").rsplit(b"event: message_stop", 1)[0].removesuffix(b"\n\n"))
    assert not meter.finished
    assert meter.flush() and meter.finished and meter.usage.output_tokens == 8


@settings(deadline=None)
@given(
    texts=st.lists(TRICKY_TEXT, max_size=4),
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=20),
    crlf=st.booleans(),
)
def test_usage_is_the_same_when_the_stream_comes_a_few_bytes_at_a_time(
    texts: list[str], sizes: list[int], crlf: bool
) -> None:
    """Event ends straddling two pieces (`\\r\\n|\\r\\n`, `\\n|\\n`) are found however small the pieces are."""
    text = anthropic_stream(texts, 11, 22, 33)
    stream = (text.replace("\n", "\r\n") if crlf else text).encode()
    meter = AnthropicStreamMeter()
    at, turn = 0, 0
    while at < len(stream):
        size = sizes[turn % len(sizes)]
        meter.feed(stream[at : at + size])
        at, turn = at + size, turn + 1
    meter.flush()
    assert (meter.usage, meter.message_id, meter.stop_reason) == expected(stream)
    assert meter.finished and meter.usage_issues == {}


def test_a_huge_event_in_small_pieces_costs_work_in_proportion_to_its_size() -> None:
    """A multi-MB event (a long tool input, a big thinking block) arriving 1 KB at a time: each byte is looked at a
    bounded number of times, not once per piece that follows it (20 s of CPU for a 64 MB event before)."""

    def work(event_bytes: int) -> tuple[int, int]:
        big = sse("content_block_delta", {"type": "content_block_delta", "delta": {"text": "x" * event_bytes}})
        stream = anthropic_stream([], 1, 2, 3).replace("event: content_block_stop", big + "event: content_block_stop")
        data = stream.encode()
        meter = AnthropicStreamMeter()
        for at in range(0, len(data), 1024):
            meter.feed(data[at : at + 1024])
        assert meter.finished and meter.usage.output_tokens == 2
        return meter.scanned, len(data)

    for size in (1 << 20, 4 << 20):
        scanned, total = work(size)
        assert scanned <= 3 * total


MARKER_PIECES = [b"message_start", b"message_delta", b"message_stop", b"message_", b"message_st", b'"error"']
MARKER_PIECES += [b"\n\n", b"\n", b"data: ", b"x", b"start", b"delta", b"message_message_delta"]


def blocks_holding(text: bytes, markers: tuple[bytes, ...]) -> list[tuple[int, int]]:
    """The plain way: each marker searched for on its own, every block holding one, deduplicated and sorted."""
    spans: set[tuple[int, int]] = set()
    for marker in markers:
        at = text.find(marker)
        while at >= 0:
            start, stop = text.rfind(b"\n\n", 0, at), text.find(b"\n\n", at)
            span = (0 if start < 0 else start + 2, len(text) if stop < 0 else stop)
            spans.add(span)
            at = text.find(marker, span[1])
    return sorted(spans)


@settings(deadline=None, max_examples=300)
@given(
    st.lists(
        st.sampled_from(MARKER_PIECES),
        max_size=30,
    )
)
def test_the_blocks_read_are_the_blocks_holding_a_marker(pieces: list[bytes]) -> None:
    """The meter finds message_start and message_delta by their common prefix; it reads the same blocks."""
    text = b"".join(pieces)
    assert _blocks_to_read(text) == blocks_holding(text, _READ_MARKERS)
