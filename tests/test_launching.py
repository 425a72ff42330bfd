"""What `launch` computes before it runs the child (project, headers, ways around ccgate) and whose --help it is."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_main

from ccgate import __version__
from ccgate.launching import bypass_warnings, merge_custom_headers, project_of
from ccgate.paths import resolve_paths
from ccgate.sidecar.process import SERVICE_NAME, home_id, remove_run_files, write_run_files


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


# no system-wide managed settings: the machine's own are not the test's business
NO_MANAGED = {"CCGATE_CLAUDE_MANAGED_SETTINGS": ""}


def test_bypasses_are_detected_in_env_and_settings(tmp_path: Path) -> None:
    assert bypass_warnings(NO_MANAGED, tmp_path) == []
    warnings = bypass_warnings(NO_MANAGED | {"CLAUDE_CODE_USE_BEDROCK": "1"}, tmp_path)
    assert len(warnings) == 1 and "CLAUDE_CODE_USE_BEDROCK" in warnings[0]
    settings = tmp_path / ".claude" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(
        json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://proxy.example", "CLAUDE_CODE_USE_VERTEX": "1"}})
    )
    found = bypass_warnings(NO_MANAGED, tmp_path)
    assert any("ANTHROPIC_BASE_URL" in w for w in found)
    assert any("CLAUDE_CODE_USE_VERTEX" in w for w in found)
    settings.write_text("{not json")
    assert bypass_warnings(NO_MANAGED, tmp_path) == []  # a broken settings file is doctor's business, not a crash here


def test_foundry_and_managed_settings_are_bypasses_too(tmp_path: Path) -> None:
    managed = tmp_path / "managed-settings.json"
    environ = {"CCGATE_CLAUDE_MANAGED_SETTINGS": str(managed)}
    assert bypass_warnings(environ, tmp_path) == []
    foundry = bypass_warnings(environ | {"CLAUDE_CODE_USE_FOUNDRY": "1"}, tmp_path)
    assert len(foundry) == 1 and "CLAUDE_CODE_USE_FOUNDRY is set" in foundry[0]
    managed.write_text(
        json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://corp-proxy.example", "CLAUDE_CODE_USE_FOUNDRY": "1"}})
    )
    found = bypass_warnings(environ, tmp_path)
    assert len(found) == 2
    assert all("(managed settings)" in w and "ask whoever manages it" in w for w in found)
    assert "env.ANTHROPIC_BASE_URL" in found[0] and "env.CLAUDE_CODE_USE_FOUNDRY" in found[1]


def test_user_settings_are_read_from_claude_config_dir_when_set(tmp_path: Path) -> None:
    elsewhere = tmp_path / "claude-config"
    elsewhere.mkdir()
    (elsewhere / "settings.json").write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://proxy.example"}}))
    environ = NO_MANAGED
    assert bypass_warnings(environ, tmp_path) == []
    found = bypass_warnings(environ | {"CLAUDE_CONFIG_DIR": str(elsewhere)}, tmp_path)
    assert len(found) == 1 and str(elsewhere / "settings.json") in found[0]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_right_after_launch_is_launchs_own(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    code, out, err = run_main(capsys, monkeypatch, "launch", flag)
    assert code == 0, err
    assert "launch [OPTIONS]" in out and "Everything after COMMAND is passed to it unchanged" in out
    assert "command not found" not in err


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_after_the_command_goes_to_the_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    import ccgate.launching

    launched: list[list[str]] = []

    def fake_run_launch(paths: object, config: object, argv: list[str], *args: object, **kwargs: object) -> int:
        launched.append(argv)
        return 7

    monkeypatch.setattr(ccgate.launching, "run_launch", fake_run_launch)
    code, out, _ = run_main(capsys, monkeypatch, "launch", "claude", flag)
    assert code == 7 and out == ""
    assert launched == [["claude", flag]]


class FakeSidecar(http.server.ThreadingHTTPServer):
    """A sidecar on loopback that is healthy, serves this home and, like older ones, ignores fields it does not know
    (launch registers with it, then runs its command)."""

    version = __version__
    home = ""
    registrations: list[dict[str, Any]]


class _FakeSidecarHandler(http.server.BaseHTTPRequestHandler):
    server: FakeSidecar

    def do_GET(self) -> None:
        payload = {"service": SERVICE_NAME, "ok": True, "version": self.server.version, "pid": os.getpid()}
        self._reply({**payload, "home_id": self.server.home})

    def do_POST(self) -> None:
        self.server.registrations.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self._reply({"ok": True})

    def _reply(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_sidecar() -> Iterator[FakeSidecar]:
    paths = resolve_paths().ensure()
    server = FakeSidecar(("127.0.0.1", 0), _FakeSidecarHandler)
    server.home, server.registrations = home_id(paths), []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    write_run_files(paths, os.getpid(), server.server_address[1])
    try:
        yield server
    finally:
        remove_run_files(paths, os.getpid())  # nothing may ever try to stop "the sidecar" at this pid
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_older_sidecar_that_would_drop_the_users_base_url_stops_the_launch(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_sidecar: FakeSidecar, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    fake_sidecar.version = "0.0.1"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://corp-gw.example")
    code, _, err = run_main(capsys, monkeypatch, "launch", "touch", str(marker))
    said = " ".join(err.split())
    assert code == 1 and "ignored ANTHROPIC_BASE_URL" in said and "`ccgate sidecar stop`" in said
    assert fake_sidecar.registrations[0]["anthropic_base_url"] == "https://corp-gw.example"
    assert not marker.exists()  # no request of this session can reach the default upstream with the gateway's token


def test_launch_warns_about_a_projects_own_settings_like_doctor(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_sidecar: FakeSidecar, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / ".claude").mkdir(parents=True)
    for name in ("settings.json", "settings.local.json"):
        (project / ".claude" / name).write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://proxy.example"}}))
    monkeypatch.chdir(project)
    monkeypatch.setenv("COLUMNS", "1000")  # one warning a line, long paths unfolded
    code, _, err = run_main(capsys, monkeypatch, "launch", "true")
    said = err
    assert code == 0
    for name in ("settings.json", "settings.local.json"):
        assert f"{project / '.claude' / name} sets env.ANTHROPIC_BASE_URL" in said
    assert fake_sidecar.registrations[0]["project"] == str(project)


def test_a_sidecar_of_another_version_is_reused_with_a_notice_saying_how_to_restart_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_sidecar: FakeSidecar, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    monkeypatch.setenv("COLUMNS", "1000")
    code, _, err = run_main(capsys, monkeypatch, "launch", "touch", str(marker))
    assert code == 0 and marker.exists() and err == ""  # same version: nothing to say
    fake_sidecar.version = "0.0.1"
    code, _, err = run_main(capsys, monkeypatch, "launch", "touch", str(marker))
    assert code == 0 and len(fake_sidecar.registrations) == 2  # used as it is: other sessions may depend on it
    assert err.splitlines() == [
        f"! the running sidecar is ccgate 0.0.1, this is {__version__}: "
        "to upgrade it, run `ccgate sidecar stop`, then launch again"
    ]
