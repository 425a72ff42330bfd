"""Whatever goes wrong on disk, the CLI answers with one line and a hint, never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli_runner import run_main

from ccgate.core.records import RequestRecord, RequestStatus, Usage
from ccgate.local.paths import resolve_paths
from ccgate.storage.ledger import insert_records, open_ledger


def _fill_ledger(rows: int) -> Path:
    paths = resolve_paths().ensure()
    db = open_ledger(paths.ledger_file)
    records = []
    for index in range(rows):
        record = RequestRecord(requested_model="claude-haiku-4-5", session_id=f"s{index % 50}", status=RequestStatus.OK)
        record.usage = Usage(input_tokens=index, output_tokens=1)
        records.append(record)
    insert_records(db, records)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return paths.ledger_file


def test_a_damaged_ledger_gives_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = _fill_ledger(20_000)
    size = ledger.stat().st_size
    with open(ledger, "r+b") as handle:
        handle.seek(size // 3)
        handle.write(os.urandom(size // 3))
    failures = 0
    for args in (("cost", "all", "--by", "day"), ("cost", "all", "--by", "session"), ("logs", "-n", "5")):
        code, _, err = run_main(capsys, monkeypatch, *args)
        if code == 0:
            continue  # this query happened to read only intact pages
        failures += 1
        assert code == 1, err
        assert "Traceback" not in err
        assert err.startswith("ccgate: error:")
        assert "hint:" in err
    assert failures, "the damage went unnoticed: damage more of the file"


def test_requests_in_flight_are_not_reported_as_unpriced(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = resolve_paths().ensure()
    db = open_ledger(paths.ledger_file)
    insert_records(db, [RequestRecord(requested_model="claude-opus-4-8")])  # pending, no usage seen yet
    db.close()
    code, out, _ = run_main(capsys, monkeypatch, "cost", "--json")
    assert code == 0
    total = json.loads(out)["total"]
    assert total["requests"] == 1
    assert total["unpriced_requests"] == 0
    assert total["cost_usd"] == "0.000000000"


def test_a_misspelt_config_key_gives_one_line_naming_the_key_it_resembles(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[[budget]]` for `[[budgets]]` once left the budget unenforced while `config show` printed defaults."""
    config = resolve_paths().ensure().config_file
    config.write_text('[[budget]]\nperiod = "daily"\nlimit = 5\n')
    for args in (("config", "show"), ("budget", "show")):
        code, out, err = run_main(capsys, monkeypatch, *args)
        assert code == 1, (args, out, err)
        assert "Traceback" not in err
        first, *rest = err.strip().splitlines()
        assert first == f"ccgate: error: {config}: budget is not a ccgate setting", (args, err)
        assert "did you mean budgets?" in " ".join(rest)


@pytest.mark.parametrize(
    "args",
    [
        ("logs", "-n", "99999999999999999999"),
        ("logs", "-n", "-1"),
        ("sidecar", "logs", "-n", "-1"),
        ("sidecar", "logs", "-n", "99999999999999999999"),
    ],
)
def test_an_out_of_range_line_count_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    paths = resolve_paths().ensure()
    paths.log_file.write_text("started\n")
    _fill_ledger(1)
    code, out, err = run_main(capsys, monkeypatch, *args)
    assert code == 2 and out == ""
    assert "Traceback" not in err
    assert "Invalid value for '-n' / '--lines'" in err and "-h' for help" in err


@pytest.mark.parametrize("args", [("doctor",), ("sidecar", "status"), ("logs",), ("cost",), ("budget", "show")])
def test_a_ccgate_home_that_is_a_file_gives_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: tuple[str, ...]
) -> None:
    home = tmp_path / "not-a-dir"
    home.write_text("")
    monkeypatch.setenv("CCGATE_HOME", str(home))
    code, out, err = run_main(capsys, monkeypatch, *args)
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"ccgate: error: {home} is a file where ccgate needs a directory",
        "  hint: point CCGATE_HOME (or CCGATE_CONFIG, CCGATE_DATA_DIR, CCGATE_STATE_DIR) at a directory",
    ]
    assert home.read_text() == ""


@pytest.mark.parametrize("command", ["cost", "logs", "budget", "config"])
def test_an_invalid_config_gets_the_same_message_and_hint_everywhere(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path, command: str
) -> None:
    config = isolated_home / "config.toml"
    config.write_text("timezone = [\n")
    args = {"cost": ("cost",), "logs": ("logs",), "budget": ("budget", "show"), "config": ("config", "show")}
    code, out, err = run_main(capsys, monkeypatch, *args[command])
    assert code == 1 and out == ""
    first, hint = err.splitlines()
    assert first.startswith(f"ccgate: error: {config} is not valid TOML")
    assert first.count(str(config)) == 1
    assert hint == "  hint: fix or delete it; `ccgate config show` checks it"
