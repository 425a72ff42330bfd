"""The real Claude Code CLI against a tier override (translation) and against a spent budget."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from openai_upstream import OpenAIReply, OpenAIUpstream

from ccgate.core.settings import BudgetSettings, Config, TierSettings
from ccgate.local.config_file import save_config
from e2e.harness import E2E

pytestmark = pytest.mark.e2e


async def test_tool_turn_across_a_translated_tier_override(e2e: E2E) -> None:
    async with OpenAIUpstream() as mock:
        mock.replies += [
            OpenAIReply(
                text="", tool_calls=[("call_e2e_1", "Bash", {"command": "echo hello-from-tool", "description": "echo"})]
            ),
            OpenAIReply(text="The tool printed hello-from-tool."),
        ]
        # Claude Code's default model is an Opus one: route the whole tier to an OpenAI-format provider.
        save_config(e2e.paths.config_file, Config(tiers={"opus": TierSettings("opus", ("openai/gpt-4o-mini",))}))
        e2e.env["CCGATE_OPENAI_BASE_URL"] = mock.base_url
        e2e.env["CCGATE_OPENAI_API_KEY"] = "sk-openai-e2e"
        result = await e2e.claude(
            "-p",
            "Please run echo hello-from-tool with the Bash tool.",
            "--allowedTools",
            "Bash(echo:*)",
            "--output-format",
            "json",
        )
        assert result.returncode == 0, result.explain()
        assert "hello-from-tool" in result.json()["result"]
        assert e2e.upstream.messages_requests == []  # nothing reached Anthropic
        assert len(mock.requests) >= 2
        follow_up = mock.requests[-1].json["messages"]
        tool_messages = [m for m in follow_up if m["role"] == "tool"]
        assert tool_messages and tool_messages[-1]["tool_call_id"] == "call_e2e_1"
        assert "hello-from-tool" in json.dumps(tool_messages[-1]["content"])
        assert all(r.headers["authorization"] == "Bearer sk-openai-e2e" for r in mock.requests)

    # Claude Code's own transcript holds the message ids it saw; importing it must not count them again
    imported = await e2e.run("import", "claude-code", "--json")
    assert imported.returncode == 0, imported.explain()
    stats = imported.json()
    assert stats["imported"] == 0, stats
    assert stats["already_metered"] >= 1, stats

    by_provider = await e2e.cost("--by", "provider")
    providers = {group["key"]: group for group in by_provider["groups"]}
    assert "openai" in providers, providers
    assert providers["openai"]["requests"] == len(mock.requests)
    assert Decimal(providers["openai"]["cost_usd"]) > 0


async def test_spent_budget_stops_claude_code_after_one_attempt(e2e: E2E) -> None:
    # $0.0001 a day: the first request (a lone request may overshoot once) spends it.
    save_config(e2e.paths.config_file, Config(budgets=(BudgetSettings(period="daily", limit_usd=Decimal("0.0001")),)))
    first = await e2e.claude("-p", "say hi", "--output-format", "json")
    assert first.returncode == 0, first.explain()
    reached_upstream = len(e2e.upstream.messages_requests)
    seen_before = _requests_seen(e2e)

    second = await e2e.claude("-p", "say hi again", "--output-format", "json")

    output = json.dumps(second.json()) if second.stdout.strip().startswith("{") else second.stdout
    assert "daily budget" in output + second.stderr, second.explain()
    assert "ccgate budget set daily" in output + second.stderr
    assert len(e2e.upstream.messages_requests) == reached_upstream  # nothing reached the upstream
    assert _requests_seen(e2e) - seen_before == 1  # 402 + x-should-retry: false -> exactly one attempt


def _requests_seen(e2e: E2E) -> int:
    from ccgate.sidecar.process import control_request

    status = control_request(e2e.paths, "GET", "/_ccgate/status")
    assert status is not None, "the sidecar is not running"
    return int(status["requests_seen"])
