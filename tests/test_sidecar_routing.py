"""Tier overrides through the running sidecar: translation, failover, auth, model names, live reload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp import web
from openai_upstream import OpenAIReply, OpenAIUpstream
from scripted_upstream import ErrorReply, ScriptedUpstream, StreamReply, TextReply, text_events
from sidecar_harness import Harness, running_sidecar

from ccgate.core.settings import Config, ProviderSettings, TierSettings
from ccgate.local.config_file import save_config

HAIKU_TO_OPENAI = Config(tiers={"haiku": TierSettings("haiku", ("openai/gpt-4o-mini",))})
OPENAI_THEN_GROQ = Config(
    tiers={"haiku": TierSettings("haiku", ("openai/gpt-4o-mini", "groq/llama-3.3-70b-versatile"))}
)


@pytest.fixture
async def openai_mock() -> AsyncIterator[OpenAIUpstream]:
    async with OpenAIUpstream() as upstream:
        yield upstream


@pytest.fixture
async def groq_mock() -> AsyncIterator[OpenAIUpstream]:
    async with OpenAIUpstream() as upstream:
        yield upstream


def env_for(*mocks: tuple[str, OpenAIUpstream]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, mock in mocks:
        env[f"CCGATE_{name.upper()}_BASE_URL"] = mock.base_url
        env[f"CCGATE_{name.upper()}_API_KEY"] = f"sk-{name}-secret"
    return env


def sdk(harness: Harness) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=harness.url, api_key="sk-ant-user", default_headers=harness.headers, max_retries=0
    )


async def test_haiku_override_streams_translated_text(openai_mock: OpenAIUpstream) -> None:
    openai_mock.replies.append(
        OpenAIReply(text="Translated hello!", prompt_tokens=1000, completion_tokens=50, cached_tokens=200)
    )
    async with running_sidecar(config=HAIKU_TO_OPENAI, environ=env_for(("openai", openai_mock))) as harness:
        async with sdk(harness).messages.stream(
            model="claude-haiku-4-5",
            max_tokens=100,
            system="be brief",
            messages=[{"role": "user", "content": "hi"}],
        ) as stream:
            message = await stream.get_final_message()
        assert message.model == "claude-haiku-4-5"
        assert message.content[0].type == "text" and message.content[0].text == "Translated hello!"
        assert message.stop_reason == "end_turn"
        sent = openai_mock.requests[0]
        assert sent.json["model"] == "gpt-4o-mini"
        assert sent.json["messages"][0] == {"role": "system", "content": "be brief"}
        assert sent.headers["authorization"] == "Bearer sk-openai-secret"
        assert "x-api-key" not in sent.headers
        assert harness.upstream.messages_requests == []  # nothing went to Anthropic
        (row,) = harness.rows()
        assert (row["tier"], row["requested_model"], row["provider"], row["routed_model"]) == (
            "haiku",
            "claude-haiku-4-5",
            "openai",
            "gpt-4o-mini",
        )
        # OpenAI's prompt_tokens includes the cached ones; the ledger keeps Anthropic's convention
        assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (800, 200, 50)
        # gpt-4o-mini: $0.15 / MTok input, $0.075 cached, $0.60 output -> nano-dollars
        assert row["cost_nanos"] == 800 * 150 + 200 * 75 + 50 * 600
        assert row["price_quality"] == "priced"
        # the id Claude Code saw (and `import claude-code` will find in its transcript), and the provider's own
        assert row["upstream_message_id"] == message.id
        assert row["upstream_request_id"].startswith("chatcmpl-")


async def test_tool_call_round_trip_through_translation(openai_mock: OpenAIUpstream) -> None:
    openai_mock.replies.append(
        OpenAIReply(text="", tool_calls=[("call_abc", "Bash", {"command": "echo hi", "description": "echo"})])
    )
    tools: Any = [
        {
            "name": "Bash",
            "description": "run a command",
            "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
        }
    ]
    async with running_sidecar(config=HAIKU_TO_OPENAI, environ=env_for(("openai", openai_mock))) as harness:
        client = sdk(harness)
        async with client.messages.stream(
            model="claude-haiku-4-5", max_tokens=100, tools=tools, messages=[{"role": "user", "content": "run echo"}]
        ) as stream:
            message = await stream.get_final_message()
        assert message.stop_reason == "tool_use"
        tool_use = message.content[-1]
        assert tool_use.type == "tool_use"
        assert tool_use.name == "Bash" and tool_use.input == {"command": "echo hi", "description": "echo"}
        openai_mock.replies.append(OpenAIReply(text="it printed hi"))
        conversation: Any = [
            {"role": "user", "content": "run echo"},
            {"role": "assistant", "content": [tool_use.model_dump()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "hi"}]},
        ]
        reply = await client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=100,
            tools=tools,
            messages=conversation,
        )
        assert reply.content[0].type == "text" and reply.content[0].text == "it printed hi"
        second = openai_mock.requests[1].json["messages"]
        tool_message = next(m for m in second if m["role"] == "tool")
        assistant = next(m for m in second if m["role"] == "assistant")
        # the id the provider chose comes back to it unchanged
        assert assistant["tool_calls"][0]["id"] == tool_message["tool_call_id"] == "call_abc"
        assert [row["status"] for row in harness.rows()] == ["ok", "ok"]


async def test_failover_on_429_gives_one_clean_response(openai_mock: OpenAIUpstream, groq_mock: OpenAIUpstream) -> None:
    config = OPENAI_THEN_GROQ
    openai_mock.replies.append(OpenAIReply(status=429, error_body={"error": {"message": "rate limited"}}))
    groq_mock.replies.append(OpenAIReply(text="from groq"))
    async with running_sidecar(config=config, environ=env_for(("openai", openai_mock), ("groq", groq_mock))) as h:
        async with sdk(h).messages.stream(
            model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            assert await stream.get_final_text() == "from groq"
        (row,) = h.rows()
        assert (row["provider"], row["routed_model"], row["status"]) == ("groq", "llama-3.3-70b-versatile", "ok")
        attempts = json.loads(row["attempts"])
        assert [(a["provider"], a["status"]) for a in attempts] == [("openai", 429), ("groq", 200)]
        assert groq_mock.requests[0].headers["authorization"] == "Bearer sk-groq-secret"


async def test_failover_on_connect_error(groq_mock: OpenAIUpstream) -> None:
    config = OPENAI_THEN_GROQ
    env = {**env_for(("groq", groq_mock)), "CCGATE_OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    async with running_sidecar(config=config, environ=env) as harness:
        message = await sdk(harness).messages.create(
            model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].type == "text"
        (row,) = harness.rows()
        attempts = json.loads(row["attempts"])
        assert [(a["provider"], a["status"]) for a in attempts] == [("openai", None), ("groq", 200)]


async def test_primary_dying_mid_stream_ends_with_an_error_event(
    openai_mock: OpenAIUpstream, groq_mock: OpenAIUpstream
) -> None:
    config = OPENAI_THEN_GROQ
    openai_mock.replies.append(OpenAIReply(text="abcdefghijkl", pieces=6, die_after_chunks=3))
    async with running_sidecar(config=config, environ=env_for(("openai", openai_mock), ("groq", groq_mock))) as h:
        body = {
            "model": "claude-haiku-4-5",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{h.url}/v1/messages", json=body, headers=h.headers) as resp,
        ):
            data = await resp.read()
        assert b"event: message_start" in data
        assert data.rstrip().split(b"\n\n")[-1].startswith(b"event: error")
        assert groq_mock.requests == []  # no silent duplicate after bytes reached the client
        (row,) = h.rows()
        assert row["status"] == "interrupted"


async def test_translated_provider_errors_use_anthropic_envelope(openai_mock: OpenAIUpstream) -> None:
    openai_mock.replies.append(
        OpenAIReply(
            status=400,
            error_body={
                "error": {
                    "message": "This model's maximum context length is 128000 tokens.",
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                }
            },
        )
    )
    async with running_sidecar(config=HAIKU_TO_OPENAI, environ=env_for(("openai", openai_mock))) as harness:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await sdk(harness).messages.create(
                model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
        assert "prompt is too long" in str(caught.value)
        (row,) = harness.rows()
        assert (row["status"], row["http_status"]) == ("error", 400)


async def test_count_tokens_on_a_translated_route_is_estimated_locally(openai_mock: OpenAIUpstream) -> None:
    async with running_sidecar(config=HAIKU_TO_OPENAI, environ=env_for(("openai", openai_mock))) as harness:
        result = await sdk(harness).messages.count_tokens(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "word " * 400}]
        )
        assert 200 <= result.input_tokens <= 1000
        assert openai_mock.requests == []
        assert harness.upstream.requests == []


async def test_a_deeply_nested_tool_input_is_sent_on_or_refused_never_a_500(openai_mock: OpenAIUpstream) -> None:
    """Translation re-encodes tool inputs; nesting the interpreter cannot re-encode (Python 3.11: ~1,000 levels)
    is the client's 400, as for a body it cannot parse, and the request is still a row."""
    openai_mock.replies.append(OpenAIReply(text="ok", prompt_tokens=10, completion_tokens=2))
    depth = 990
    tool_input = '{"a":' + "[" * depth + "]" * depth + "}"
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "t", "input": "INPUT"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"}]},
    ]
    text = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": messages})
    raw = text.replace('"INPUT"', tool_input).encode()
    async with running_sidecar(config=HAIKU_TO_OPENAI, environ=env_for(("openai", openai_mock))) as harness:
        headers = {**harness.headers, "content-type": "application/json", "anthropic-version": "2023-06-01"}
        async with aiohttp.ClientSession() as session:
            for path in ("/v1/messages", "/v1/messages/count_tokens"):
                async with session.post(f"{harness.url}{path}", data=raw, headers=headers) as resp:
                    body = await resp.json()
                    assert resp.status in (200, 400), (path, resp.status, body)
                    if resp.status == 400:
                        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
                        assert "nested too deeply" in body["error"]["message"]
        (row,) = harness.rows()  # count_tokens is never a row
        assert row["status"] in ("ok", "error")


