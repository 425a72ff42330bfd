"""`ccgate install`: the real Claude Code, started as plain `claude` (no `ccgate launch`), is metered through its
settings; `ccgate uninstall` gives the settings back byte for byte."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from scripted_upstream import DEFAULT_TEXT

from e2e.harness import E2E

pytestmark = pytest.mark.e2e


def settings_file(e2e: E2E) -> Path:
    return Path(e2e.env["HOME"]) / ".claude" / "settings.json"


async def ledger_rows(e2e: E2E) -> list[dict[str, object]]:
    result = await e2e.run("logs", "--json", "-n", "1000")
    assert result.returncode == 0, result.explain()
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


async def test_plain_claude_text_tool_and_resume_are_metered_and_uninstall_restores(e2e: E2E) -> None:
    settings = settings_file(e2e)
    settings.parent.mkdir(parents=True)
    # a developer's settings: a corporate gateway, another env variable, a hook of their own, a status line
    original = (
        "{\n"
        f'    "env": {{"ANTHROPIC_BASE_URL": "{e2e.upstream.url}", "MY_VAR": "kept"}},\n'
        '    "hooks": {"SessionStart": [{"hooks": [{"type": "command", "command": "true"}]}]},\n'
        '    "statusLine": {"type": "command", "command": "echo mine"}\n'
        "}\n"
    ).encode()
    settings.write_bytes(original)
    settings.chmod(0o640)

    assert e2e.paths.pid_file.exists() is False  # no sidecar runs: the hook must start it
    installed = await e2e.run("install")
    assert installed.returncode == 0, installed.explain()
    data = json.loads(settings.read_text())
    assert data["env"]["MY_VAR"] == "kept" and data["statusLine"] == {"type": "command", "command": "echo mine"}
    assert {"type": "command", "command": "true"} in data["hooks"]["SessionStart"][0]["hooks"]
    token = e2e.local_token()
    assert token is None or token not in settings.read_text()
    assert settings.stat().st_mode & 0o777 == 0o640

    text = await e2e.plain_claude("-p", "say hi", "--output-format", "json")
    assert text.returncode == 0, text.explain()
    assert DEFAULT_TEXT in text.json()["result"]
    session = text.json()["session_id"]
    tool = await e2e.plain_claude(
        "-p", "Please run echo hello-from-tool with the Bash tool.", "--allowedTools", "Bash(echo:*)",
        "--output-format", "json",
    )  # fmt: skip
    assert tool.returncode == 0, tool.explain()
    assert "hello-from-tool" in tool.json()["result"]
    resumed = await e2e.plain_claude("--resume", session, "-p", "and again", "--output-format", "json")
    assert resumed.returncode == 0, resumed.explain()
    assert resumed.json()["session_id"] == session

    upstream_requests = e2e.upstream.messages_requests
    for request in upstream_requests:
        assert "x-ccgate-token" not in request.headers
        assert token is None or all(token not in value for value in request.headers.values())
    e2e.stop_sidecar()  # flushes the ledger
    metered = await ledger_rows(e2e)
    assert len(metered) == len(upstream_requests)  # one row per request, every one of them
    assert {row["project"] for row in metered} == {e2e.project()}
    per_session: dict[object, int] = {}
    for row in metered:
        per_session[row["session_id"]] = per_session.get(row["session_id"], 0) + 1
    assert per_session[session] >= 2  # the first turn and the resumed one
    assert per_session[tool.json()["session_id"]] >= 2  # tool_use, then the tool_result turn

    removed = await e2e.run("uninstall")
    assert removed.returncode == 0, removed.explain()
    assert settings.read_bytes() == original
    assert settings.stat().st_mode & 0o777 == 0o640
    # with the sidecar stopped, claude reaches its own upstream directly, and nothing is metered
    before = len(e2e.upstream.messages_requests)
    direct = await e2e.plain_claude("-p", "say hi", "--output-format", "json")
    assert direct.returncode == 0, direct.explain()
    assert len(e2e.upstream.messages_requests) > before
    assert len(await ledger_rows(e2e)) == len(metered)


async def test_project_scope_meters_only_that_project(e2e: E2E, tmp_path: Path) -> None:
    other = tmp_path / "other-repo"
    other.mkdir()
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    e2e.env["ANTHROPIC_BASE_URL"] = e2e.upstream.url  # without ccgate, claude goes straight there

    installed = await e2e.run("install", "--scope", "project")
    assert installed.returncode == 0, installed.explain()
    assert (e2e.repo / ".claude" / "settings.local.json").exists()
    assert not settings_file(e2e).exists()

    inside = await e2e.plain_claude("-p", "say hi", "--output-format", "json")
    assert inside.returncode == 0, inside.explain()
    outside = await e2e.plain_claude("-p", "say hi", "--output-format", "json", cwd=other)
    assert outside.returncode == 0, outside.explain()
    e2e.stop_sidecar()

    sessions = {row["session_id"] for row in await ledger_rows(e2e)}
    assert inside.json()["session_id"] in sessions
    assert outside.json()["session_id"] not in sessions


async def test_launch_still_meters_once_per_request_when_installed(e2e: E2E) -> None:
    installed = await e2e.run("install")
    assert installed.returncode == 0, installed.explain()

    result = await e2e.claude("-p", "say hi", "--output-format", "json")
    assert result.returncode == 0, result.explain()
    assert "overrides ccgate's" not in result.stderr  # the installed base URL is the sidecar: no bypass warning
    e2e.stop_sidecar()
    metered = await ledger_rows(e2e)
    assert len(metered) == len(e2e.upstream.messages_requests)
    assert {row["launch_id"] is not None for row in metered} == {True}
    assert {row["project"] for row in metered} == {e2e.project()}


async def test_a_sidecar_that_cannot_start_stops_the_prompt_with_what_to_do(e2e: E2E) -> None:
    installed = await e2e.run("install")
    assert installed.returncode == 0, installed.explain()
    port = int(e2e.env["CCGATE_SIDECAR_PORT"])
    with socket.socket() as squatter:  # another program holds the sidecar's port
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = await e2e.plain_claude("-p", "say hi", "--output-format", "json")
    assert result.returncode == 0, result.explain()
    shown = result.json()["result"]
    assert "ccgate sidecar start" in shown, shown
    assert f"port {port} is used by another program" in shown
    assert e2e.upstream.messages_requests == []  # never a silent bypass
