"""A stream event is buffered only up to `sidecar.max_reply_mb`: an upstream that never ends an event (one endless
line) or never completes `message_start` on a rewritten route cannot grow the sidecar's memory without bound. The
client gets an `error` event, the upstream is dropped, and the row keeps the usage seen."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from endless_upstream import SENT_AT_MOST, START, endless_upstream
from sidecar_harness import running_sidecar

from ccgate.core.settings import Config, SidecarSettings, TierSettings
from ccgate.wire.metering import AnthropicStreamMeter
from ccgate.wire.sse import EventTooLarge, SSEDecoder

LIMIT_MB = 1


# ---- the pure parts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [1000, 65536, 3 * 2**20])
def test_the_decoder_refuses_an_endless_line_however_it_is_cut(piece: int) -> None:
    decoder = SSEDecoder(max_event_bytes=2**20)
    with pytest.raises(EventTooLarge) as refused:
        decoder.feed(b'data: {"a": 1}\n\ndata: "')
        for _ in range(4 * 2**20 // piece + 2):
            decoder.feed(b"x" * piece)
    assert refused.value.limit == 2**20 and refused.value.size > 2**20
    with pytest.raises(EventTooLarge):  # and stays refused
        decoder.flush()


def test_the_decoder_counts_an_event_of_many_lines_toward_the_limit() -> None:
    decoder = SSEDecoder(max_event_bytes=2**20)
    with pytest.raises(EventTooLarge):
        for _ in range(3000):
            decoder.feed(b"data: " + b"y" * 999 + b"\n")  # lines end, the event never does


def test_events_complete_in_the_read_that_passes_the_limit_still_count() -> None:
    for feed in (SSEDecoder.feed, SSEDecoder.feed_data):
        decoder = SSEDecoder(max_event_bytes=1000)
        got = feed(decoder, b'data: {"usage": 5}\n\ndata: "' + b"z" * 5000)
        assert len(got) == 1
        with pytest.raises(EventTooLarge):
            feed(decoder, b"z")


def test_without_a_limit_the_decoder_buffers_as_before() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: " + b"x" * 3 * 2**20)
    assert [event.data[:3] for event in decoder.feed(b"\n\n")] == ["xxx"]


def test_a_limit_does_not_touch_events_below_it() -> None:
    decoder = SSEDecoder(max_event_bytes=2**20)
    big = b"data: " + b"x" * (2**20 - 100) + b"\n\n"
    events = [event for start in range(0, len(big), 4096) for event in decoder.feed(big[start : start + 4096])]
    assert len(events) == 1 and len(events[0].data) == 2**20 - 100


@pytest.mark.parametrize("piece", [1000, 65536, 3 * 2**20])
def test_the_meter_refuses_an_endless_event_after_reading_what_came_before(piece: int) -> None:
    meter = AnthropicStreamMeter(max_event_bytes=2**20)
    with pytest.raises(EventTooLarge):
        meter.feed(START + b"event: content_block_delta\ndata: {")
        for _ in range(4 * 2**20 // piece + 2):
            meter.feed(b"x" * piece)
    assert meter.started and meter.usage.input_tokens == 1234


def test_the_meter_reads_a_message_delta_in_the_read_that_passes_the_limit() -> None:
    meter = AnthropicStreamMeter(max_event_bytes=1000)
    delta = b'event: message_delta\ndata: {"type":"message_delta","delta":{},"usage":{"output_tokens":77}}\n\n'
    with pytest.raises(EventTooLarge):
        meter.feed(START + delta + b"data: " + b"q" * 5000)
    assert meter.usage.output_tokens == 77


# ---- through the sidecar ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["line", "start", "pings", "openai"])
async def test_an_endless_stream_event_ends_the_stream_with_an_error_event_and_a_metered_row(how: str) -> None:
    tiers = {"haiku": TierSettings("haiku", ("openai/gpt-4o-mini",))}
    if how in ("start", "pings"):  # a rewritten route: bytes are held until message_start is complete
        tiers["opus"] = TierSettings("opus", ("anthropic/claude-opus-4-1",))
    config = Config(sidecar=SidecarSettings(max_reply_mb=LIMIT_MB), tiers=tiers)
    async with endless_upstream(how) as (url, sent, ended):
        if how == "openai":
            environ = {"CCGATE_OPENAI_BASE_URL": url + "/v1", "CCGATE_OPENAI_API_KEY": "sk-openai-secret"}
            model = "claude-haiku-4-5"
        else:
            environ, model = {"CCGATE_ANTHROPIC_BASE_URL": url}, "claude-opus-4-5"
        async with running_sidecar(config=config, environ=environ) as harness, aiohttp.ClientSession() as http:
            body = {"model": model, "max_tokens": 300, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            headers = {**harness.headers, "x-api-key": "sk-ant-user", "anthropic-version": "2023-06-01"}
            for attempt in (1, 2):  # the second: the sidecar carries on
                ended.clear()
                async with http.post(f"{harness.url}/v1/messages", json=body, headers=headers) as reply:
                    assert reply.status == 200
                    if how == "line":  # the client holds the endless event's start: its connection is cut
                        with pytest.raises(aiohttp.ClientPayloadError):
                            await reply.read()
                        received = b""
                    else:
                        received = await reply.read()
                await asyncio.wait_for(ended.wait(), 60)  # the upstream notices the sidecar hung up
                assert len(sent) == attempt and sent[-1] < SENT_AT_MOST  # it stopped reading, it did not take it all
                if how == "line":
                    continue
                assert len(received) < 3 * 2**20
                last = received.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
                assert last.startswith(b"event: error\ndata: ")
                error = json.loads(last.split(b"data: ", 1)[1])["error"]
                assert error["type"] == "api_error"
                assert "larger than 1 MiB" in error["message"] and "sidecar.max_reply_mb" in error["message"]
                if how in ("start", "pings"):  # nothing held back reached the client, nor the routed model's name
                    assert b"claude-opus-4-1" not in received and b"ping" not in received
            rows = harness.rows()
            assert len(rows) == 2
            for row in rows:
                assert (row["status"], row["http_status"], row["error_type"]) == ("interrupted", 200, "event_too_large")
                if how == "line":  # message_start's input counts, the output is estimated from the bytes seen
                    assert row["input_tokens"] == 1234 and row["output_tokens"] > 1
                if how == "openai":  # no usage came: both sides estimated, so the row is not free
                    assert row["input_tokens"] > 0 and row["output_tokens"] > 0
