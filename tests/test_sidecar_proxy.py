"""The sidecar as Claude Code sees it: real SDK clients, a scripted upstream on loopback, the real ledger."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import anthropic
import pytest
from multidict import CIMultiDict
from scripted_upstream import SSE, ErrorReply, ScriptedUpstream, StreamReply, TextReply, Usage, text_events
from sidecar_harness import Harness, running_sidecar

from ccgate.core.provider_env import key_fingerprint
from ccgate.core.settings import Config, ProviderSettings, SidecarSettings, TierSettings

BODY: dict[str, Any] = {
    "model": "claude-opus-4-5",
    "max_tokens": 1024,
    "stream": True,
    "metadata": {"user_id": json.dumps({"device_id": "dev", "session_id": "sess-from-metadata"})},
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    "thinking": {"type": "adaptive"},
}
CLIENT_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    "x-api-key": "sk-ant-user-key",
    "X-Claude-Code-Session-Id": "sess-header-1",
    "content-type": "application/json",
    "user-agent": "claude-cli/2.1.197 (external, cli)",
}


def sdk(harness: Harness, **headers: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=harness.url, api_key="sk-ant-user-key", default_headers={**harness.headers, **headers}, max_retries=0
    )


async def test_stream_passes_through_byte_for_byte_with_headers_and_query() -> None:
    events = text_events(
        "Hello there", model="claude-opus-4-5", usage=Usage(input_tokens=12, output_tokens=4), message_id="msg_fixed_1"
    )
    expected = b"".join(event.encode() for event in events)
    async with running_sidecar() as harness:
        harness.upstream.enqueue(StreamReply(events=events))
        raw = json.dumps(BODY).encode()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{harness.url}/v1/messages?beta=true",
                data=raw,
                headers={**CLIENT_HEADERS, **harness.launch_headers("launch0001")},
            ) as response,
        ):
            received = await response.read()
            assert response.status == 200
            assert response.headers["content-type"].startswith("text/event-stream")
        assert received == expected
        seen = harness.upstream.messages_requests[0]
        assert seen.body == raw
        assert seen.query_string == "beta=true"
        for name in ("anthropic-version", "anthropic-beta", "x-api-key", "user-agent"):
            assert seen.headers[name] == CLIENT_HEADERS[name]
        assert seen.headers["x-claude-code-session-id"] == "sess-header-1"
        assert "x-ccgate-token" not in seen.headers
        assert "x-ccgate-launch" not in seen.headers
        assert seen.headers.get("accept-encoding", "identity") == "identity"
        rows = harness.rows()
        assert len(rows) == 1
        assert "x-ccgate-request-id" not in seen.headers  # the row id is for an org gateway only
        assert rows[0]["session_id"] == "sess-header-1"
        assert rows[0]["status"] == "ok"
        assert (rows[0]["input_tokens"], rows[0]["output_tokens"]) == (12, 4)


async def test_a_compressed_request_is_sent_on_plain_and_labelled_so() -> None:
    """aiohttp's server inflates a gzip request body; forwarding `content-encoding: gzip` with it would make the
    upstream inflate plain JSON and fail."""
    import gzip

    async with running_sidecar() as harness:
        harness.upstream.enqueue(TextReply("ok"))
        raw = json.dumps(BODY).encode()
        headers = {**CLIENT_HEADERS, **harness.headers, "content-encoding": "gzip"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{harness.url}/v1/messages", data=gzip.compress(raw), headers=headers) as resp,
        ):
            assert resp.status == 200, await resp.text()
        (seen,) = harness.upstream.messages_requests
        assert seen.body == raw
        assert "content-encoding" not in seen.headers
        (row,) = harness.rows()
        assert row["status"] == "ok"


async def test_session_id_falls_back_to_metadata_user_id() -> None:
    async with running_sidecar() as harness:
        headers = {k: v for k, v in CLIENT_HEADERS.items() if k != "X-Claude-Code-Session-Id"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{harness.url}/v1/messages", json=BODY, headers={**headers, **harness.headers}) as resp,
        ):
            await resp.read()
        assert harness.rows()[0]["session_id"] == "sess-from-metadata"


async def test_sdk_streaming_and_non_streaming() -> None:
    async with running_sidecar() as harness:
        harness.upstream.enqueue(TextReply("streamed answer"), TextReply("plain answer"))
        client = sdk(harness)
        async with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = await stream.get_final_text()
        assert text == "streamed answer"
        message = await client.messages.create(
            model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].type == "text" and message.content[0].text == "plain answer"
        assert message.model == "claude-sonnet-4-5"
        rows = harness.rows()
        assert [row["stream"] for row in rows] == [1, 0]
        assert all(row["status"] == "ok" and row["input_tokens"] == 100 for row in rows)


# Hand-computed from Anthropic's published per-million-token rates (input, output, cache read, 5m, 1h write).
PRICE_CASES = [
    # Opus 4.5: $5 / $25 / $0.50 / $6.25 / $10
    ("claude-opus-4-5", Usage(1000, 500, 2000, 300, 400), 1000 * 5 + 500 * 25 + 2000 * 0.5 + 300 * 6.25 + 400 * 10),
    # Sonnet 4.5 at or below 200K input: $3 / $15 / $0.30 / $3.75 / $6
    (
        "claude-sonnet-4-5",
        Usage(100_000, 1000, 10_000, 1000, 1000),
        100_000 * 3 + 1000 * 15 + 10_000 * 0.3 + 1000 * 3.75 + 1000 * 6,
    ),
    # Sonnet 4.5 above 200K input: $6 / $22.50 / ...
    ("claude-sonnet-4-5", Usage(250_000, 1000), 250_000 * 6 + 1000 * 22.5),
    # Haiku 4.5: $1 / $5 / $0.10 / $1.25 / $2
    ("claude-haiku-4-5", Usage(1000, 1000, 1000, 1000, 1000), 1000 * (1 + 5 + 0.1 + 1.25 + 2)),
    # Opus 4.8 in fast mode (the reply's usage.speed): $10 / $50 / $1 / $12.50 / $20, twice the standard rates
    ("claude-opus-4-8", Usage(1000, 1000, 1000, 1000, 1000, speed="fast"), 1000 * (10 + 50 + 1 + 12.5 + 20)),
]


@pytest.mark.parametrize(("model", "usage", "micro_usd_per_mtok"), PRICE_CASES)
@pytest.mark.parametrize("stream", [True, False])
async def test_ledger_row_has_exact_tokens_and_cost(
    model: str, usage: Usage, micro_usd_per_mtok: float, stream: bool
) -> None:
    async with running_sidecar() as harness:
        harness.upstream.enqueue(TextReply("ok", usage=usage))
        client = sdk(harness)
        if stream:
            async with client.messages.stream(
                model=model, max_tokens=2000, messages=[{"role": "user", "content": "hi"}]
            ) as s:
                await s.get_final_message()
        else:
            await client.messages.create(model=model, max_tokens=2000, messages=[{"role": "user", "content": "hi"}])
        (row,) = harness.rows()
        assert row["requested_model"] == model
        assert row["input_tokens"] == usage.input_tokens
        assert row["output_tokens"] == usage.output_tokens
        assert row["cache_read_tokens"] == usage.cache_read_input_tokens
        assert row["cache_write_5m_tokens"] == usage.cache_write_5m_tokens
        assert row["cache_write_1h_tokens"] == usage.cache_write_1h_tokens
        # tokens x $/MTok = micro-dollars; x 1000 = nano-dollars (the ledger's unit); rates have <= 2 decimals
        assert row["cost_nanos"] == round(micro_usd_per_mtok * 1000)
        assert row["price_quality"] == "priced"
        assert row["speed"] == usage.speed


async def test_launch_registration_gives_rows_their_project(tmp_path: Any) -> None:
    async with running_sidecar() as harness:
        async with aiohttp.ClientSession() as session:
            reg = await session.post(
                f"{harness.url}/_ccgate/launches",
                json={"launch_id": "launch-abc-123", "project": "/work/projects/demo"},
                headers=harness.headers,
            )
            assert reg.status == 200
            async with session.post(
                f"{harness.url}/v1/messages",
                json=BODY,
                headers={**CLIENT_HEADERS, **harness.launch_headers("launch-abc-123")},
            ) as resp:
                await resp.read()
        assert harness.rows()[0]["project"] == "/work/projects/demo"
        assert harness.rows()[0]["launch_id"] == "launch-abc-123"


async def _register(harness: Harness, payload: dict[str, Any]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{harness.url}/_ccgate/launches", json=payload, headers=harness.headers) as resp,
    ):
        return resp.status, await resp.json()


async def test_a_launch_with_its_own_base_url_goes_there_with_the_users_credentials() -> None:
    """`ANTHROPIC_BASE_URL=https://corp-gw ccgate launch claude`: the corporate gateway gets the request and the
    user's token; the default upstream (and the Anthropic key stored in ccgate) never sees it."""
    haiku_elsewhere = Config(
        providers={"other": ProviderSettings("other", kind="anthropic", base_url="http://127.0.0.1:1")},
        tiers={"haiku": TierSettings("haiku", ("other/claude-haiku-4-5",))},
    )
    async with ScriptedUpstream() as corp, ScriptedUpstream() as other:
        environ = {
            "CCGATE_ANTHROPIC_API_KEY": "sk-ant-stored-in-ccgate",
            "CCGATE_OTHER_BASE_URL": other.url,
            "CCGATE_OTHER_API_KEY": "other-key",
        }
        async with running_sidecar(config=haiku_elsewhere, environ=environ) as harness:
            status, answer = await _register(
                harness, {"launch_id": "launch-corp-1", "project": "/p/corp", "anthropic_base_url": corp.url + "/"}
            )
            assert (status, answer["ok"], answer["anthropic_base_url"]) == (200, True, corp.url)
            # what the sidecar uses per provider, keys only as a fingerprint keyed with the local token
            assert answer["providers"]["other"] == {
                "base_url": other.url,
                "key_source": "env",
                "key_fingerprint": key_fingerprint(harness.token, "other-key"),
            }
            assert "other-key" not in json.dumps(answer) and "sk-ant-stored" not in json.dumps(answer)
            client = sdk(harness, **harness.launch_headers("launch-corp-1"))
            reply = await client.messages.create(
                model="claude-opus-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.content[0].type == "text"
            tokens = await client.messages.count_tokens(
                model="claude-opus-4-5", messages=[{"role": "user", "content": "hi"}]
            )
            assert tokens.input_tokens > 0
            (seen,) = corp.messages_requests
            assert seen.headers["authorization"] == "Bearer sk-ant-user-key"  # how this SDK sends its api_key
            assert "x-api-key" not in seen.headers
            assert [r.path for r in corp.requests] == ["/v1/messages", "/v1/messages/count_tokens"]
            assert harness.upstream.requests == []
            # another provider of the same launch keeps its own upstream and key
            await client.messages.create(
                model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
            (other_seen,) = other.messages_requests
            assert other_seen.headers["x-api-key"] == "other-key" and len(corp.messages_requests) == 1
            # requests of other launches (or none) still go to the configured upstream, with the stored key
            await sdk(harness).messages.create(
                model="claude-opus-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
            (default_seen,) = harness.upstream.messages_requests
            assert default_seen.headers["x-api-key"] == "sk-ant-stored-in-ccgate"
            assert "authorization" not in default_seen.headers
            rows = harness.rows()
            assert [(r["launch_id"], r["project"], r["status"]) for r in rows[:1]] == [
                ("launch-corp-1", "/p/corp", "ok")
            ]
        # a restarted sidecar still knows where this launch's requests go
        async with running_sidecar(config=haiku_elsewhere, environ=environ) as harness:
            await sdk(harness, **harness.launch_headers("launch-corp-1")).messages.create(
                model="claude-opus-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
            assert len(corp.messages_requests) == 2 and harness.upstream.requests == []


@pytest.mark.parametrize(
    "url", ["ftp://corp-gw.example", "https://user:secret@corp-gw.example", "https://corp-gw.example/?k=v", 42]
)
async def test_a_launch_base_url_is_validated_like_any_other(url: object) -> None:
    async with running_sidecar() as harness:
        status, answer = await _register(harness, {"launch_id": "launch-bad-1", "anthropic_base_url": url})
        assert status == 400 and answer["error"]["type"] == "invalid_request_error"
        assert "secret" not in json.dumps(answer)


async def test_a_forgotten_launch_with_its_own_gateway_is_refused_not_sent_to_the_default_upstream() -> None:
    """Launch ids of launches with their own ANTHROPIC_BASE_URL say so; if the sidecar no longer knows where
    such a launch's requests go, it refuses them rather than send the gateway's credentials to Anthropic."""
    from ccgate.sidecar.process import OWN_UPSTREAM_LAUNCH_PREFIX

    async with running_sidecar() as harness:
        headers = {**CLIENT_HEADERS, **harness.launch_headers(OWN_UPSTREAM_LAUNCH_PREFIX + "0" * 32)}
        status, response_headers, body = await _post(harness, json.dumps(BODY).encode(), headers)
        assert status == 403 and response_headers.get("x-should-retry") == "false"
        assert "ANTHROPIC_BASE_URL" in body["error"]["message"] and body["error"]["type"] == "permission_error"
        assert harness.upstream.requests == []
        # an unknown launch without the prefix is only a launch whose project is unknown
        harness.upstream.enqueue(TextReply("ok"))
        plain = {**CLIENT_HEADERS, **harness.launch_headers("0" * 32)}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{harness.url}/v1/messages", json=BODY, headers=plain) as resp,
        ):
            assert resp.status == 200
            await resp.read()


async def test_past_the_launch_limit_the_least_recently_used_launch_is_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ccgate.sidecar import app as sidecar_app

    monkeypatch.setattr(sidecar_app, "MAX_LAUNCHES", 2)
    async with running_sidecar() as harness:
        for launch_id in ("launch-old-busy", "launch-new-idle"):
            assert (await _register(harness, {"launch_id": launch_id, "project": f"/p/{launch_id}"}))[0] == 200
        # the older launch is the one in use
        harness.upstream.enqueue(TextReply("ok"))
        await sdk(harness, **harness.launch_headers("launch-old-busy")).messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
        assert (await _register(harness, {"launch_id": "launch-newest", "project": "/p/newest"}))[0] == 200
        launches = harness.app[sidecar_app.STATE].launches
        assert set(launches) == {"launch-old-busy", "launch-newest"}


# ---- bad input: Anthropic's envelope, right status, x-should-retry: false where retrying cannot help


async def _post(harness: Harness, data: bytes, headers: dict[str, str]) -> tuple[int, CIMultiDict[str], Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{harness.url}/v1/messages", data=data, headers=headers) as resp,
    ):
        return resp.status, CIMultiDict(resp.headers), await resp.json(content_type=None)


def _assert_envelope(body: Any, error_type: str) -> str:
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    return str(message)


async def test_missing_or_wrong_token_is_401() -> None:
    async with running_sidecar() as harness:
        for headers in ({}, {"x-ccgate-token": "cgt-wrong"}):
            status, resp_headers, body = await _post(harness, json.dumps(BODY).encode(), {**CLIENT_HEADERS, **headers})
            assert status == 401
            assert resp_headers.get("x-should-retry") == "false"
            assert "ccgate launch" in _assert_envelope(body, "authentication_error")
        assert harness.upstream.messages_requests == []


async def test_foreign_host_is_403() -> None:
    async with running_sidecar() as harness:
        status, headers, body = await _post(
            harness, json.dumps(BODY).encode(), {**CLIENT_HEADERS, **harness.headers, "Host": "evil.example:80"}
        )
        assert status == 403
        assert headers.get("x-should-retry") == "false"
        _assert_envelope(body, "permission_error")
        assert harness.upstream.messages_requests == []


async def test_malformed_json_is_400() -> None:
    async with running_sidecar() as harness:
        # the last one is malformed only deep inside what the proxy itself does not read
        deep = b'{"model": "claude-sonnet-4-5", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        malformed = (b"{not json", b"[1,2]", b'{"messages": []}', b'{"model": "claude-sonnet-4-5", "messages": [tru]}')
        for data in (*malformed, deep):
            status, headers, body = await _post(harness, data, {**CLIENT_HEADERS, **harness.headers})
            assert status == 400
            assert headers.get("x-should-retry") == "false"
            _assert_envelope(body, "invalid_request_error")
        assert harness.upstream.messages_requests == []
        assert harness.rows() == []


async def test_unreachable_upstream_names_it() -> None:
    async with running_sidecar(environ={"CCGATE_ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}) as harness:
        status, _, body = await _post(harness, json.dumps(BODY).encode(), {**CLIENT_HEADERS, **harness.headers})
        assert status == 502
        message = _assert_envelope(body, "api_error")
        assert "anthropic" in message and "127.0.0.1:9" in message
        (row,) = harness.rows()
        assert row["status"] == "error"


async def test_oversized_body_is_413() -> None:
    config = Config(sidecar=SidecarSettings(max_body_mb=1))
    async with running_sidecar(config=config) as harness:
        big = dict(BODY, messages=[{"role": "user", "content": "x" * (2 * 1024 * 1024)}])
        status, _, body = await _post(harness, json.dumps(big).encode(), {**CLIENT_HEADERS, **harness.headers})
        assert status == 413
        assert "max_body_mb" in _assert_envelope(body, "request_too_large")
        assert harness.upstream.messages_requests == []


async def test_default_body_limit_allows_tens_of_megabytes() -> None:
    async with running_sidecar() as harness:
        big = dict(BODY, stream=False, messages=[{"role": "user", "content": "x" * (5 * 1024 * 1024)}])
        status, _, body = await _post(harness, json.dumps(big).encode(), {**CLIENT_HEADERS, **harness.headers})
        assert status == 200
        assert body["type"] == "message"


async def test_upstream_errors_reach_the_client_unchanged() -> None:
    async with running_sidecar() as harness:
        harness.upstream.enqueue(
            ErrorReply(429, "rate_limit_error", "slow down", headers={"retry-after": "7", "x-should-retry": "true"})
        )
        status, headers, body = await _post(harness, json.dumps(BODY).encode(), {**CLIENT_HEADERS, **harness.headers})
        assert status == 429
        assert headers["retry-after"] == "7"
        assert headers["x-should-retry"] == "true"
        assert body["error"] == {"type": "rate_limit_error", "message": "slow down"}
        (row,) = harness.rows()
        assert (row["status"], row["http_status"], row["error_type"]) == ("error", 429, "rate_limit_error")


async def test_head_root_and_healthz_need_no_token_and_count_tokens_passes_through() -> None:
    async with running_sidecar() as harness, aiohttp.ClientSession() as session:
        async with session.head(f"{harness.url}/") as resp:
            assert resp.status == 200
        async with session.get(f"{harness.url}/healthz") as resp:
            assert (await resp.json())["service"] == "ccgate-sidecar"
        async with session.post(
            f"{harness.url}/v1/messages/count_tokens?beta=true",
            json={"model": "claude-opus-4-5", "messages": [{"role": "user", "content": "hi"}]},
            headers={**CLIENT_HEADERS, **harness.headers},
        ) as resp:
            assert resp.status == 200
            assert isinstance((await resp.json())["input_tokens"], int)
        assert harness.upstream.requests[-1].path == "/v1/messages/count_tokens"
        assert harness.upstream.requests[-1].query_string == "beta=true"
        assert harness.rows() == []


# ---- streams that end badly


async def test_client_disconnect_mid_stream_keeps_the_usage_seen() -> None:
    events = text_events(
        "a long answer " * 5,
        model="claude-opus-4-5",
        usage=Usage(input_tokens=5000, cache_read_input_tokens=7000, output_tokens=300),
        message_id="msg_cut_1",
    )
    async with running_sidecar() as harness:
        # message_start and one block, then the upstream hangs as if the model were thinking
        harness.upstream.enqueue(StreamReply(events=events[:3], then="hang"))
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                f"{harness.url}/v1/messages", json=BODY, headers={**CLIENT_HEADERS, **harness.headers}
            )
            first = await resp.content.readuntil(b"\n\n")
            assert b"message_start" in first
            await asyncio.wait_for(harness.upstream.hanging.wait(), 5)
            resp.close()
        for _ in range(100):
            rows = harness.rows()
            if rows and rows[0]["status"] != "pending":
                break
            await asyncio.sleep(0.05)
        (row,) = harness.rows()
        assert row["status"] == "interrupted"
        assert row["http_status"] == 200  # what the client had been answered before it left
        assert (row["input_tokens"], row["cache_read_tokens"]) == (5000, 7000)
        assert row["cost_nanos"] > 0


async def test_upstream_cut_mid_stream_gives_the_client_an_error_event() -> None:
    events = text_events("partial", model="claude-opus-4-5", usage=Usage(input_tokens=50), message_id="msg_c2")
    async with running_sidecar() as harness:
        harness.upstream.enqueue(StreamReply(events=events[:4], then="close"))
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{harness.url}/v1/messages", json=BODY, headers={**CLIENT_HEADERS, **harness.headers}
            ) as resp,
        ):
            data = await resp.read()
        assert data.startswith(b"".join(e.encode() for e in events[:4]))
        assert b"event: error" in data
        (row,) = harness.rows()
        assert row["status"] == "interrupted"
        assert row["input_tokens"] == 50


async def test_a_stream_cut_after_one_big_read_estimates_the_output_it_carried() -> None:
    """A fast upstream may send message_start and many deltas in one read, then die: the output those deltas
    carried is billed, so the row's estimate must count them (not just the reads after message_start's)."""
    events = text_events("word " * 400, model="claude-opus-4-5", usage=Usage(input_tokens=50), message_id="msg_big")
    async with running_sidecar() as harness:
        # everything up to the last text delta in a single write, then the connection drops
        harness.upstream.enqueue(StreamReply(events=events[:-3], chunking="single", then="close"))
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{harness.url}/v1/messages", json=BODY, headers={**CLIENT_HEADERS, **harness.headers}
            ) as resp,
        ):
            await resp.read()
        (row,) = harness.rows()
        assert row["status"] == "interrupted" and row["price_quality"] == "estimated"
        # 2,000 characters of text (~500 tokens) in three deltas: the byte-based estimate is rough, never 1
        assert 100 <= row["output_tokens"] <= 1000, row["output_tokens"]


