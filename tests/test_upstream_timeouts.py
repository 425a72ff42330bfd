"""A hung upstream: before the first byte the next target is tried; mid-stream the client gets an error event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from openai_upstream import OpenAIReply, OpenAIUpstream
from scripted_upstream import SSE, RecordedRequest, ScriptedUpstream, StreamReply, TextReply, Usage, text_events
from sidecar_harness import Harness, running_sidecar

from ccgate.core.settings import (
    BudgetSettings,
    Config,
    ProviderSettings,
    SidecarSettings,
    TierSettings,
    config_from_dict,
)
from ccgate.errors import ConfigError

# Short enough for a test, long enough that a loaded machine still delivers a healthy reply in time.
FAST = SidecarSettings(first_byte_timeout_seconds=1.0, stream_idle_timeout_seconds=1.0)
BODY: dict[str, Any] = {
    "model": "claude-opus-4-5",
    "max_tokens": 100,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}
# Without the timeouts these tests would wait for the session's 600 s read timeout: fail long before that.
BOUND = 30.0


def hung_config(hung: ScriptedUpstream, **extra: Any) -> Config:
    return Config(
        sidecar=FAST,
        providers={"hung": ProviderSettings("hung", kind="anthropic", base_url=hung.url)},
        tiers={"opus": TierSettings("opus", ("hung/claude-opus-4-5", "anthropic/claude-opus-4-5"))},
        **extra,
    )


@asynccontextmanager
async def hung_upstream(**kwargs: Any) -> AsyncIterator[tuple[ScriptedUpstream, asyncio.Event]]:
    """An upstream whose handler never answers (no status line, no headers) until the test ends."""
    release = asyncio.Event()

    async def never(_: RecordedRequest) -> None:
        await release.wait()

    async with ScriptedUpstream(never, **kwargs) as upstream:
        try:
            yield upstream, release
        finally:
            release.set()


async def post(harness: Harness, body: dict[str, Any] = BODY) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{harness.url}/v1/messages", json=body, headers=harness.headers) as resp,
    ):
        return resp.status, await resp.read()


async def test_an_upstream_that_never_sends_headers_fails_over_to_the_next_target() -> None:
    async with (
        hung_upstream() as (hung, _),
        running_sidecar(config=hung_config(hung), environ={"CCGATE_HUNG_API_KEY": "k"}) as harness,
    ):
        harness.upstream.enqueue(
            StreamReply(events=text_events("x", pieces=["from the fallback"], model="claude-opus-4-5"))
        )
        status, data = await asyncio.wait_for(post(harness), BOUND)
        assert status == 200 and b"from the fallback" in data
        (row,) = harness.rows()
        assert (row["provider"], row["status"]) == ("anthropic", "ok")
        attempts = json.loads(row["attempts"])
        assert [(a["provider"], a["status"]) for a in attempts] == [("hung", None), ("anthropic", 200)]
        assert "no response headers within 1 s" in attempts[0]["error"]


async def test_headers_without_a_first_event_fail_over_before_the_client_sees_a_byte() -> None:
    async with ScriptedUpstream() as silent:
        silent.enqueue(StreamReply(events=[], then="hang"))
        config = hung_config(silent)
        async with running_sidecar(config=config, environ={"CCGATE_HUNG_API_KEY": "k"}) as harness:
            harness.upstream.enqueue(StreamReply(events=text_events("x", pieces=["second"], model="claude-opus-4-5")))
            status, data = await asyncio.wait_for(post(harness), BOUND)
            assert status == 200 and b"second" in data and b"event: error" not in data
            (row,) = harness.rows()
            attempts = json.loads(row["attempts"])
            assert [a["provider"] for a in attempts] == ["hung", "anthropic"]
            assert row["status"] == "ok"


async def test_the_last_target_hanging_is_a_504_with_the_reservation_released() -> None:
    async with hung_upstream() as (hung, _):
        config = Config(
            sidecar=FAST,
            providers={"hung": ProviderSettings("hung", kind="anthropic", base_url=hung.url)},
            tiers={"opus": TierSettings("opus", ("hung/claude-opus-4-5",))},
            budgets=(BudgetSettings(period="daily", limit_usd=Decimal(100)),),
        )
        async with running_sidecar(config=config, environ={"CCGATE_HUNG_API_KEY": "k"}) as harness:
            status, data = await asyncio.wait_for(post(harness), BOUND)
            assert status == 504
            assert "first_byte_timeout_seconds" in json.loads(data)["error"]["message"]
            (row,) = harness.rows()
            assert row["status"] == "error"
            budgets = await status_budgets(harness)
            assert budgets[0]["reserved_nanos"] == 0 and budgets[0]["spent_nanos"] == 0


async def test_a_stream_gone_silent_ends_with_an_error_event_and_an_interrupted_row() -> None:
    usage = Usage(input_tokens=4000, output_tokens=900, cache_read_input_tokens=2000)
    events = text_events("thinking hard", model="claude-opus-4-5", usage=usage, message_id="msg_silent")
    config = Config(sidecar=FAST, budgets=(BudgetSettings(period="daily", limit_usd=Decimal(100)),))
    async with running_sidecar(config=config) as harness:
        # message_start, a block and a ping; then nothing more, as a stuck upstream would
        harness.upstream.enqueue(StreamReply(events=events[:3], then="hang"))
        status, data = await asyncio.wait_for(post(harness), BOUND)
        assert status == 200
        assert data.startswith(b"".join(e.encode() for e in events[:3]))
        last = data.rstrip().split(b"\n\n")[-1]
        assert last.startswith(b"event: error") and b"sent nothing for 1 s" in last
        (row,) = harness.rows()
        assert (row["status"], row["error_type"]) == ("interrupted", "upstream_disconnected")
        assert (row["input_tokens"], row["cache_read_tokens"]) == (4000, 2000)
        assert row["cost_nanos"] > 0
        # the reservation became the real cost of what was seen; nothing stays held
        (budget,) = await status_budgets(harness)
        assert budget["reserved_nanos"] == 0 and budget["spent_nanos"] == row["cost_nanos"]


async def test_a_translated_stream_gone_silent_is_ended_too() -> None:
    async with OpenAIUpstream() as openai_mock:
        openai_mock.replies.append(OpenAIReply(text="abcdefgh", pieces=4, hang_after_chunks=2))
        config = Config(sidecar=FAST, tiers={"haiku": TierSettings("haiku", ("openai/gpt-4o-mini",))})
        env = {"CCGATE_OPENAI_BASE_URL": openai_mock.base_url, "CCGATE_OPENAI_API_KEY": "sk-openai"}
        async with running_sidecar(config=config, environ=env) as harness:
            status, data = await asyncio.wait_for(post(harness, {**BODY, "model": "claude-haiku-4-5"}), BOUND)
            assert status == 200 and b"event: message_start" in data
            last = data.rstrip().split(b"\n\n")[-1]
            assert last.startswith(b"event: error") and b"sent nothing for 1 s" in last
            (row,) = harness.rows()
            assert row["status"] == "interrupted" and row["output_tokens"] > 0


async def test_pings_keep_a_slow_stream_alive() -> None:
    """Silence is measured between events, not over the whole stream: a long reply with pings is not cut."""
    events = text_events("slow but alive", model="claude-opus-4-5", message_id="msg_slow")
    config = Config(sidecar=SidecarSettings(first_byte_timeout_seconds=5.0, stream_idle_timeout_seconds=2.0))
    async with running_sidecar(config=config) as harness:
        ping = SSE("ping", {"type": "ping"}, delay=0.5)
        # 3 s of pings, each well inside the idle limit, in a stream whose whole length exceeds it
        harness.upstream.enqueue(StreamReply(events=[*events[:3], *[ping] * 6, *events[3:]]))
        status, data = await asyncio.wait_for(post(harness), BOUND)
        assert status == 200 and b"event: error" not in data
        (row,) = harness.rows()
        assert row["status"] == "ok"


async def test_a_non_streaming_request_is_not_held_to_the_first_byte_limit() -> None:
    """A whole reply's headers come only when it is generated: the stream limits do not apply to it."""
    config = Config(sidecar=SidecarSettings(first_byte_timeout_seconds=0.3, stream_idle_timeout_seconds=0.3))
    async with running_sidecar(config=config) as harness:
        slow = asyncio.Event()

        async def late(_: RecordedRequest) -> TextReply:
            await asyncio.sleep(1.0)
            slow.set()
            return TextReply("took a while")

        harness.upstream.handler = late
        status, data = await asyncio.wait_for(post(harness, {**BODY, "stream": False}), BOUND)
        assert slow.is_set()
        assert status == 200 and b"took a while" in data


async def status_budgets(harness: Harness) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{harness.url}/_ccgate/status", headers=harness.headers) as resp,
    ):
        payload: dict[str, Any] = await resp.json()
    budgets: list[dict[str, Any]] = payload["budgets"]
    return budgets


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("first_byte_timeout_seconds", 0),
        ("stream_idle_timeout_seconds", -1),
        ("header_timeout_seconds", "soon"),
        ("keepalive_timeout_seconds", float("inf")),
        ("max_unauthenticated_connections", 0),
        ("max_unauthenticated_connections", True),
    ],
)
def test_connection_settings_are_checked(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"sidecar.{key}"):
        config_from_dict({"sidecar": {key: value}})


def test_connection_settings_are_read() -> None:
    config = config_from_dict({"sidecar": {"first_byte_timeout_seconds": 90, "max_unauthenticated_connections": 8}})
    assert config.sidecar.first_byte_timeout_seconds == 90.0
    assert config.sidecar.max_unauthenticated_connections == 8
    assert config.sidecar.stream_idle_timeout_seconds == SidecarSettings().stream_idle_timeout_seconds
