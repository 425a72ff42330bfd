"""`ccgate budget set|show|unset`, run the way a user runs them, against a real ledger file."""

from __future__ import annotations

import json
import subprocess
import tomllib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from cli_runner import run_main as run

from ccgate.models import Cost, PriceQuality, RequestRecord, RequestStatus, usd_to_nanos, utcnow
from ccgate.paths import resolve_paths


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
