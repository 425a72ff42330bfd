"""The real Claude Code CLI pointed straight at the org gateway with a virtual key (no sidecar in between)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from gateway_harness import PROVIDER_KEY, Gateway, running_gateway
from scripted_upstream import DEFAULT_TEXT, ScriptedUpstream

from e2e.harness import CLAUDE_TIMEOUT, Completed

pytestmark = pytest.mark.e2e


async def _claude(claude_bin: str, gateway: Gateway, key: str, home: Path, *args: str) -> Completed:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCGATE_", "ANTHROPIC_"))}
    env.update(
        {
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": gateway.url,
            "ANTHROPIC_API_KEY": key,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
    )
    process = await asyncio.create_subprocess_exec(
        claude_bin,
        *args,
        cwd=home,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLAUDE_TIMEOUT)
    except TimeoutError:
        process.kill()
        stdout, stderr = await process.communicate()
        pytest.fail(f"claude did not finish in {CLAUDE_TIMEOUT:.0f}s: {stderr.decode()[-2000:]}")
    assert process.returncode is not None
    return Completed(process.returncode, stdout.decode(), stderr.decode())


@pytest.fixture
def world(tmp_path: Path) -> Path:
    home = tmp_path / "dev-home"
    home.mkdir()
    return home


async def test_text_and_tool_turns_are_metered_and_attributed(claude_bin: str, world: Path, tmp_path: Path) -> None:
    async with (
        ScriptedUpstream() as upstream,
        running_gateway(f"sqlite://{tmp_path / 'g.db'}", upstream=upstream) as gw,
    ):
        key = gw.keys["ada"]
        text = await _claude(claude_bin, gw, key, world, "-p", "say hi", "--output-format", "json")
        assert text.returncode == 0, text.explain()
        assert DEFAULT_TEXT in text.json()["result"]
        tool = await _claude(
            claude_bin,
            gw,
            key,
            world,
            "-p",
            "Please run echo hello-from-tool with the Bash tool.",
            "--allowedTools",
            "Bash(echo:*)",
            "--output-format",
            "json",
        )
        assert tool.returncode == 0, tool.explain()
        assert "hello-from-tool" in tool.json()["result"]
        hits = upstream.messages_requests
        assert len(hits) >= 3
        for hit in hits:  # the provider sees the org's key; the virtual key never leaves the gateway
            assert hit.headers["x-api-key"] == PROVIDER_KEY
            assert key not in str(hit.headers)
        rows = await gw.rows()
        assert len(rows) == len(hits)
        ada, team, customer = (
            await gw.key_id("ada"),
            await gw.store.get_team("core"),
            await gw.store.get_customer("acme"),
        )
        assert {(row.key_id, row.team_id, row.customer_id) for row in rows} == {(ada, team.id, customer.id)}
        assert all(row.record.status == "ok" and row.record.usage.input_tokens > 0 for row in rows)
        assert len({row.record.session_id for row in rows}) == 2  # one per Claude Code session


async def test_a_revoked_key_stops_claude_at_once_without_a_retry_storm(
    claude_bin: str, world: Path, tmp_path: Path
) -> None:
    seen: list[tuple[str, str]] = []
    async with running_gateway(f"sqlite://{tmp_path / 'g.db'}", seen=seen, key_cache_seconds=0) as gw:
        await gw.store.revoke_key("ada")
        result = await _claude(claude_bin, gw, gw.keys["ada"], world, "-p", "say hi", "--output-format", "json")
        assert result.returncode != 0 or result.json()["is_error"] is True, result.explain()
        assert gw.upstream.messages_requests == []
        attempts = [path for method, path in seen if path == "/v1/messages"]
        assert 1 <= len(attempts) <= 2, seen  # x-should-retry: false stops Claude Code's back-off loop


async def test_a_model_the_key_may_not_use_is_refused_with_403(claude_bin: str, world: Path, tmp_path: Path) -> None:
    async with running_gateway(f"sqlite://{tmp_path / 'g.db'}") as gw:
        await gw.store.update_key("ada", allowed_models=["claude-haiku-*"])
        result = await _claude(
            claude_bin,
            gw,
            gw.keys["ada"],
            world,
            "-p",
            "say hi",
            "--model",
            "claude-sonnet-4-5",
            "--output-format",
            "json",
        )
        assert result.returncode != 0 or result.json()["is_error"] is True, result.explain()
        assert "403" in result.stdout + result.stderr or "not allowed" in result.stdout + result.stderr, (
            result.explain()
        )
        assert gw.upstream.messages_requests == []
