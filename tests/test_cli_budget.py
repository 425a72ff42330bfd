"""`ccgate budget set|show|unset`, run the way a user runs them, against a real ledger file."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from cli_runner import run_main as run

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, usd_to_nanos, utcnow
from ccgate.local.paths import resolve_paths


def config_budgets(home: Path) -> list[dict[str, object]]:
    budgets = tomllib.loads((home / "config.toml").read_text()).get("budgets", [])
    assert isinstance(budgets, list)
    return budgets


def add_spend(cost: str, *, project: str | None = None, started_at: datetime | None = None) -> None:
    from ccgate.storage.ledger import insert_records, open_ledger

    record = RequestRecord(
        started_at=started_at or utcnow(),
        project=project,
        requested_model="claude-sonnet-4-5",
        status=RequestStatus.OK,
        cost=Cost(nanos=usd_to_nanos(Decimal(cost)), quality=PriceQuality.PRICED),
    )
    db = open_ledger(resolve_paths().ledger_file)
    try:
        assert insert_records(db, [record]) == 1
    finally:
        db.close()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository with the current directory in a subfolder of it."""
    top = tmp_path / "my-app"
    (top / "src").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(top)], check=True)
    monkeypatch.chdir(top / "src")
    return top.resolve()


def test_set_show_unset_round_trip(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path, repo: Path
) -> None:
    code, _, err = run(capsys, monkeypatch, "budget", "set", "daily", "20")
    assert code == 0, err
    assert "daily budget for all projects set: $20.00" in err
    code, _, err = run(capsys, monkeypatch, "budget", "set", "monthly", "$300", "--project", ".", "--warn-at", "90%")
    assert code == 0, err
    assert config_budgets(isolated_home) == [
        {"period": "daily", "limit": "20", "warn_at": "0.8"},
        {"period": "monthly", "limit": "300", "project": str(repo), "warn_at": "0.9"},
    ]
    # `1d` is the same period as `daily`: the budget is replaced, not added
    code, _, err = run(capsys, monkeypatch, "budget", "set", "1d", "40.5")
    assert code == 0 and "replaced: $40.50" in err
    assert [b["limit"] for b in config_budgets(isolated_home)] == ["40.5", "300"]

    code, out, _ = run(capsys, monkeypatch, "budget", "show", "--json")
    assert code == 0
    shown = json.loads(out)
    assert [(b["period"], b["project"], b["limit_usd"], b["spent_usd"]) for b in shown["budgets"]] == [
        ("daily", None, "40.500000000", "0.000000000"),
        ("monthly", str(repo), "300.000000000", "0.000000000"),
    ]
    assert shown["budgets"][1]["label"] == "monthly budget for project my-app"
    assert not resolve_paths().ledger_file.exists()  # show never creates a ledger

    code, _, err = run(capsys, monkeypatch, "budget", "unset", "daily")
    assert code == 0 and "removed" in err
    code, _, err = run(capsys, monkeypatch, "budget", "unset", "monthly")
    assert code == 1
    assert "there is no monthly budget for all projects" in err
    code, _, err = run(capsys, monkeypatch, "budget", "unset", "1mo", "--project", str(repo / "src"))
    assert code == 0, err
    assert config_budgets(isolated_home) == []
    code, out, err = run(capsys, monkeypatch, "budget", "show")
    assert code == 0 and "No budgets set" in err and out == ""


