"""The real Claude Code CLI, launched through ccgate, against a scripted Anthropic upstream."""

from __future__ import annotations

from decimal import Decimal

import pytest
from scripted_upstream import DEFAULT_TEXT, TOOL_COMMAND

from e2e.harness import DUMMY_KEY, E2E

pytestmark = pytest.mark.e2e


async def test_text_turn_passes_through_with_the_users_key(e2e: E2E) -> None:
    result = await e2e.claude("-p", "say hi", "--output-format", "json")

    assert result.returncode == 0, result.explain()
    output = result.json()
    assert output["is_error"] is False
    assert DEFAULT_TEXT in output["result"]
    requests = e2e.upstream.messages_requests
    assert requests, "the upstream saw no /v1/messages request"
    token = e2e.local_token()
    for request in requests:
        assert request.headers.get("x-api-key") == DUMMY_KEY
        assert "x-ccgate-token" not in request.headers
        if token is not None:
            assert all(token not in value for value in request.headers.values())
        # forwarded verbatim: Claude Code's betas and metadata survive the sidecar
        assert "claude-code-20250219" in request.headers.get("anthropic-beta", "")
        assert request.json.get("metadata", {}).get("user_id")
    assert requests[0].json["messages"][0]["role"] == "user"


async def test_text_turn_is_metered_per_session_and_project(e2e: E2E) -> None:
    result = await e2e.claude("-p", "say hi", "--output-format", "json")
    assert result.returncode == 0, result.explain()
    session_id = result.json()["session_id"]
    upstream_count = len(e2e.upstream.messages_requests)
    assert upstream_count >= 1
    # a graceful stop flushes the ledger, so what follows reads the final rows
    e2e.stop_sidecar()

    total = (await e2e.cost())["total"]
    assert total["requests"] == upstream_count
    assert total["input_tokens"] >= 100 * upstream_count  # the scripted upstream reports 100 per reply
    assert total["output_tokens"] >= 20 * upstream_count
    # whatever model this Claude Code version asks for by default has a real price (a new default must
    # not show up as unpriced, or as a same-family estimate)
    models = {request.model for request in e2e.upstream.messages_requests}
    by_model = {group["key"]: group for group in (await e2e.cost("--by", "model"))["groups"]}
    assert set(by_model) == models, (by_model, models)
    assert total["unpriced_requests"] == 0, by_model
    assert total["estimated_requests"] == 0, by_model
    assert all(Decimal(group["cost_usd"]) > 0 for group in by_model.values()), by_model

    by_session = await e2e.cost("--by", "session")
    assert by_session["by"] == "session"
    sessions = {group["key"]: group for group in by_session["groups"]}
    assert session_id in sessions, sessions
    assert sessions[session_id]["requests"] == upstream_count

    # the transcript Claude Code wrote holds the same requests: importing it adds nothing
    imported = await e2e.run("import", "claude-code", "--json")
    assert imported.returncode == 0, imported.explain()
    assert imported.json()["imported"] == 0, imported.json()
    assert imported.json()["already_metered"] >= 1

    by_project = await e2e.cost("--by", "project")
    projects = {group["key"]: group for group in by_project["groups"]}
    assert list(projects) == [e2e.project()]
    assert projects[e2e.project()]["requests"] == upstream_count


async def test_tool_turn_runs_bash_and_answers(e2e: E2E) -> None:
    result = await e2e.claude(
        "-p",
        "Please run echo hello-from-tool with the Bash tool.",
        "--allowedTools",
        "Bash(echo:*)",
        "--output-format",
        "json",
    )

    assert result.returncode == 0, result.explain()
    requests = e2e.upstream.messages_requests
    assert len(requests) >= 2, [r.last_user_text()[-200:] for r in requests]
    results = [block for request in requests for block in request.tool_results()]
    assert results, "Claude Code never sent a tool_result back"
    assert any("hello-from-tool" in str(block.get("content")) for block in results), results
    assert all(block.get("is_error") is not True for block in results), results
    assert "hello-from-tool" in result.json()["result"]
    # the tool call it answered was ours
    assistant_turns = [m for m in requests[-1].json["messages"] if m.get("role") == "assistant"]
    calls = [b for m in assistant_turns for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_use"]
    assert calls
    assert calls[-1]["name"] == "Bash"
    assert calls[-1]["input"]["command"] == TOOL_COMMAND