async def test_usage_is_read_when_events_share_a_read_or_split_across_reads() -> None:
    usage = Usage(input_tokens=321, output_tokens=77, cache_read_input_tokens=11)
    async with running_sidecar() as harness:
        single = text_events("one read", model="claude-opus-4-5", usage=usage, message_id="msg_one")
        tiny = text_events("tiny reads", model="claude-opus-4-5", usage=usage, message_id="msg_tiny")
        harness.upstream.enqueue(StreamReply(events=single, chunking="single"))
        harness.upstream.enqueue(StreamReply(events=tiny, chunking=[7] * 400))
        client = sdk(harness)
        for _ in range(2):
            async with client.messages.stream(
                model="claude-opus-4-5", max_tokens=100, messages=[{"role": "user", "content": "x"}]
            ) as s:
                await s.get_final_message()
        rows = harness.rows()
        assert [(r["input_tokens"], r["output_tokens"], r["cache_read_tokens"]) for r in rows] == [(321, 77, 11)] * 2
        assert [r["upstream_message_id"] for r in rows] == ["msg_one", "msg_tiny"]


async def test_message_start_is_flushed_before_the_first_text_delta() -> None:
    events = [
        *text_events("late", model="claude-opus-4-5", message_id="msg_late")[:1],
        SSE("ping", {"type": "ping"}, delay=0.0),
    ]
    rest = text_events("late", model="claude-opus-4-5", message_id="msg_late")[1:]
    async with running_sidecar() as harness:
        harness.upstream.enqueue(
            StreamReply(events=[*events, SSE(rest[0].event, rest[0].data, delay=30.0)], then="end")
        )
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                f"{harness.url}/v1/messages", json=BODY, headers={**CLIENT_HEADERS, **harness.headers}
            )
            first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
            assert b"message_start" in first
            resp.close()