def test_show_reads_spend_from_the_ledger(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path, repo: Path
) -> None:
    (isolated_home / "config.toml").write_text('timezone = "Asia/Tokyo"\n')
    assert run(capsys, monkeypatch, "budget", "set", "yearly", "10")[0] == 0
    assert run(capsys, monkeypatch, "budget", "set", "yearly", "5", "--project", ".")[0] == 0
    add_spend("6.00", project=str(repo))
    add_spend("2.50", project="/elsewhere")
    add_spend("100", project=str(repo), started_at=utcnow() - timedelta(days=800))  # an earlier year

    code, out, _ = run(capsys, monkeypatch, "budget", "show", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["timezone"] == "Asia/Tokyo"
    everything, mine = shown["budgets"]
    assert (everything["spent_usd"], everything["left_usd"], everything["level"]) == (
        "8.500000000",
        "1.500000000",
        "warn",
    )
    assert everything["used_percent"] == 85.0
    assert (mine["spent_usd"], mine["left_usd"], mine["level"]) == ("6.000000000", "0.000000000", "exhausted")
    resets = datetime.fromisoformat(mine["resets_at"].replace("Z", "+00:00"))
    assert (resets.month, resets.day, resets.hour) == (12, 31, 15)  # Jan 1st, 00:00 in Tokyo
    assert resets > datetime.now(UTC)

    monkeypatch.setenv("COLUMNS", "160")  # one table row per budget
    code, out, err = run(capsys, monkeypatch, "budget", "show")
    assert code == 0
    assert "yearly budget" in out and "$8.50" in out and "$1.50" in out and "85%" in out and "JST" in out
    assert "yearly budget is at 85%" in " ".join(err.split())
    assert "yearly budget for project my-app is used up" in " ".join(err.split())
    assert f"ccgate budget set yearly 10 --project {repo}" in " ".join(err.split()).replace("\n", "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "fortnightly", "20"], "'fortnightly' is not a period"),
        (["set", "0d", "20"], "'0d' is out of range"),
        (["set", "daily", "twenty"], "'twenty' is not an amount in USD"),
        (["set", "daily", "--", "-5"], "'-5' is not an amount in USD"),
        (["set", "daily", "NaN"], "'NaN' is not an amount in USD"),
        (["set", "daily", "20", "--warn-at", "1.5"], "--warn-at '1.5' is not a fraction"),
        (["unset", "weekly"], "there is no weekly budget"),
        (["unset", "sometimes"], "'sometimes' is not a period"),
    ],
)
def test_bad_input_exits_1_with_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    isolated_home: Path,
    args: list[str],
    message: str,
) -> None:
    code, out, err = run(capsys, monkeypatch, "budget", *args)
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("ccgate: error: ") and message in lines[0]
    assert all(line.startswith("  hint: ") for line in lines[1:]) and len(lines) <= 2
    assert "Traceback" not in err
    assert not (isolated_home / "config.toml").exists()


@pytest.mark.parametrize(
    ("amount", "message", "hint"),
    [
        ("1e999999", "'1e999999' is not an amount in USD: not a plain decimal number", "20, 7.50"),
        ("1,5", "'1,5' is not an amount in USD: commas may only separate thousands", "use a dot for decimals"),
        ("1,00", "commas may only separate thousands", "use a dot for decimals"),
        ("inf", "not a plain decimal number", "20, 7.50"),
        ("0.0000000001", "budgets below $0.01 make no sense", "at least 0.01"),
        ("0.009", "budgets below $0.01 make no sense", "at least 0.01"),
        ("1000000000.01", "above the $1,000,000,000 ceiling", "20, 7.50"),
        ("20.0000000001", "more than 9 decimal places", "20, 7.50"),
    ],
)
def test_bad_amounts_are_refused_before_anything_is_saved(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    isolated_home: Path,
    amount: str,
    message: str,
    hint: str,
) -> None:
    code, out, err = run(capsys, monkeypatch, "budget", "set", "daily", amount)
    assert code == 1, err
    assert out == ""
    first, *rest = err.splitlines()
    assert message in first
    assert rest and hint in rest[0]
    assert not (isolated_home / "config.toml").exists()
    assert run(capsys, monkeypatch, "budget", "show", "--json")[0] == 0  # and later commands still work


@pytest.mark.parametrize(
    ("amount", "stored", "shown"),
    [
        ("1,000.50", "1000.50", "$1,000.50"),
        ("$20", "20", "$20.00"),
        ("0.01", "0.01", "$0.01"),
        ("0", "0", "$0.00"),
        ("1,000,000", "1000000", "$1,000,000.00"),
    ],
)
def test_amounts_as_people_type_them(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    isolated_home: Path,
    amount: str,
    stored: str,
    shown: str,
) -> None:
    code, _, err = run(capsys, monkeypatch, "budget", "set", "daily", amount)
    assert code == 0, err
    assert f"set: {shown}" in err
    assert [b["limit"] for b in config_budgets(isolated_home)] == [stored]


