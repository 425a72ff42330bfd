"""`cost --by week|month`, two-level groupings, `--last N` and session rows, against hand-computed fixtures
(DST edges in Europe/Berlin included)."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cli_runner import run_main

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.core.tags import encode
from ccgate.local.paths import resolve_paths
from ccgate.storage.ledger import insert_records, open_ledger


def _row(when: str, nanos: int, model: str = "claude-sonnet-4-5", **fields: Any) -> RequestRecord:
    record = RequestRecord(
        started_at=datetime.fromisoformat(when).replace(tzinfo=UTC),
        requested_model=model,
        status=RequestStatus.OK,
        usage=Usage(input_tokens=10, output_tokens=1),
        cost=Cost(nanos=nanos, quality=PriceQuality.PRICED),
    )
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def _seed(*records: RequestRecord) -> None:
    db = open_ledger(resolve_paths().ensure().ledger_file)
    insert_records(db, records)
    db.close()


def _cost(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, Any]:
    code, out, err = run_main(capsys, monkeypatch, "cost", "all", "--json", *args)
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def _keys(data: dict[str, Any]) -> list[tuple[Any, int]]:
    return [(group["key"], int(group["cost_usd"].replace(".", ""))) for group in data["groups"]]


@pytest.fixture(autouse=True)
def berlin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    # Berlin: CET (+1) until 01:00 UTC on Sun 2025-03-30, then CEST (+2)
    _seed(
        _row("2025-03-23 22:59", 1, "claude-haiku-4-5"),  # Sun 23:59 CET: week of Mon 03-17
        _row("2025-03-23 23:00", 2),  # Mon 03-24 00:00 CET: week of 03-24
        _row("2025-03-30 21:30", 4, "claude-haiku-4-5"),  # Sun 03-30 23:30 CEST: still week of 03-24
        _row("2025-03-30 22:30", 8),  # Mon 03-31 00:30 CEST: week of 03-31
        _row("2025-03-31 21:59", 16, session_id="s-1", project="/w/a"),  # Mon 03-31 23:59 CEST: March
        _row("2025-03-31 22:00", 32, "claude-opus-4-1", session_id="s-1", project="/w/a"),  # Tue 04-01 00:00: April
        _row("2025-04-02 10:00", 64, session_id="s-2", project="/w/b", tags=encode({"ticket": "T-1"})),
    )


def test_weeks_start_on_monday_in_local_time_across_the_dst_change(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _cost(capsys, monkeypatch, "--by", "week")
    assert _keys(data) == [("2025-03-17", 1), ("2025-03-24", 2 + 4), ("2025-03-31", 8 + 16 + 32 + 64)]
    assert data["total"]["cost_usd"] == "0.000000127"


def test_week_start_from_config(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    paths = resolve_paths().ensure()
    paths.config_file.write_text('week_start = "sunday"\n')
    data = _cost(capsys, monkeypatch, "--by", "week")
    # weeks from Sunday: 03-23 (Sun 23:59 CET and Mon 00:00), 03-30 (everything from Sun 03-30 on)
    assert _keys(data) == [("2025-03-23", 1 + 2), ("2025-03-30", 4 + 8 + 16 + 32 + 64)]
    paths.config_file.write_text('week_start = "someday"\n')
    code, _, err = run_main(capsys, monkeypatch, "cost", "--by", "week")
    assert code == 1 and "is not a weekday" in err


def test_months_in_local_time(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert _keys(_cost(capsys, monkeypatch, "--by", "month")) == [("2025-03", 1 + 2 + 4 + 8 + 16), ("2025-04", 96)]


def test_two_levels_have_list_keys_in_time_order_then_by_cost(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _cost(capsys, monkeypatch, "--by", "month,model")
    assert data["by"] == "month,model"
    assert _keys(data) == [
        (["2025-03", "claude-sonnet-4-5"], 2 + 8 + 16),
        (["2025-03", "claude-haiku-4-5"], 1 + 4),
        (["2025-04", "claude-sonnet-4-5"], 64),
        (["2025-04", "claude-opus-4-1"], 32),
    ]
    flipped = _cost(capsys, monkeypatch, "--by", "model,day")
    assert _keys(flipped)[:3] == [
        (["claude-haiku-4-5", "2025-03-23"], 1),
        (["claude-haiku-4-5", "2025-03-30"], 4),
        (["claude-opus-4-1", "2025-04-01"], 32),
    ]
    tagged = _cost(capsys, monkeypatch, "--by", "month,tag:ticket")
    assert _keys(tagged) == [(["2025-03", "(none)"], 31), (["2025-04", "T-1"], 64), (["2025-04", "(none)"], 32)]
    for data in (flipped, tagged):
        assert sum(int(g["cost_usd"].replace(".", "")) for g in data["groups"]) == 127


def test_last_n_keeps_the_most_recent_periods_and_sessions(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _cost(capsys, monkeypatch, "--by", "day", "--last", "2")
    assert _keys(data) == [("2025-04-01", 32), ("2025-04-02", 64)] and data["total"]["cost_usd"] == "0.000000096"
    data = _cost(capsys, monkeypatch, "--by", "month,model", "--last", "1")
    assert [key for key, _ in _keys(data)] == [["2025-04", "claude-sonnet-4-5"], ["2025-04", "claude-opus-4-1"]]
    data = _cost(capsys, monkeypatch, "--by", "session", "--last", "1")
    assert [group["key"] for group in data["groups"]] == ["s-2"]
    code, _, err = run_main(capsys, monkeypatch, "cost", "all", "--by", "model", "--last", "1")
    assert code == 1 and "--last" in err


def test_session_rows_carry_project_first_last_and_models(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _cost(capsys, monkeypatch, "--by", "session")
    sessions = {group["key"]: group for group in data["groups"]}
    one = sessions["s-1"]
    assert (one["project"], one["models"]) == ("/w/a", ["claude-opus-4-1", "claude-sonnet-4-5"])
    assert (one["first"], one["last"]) == ("2025-03-31T23:59:00+02:00", "2025-04-01T00:00:00+02:00")
    assert sessions["(none)"]["models"] == [] and sessions["(none)"]["requests"] == 4
    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = run_main(capsys, monkeypatch, "cost", "all", "--by", "session")
    line = next(line for line in out.splitlines() if line.strip().startswith("s-1"))
    assert "/w/a" in line and "2025-03-31 23:59 – 04-01 00:00" in line and "claude-opus-4-1, claude-sonnet-4-5" in line
    _, out, _ = run_main(capsys, monkeypatch, "cost", "all", "--by", "session", "--csv")
    rows = {row["key"]: row for row in csv.DictReader(io.StringIO(out))}
    assert rows["s-2"]["project"] == "/w/b" and rows["s-2"]["models"] == "claude-sonnet-4-5"


def test_two_level_table_and_csv(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_main(capsys, monkeypatch, "cost", "all", "--by", "month,model")
    assert code == 0, err
    assert "Month" in out and "Model" in out and out.count("Mar 2025") == 1 and out.count("Apr 2025") == 1
    code, out, _ = run_main(capsys, monkeypatch, "cost", "all", "--by", "month,model", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert (rows[0]["key"], rows[0]["key2"]) == ("2025-03", "claude-sonnet-4-5")
    assert (rows[-1]["key"], rows[-1]["cost_usd"]) == ("(total)", "0.000000127")


@pytest.mark.parametrize("by", ["day,week", "model,tag:ticket", "day,model,project", "day,day", "colour"])
def test_impossible_groupings_are_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, by: str
) -> None:
    code, _, err = run_main(capsys, monkeypatch, "cost", "--by", by)
    assert code == 1 and "cannot group by" in err and "hint:" in err