async def test_anthropic_kind_route_rewrites_only_model_and_keeps_the_name_the_client_asked_for() -> None:
    config = Config(tiers={"opus": TierSettings("opus", ("anthropic/claude-haiku-4-5",))})
    async with running_sidecar(config=config) as harness:
        events = text_events("cheap", model="claude-haiku-4-5", message_id="msg_rw")
        harness.upstream.enqueue(StreamReply(events=events), TextReply("cheap too"))
        client = sdk(harness)
        async with client.messages.stream(
            model="claude-opus-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            message = await stream.get_final_message()
        assert message.model == "claude-opus-4-5"
        plain = await client.messages.create(
            model="claude-opus-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
        assert plain.model == "claude-opus-4-5"
        assert [r.json["model"] for r in harness.upstream.messages_requests] == ["claude-haiku-4-5"] * 2
        rows = harness.rows()
        assert {(r["requested_model"], r["routed_model"]) for r in rows} == {("claude-opus-4-5", "claude-haiku-4-5")}


async def test_config_change_applies_to_the_running_sidecar(openai_mock: OpenAIUpstream) -> None:
    async with running_sidecar(environ=env_for(("openai", openai_mock))) as harness:
        client = sdk(harness)
        await client.messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "a"}]
        )
        assert len(harness.upstream.messages_requests) == 1
        save_config(harness.paths.config_file, HAIKU_TO_OPENAI)
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"{harness.url}/_ccgate/reload", headers=harness.headers)
            assert resp.status == 200
        await client.messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "b"}]
        )
        assert len(harness.upstream.messages_requests) == 1
        assert len(openai_mock.requests) == 1


