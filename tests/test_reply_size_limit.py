"""A whole (non-streamed) reply is read up to `sidecar.max_reply_mb`: a broken or hostile upstream sending more
gets a 502 in Anthropic's envelope, the row keeps an estimate of what was billed, and the sidecar carries on."""

from __future__ import annotations

import asyncio
import json

import anthropic
import pytest
from endless_upstream import SENT_AT_MOST, endless_upstream
from sidecar_harness import running_sidecar

from ccgate.core.settings import Config, SidecarSettings, TierSettings

LIMIT_MB = 1


@pytest.mark.parametrize("how", ["json", "declared"])  # no length, sent until the reader goes; or declared
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_a_reply_past_the_limit_is_a_502_metered_and_the_sidecar_carries_on(how: str, provider: str) -> None:
    config = Config(
        sidecar=SidecarSettings(max_reply_mb=LIMIT_MB),
        tiers={"haiku": TierSettings("haiku", ("openai/gpt-4o-mini",))},
    )
    async with endless_upstream(how) as (url, sent, ended):
        if provider == "openai":  # the translated route; Anthropic stays the scripted upstream
            environ = {"CCGATE_OPENAI_BASE_URL": url + "/v1", "CCGATE_OPENAI_API_KEY": "sk-openai-secret"}
            model = "claude-haiku-4-5"
        else:
            environ, model = {"CCGATE_ANTHROPIC_BASE_URL": url}, "claude-opus-4-5"
        async with running_sidecar(config=config, environ=environ) as harness:
            client = anthropic.AsyncAnthropic(
                base_url=harness.url, api_key="sk-ant-user", default_headers=harness.headers, max_retries=0
            )
            for attempt in (1, 2):  # the second: the sidecar carries on
                ended.clear()
                with pytest.raises(anthropic.APIStatusError) as failed:
                    await client.messages.create(
                        model=model, max_tokens=300, messages=[{"role": "user", "content": "hi"}]
                    )
                assert failed.value.status_code == 502
                error = json.loads(failed.value.response.text)["error"]
                assert error["type"] == "api_error"
                assert "larger than 1 MiB" in error["message"] and "dropped it" in error["message"]
                await asyncio.wait_for(ended.wait(), 60)  # the upstream notices the sidecar hung up
                assert len(sent) == attempt and sent[-1] < SENT_AT_MOST  # it stopped reading, it did not take it all
            rows = harness.rows()
            assert len(rows) == 2
            for row in rows:
                assert (row["status"], row["http_status"], row["error_type"]) == ("error", 502, "api_error")
                # a reply was generated, so billed: estimated from the body and the bytes seen, within max_tokens
                assert 0 < row["output_tokens"] <= 300 and row["input_tokens"] > 0
                assert row["price_quality"] == "estimated" and "too large" in (row["cost_note"] or "")
            if provider == "anthropic":  # count_tokens reads a whole reply too
                with pytest.raises(anthropic.APIStatusError) as failed:
                    await client.messages.count_tokens(model=model, messages=[{"role": "user", "content": "hi"}])
                assert failed.value.status_code == 502


def test_the_limit_is_a_setting_checked_like_the_others() -> None:
    from ccgate.core.settings import config_from_dict
    from ccgate.errors import ConfigError

    assert config_from_dict({}).sidecar.max_reply_mb == 64
    assert config_from_dict({"sidecar": {"max_reply_mb": 256}}).sidecar.max_reply_mb == 256
    for wrong in (0, -1, True, "64", 1.5, 10_000):
        with pytest.raises(ConfigError, match=r"sidecar\.max_reply_mb"):
            config_from_dict({"sidecar": {"max_reply_mb": wrong}})
