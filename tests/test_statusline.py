"""`ccgate statusline`: the line Claude Code shows, from its real stdin JSON and a real ledger; install/uninstall."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from cli_runner import run_main as run

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, usd_to_nanos
from ccgate.features.statusline import parse_input, render
from ccgate.local.paths import resolve_paths

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
SESSION = "5f0c8a4e-1d2b-4c3a-9e8f-7a6b5c4d3e2f"


def claude_code_json(session_id: str = SESSION, **overrides: object) -> str:
    """What Claude Code pipes to a statusLine command (fields as documented and observed)."""
    data: dict[str, object] = {
        "hook_event_name": "Status",
        "session_id": session_id,
        "transcript_path": f"/home/dev/.claude/projects/-home-dev-app/{session_id}.jsonl",
        "cwd": "/home/dev/app",
        "model": {"id": "claude-opus-4-8", "display_name": "Opus 4.8"},
        "workspace": {"current_dir": "/home/dev/app", "project_dir": "/home/dev/app"},
        "version": "2.1.197",
        "output_style": {"name": "default"},
        "cost": {
            "total_cost_usd": 0.5,
            "total_duration_ms": 45000,
            "total_api_duration_ms": 2300,
            "total_lines_added": 156,
            "total_lines_removed": 23,
        },
        "exceeds_200k_tokens": False,
    }
    data.update(overrides)
    return json.dumps(data)


def record(usd: str | None, *, at: datetime, session: str | None = None, project: str | None = None) -> RequestRecord:
    cost = (
        Cost(nanos=None, quality=PriceQuality.UNPRICED)
        if usd is None
        else Cost(nanos=usd_to_nanos(Decimal(usd)), quality=PriceQuality.PRICED)
    )
    return RequestRecord(
        started_at=at,
        session_id=session,
        project=project,
        requested_model="claude-opus-4-8",
        status=RequestStatus.OK,
        cost=cost,
    )


def fill_ledger(*records: RequestRecord) -> None:
    from ccgate.storage.ledger import insert_records, open_ledger

    db = open_ledger(resolve_paths().ledger_file)
    try:
        assert insert_records(db, records) == len(records)
    finally:
        db.close()


def write_config(home: Path, text: str) -> None:
    (home / "config.toml").write_text(text)


CONFIG = """
timezone = "UTC"

[[budgets]]
period = "daily"
limit = "20"

[[budgets]]
period = "monthly"
limit = "300"