@pytest.mark.parametrize("stream", [True, False])
async def test_provider_without_usage_is_estimated_never_free(openai_mock: OpenAIUpstream, stream: bool) -> None:
    openai_mock.replies.append(OpenAIReply(text="no usage from me " * 20, usage_chunk=False))
    async with running_sidecar(config=HAIKU_TO_OPENAI, environ=env_for(("openai", openai_mock))) as harness:
        client = sdk(harness)
        if stream:
            async with client.messages.stream(
                model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi " * 100}]
            ) as s:
                await s.get_final_message()
        else:
            openai_mock.replies[0] = OpenAIReply(text="no usage from me " * 20, usage_chunk=False, omit_usage=True)
            await client.messages.create(
                model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi " * 100}]
            )
        (row,) = harness.rows()
        assert row["input_tokens"] > 50 and row["output_tokens"] > 20
        assert row["price_quality"] == "estimated"
        assert row["cost_nanos"] > 0


async def test_missing_provider_key_fails_over_or_says_how_to_set_it(
    openai_mock: OpenAIUpstream, groq_mock: OpenAIUpstream
) -> None:
    env = {"CCGATE_OPENAI_BASE_URL": openai_mock.base_url, **env_for(("groq", groq_mock))}
    async with running_sidecar(config=HAIKU_TO_OPENAI, environ=env) as harness:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await sdk(harness).messages.create(
                model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
        assert "ccgate provider key set openai" in str(caught.value)
        assert openai_mock.requests == []
    chain = OPENAI_THEN_GROQ
    async with running_sidecar(config=chain, environ=env) as harness:
        message = await sdk(harness).messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].type == "text"
        assert len(groq_mock.requests) == 1