async def test_hundred_concurrent_streams_are_all_metered() -> None:
    upstream = ScriptedUpstream()
    await upstream.start()
    try:
        async with running_sidecar(upstream=upstream) as harness:
            client = sdk(harness)

            async def one(index: int) -> str:
                async with client.messages.stream(
                    model="claude-haiku-4-5",
                    max_tokens=50,
                    messages=[{"role": "user", "content": f"request {index}"}],
                ) as stream:
                    return await stream.get_final_text()

            texts = await asyncio.gather(*(one(i) for i in range(100)))
            assert all(text for text in texts)
            rows = harness.rows()
            assert len(rows) == 100
            assert all(row["status"] == "ok" and row["input_tokens"] == 100 for row in rows)
            assert all(row["output_tokens"] == 20 and row["cost_nanos"] > 0 for row in rows)
            assert len({row["id"] for row in rows}) == 100
    finally:
        await upstream.stop()


async def test_many_launch_registrations_at_once_all_succeed() -> None:
    async with running_sidecar() as harness, aiohttp.ClientSession() as session:

        async def register(index: int) -> int:
            async with session.post(
                f"{harness.url}/_ccgate/launches",
                json={"launch_id": f"launch-{index:04d}", "project": f"/p/{index}"},
                headers=harness.headers,
            ) as resp:
                return resp.status

        assert await asyncio.gather(*(register(i) for i in range(30))) == [200] * 30
        saved = json.loads((harness.paths.state_dir / "launches.json").read_text())
        assert len(saved) == 30 and saved["launch-0007"]["project"] == "/p/7"
        async with session.post(
            f"{harness.url}/_ccgate/launches",
            json={"launch_id": "launch-huge", "project": "x" * 10_000},
            headers=harness.headers,
        ) as resp:
            assert resp.status == 400