[tiers.haiku]
targets = ["groq/llama-3.3-70b-versatile"]
"""


def test_line_from_claude_code_json_and_ledger(isolated_home: Path) -> None:
    write_config(isolated_home, CONFIG)
    fill_ledger(
        record("0.30", at=NOW - timedelta(hours=2), session=SESSION),
        record("0.12", at=NOW - timedelta(minutes=5), session=SESSION),
        record("2.68", at=NOW - timedelta(hours=1), session="other-session"),
        record("5.00", at=NOW - timedelta(days=1), session="yesterday"),  # this month, not today
    )
    line = render(claude_code_json(), now=NOW)
    # daily: 20 - (0.30 + 0.12 + 2.68) = 16.90 is tighter than monthly: 300 - 8.10
    assert line == "Opus 4.8 · session $0.42 · today $3.10 · budget $16.90 left (daily) · haiku→groq"


def test_unpriced_requests_are_shown_as_such(isolated_home: Path) -> None:
    write_config(isolated_home, 'timezone = "UTC"\n')
    fill_ledger(
        record(None, at=NOW - timedelta(minutes=3), session=SESSION),
        record("1.00", at=NOW - timedelta(minutes=2), session="other"),
        record(None, at=NOW - timedelta(minutes=1), session="other"),
    )
    assert render(claude_code_json(), now=NOW) == "Opus 4.8 · session unpriced · today $1.00 +2 unpriced"


def test_estimated_costs_are_marked(isolated_home: Path) -> None:
    write_config(isolated_home, 'timezone = "UTC"\n')
    guessed = record("0.40", at=NOW - timedelta(minutes=2), session=SESSION)
    guessed.cost = Cost(nanos=usd_to_nanos(Decimal("0.40")), quality=PriceQuality.ESTIMATED)
    fill_ledger(guessed, record("0.02", at=NOW - timedelta(minutes=1), session=SESSION))
    assert render(claude_code_json(), now=NOW) == "Opus 4.8 · session ~$0.42 · today ~$0.42"


def test_budget_figures_follow_the_sidecars_rules(isolated_home: Path) -> None:
    """Same rules and windows as `rules_from_config`/`budgets.window`: a Berlin day starts at 23:00 UTC."""
    write_config(isolated_home, 'timezone = "Europe/Berlin"\n[[budgets]]\nperiod = "1d"\nlimit = "5"\n')
    fill_ledger(
        record("1.00", at=datetime(2026, 3, 9, 22, 59, tzinfo=UTC), session="a"),  # Mar 9 in Berlin
        record("2.00", at=datetime(2026, 3, 9, 23, 0, tzinfo=UTC), session="b"),  # Mar 10 in Berlin
    )
    line = render(claude_code_json(), now=NOW)
    assert line == "Opus 4.8 · session ~$0.50 unmetered · today $2.00 · budget $3.00 left (daily)"
    write_config(isolated_home, 'timezone = "UTC"\n[[budgets]]\nperiod = "fortnightly"\nlimit = "5"\n')
    assert render(claude_code_json(), now=NOW).endswith("ccgate: bad budget period")


def test_exhausted_and_project_budgets(isolated_home: Path) -> None:
    write_config(
        isolated_home,
        'timezone = "UTC"\n[[budgets]]\nperiod = "1h"\nlimit = "1"\nproject = "/home/dev/app"\n'
        '[[budgets]]\nperiod = "daily"\nlimit = "50"\n'
        '[[budgets]]\nperiod = "daily"\nlimit = "1"\nproject = "/elsewhere"\n',
    )
    fill_ledger(record("1.50", at=NOW + timedelta(minutes=10), session=SESSION, project="/home/dev/app"))
    line = render(claude_code_json(), now=NOW + timedelta(minutes=30))
    assert line == "Opus 4.8 · session $1.50 · today $1.50 · budget used up (hourly, app)"


def test_session_not_metered_falls_back_to_claude_codes_estimate(isolated_home: Path) -> None:
    assert render(claude_code_json(), now=NOW) == "Opus 4.8 · session ~$0.50 unmetered · today $0.00"


def test_parse_input_is_tolerant() -> None:
    assert parse_input("not json").model_label is None
    assert parse_input("[1, 2]").session_id is None
    partial = parse_input('{"model": {"id": "claude-sonnet-4-5"}, "session_id": 7}')
    assert (partial.model_label, partial.session_id) == ("claude-sonnet-4-5", None)


def test_broken_config_still_gives_a_line(isolated_home: Path) -> None:
    write_config(isolated_home, "[[budgets]\nperiod=")
    fill_ledger(record("0.25", at=NOW - timedelta(minutes=1), session=SESSION))
    line = render(claude_code_json(), now=NOW)
    assert line.startswith("Opus 4.8 · session $0.25 · today ")
    assert line.endswith(" · ccgate: config error")


def _run_cli(stdin: bytes, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", "from ccgate.cli import main; main()", "statusline"],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_real_command_with_claude_code_json(isolated_home: Path) -> None:
    old = datetime(2020, 5, 1, 12, 0, tzinfo=UTC)  # far from today: today's figure is exactly $0.00
    fill_ledger(record("0.40", at=old, session=SESSION), record("0.02", at=old, session=SESSION))
    result = _run_cli(claude_code_json().encode(), dict(os.environ))
    assert result.returncode == 0
    assert result.stdout.decode() == "Opus 4.8 · session $0.42 · today $0.00\n"


@pytest.mark.parametrize("stdin", [b"", b"\x00\xffgarbage{", b'{"model": 3}', b"[]"])
def test_garbage_stdin_still_one_line_exit_0(isolated_home: Path, stdin: bytes) -> None:
    result = _run_cli(stdin, dict(os.environ))
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Claude · ")
    assert result.stderr == b""


def test_corrupt_ledger_gives_a_fallback_line(isolated_home: Path) -> None:
    ledger = resolve_paths().ledger_file
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b"this is not a sqlite database" * 100)
    result = _run_cli(claude_code_json().encode(), dict(os.environ))
    assert result.returncode == 0
    assert result.stdout.decode().startswith("Opus 4.8 · ccgate: unavailable (")
    assert result.stdout.decode().count("\n") == 1


def test_an_older_ledger_is_not_read_until_migrated(isolated_home: Path) -> None:
    """The status line opens the ledger read-only, so it cannot upgrade it; before m005 the roll-ups also held
    pending rows, which the report would count twice. It says what to run instead, then counts each once."""
    from older_ledger import insert_into_older_ledger, open_ledger_as_of

    from ccgate.storage.ledger import open_ledger

    write_config(isolated_home, 'timezone = "UTC"\n')
    in_flight = record("0.30", at=NOW - timedelta(hours=2), session=SESSION)
    in_flight.status = RequestStatus.PENDING
    old = open_ledger_as_of(resolve_paths().ledger_file, "m004_drop_message_id_index")
    insert_into_older_ledger(old, [in_flight, record("0.12", at=NOW - timedelta(hours=3), session=SESSION)])
    old.close()
    unavailable = "Opus 4.8 · ccgate: unavailable (older ledger, run `ccgate cost` once)"
    assert render(claude_code_json(), now=NOW) == unavailable
    open_ledger(resolve_paths().ledger_file).close()  # what any other ccgate command does first
    assert render(claude_code_json(), now=NOW) == "Opus 4.8 · session $0.42 · today $0.42"


BLOCK_CONFIG = 'timezone = "UTC"\n\n[statusline]\nblock = true\n'


def test_the_5_hour_window_in_progress_with_time_left_and_its_spend(isolated_home: Path) -> None:
    write_config(isolated_home, BLOCK_CONFIG)
    fill_ledger(
        record("1.00", at=NOW - timedelta(hours=9)),  # 03:00: an earlier window (03:00-08:00)
        record("0.50", at=NOW - timedelta(hours=2, minutes=13)),  # 09:47 opens the window 09:00-14:00
        record(None, at=NOW - timedelta(minutes=50)),
        record("0.25", at=NOW - timedelta(minutes=5)),
    )
    later = NOW + timedelta(minutes=47)  # 12:47: 1h13m left
    assert render(claude_code_json(), now=later) == (
        "Opus 4.8 · session ~$0.50 unmetered · today $1.75 +1 unpriced · block 1h13m left · $0.75 +1 unpriced"
    )
    assert render(claude_code_json(), now=NOW + timedelta(hours=1, minutes=51)).endswith(
        "· block 9m left · $0.75 +1 unpriced"
    )
    # the window closed at 14:00 and nothing opened another
    assert render(claude_code_json(), now=NOW + timedelta(hours=3)).endswith(
        "· today $1.75 +1 unpriced · no active block"
    )
    write_config(isolated_home, 'timezone = "UTC"\n')  # off by default
    assert "block" not in render(claude_code_json(), now=later)


def test_the_block_option_must_be_true_or_false(isolated_home: Path) -> None:
    write_config(isolated_home, '[statusline]\nblock = "yes"\n')
    assert "ccgate: config error" in render(claude_code_json(), now=NOW)
    write_config(isolated_home, "[statusline]\nblok = true\n")
    assert "ccgate: config error" in render(claude_code_json(), now=NOW)


@pytest.mark.parametrize("with_ledger", [False, True])
def test_fast_path_loads_no_heavy_modules(isolated_home: Path, with_ledger: bool) -> None:
    if with_ledger:  # the status line then reads it: still without the ledger writer (threads, spills)
        fill_ledger(record("0.25", at=NOW, session=SESSION))
        write_config(isolated_home, BLOCK_CONFIG)  # the 5-hour window too
    code = (
        "import io, sys\n"
        "sys.argv = ['ccgate', 'statusline']\n"
        f"sys.stdin = io.StringIO({claude_code_json() if with_ledger else '{}'!r})\n"
        "from ccgate.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = ('typer', 'rich', 'aiohttp', 'genai_prices', 'sqlite_utils', 'asyncio', 'ccgate.gateway',\n"
        "         'ccgate.storage.writer', 'ccgate.storage.spill')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
        "print('ccgate.storage.ledger' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.splitlines()[-2:] == ["[]", str(with_ledger)]


# --- install / uninstall -------------------------------------------------------------------------------------------


def settings_file() -> Path:
    return Path(os.environ["HOME"]) / ".claude" / "settings.json"


EXISTING = {
    "model": "opus",
    "permissions": {"allow": ["Bash(npm test:*)"], "deny": []},
    "env": {"DISABLE_TELEMETRY": "1"},
}


def test_install_keeps_other_settings_and_backs_up(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = settings_file()
    path.parent.mkdir()
    original = json.dumps(EXISTING, indent=4)
    path.write_text(original)

    code, _, err = run(capsys, monkeypatch, "statusline", "install")
    assert code == 0, err
    data = json.loads(path.read_text())
    assert {k: v for k, v in data.items() if k != "statusLine"} == EXISTING
    assert data["statusLine"]["type"] == "command"
    assert data["statusLine"]["padding"] == 0
    assert data["statusLine"]["command"].endswith("ccgate statusline")
    backups = list(path.parent.glob("settings.json.ccgate-backup-*"))
    assert len(backups) == 1 and backups[0].read_text() == original

    # idempotent: a second install changes nothing and makes no new backup
    assert run(capsys, monkeypatch, "statusline", "install")[0] == 0
    assert len(list(path.parent.glob("settings.json.ccgate-backup-*"))) == 1

    code, _, err = run(capsys, monkeypatch, "statusline", "uninstall")
    assert code == 0, err
    assert json.loads(path.read_text()) == EXISTING


def test_install_creates_a_missing_settings_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = settings_file()
    assert run(capsys, monkeypatch, "statusline", "install")[0] == 0
    assert set(json.loads(path.read_text())) == {"statusLine"}
    assert run(capsys, monkeypatch, "statusline", "uninstall")[0] == 0
    assert json.loads(path.read_text()) == {}


def test_install_refuses_a_foreign_statusline_unless_forced(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "custom-settings.json"
    theirs = {"type": "command", "command": "~/.claude/statusline.sh", "padding": 1}
    path.write_text(json.dumps({"statusLine": theirs, "model": "sonnet"}))

    code, _, err = run(capsys, monkeypatch, "statusline", "install", "--settings", str(path))
    assert code == 1
    assert "already has a statusLine" in err and "--force" in err
    assert json.loads(path.read_text())["statusLine"] == theirs

    assert run(capsys, monkeypatch, "statusline", "install", "--settings", str(path), "--force")[0] == 0
    assert json.loads(path.read_text())["statusLine"]["command"].endswith("ccgate statusline")

    assert run(capsys, monkeypatch, "statusline", "uninstall", "--settings", str(path))[0] == 0
    assert json.loads(path.read_text()) == {"statusLine": theirs, "model": "sonnet"}

    # theirs is not ours: uninstall leaves it alone
    assert run(capsys, monkeypatch, "statusline", "uninstall", "--settings", str(path))[0] == 0
    assert json.loads(path.read_text()) == {"statusLine": theirs, "model": "sonnet"}


def test_install_refuses_to_touch_invalid_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = settings_file()
    path.parent.mkdir()
    path.write_text('{"model": "opus",')
    code, _, err = run(capsys, monkeypatch, "statusline", "install")
    assert code == 1 and "not valid JSON" in err
    assert path.read_text() == '{"model": "opus",'


@pytest.mark.parametrize("command", ["install", "uninstall"])
def test_install_refuses_to_touch_a_file_that_is_not_utf8(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    path = settings_file()
    path.parent.mkdir()
    original = b'{"model": "\xff\xfe"}'
    path.write_bytes(original)
    code, _, err = run(capsys, monkeypatch, "statusline", command)
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"ccgate: error: {path} is not UTF-8 text") and "hint:" in err
    assert path.read_bytes() == original


@pytest.mark.parametrize(("original_mode", "backup_mode"), [(0o600, 0o600), (0o644, 0o600), (0o400, 0o400)])
def test_statusline_backups_are_private_whatever_the_umask(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, original_mode: int, backup_mode: int
) -> None:
    """Settings may hold API keys: a backup is 0600 (or the original's bits if stricter), never the umask's 0644."""
    path = settings_file()
    path.parent.mkdir()
    path.write_text(json.dumps({"env": {"ANTHROPIC_API_KEY": "sk-ant-secret"}}))
    path.chmod(original_mode)
    old_mask = os.umask(0o022)
    try:
        code, _, err = run(capsys, monkeypatch, "statusline", "install")
        assert code == 0, err
        [installed] = path.parent.glob("settings.json.ccgate-backup-*")
        code, _, err = run(capsys, monkeypatch, "statusline", "uninstall")
        assert code == 0, err
    finally:
        os.umask(old_mask)
    saved = sorted(path.parent.glob("settings.json.ccgate-backup-*"))
    assert len(saved) == 2 and installed in saved
    assert [p.stat().st_mode & 0o777 for p in saved] == [backup_mode, backup_mode]