async def test_user_credentials_never_reach_a_third_party_anthropic_kind_provider() -> None:
    async with ScriptedUpstream() as third_party:
        config = Config(
            providers={"thirdparty": ProviderSettings("thirdparty", kind="anthropic", base_url=third_party.url)},
            tiers={"opus": TierSettings("opus", ("thirdparty/glm-4.6",))},
        )
        async with running_sidecar(config=config) as harness:
            client = anthropic.AsyncAnthropic(
                base_url=harness.url, api_key="sk-ant-USER-SECRET", default_headers=harness.headers, max_retries=0
            )
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await client.messages.create(
                    model="claude-opus-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
                )
            assert "ccgate provider key set thirdparty" in str(caught.value)
            assert third_party.requests == []
        async with running_sidecar(config=config, environ={"CCGATE_THIRDPARTY_API_KEY": "tp-key"}) as harness:
            client = anthropic.AsyncAnthropic(
                base_url=harness.url, api_key="sk-ant-USER-SECRET", default_headers=harness.headers, max_retries=0
            )
            message = await client.messages.create(
                model="claude-opus-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
            assert message.model == "claude-opus-4-5"
            (seen,) = third_party.messages_requests
            assert seen.headers["x-api-key"] == "tp-key"
            assert "sk-ant-USER-SECRET" not in json.dumps(seen.headers)
            assert seen.json["model"] == "glm-4.6"


async def test_failover_to_a_renamed_model_and_dated_ids_keep_the_requested_name() -> None:
    async with ScriptedUpstream() as flaky:
        flaky.enqueue(ErrorReply(529, "overloaded_error", "busy"))
        config = Config(
            providers={"flaky": ProviderSettings("flaky", kind="anthropic", base_url=flaky.url)},
            tiers={"opus": TierSettings("opus", ("flaky/glm-4.6", "anthropic/claude-haiku-4-5"))},
        )
        async with running_sidecar(config=config, environ={"CCGATE_FLAKY_API_KEY": "k"}) as harness:
            # Anthropic answers an alias with the dated id; the client must still see what it asked for
            dated = text_events("hi", model="claude-haiku-4-5-20251001", message_id="msg_dated")
            harness.upstream.enqueue(StreamReply(events=dated))
            async with sdk(harness).messages.stream(
                model="claude-opus-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                message = await stream.get_final_message()
            assert message.model == "claude-opus-4-5"
            (row,) = harness.rows()
            assert (row["provider"], row["routed_model"]) == ("anthropic", "claude-haiku-4-5")
            assert [a["status"] for a in json.loads(row["attempts"])] == [529, 200]


async def test_a_translated_stream_that_ends_before_its_finish_is_interrupted_not_ok(
    openai_mock: OpenAIUpstream,
) -> None:
    """A provider whose HTTP response ends cleanly after some text, with no finish_reason and no [DONE], did
    not finish the reply: the client gets an error event (not end_turn) and the row is interrupted."""
    openai_mock.replies.append(OpenAIReply(text="a reply cut short", pieces=4, end_after_chunks=3))
    async with running_sidecar(config=HAIKU_TO_OPENAI, environ=env_for(("openai", openai_mock))) as harness:
        body = {
            "model": "claude-haiku-4-5",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{harness.url}/v1/messages", json=body, headers=harness.headers) as resp,
        ):
            data = await resp.read()
        assert b"event: error" in data and b"before finishing the reply" in data
        assert b"end_turn" not in data and b"message_stop" not in data
        (row,) = harness.rows()
        assert (row["status"], row["error_type"]) == ("interrupted", "upstream_disconnected")
        assert row["cost_nanos"] > 0 and row["price_quality"] == "estimated"


async def test_cancelled_translated_stream_keeps_an_estimate_not_zero(openai_mock: OpenAIUpstream) -> None:
    openai_mock.replies.append(OpenAIReply(text="x" * 4000, pieces=200, usage_chunk=False, die_after_chunks=None))
    async with running_sidecar(config=HAIKU_TO_OPENAI, environ=env_for(("openai", openai_mock))) as harness:
        body = {
            "model": "claude-haiku-4-5",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "hello " * 200}],
        }
        async with aiohttp.ClientSession() as session:
            resp = await session.post(f"{harness.url}/v1/messages", json=body, headers=harness.headers)
            await resp.content.readuntil(b"content_block_delta")
            resp.close()
        for _ in range(100):
            rows = harness.rows()
            if rows and rows[0]["status"] != "pending":
                break
            await asyncio.sleep(0.05)
        (row,) = harness.rows()
        assert row["status"] in ("interrupted", "ok")
        assert row["input_tokens"] > 100
        assert row["cost_nanos"] > 0 and row["price_quality"] == "estimated"