async def test_upstream_cookies_are_never_replayed_on_later_requests() -> None:
    # one client's load-balancer cookie must not ride along on anybody's next request (a host name, not an IP:
    # aiohttp's default jar would ignore cookies from 127.0.0.1)
    upstream = await ScriptedUpstream().start()
    by_name = {"CCGATE_ANTHROPIC_BASE_URL": upstream.url.replace("127.0.0.1", "localhost")}
    async with running_sidecar(upstream=upstream, environ=by_name) as harness:
        harness.upstream.enqueue(TextReply("first", headers={"set-cookie": "lb=node-7; Path=/"}), TextReply("second"))
        for _ in range(2):  # two clients, each with its own (empty) cookie jar
            await sdk(harness).messages.create(
                model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
        assert [r.headers.get("cookie") for r in harness.upstream.messages_requests] == [None, None]
    await upstream.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_redirect_is_neither_followed_nor_passed_on(stream: bool) -> None:
    """A redirect names a host nobody configured: following it would send the stored provider key there, and
    passing its Location on would make the client follow it with its own credentials (and, under `launch`, the
    local token among its custom headers)."""
    from scripted_upstream import JSONReply, Script

    async with ScriptedUpstream() as elsewhere, ScriptedUpstream() as upstream:
        away = {"Location": elsewhere.url + "/v1/messages"}
        upstream.enqueue(
            JSONReply({"moved": True}, status=307, headers=away),
            Script(JSONReply({"moved": True}, status=308, headers=away), path="/v1/messages/count_tokens"),
        )
        environ = {"CCGATE_ANTHROPIC_API_KEY": "sk-ant-stored-in-ccgate"}
        async with running_sidecar(upstream=upstream, environ=environ) as harness, aiohttp.ClientSession() as session:
            body = {
                "model": "claude-sonnet-4-5",
                "max_tokens": 5,
                "stream": stream,
                "messages": [{"role": "user", "content": "hi"}],
            }
            for path in ("/v1/messages", "/v1/messages/count_tokens"):
                async with session.post(harness.url + path, json=body, headers=harness.headers) as resp:
                    assert resp.status in (307, 308), await resp.text()
                    assert "Location" not in resp.headers
        assert elsewhere.requests == []
        assert len(upstream.requests) == 2


async def test_no_user_agent_is_added_to_a_request_that_came_without_one() -> None:
    """A request is forwarded with the client's User-Agent or none: never aiohttp's own (streamed, whole, or
    count_tokens), while a client's own still goes along."""
    async with running_sidecar() as harness:
        harness.upstream.enqueue(TextReply(text="a"), TextReply(text="b"), TextReply(text="c"))
        headers = {**CLIENT_HEADERS, **harness.launch_headers("launch0001")}
        del headers["user-agent"]
        async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as session:
            for path, stream in (("/v1/messages", True), ("/v1/messages", False), ("/v1/messages/count_tokens", False)):
                body = json.dumps({**BODY, "stream": stream}).encode()
                async with session.post(f"{harness.url}{path}", data=body, headers=headers) as response:
                    await response.read()
                    assert response.status == 200
            async with session.post(
                f"{harness.url}/v1/messages", data=json.dumps(BODY).encode(), headers=CLIENT_HEADERS | headers
            ) as response:
                await response.read()
        seen = harness.upstream.requests
        assert [r.path for r in seen] == ["/v1/messages", "/v1/messages", "/v1/messages/count_tokens", "/v1/messages"]
        assert ["user-agent" in r.headers for r in seen] == [False, False, False, True]
        assert seen[-1].headers["user-agent"] == CLIENT_HEADERS["user-agent"]


async def test_a_stream_reply_carries_the_upstreams_content_type_once() -> None:
    """The reply's Content-Type is the stream's, with the upstream's parameters (charset), in one header."""
    events = text_events("hi", model="claude-opus-4-5", usage=Usage(input_tokens=3, output_tokens=1))
    async with running_sidecar() as harness:
        # the scripted upstream sends `Content-Type: text/event-stream; charset=utf-8`
        harness.upstream.enqueue(StreamReply(events=events, headers={"content-type": "text/event-stream"}))
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{harness.url}/v1/messages",
                data=json.dumps(BODY).encode(),
                headers={**CLIENT_HEADERS, **harness.launch_headers("launch0001")},
            ) as response,
        ):
            await response.read()
            assert response.status == 200
            assert response.headers.getall("content-type") == ["text/event-stream; charset=utf-8"]
