"""`ccgate install` / `uninstall` on Claude Code's settings files: merge, backup, refuse, restore byte for byte."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
from cli_runner import run_main as run

from ccgate.features.installing import hook_main, is_our_hook_command

Capsys = pytest.CaptureFixture[str]
Patch = pytest.MonkeyPatch


@pytest.fixture
def port(monkeypatch: Patch) -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    monkeypatch.setenv("CCGATE_SIDECAR_PORT", str(free))
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    return free


def user_settings() -> Path:
    return Path(os.environ["HOME"]) / ".claude" / "settings.json"


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".ccgate-backup-*"))


EXISTING = (
    b'{\n    "env": {"MY_VAR": "1", "ANTHROPIC_API_KEY": "sk-ant-secret"},\n'
    b'    "hooks": {"SessionStart": [{"matcher": "startup", "hooks": [{"type": "command", "command": "mine.sh"}]}],\n'
    b'              "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "check.sh"}]}]},\n'
    b'    "statusLine": {"type": "command", "command": "echo mine"},\n    "model": "opus"\n}\n'
)


def test_install_merges_keeps_everything_and_backs_up(capsys: Capsys, monkeypatch: Patch, port: int) -> None:
    path = user_settings()
    path.parent.mkdir()
    path.write_bytes(EXISTING)
    path.chmod(0o600)

    code, _, err = run(capsys, monkeypatch, "install")
    assert code == 0, err
    data = json.loads(path.read_text())
    assert data["env"] == {
        "MY_VAR": "1",
        "ANTHROPIC_API_KEY": "sk-ant-secret",
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
    }
    assert data["statusLine"] == {"type": "command", "command": "echo mine"} and data["model"] == "opus"
    assert data["hooks"]["PreToolUse"] == json.loads(EXISTING)["hooks"]["PreToolUse"]
    starts = data["hooks"]["SessionStart"]
    assert starts[0] == json.loads(EXISTING)["hooks"]["SessionStart"][0]
    assert is_our_hook_command(starts[1]["hooks"][0]["command"])
    assert is_our_hook_command(data["hooks"]["UserPromptSubmit"][0]["hooks"][0]["command"])
    assert path.stat().st_mode & 0o777 == 0o600
    [saved] = backups(path)
    assert saved.read_bytes() == EXISTING and saved.stat().st_mode & 0o777 == 0o600
    token = Path(os.environ["CCGATE_HOME"]) / "data" / "local-token"
    assert not token.exists() or token.read_text().strip() not in path.read_text()
    assert "x-ccgate-token" not in path.read_text().lower()

    # twice in a row: nothing changes, no second backup
    code, _, err = run(capsys, monkeypatch, "install")
    assert code == 0 and "already installed" in err
    assert len(backups(path)) == 1

    code, _, err = run(capsys, monkeypatch, "uninstall")
    assert code == 0 and "back to what it was" in err
    assert path.read_bytes() == EXISTING and path.stat().st_mode & 0o777 == 0o600
    assert len(backups(path)) == 1  # the file held only what install wrote: nothing to keep


def test_a_malformed_settings_file_is_refused_and_left_alone(capsys: Capsys, monkeypatch: Patch, port: int) -> None:
    path = user_settings()
    path.parent.mkdir()
    for content in (b'{"env": {"A": 1},}', b"[1, 2]", b"\xff\xfe{}", b'{"env": "not an object"}'):
        path.write_bytes(content)
        code, _out, err = run(capsys, monkeypatch, "install")
        assert code == 1, content
        assert "nothing was changed" in err and "Traceback" not in err
        assert path.read_bytes() == content
        assert backups(path) == []


def test_dry_run_prints_the_diff_and_writes_nothing(capsys: Capsys, monkeypatch: Patch, port: int) -> None:
    path = user_settings()
    path.parent.mkdir()
    path.write_bytes(b'{"model": "opus"}\n')
    code, out, err = run(capsys, monkeypatch, "install", "--dry-run")
    assert code == 0, err
    assert f'+    "ANTHROPIC_BASE_URL": "http://127.0.0.1:{port}"' in out
    assert out.startswith("---") and "dry run" in err
    assert path.read_bytes() == b'{"model": "opus"}\n' and backups(path) == []


def test_install_creates_a_private_file_and_uninstall_deletes_it(capsys: Capsys, monkeypatch: Patch, port: int) -> None:
    path = user_settings()
    code, _, err = run(capsys, monkeypatch, "install")
    assert code == 0, err
    assert path.stat().st_mode & 0o777 == 0o600
    code, _, err = run(capsys, monkeypatch, "uninstall")
    assert code == 0 and "install had created it" in err
    assert not path.exists()
    code, _, err = run(capsys, monkeypatch, "uninstall")
    assert code == 0 and "nothing of ccgate's" in err


def test_edited_since_install_only_ccgates_entries_go(capsys: Capsys, monkeypatch: Patch, port: int) -> None:
    path = user_settings()
    path.parent.mkdir()
    path.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://gateway.example.com"}}))
    assert run(capsys, monkeypatch, "install")[0] == 0
    data = json.loads(path.read_text())
    assert data["env"]["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
    command = data["hooks"]["SessionStart"][0]["hooks"][0]["command"]
    assert "--upstream https://gateway.example.com" in command  # the gateway stays the upstream
    # installing again, also on another port, keeps the gateway (the URL in the file is now the sidecar's)
    monkeypatch.setenv("CCGATE_SIDECAR_PORT", str(port + 1 if port < 65535 else port - 1))
    assert run(capsys, monkeypatch, "install")[0] == 0
    data = json.loads(path.read_text())
    assert "--upstream https://gateway.example.com" in data["hooks"]["UserPromptSubmit"][0]["hooks"][0]["command"]
    monkeypatch.setenv("CCGATE_SIDECAR_PORT", str(port))
    assert run(capsys, monkeypatch, "install")[0] == 0
    data = json.loads(path.read_text())
    assert data["env"]["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
    data["model"] = "sonnet"  # the user edits the file after install
    path.write_text(json.dumps(data, indent=4))

    code, _, err = run(capsys, monkeypatch, "uninstall")
    assert code == 0 and "changed since install" in err
    assert json.loads(path.read_text()) == {
        "env": {"ANTHROPIC_BASE_URL": "https://gateway.example.com"},
        "model": "sonnet",
    }


def test_a_symlinked_settings_file_stays_a_symlink(
    capsys: Capsys, monkeypatch: Patch, port: int, tmp_path: Path
) -> None:
    dotfiles = tmp_path / "dotfiles" / "claude-settings.json"
    dotfiles.parent.mkdir()
    dotfiles.write_bytes(b'{"model": "opus"}')
    path = user_settings()
    path.parent.mkdir()
    path.symlink_to(dotfiles)
    assert run(capsys, monkeypatch, "install")[0] == 0
    assert path.is_symlink() and "ANTHROPIC_BASE_URL" in dotfiles.read_text()
    assert run(capsys, monkeypatch, "uninstall")[0] == 0
    assert path.is_symlink() and dotfiles.read_bytes() == b'{"model": "opus"}'


def test_project_scope_writes_the_projects_local_settings(
    capsys: Capsys, monkeypatch: Patch, port: int, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    monkeypatch.chdir(project / "sub")
    assert run(capsys, monkeypatch, "install", "--scope", "project")[0] == 0
    local = project / ".claude" / "settings.local.json"
    assert "ANTHROPIC_BASE_URL" in local.read_text()
    assert not user_settings().exists()
    exclude = project / ".git" / "info" / "exclude"
    before_exclude = exclude.read_text() if exclude.exists() else ""
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True, check=True)
    assert ".claude" not in status.stdout  # never committed by accident: it names this machine's ccgate
    _code, out, _ = run(capsys, monkeypatch, "doctor", "--json")
    install = next(check for check in json.loads(out)["checks"] if check["name"] == "install")
    assert install["state"] == "ok" and "settings.local.json (project)" in install["detail"]
    bypass = [check for check in json.loads(out)["checks"] if check["name"] == "bypass"]
    assert [check["state"] for check in bypass] == ["ok"]
    assert run(capsys, monkeypatch, "uninstall", "--scope", "project")[0] == 0
    assert not local.exists()
    assert "/.claude/settings.local.json" in before_exclude
    assert "/.claude/settings.local.json" not in (exclude.read_text() if exclude.exists() else "")


def test_a_git_exclude_file_that_is_not_utf8_is_kept_byte_for_byte(
    capsys: Capsys, monkeypatch: Patch, port: int, tmp_path: Path
) -> None:
    """Git does not require UTF-8 in `.git/info/exclude`: a Latin-1 comment must not stop install (it was a
    UnicodeDecodeError traceback), and uninstall takes out only its own two lines."""
    project = tmp_path / "proj"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    exclude = project / ".git" / "info" / "exclude"
    original = exclude.read_bytes() + b"# caf\xe9\n"
    exclude.write_bytes(original)
    monkeypatch.chdir(project)
    code, _, err = run(capsys, monkeypatch, "install", "--scope", "project")
    assert code == 0, err
    assert exclude.read_bytes().startswith(original)
    assert b"/.claude/settings.local.json" in exclude.read_bytes()
    code, _, err = run(capsys, monkeypatch, "uninstall", "--scope", "project")
    assert code == 0, err
    assert exclude.read_bytes() == original


def test_a_port_of_zero_cannot_be_installed(capsys: Capsys, monkeypatch: Patch) -> None:
    monkeypatch.setenv("CCGATE_SIDECAR_PORT", "0")
    code, _, err = run(capsys, monkeypatch, "install")
    assert code == 1 and "fixed sidecar port" in err
    assert not user_settings().exists()


def test_doctor_stops_calling_plain_claude_a_bypass_once_installed(
    capsys: Capsys, monkeypatch: Patch, port: int, tmp_path: Path
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://gateway.example.com")
    _code, out, _ = run(capsys, monkeypatch, "doctor", "--json")
    checks = json.loads(out)["checks"]
    assert [c["state"] for c in checks if c["name"] == "install"] == ["ok"]
    assert "not installed" in next(c["detail"] for c in checks if c["name"] == "install")
    assert any("unmetered" in c["detail"] for c in checks if c["name"] == "bypass")

    assert run(capsys, monkeypatch, "install")[0] == 0
    _code, out, _ = run(capsys, monkeypatch, "doctor", "--json")
    checks = json.loads(out)["checks"]
    assert "active in" in next(c["detail"] for c in checks if c["name"] == "install")
    bypass = [c for c in checks if c["name"] == "bypass"]
    assert not any("unmetered" in c["detail"] for c in bypass)
    assert all(c["state"] != "fail" for c in bypass)


def test_the_hook_explains_itself_when_it_cannot_do_its_job(monkeypatch: Patch, port: int) -> None:
    stderr = io.StringIO()
    assert hook_main([], io.StringIO("not json"), stderr, dict(os.environ)) == 2
    assert "ccgate sidecar start" in stderr.getvalue() and "not JSON" in stderr.getvalue()

    with socket.socket() as squatter:  # another program holds the sidecar's port
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        stderr = io.StringIO()
        event = json.dumps({"session_id": "abcdef12-3456", "cwd": "/", "hook_event_name": "UserPromptSubmit"})
        assert hook_main([], io.StringIO(event), stderr, dict(os.environ)) == 2
        assert f"port {port} is used by another program" in stderr.getvalue()


def test_install_backups_are_private_even_of_a_world_readable_file(
    capsys: Capsys, monkeypatch: Patch, port: int
) -> None:
    """Settings may hold API keys: a backup is 0600 (or stricter, like the original), whatever the file's mode."""
    path = user_settings()
    path.parent.mkdir()
    path.write_bytes(EXISTING)
    path.chmod(0o644)
    code, _, err = run(capsys, monkeypatch, "install")
    assert code == 0, err
    assert path.stat().st_mode & 0o777 == 0o644  # the file itself keeps its mode
    [saved] = backups(path)
    assert saved.read_bytes() == EXISTING and saved.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("linked", ["file", "folder"])
