"""The e2e harness itself: which Claude Code versions it runs against and how a missing one is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.harness import ClaudeInstall, claude_installs, find_claude


def test_both_versions_scripts_test_pins_are_run() -> None:
    installs = claude_installs()

    assert [install.role for install in installs] == ["pinned", "latest"]
    assert all(install.id == f"claude-{install.version}" for install in installs)
    assert installs[0].version != installs[1].version


def test_a_script_without_the_latest_pin_is_an_error(tmp_path: Path) -> None:
    script = tmp_path / "test"
    script.write_text("CLAUDE_CODE_PINNED=2.1.197\n")

    with pytest.raises(RuntimeError, match="CLAUDE_CODE_LATEST"):
        claude_installs(script)


def test_a_missing_or_other_version_is_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    prefix = tmp_path / "prefix"
    missing = ClaudeInstall("latest", "9.9.9", prefix)
    found, why = find_claude(missing)
    assert found is None
    assert "Claude Code 9.9.9 (latest) not installed" in why
    assert "run scripts/test" in why

    manifest = prefix / "node_modules" / "@anthropic-ai" / "claude-code" / "package.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"version": "9.9.8"}')
    binary = prefix / "node_modules" / ".bin" / "claude"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\necho '9.9.8 (Claude Code)'\n")
    binary.chmod(0o755)
    found, why = find_claude(missing)
    assert found is None
    assert "holds 9.9.8" in why

    assert find_claude(ClaudeInstall("latest", "9.9.8", prefix)) == (str(binary), "")
