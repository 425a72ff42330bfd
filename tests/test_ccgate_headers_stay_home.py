"""ccgate's own `x-ccgate-*` headers (row id, local token, launch, attribution) never reach a provider: not on the
Anthropic route, the translated one, a failover, nor count_tokens; only the org's ccgate gateway gets them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import anthropic
import pytest
from openai_upstream import OpenAIUpstream
from scripted_upstream import ErrorReply
from sidecar_harness import Harness, running_sidecar

from ccgate.core.settings import Config, TierSettings

# what a client might add on top of what `launch` sends: none of it is for a provider
FORGED = {"x-ccgate-request-id": "forged-row-1", "x-ccgate-project": "forged", "X-Ccgate-Anything": "1"}
OPUS_THEN_OPENAI = Config(
    tiers={"opus": TierSettings("opus", ("anthropic/claude-opus-4-5", "openai/gpt-4o-mini"))},
)


@pytest.fixture
async def openai_mock() -> AsyncIterator[OpenAIUpstream]:
    async with OpenAIUpstream() as upstream:
        yield upstream


def _client(harness: Harness) -> anthropic.AsyncAnthropic:
    headers = {**harness.launch_headers("launch-headers-1"), **FORGED}
    return anthropic.AsyncAnthropic(base_url=harness.url, api_key="sk-ant-user", default_headers=headers, max_retries=0)


def _ccgate_headers(headers: Mapping[str, str]) -> list[str]:
    return [name for name in headers if name.lower().startswith("x-ccgate")]


async def test_no_ccgate_header_reaches_anthropic_openai_a_failover_or_count_tokens(
    openai_mock: OpenAIUpstream,
) -> None:
    environ = {"CCGATE_OPENAI_BASE_URL": openai_mock.base_url, "CCGATE_OPENAI_API_KEY": "sk-openai-secret"}
    async with running_sidecar(config=OPUS_THEN_OPENAI, environ=environ) as harness:
        client = _client(harness)
        message = [{"role": "user", "content": "hi"}]
        # the Anthropic route, streamed and not
        await client.messages.create(model="claude-opus-4-5", max_tokens=20, messages=message)  # type: ignore[arg-type]
        async with client.messages.stream(model="claude-opus-4-5", max_tokens=20, messages=message) as stream:  # type: ignore[arg-type]
            await stream.get_final_message()
        # a failover: Anthropic is overloaded, the translated route answers
        harness.upstream.enqueue(ErrorReply(529, "overloaded_error"))
        await client.messages.create(model="claude-opus-4-5", max_tokens=20, messages=message)  # type: ignore[arg-type]
        await client.messages.count_tokens(model="claude-opus-4-5", messages=message)  # type: ignore[arg-type]
        seen = harness.upstream.requests
        assert [r.path for r in seen] == ["/v1/messages"] * 3 + ["/v1/messages/count_tokens"]
        assert len(openai_mock.requests) == 1
        for request in seen:
            assert _ccgate_headers(request.headers) == [], request.path
            assert request.headers["anthropic-version"]  # the client's own headers still go along
        assert _ccgate_headers(openai_mock.requests[0].headers) == []
        rows = harness.rows()
        assert [row["provider"] for row in rows] == ["anthropic", "anthropic", "openai"]
        assert "forged-row-1" not in {row["id"] for row in rows}
