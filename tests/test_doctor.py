"""`ccgate doctor`: each check's state on a healthy setup and on the ways a setup breaks."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runner import run_main as run

from ccgate.core.records import RequestRecord, RequestStatus
from ccgate.features.doctor import Check, exit_code, run_checks
from ccgate.local.paths import resolve_paths

GROQ_KEY = "gsk-test-not-a-real-key-123"


@pytest.fixture
def environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fake `claude` on PATH (answers --version like Claude Code), a free sidecar port, a groq key in env."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    claude = bin_dir / "claude"
    claude.write_text("#!/bin/sh\necho '2.1.197 (Claude Code)'\n")
    claude.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("CCGATE_SIDECAR_PORT", str(port))
    monkeypatch.setenv("CCGATE_GROQ_API_KEY", GROQ_KEY)
    for var in ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY", "CLAUDE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    return dict(os.environ)


@pytest.fixture
def healthy(isolated_home: Path, environ: dict[str, str]) -> Iterator[Path]:
    (isolated_home / "config.toml").write_text(
        '[tiers.haiku]\ntargets = ["groq/llama-3.3-70b-versatile"]\n[[budgets]]\nperiod = "daily"\nlimit = "20"\n'
    )
    from ccgate.storage.ledger import insert_records, open_ledger

    db = open_ledger(resolve_paths().ledger_file)
    try:
        insert_records(db, [RequestRecord(status=RequestStatus.OK, requested_model="claude-haiku-4-5")])
    finally:
        db.close()
    yield isolated_home


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def states(checks: list[Check]) -> dict[str, bool | None]:
    return {check.name: check.ok for check in checks}


def test_healthy_setup(healthy: Path, environ: dict[str, str], tmp_path: Path) -> None:
    checks = run_checks(resolve_paths(), environ, cwd=tmp_path)
    assert states(checks) == {
        "config": True,
        "keyring": True,
        "sidecar": None,  # not running is fine: `launch` starts it
        "provider groq": True,
        "claude": True,
        "ledger": True,
        "install": True,
        "bypass": True,
    }
    named = by_name(checks)
    assert named["provider groq"].detail == "key present (env)"
    assert named["claude"].detail.startswith("2.1.197 (Claude Code) (")
    assert "1 request(s)" in named["ledger"].detail and "quick check ok" in named["ledger"].detail
    assert exit_code(checks) == 0
    assert GROQ_KEY not in json.dumps([check.to_json() for check in checks])


def test_broken_config_file(healthy: Path, environ: dict[str, str], tmp_path: Path) -> None:
    (healthy / "config.toml").write_text("[tiers.haiku\ntargets = ")
    checks = run_checks(resolve_paths(), environ, cwd=tmp_path)
    assert states(checks) == {
        "config": False,
        "keyring": True,
        "sidecar": None,
        "provider keys": None,  # cannot tell which providers routes use
        "claude": True,
        "ledger": True,
        "install": True,
        "bypass": True,
    }
    config = by_name(checks)["config"]
    assert "is not valid TOML" in config.detail and config.fix
    assert exit_code(checks) == 1


def test_unknown_provider_in_route_and_missing_key(isolated_home: Path, environ: dict[str, str]) -> None:
    (isolated_home / "config.toml").write_text('[tiers.haiku]\ntargets = ["nope/some-model"]\n')
    assert by_name(run_checks(resolve_paths(), environ))["config"].ok is False

    (isolated_home / "config.toml").write_text('[tiers.sonnet]\ntargets = ["openrouter/qwen/qwen3-coder"]\n')
    named = by_name(run_checks(resolve_paths(), environ))
    openrouter = named["provider openrouter"]
    assert openrouter.ok is False
    assert openrouter.fix == "`ccgate provider key set openrouter` or export CCGATE_OPENROUTER_API_KEY"


def test_settings_with_anthropic_base_url(healthy: Path, environ: dict[str, str], tmp_path: Path) -> None:
    settings = Path(environ["HOME"]) / ".claude" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://proxy.example.com"}, "model": "opus"}))
    checks = run_checks(resolve_paths(), environ, cwd=tmp_path)
    assert states(checks) == {
        "config": True,
        "keyring": True,
        "sidecar": None,
        "provider groq": True,
        "claude": True,
        "ledger": True,
        "install": True,
        "bypass": False,
    }
    bypass = by_name(checks)["bypass"]
    assert str(settings) in bypass.detail and "env.ANTHROPIC_BASE_URL" in bypass.detail
    assert exit_code(checks) == 1


def test_every_bypass_is_reported(healthy: Path, environ: dict[str, str], tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / ".claude").mkdir(parents=True)
    (project / ".claude" / "settings.local.json").write_text(json.dumps({"env": {"CLAUDE_CODE_USE_VERTEX": "1"}}))
    env = environ | {
        "CLAUDE_CODE_USE_BEDROCK": "1",
        "ANTHROPIC_BASE_URL": "https://gateway.example.com/secret-path-token",
    }
    bypasses = [check for check in run_checks(resolve_paths(), env, cwd=project) if check.name == "bypass"]
    assert [check.ok for check in bypasses] == [False, False, None]
    assert "CLAUDE_CODE_USE_BEDROCK is set" in bypasses[0].detail
    assert "settings.local.json sets env.CLAUDE_CODE_USE_VERTEX" in bypasses[1].detail
    assert "ANTHROPIC_BASE_URL=https://gateway.example.com is exported" in bypasses[2].detail
    assert "secret-path-token" not in bypasses[2].detail

    # inside a `ccgate launch`: the exported base URL is the sidecar's own, not a bypass
    inside = environ | {"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{environ['CCGATE_SIDECAR_PORT']}"}
    assert [c.ok for c in run_checks(resolve_paths(), inside, cwd=tmp_path) if c.name == "bypass"] == [True]


def test_port_taken_by_another_program(healthy: Path, environ: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        sidecar = by_name(run_checks(resolve_paths(), environ | {"CCGATE_SIDECAR_PORT": str(port)}))["sidecar"]
    assert sidecar.ok is False
    assert f"port {port} is used by another program" in sidecar.detail
    assert sidecar.fix and "CCGATE_SIDECAR_PORT" in sidecar.fix


def test_missing_claude_and_damaged_ledger(isolated_home: Path, environ: dict[str, str]) -> None:
    ledger = resolve_paths().ledger_file
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b"not a database at all" * 200)
    named = by_name(run_checks(resolve_paths(), environ | {"PATH": "/nonexistent"}))
    assert named["claude"].ok is False and "npm install" in (named["claude"].fix or "")
    assert named["ledger"].ok is False and "mv " in (named["ledger"].fix or "")


def test_cli_exit_codes_and_json(
    healthy: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, monkeypatch, "doctor")
    assert code == 0
    assert "✓ config:" in out and "! sidecar:" in out

    (healthy / "config.toml").write_text("not = [valid")
    code, out, _ = run(capsys, monkeypatch, "doctor", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert report["checks"][0]["name"] == "config" and report["checks"][0]["state"] == "fail"


def test_ledger_quick_check_by_default_and_full_integrity_check_on_request(
    healthy: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ccgate.features.doctor import check_ledger

    assert check_ledger(resolve_paths()).detail.endswith("quick check ok")
    assert check_ledger(resolve_paths(), full=True).detail.endswith("integrity ok")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, monkeypatch, "doctor", "--full", "--json")
    assert code == 0
    ledger = next(check for check in json.loads(out)["checks"] if check["name"] == "ledger")
    assert ledger["state"] == "ok" and ledger["detail"].endswith("integrity ok")


def test_damaged_ledger_fix_moves_the_wal_and_shm_files_too(isolated_home: Path, tmp_path: Path) -> None:
    import subprocess

    ledger = resolve_paths().ledger_file
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b"not a database at all" * 200)
    companions = [ledger.with_name(ledger.name + suffix) for suffix in ("-wal", "-shm")]
    from ccgate.features.doctor import check_ledger

    check = check_ledger(resolve_paths())
    assert check.ok is False and check.fix is not None
    assert all(str(path) in check.fix for path in (ledger, *companions))
    command = check.fix.split("`")[3]  # the second `...` span is the command itself
    for path in companions:
        path.write_bytes(b"x")
    subprocess.run(["sh", "-c", command], check=True, timeout=30)
    assert not any(path.exists() for path in (ledger, *companions))
    assert all(path.with_name(path.name + ".broken").exists() for path in (ledger, *companions))
    # run again when only the main file is there: the missing companions are skipped without an error
    ledger.write_bytes(b"broken again")
    subprocess.run(["sh", "-c", command.replace(".broken", ".broken2")], check=True, timeout=30)
    assert ledger.with_name(ledger.name + ".broken2").exists()


def test_managed_settings_that_route_around_ccgate_are_reported(healthy: Path, environ: dict[str, str]) -> None:
    managed = Path(os.environ["CCGATE_CLAUDE_MANAGED_SETTINGS"])
    managed.write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://corp-proxy.example"}}))
    bypasses = [check for check in run_checks(resolve_paths(), environ) if check.name == "bypass"]
    assert [check.ok for check in bypasses] == [False]
    assert "(managed settings) sets env.ANTHROPIC_BASE_URL" in bypasses[0].detail


def test_misspelt_config_key_fails_the_config_check(healthy: Path, environ: dict[str, str], tmp_path: Path) -> None:
    """`[[budget]]` once passed as valid while no budget was enforced."""
    (healthy / "config.toml").write_text('[[budget]]\nperiod = "daily"\nlimit = "20"\n')
    config = by_name(run_checks(resolve_paths(), environ, cwd=tmp_path))["config"]
    assert config.ok is False
    assert "budget is not a ccgate setting" in config.detail
    assert config.fix is not None and "did you mean budgets?" in config.fix


@pytest.mark.parametrize(("version", "ok"), [("0.0.1", None), (None, True), ("same", True)])
def test_a_sidecar_of_another_version_is_reported_with_how_to_restart_it(
    monkeypatch: pytest.MonkeyPatch, version: str | None, ok: bool | None
) -> None:
    """After an upgrade the old sidecar keeps serving the old code until it is restarted."""
    from ccgate import __version__
    from ccgate.features.doctor import _running_sidecar_check
    from ccgate.sidecar import process
    from ccgate.sidecar.process import SidecarInfo

    monkeypatch.setattr(process, "control_request", lambda *args, **kwargs: {"ledger_writes": {"unsaved": 0}})
    info = SidecarInfo(pid=4242, port=8787, version=__version__ if version == "same" else version)
    check = _running_sidecar_check(resolve_paths(), info)
    assert check.ok is ok
    if ok is None:
        assert f"is ccgate 0.0.1, this is {__version__}" in check.detail
        assert check.fix is not None and "ccgate sidecar stop" in check.fix


def test_piped_output_is_not_hard_wrapped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ccgate doctor | grep …` or a bug report: every check stays on its line whatever the width."""
    home = tmp_path / ("a-long-directory-name-" * 5) / "home"
    home.mkdir(parents=True)
    monkeypatch.setenv("CCGATE_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "80")
    _, out, _ = run(capsys, monkeypatch, "doctor")
    config_line = next(line for line in out.splitlines() if line.startswith("✓ config: "))
    assert str(home / "config.toml") in config_line and len(config_line) > 80