def test_project_scope_refuses_a_committed_link_that_leaves_the_project(
    capsys: Capsys, monkeypatch: Patch, port: int, tmp_path: Path, linked: str
) -> None:
    """A repository can commit `.claude/settings.local.json` (or `.claude`) as a link to any file: install must not
    write, back up or delete through it. A link that stays inside the project is fine."""
    project = tmp_path / "proj"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    victim_dir = tmp_path / "elsewhere"
    victim_dir.mkdir()
    victim = victim_dir / "settings.local.json"
    victim.write_bytes(b'{"model": "opus"}\n')
    if linked == "file":
        (project / ".claude").mkdir()
        (project / ".claude" / "settings.local.json").symlink_to(victim)
    else:
        (project / ".claude").symlink_to(victim_dir)
    monkeypatch.chdir(project)
    for command in ("install", "uninstall"):
        code, out, err = run(capsys, monkeypatch, command, "--scope", "project")
        assert code == 1 and out == ""
        assert err.startswith("ccgate: error: ") and "outside the project; nothing was changed" in err
        assert "Traceback" not in err
    assert victim.read_bytes() == b'{"model": "opus"}\n'
    assert sorted(p.name for p in victim_dir.iterdir()) == ["settings.local.json"]  # no backup there either


def test_project_scope_follows_a_link_that_stays_inside_the_project(
    capsys: Capsys, monkeypatch: Patch, port: int, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    (project / "config").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    inside = project / "config" / "claude.json"
    inside.write_bytes(b'{"model": "opus"}\n')
    (project / ".claude").mkdir()
    (project / ".claude" / "settings.local.json").symlink_to(Path("..") / "config" / "claude.json")
    monkeypatch.chdir(project)
    code, _, err = run(capsys, monkeypatch, "install", "--scope", "project")
    assert code == 0, err
    assert "ANTHROPIC_BASE_URL" in inside.read_text()
    assert run(capsys, monkeypatch, "uninstall", "--scope", "project")[0] == 0
    assert inside.read_bytes() == b'{"model": "opus"}\n'


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a file away")
def test_project_scope_refuses_another_users_settings_file(
    capsys: Capsys, monkeypatch: Patch, port: int, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    (project / ".claude").mkdir(parents=True)
    theirs = project / ".claude" / "settings.local.json"
    theirs.write_bytes(b"{}\n")
    os.chown(theirs, 65534, 65534)
    monkeypatch.chdir(project)
    code, _, err = run(capsys, monkeypatch, "install", "--scope", "project")
    assert code == 1 and "belongs to another user (uid 65534)" in err
    assert theirs.read_bytes() == b"{}\n"
