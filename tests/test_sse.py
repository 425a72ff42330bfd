"""The SSE decoder returns the same events however the bytes are cut, with any line ending."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ccgate.wire.sse import SSEDecoder, SSEEvent, encode_sse

EVENTS = [
    (b'data: {"a":1}\n\n', SSEEvent(None, '{"a":1}')),
    (b"event: ping\ndata: {}\n\n", SSEEvent("ping", "{}")),
    (b": keep-alive comment\n\n", None),
    (b"data: line one\ndata: line two\n\n", SSEEvent(None, "line one\nline two")),
    (b"data:no-space\n\n", SSEEvent(None, "no-space")),
    (b"data: [DONE]\n\n", SSEEvent(None, "[DONE]")),
    (
        encode_sse("message_start", {"type": "message_start", "x": "é"}),
        SSEEvent("message_start", '{"type":"message_start","x":"é"}'),
    ),
]


STREAMS = st.tuples(
    st.lists(st.integers(0, len(EVENTS) - 1), min_size=1, max_size=12),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.lists(st.integers(1, 40), max_size=30),
)


def cut(picks: list[int], ending: bytes, cuts: list[int]) -> tuple[list[bytes], list[SSEEvent]]:
    """The picked events' bytes with `ending` line endings, cut into reads of the given sizes; and the events."""
    stream = b"".join(EVENTS[i][0] for i in picks).replace(b"\n", ending)
    reads, position = [], 0
    for size in cuts:
        reads.append(stream[position : position + size])
        position += size
    reads.append(stream[position:])
    return reads, [event for i in picks if (event := EVENTS[i][1]) is not None]


@settings(deadline=None, max_examples=300)
@given(stream=STREAMS)
def test_any_chunking_and_line_ending_gives_the_same_events(stream: tuple[list[int], bytes, list[int]]) -> None:
    reads, expected = cut(*stream)
    decoder = SSEDecoder()
    got = [event for read in reads for event in decoder.feed(read)] + decoder.flush()
    assert got == expected


def test_final_event_without_blank_line_counts_at_flush() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n\ndata: {"b":2}') == [SSEEvent(None, '{"a":1}')]
    assert decoder.flush() == [SSEEvent(None, '{"b":2}')]


@settings(deadline=None, max_examples=300)
@given(stream=STREAMS)
def test_feed_data_gives_the_data_of_the_same_events(stream: tuple[list[int], bytes, list[int]]) -> None:
    reads, expected = cut(*stream)
    decoder = SSEDecoder()
    got = [data for read in reads for data in decoder.feed_data(read)]
    got += [event.data.encode() for event in decoder.flush()]
    assert got == [event.data.encode() for event in expected]


@settings(deadline=None, max_examples=50)
@given(
    ending=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    lines=st.integers(1, 3),
    piece=st.integers(1, 64),
)
def test_a_long_event_in_small_reads_is_decoded_once_and_copied_in_proportion(
    ending: bytes, lines: int, piece: int
) -> None:
    """A multi-line event of 256 KB (a long tool-call argument) read `piece` bytes at a time: the decoder joins
    the reads when the event (or a line of it) can end, not once per read (which was quadratic)."""
    text = "x" * (256 * 1024 // lines)
    stream = (("event: big\n" + f"data: {text}\n" * lines + "\n") * 2).replace("\n", ending.decode()).encode()
    decoder = SSEDecoder()
    got = [event for at in range(0, len(stream), piece) for event in decoder.feed(stream[at : at + piece])]
    got += decoder.flush()
    assert got == [SSEEvent("big", "\n".join([text] * lines))] * 2
    assert decoder.copied <= 3 * len(stream)
