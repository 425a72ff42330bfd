"""`cost --chart`: bars proportional to spend, days as a time series, ledger text escaped."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cli_runner import run_main

from ccgate.cli.chart import bar
from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.local.paths import resolve_paths
from ccgate.storage.ledger import insert_records, open_ledger


def test_bars_are_proportional_in_eighths_and_never_hide_a_small_value() -> None:
    assert bar(100, 100, 10) == "█" * 10
    assert bar(50, 100, 10) == "█" * 5
    assert bar(55, 100, 10) == "█" * 5 + "▌"  # 5.5 cells: five and a half
    assert bar(1, 1_000_000, 10) == "▏"
    assert bar(0, 100, 10) == "" and bar(5, 0, 10) == ""


def _seed(day: int, model: str, nanos: int) -> RequestRecord:
    return RequestRecord(
        started_at=datetime(2025, 3, day, 12, tzinfo=UTC),
        requested_model=model,
        status=RequestStatus.OK,
        usage=Usage(input_tokens=10),
        cost=Cost(nanos=nanos, quality=PriceQuality.PRICED),
    )


def test_chart_by_day_is_a_time_series_and_by_model_ranks_groups(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("COLUMNS", "80")
    db = open_ledger(resolve_paths().ensure().ledger_file)
    evil = "evil\x1b[2J\u202e"
    insert_records(db, [_seed(1, "claude-sonnet-4-5", 2_000_000_000), _seed(4, evil, 1_000_000_000), _seed(4, "x", 0)])
    db.close()
    code, out, err = run_main(capsys, monkeypatch, "cost", "all", "--by", "day", "--chart")
    assert code == 0, err
    lines = out.splitlines()
    days = [line for line in lines if line.startswith(("Sat", "Sun", "Mon", "Tue"))]
    assert [line[:14] for line in days] == ["Sat 2025-03-01", "Sun 2025-03-02", "Mon 2025-03-03", "Tue 2025-03-04"]
    full, empty, _, half = (line.count("█") for line in days)
    assert empty == 0 and days[1].rstrip().endswith("–")
    assert full > 40 and half * 2 in (full - 1, full)  # an odd width: the half bar ends in a half cell
    assert days[0].rstrip().endswith("$2.00") and lines[-1] == "Total $3.00 (API list prices)"
    code, out, _ = run_main(capsys, monkeypatch, "cost", "all", "--chart")
    assert "\x1b[2J" not in out and "\u202e" not in out and "evil\\x1b[2J" in out
    code, _, err = run_main(capsys, monkeypatch, "cost", "--chart", "--json")
    assert code == 1 and "cannot be combined" in err
