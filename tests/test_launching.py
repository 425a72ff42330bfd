"""What `launch` computes before it runs the child: project, headers, and ways Claude Code could bypass ccgate."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ccgate.launching import bypass_warnings, merge_custom_headers, project_of


def test_custom_headers_keep_the_users_lines_and_replace_stale_ccgate_ones() -> None:
    existing = "X-Team: blue\nx-ccgate-token: cgt-old\n\nX-Trace: 1"
    merged = merge_custom_headers(existing, {"x-ccgate-token": "cgt-new", "x-ccgate-launch": "abc123"})
    assert merged.splitlines() == ["X-Team: blue", "X-Trace: 1", "x-ccgate-token: cgt-new", "x-ccgate-launch: abc123"]
    assert merge_custom_headers(None, {"x-ccgate-token": "t"}) == "x-ccgate-token: t"


def test_project_is_the_git_top_level_or_the_directory_itself(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src" / "deep").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    top = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert project_of(repo / "src" / "deep") == top
    plain = tmp_path / "plain"
    plain.mkdir()
    assert project_of(plain) == str(plain)


def test_bypasses_are_detected_in_env_and_settings(tmp_path: Path) -> None:
    assert bypass_warnings({}, tmp_path) == []
    warnings = bypass_warnings({"CLAUDE_CODE_USE_BEDROCK": "1"}, tmp_path)
    assert len(warnings) == 1 and "CLAUDE_CODE_USE_BEDROCK" in warnings[0]
    settings = tmp_path / ".claude" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(
        json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://proxy.example", "CLAUDE_CODE_USE_VERTEX": "1"}})
    )
    found = bypass_warnings({}, tmp_path)
    assert any("ANTHROPIC_BASE_URL" in w for w in found)
    assert any("CLAUDE_CODE_USE_VERTEX" in w for w in found)
    settings.write_text("{not json")
    assert bypass_warnings({}, tmp_path) == []  # a broken settings file is doctor's business, not a crash here