@asynccontextmanager
async def broken_openai_provider(status: int, partial: bytes) -> AsyncIterator[str]:
    """An OpenAI-kind provider that promises a body, sends `partial` of it and hangs up; yields its base URL."""

    async def broken(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=status, headers={"content-type": "application/json"})
        response.content_length = len(partial) + 500
        await response.prepare(request)
        await response.write(partial)
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def test_truncated_upstream_body_fails_over_instead_of_a_500(groq_mock: OpenAIUpstream) -> None:
    async with broken_openai_provider(200, b'{"id": "chatcmpl-1", "cho') as broken_url:
        env = {**env_for(("groq", groq_mock)), "CCGATE_OPENAI_BASE_URL": broken_url, "CCGATE_OPENAI_API_KEY": "k"}
        async with running_sidecar(config=OPENAI_THEN_GROQ, environ=env) as harness:
            message = await sdk(harness).messages.create(
                model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
            assert message.content[0].type == "text"
            (row,) = harness.rows()
            assert [a["provider"] for a in json.loads(row["attempts"])] == ["openai", "groq"]
        async with running_sidecar(config=HAIKU_TO_OPENAI, environ=env) as harness:
            with pytest.raises(anthropic.APIStatusError) as caught:
                await sdk(harness).messages.create(
                    model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
                )
            assert caught.value.status_code == 502
            assert "broke off" in str(caught.value)


async def test_a_broken_retryable_reply_is_recorded_as_its_own_attempt(groq_mock: OpenAIUpstream) -> None:
    async with broken_openai_provider(529, b'{"error": {"message": "overlo') as broken_url:
        env = {**env_for(("groq", groq_mock)), "CCGATE_OPENAI_BASE_URL": broken_url, "CCGATE_OPENAI_API_KEY": "k"}
        async with running_sidecar(config=OPENAI_THEN_GROQ, environ=env) as harness:
            await sdk(harness).messages.create(
                model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
            (row,) = harness.rows()
            attempts = json.loads(row["attempts"])
            assert [(a["provider"], a["status"]) for a in attempts] == [("openai", 529), ("groq", 200)]
            assert "broke off" in attempts[0]["error"]


# An integer beyond 64 bits, as a tool's input may carry; the fast JSON parser would read it as a float.
HUGE = 123456789012345678901234567890
HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "run it"},
    {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_01big", "name": "calc", "input": {"n": HUGE, "s": "żółw ✓"}}],
    },
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01big", "content": "done"}]},
]


async def send_history(harness: Harness, model: str) -> dict[str, Any]:
    """POST the HISTORY conversation (streamed) and read the whole reply; returns the body sent."""
    body = {"model": model, "max_tokens": 50, "stream": True, "messages": HISTORY}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{harness.url}/v1/messages", json=body, headers=harness.headers) as response,
    ):
        assert response.status == 200
        await response.read()
    return body


async def test_rewritten_route_sends_big_integers_and_unicode_exactly() -> None:
    config = Config(tiers={"opus": TierSettings("opus", ("anthropic/claude-haiku-4-5",))})
    async with running_sidecar(config=config) as harness:
        harness.upstream.enqueue(TextReply("ok"))
        body = await send_history(harness, "claude-opus-4-5")
        seen = harness.upstream.messages_requests[0]
        assert seen.json == {**body, "model": "claude-haiku-4-5"}
        assert str(HUGE).encode() in seen.body


async def test_translated_route_sends_big_integers_exactly(openai_mock: OpenAIUpstream) -> None:
    async with running_sidecar(config=HAIKU_TO_OPENAI, environ=env_for(("openai", openai_mock))) as harness:
        openai_mock.replies.append(OpenAIReply(text="ok"))
        await send_history(harness, "claude-haiku-4-5")
        sent = openai_mock.requests[0].json
        call = sent["messages"][1]["tool_calls"][0]
        assert json.loads(call["function"]["arguments"]) == {"n": HUGE, "s": "żółw ✓"}


def test_invalid_utf8_in_a_provider_event_is_replaced_not_refused() -> None:
    from ccgate.core.records import RequestRecord
    from ccgate.proxy.engine import Proxy
    from ccgate.wire.translate import OpenAIStreamTranslator, ToolIdMap

    translator = OpenAIStreamTranslator(requested_model="claude-haiku-4-5", id_map=ToolIdMap())
    out: list[bytes] = []
    event = b'{"id":"c1","choices":[{"index":0,"delta":{"content":"caf\xc3 ok"}}]}'
    done, failure = Proxy._translate_event(event, translator, out, RequestRecord(source="test"))
    assert (done, failure) == (False, None)
    assert "caf\ufffd ok".encode() in b"".join(out)
    assert Proxy._translate_event(b"[DONE]", translator, out, RequestRecord(source="test")) == (True, None)