def test_a_bad_limit_in_config_is_an_error_naming_file_and_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    config = isolated_home / "config.toml"
    for bad in ('"1e999999"', '"NaN"', "-1", '"1,5"', "1e300", '"0.0000000001"', "true"):
        config.write_text(f'[[budgets]]\nperiod = "daily"\nlimit = {bad}\n')
        for args in (("budget", "show"), ("budget", "set", "weekly", "5")):
            code, _, err = run(capsys, monkeypatch, *args)
            assert code == 1, (bad, err)
            assert str(config) in err and "budgets[0].limit" in err, (bad, err)
            assert "Traceback" not in err
    assert "weekly" not in config.read_text()


def test_budget_edits_keep_what_ccgate_does_not_model(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    config = isolated_home / "config.toml"
    config.write_text(
        "# my settings\n"
        'timezone = "UTC"\n\n'
        '[sidecar]\nport = 9999\nlog_level = "debug"\n\n'
        '[gateway]\nurl = "https://gw.example"\nteam = "infra"\n\n'
        "[future_section]\nanswer = 42\n\n"
        '[[budgets]]\nperiod = "weekly"\nlimit = 50\nnote = "ask Sam first"\n\n'
        '[[budgets]]\nperiod = "daily"\nlimit = "10"\nnote = "old"\n'
    )
    assert run(capsys, monkeypatch, "budget", "set", "monthly", "300")[0] == 0
    assert run(capsys, monkeypatch, "budget", "set", "daily", "12")[0] == 0
    raw = tomllib.loads(config.read_text())
    assert raw["timezone"] == "UTC"
    assert raw["sidecar"] == {"port": 9999, "log_level": "debug"}
    assert raw["gateway"] == {"url": "https://gw.example", "team": "infra"}
    assert raw["future_section"] == {"answer": 42}
    assert raw["budgets"] == [
        {"period": "weekly", "limit": 50, "note": "ask Sam first"},  # untouched, as the user wrote it
        {"period": "daily", "limit": "12", "note": "old"},  # replaced in place: only the limit changed
        {"period": "monthly", "limit": "300", "warn_at": "0.8"},
    ]
    assert run(capsys, monkeypatch, "budget", "unset", "weekly")[0] == 0
    assert run(capsys, monkeypatch, "budget", "unset", "daily")[0] == 0
    raw = tomllib.loads(config.read_text())
    assert raw["budgets"] == [{"period": "monthly", "limit": "300", "warn_at": "0.8"}]
    assert raw["sidecar"] == {"port": 9999, "log_level": "debug"} and raw["future_section"] == {"answer": 42}


def test_set_and_unset_notify_a_running_sidecar(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    isolated_home: Path,
    reload_notices: list[object],
) -> None:
    calls = reload_notices
    code, _, err = run(capsys, monkeypatch, "budget", "set", "daily", "20")
    assert code == 0, err
    assert len(calls) == 1 and "the running sidecar reloaded its settings" in err
    assert len(config_budgets(isolated_home)) == 1
    code, _, err = run(capsys, monkeypatch, "budget", "unset", "daily")
    assert code == 0, err
    assert len(calls) == 2 and "the running sidecar reloaded its settings" in err
    assert config_budgets(isolated_home) == []


def test_show_keeps_money_whole_in_80_columns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    (isolated_home / "config.toml").write_text(
        '[[budgets]]\nperiod = "monthly"\nlimit = "1000"\nproject = "/home/me/projects/a-rather-long-project-name"\n'
        '[[budgets]]\nperiod = "daily"\nlimit = "1000"\n'
    )
    add_spend("123.45")
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run(capsys, monkeypatch, "budget", "show")
    assert code == 0, err
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert out.count("$1,000.00") == 3 and "$123.45" in out and "$876.55" in out
    assert "12%" in out  # percentages and reset times stay whole too
    assert len(re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d \S+ *$", out, re.MULTILINE)) == 2
    assert "a-rather-long-project-name" in "".join(out.split())  # the label folds, nothing is cut
