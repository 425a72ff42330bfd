"""`ccgate blocks`: 5-hour windows from hand-made ledgers (boundaries, DST, pending rows, burn rate, limits)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cli_runner import run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage, utcnow
from ccgate.local.paths import resolve_paths
from ccgate.storage.blocks import active_block, blocks_to_json, load_blocks
from ccgate.storage.ledger import insert_records, open_ledger

UTC_ZONE = ZoneInfo("UTC")


def _row(at: datetime, nanos: int = 1_000_000, *, status: RequestStatus = RequestStatus.OK, tokens: int = 100) -> Any:
    return RequestRecord(
        started_at=at,
        requested_model="claude-sonnet-4-5",
        status=status,
        usage=Usage(input_tokens=tokens, output_tokens=tokens // 2, cache_read_tokens=tokens, cache_write_5m_tokens=10),
        cost=Cost(nanos=nanos, quality=PriceQuality.PRICED),
    )


def _seed(*records: RequestRecord) -> None:
    db = open_ledger(resolve_paths().ensure().ledger_file)
    insert_records(db, records)
    db.close()


def _load(now: datetime, tz: Any = UTC_ZONE, limit: int | None = None) -> dict[str, Any]:
    db = open_ledger(resolve_paths().ensure().ledger_file)
    try:
        document: dict[str, Any] = blocks_to_json(load_blocks(db), now=now, tz=tz, limit=limit)
        return document
    finally:
        db.close()


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_windows_open_at_the_hour_of_the_first_request_after_the_previous_one_closed() -> None:
    _seed(
        _row(t("2025-03-04 09:47")),  # opens 09:00-14:00
        _row(t("2025-03-04 13:59:59")),  # still in it
        _row(t("2025-03-04 14:00")),  # the first request at or after 14:00 opens 14:00-19:00
        _row(t("2025-03-04 18:30")),
        _row(t("2025-03-05 02:10")),  # after a gap: 02:00-07:00
    )
    blocks = _load(t("2025-03-06 00:00"))["blocks"]
    assert [(b["start"], b["end"], b["requests"]) for b in blocks] == [
        ("2025-03-04T09:00:00+00:00", "2025-03-04T14:00:00+00:00", 2),
        ("2025-03-04T14:00:00+00:00", "2025-03-04T19:00:00+00:00", 2),
        ("2025-03-05T02:00:00+00:00", "2025-03-05T07:00:00+00:00", 1),
    ]
    first = blocks[0]
    assert first["cost_usd"] == "0.002000000" and first["active"] is False
    assert first["total_tokens"] == 2 * (100 + 50 + 100 + 10)
    assert (first["first_request"], first["last_request"]) == ("2025-03-04T09:47:00+00:00", "2025-03-04T13:59:59+00:00")
    # 520 tokens and $0.002 over 4h12m59s (15,179 s) of use: 520 * 3600 / 15179, 2e6 nanos * 3600 / 15179
    assert first["burn_rate"] == {"tokens_per_hour": 123, "cost_usd_per_hour": "0.000474339"}
    assert blocks[2]["burn_rate"] is None  # one request: no rate to speak of
    assert all(b["projection"] is None for b in blocks)


def test_a_window_across_a_dst_change_is_five_hours_shown_in_local_time() -> None:
    # Berlin goes from +01:00 to +02:00 at 01:00 UTC on 2025-03-30
    _seed(_row(t("2025-03-30 00:20")), _row(t("2025-03-30 04:50")), _row(t("2025-10-26 00:05")))
    blocks = _load(t("2025-11-01 00:00"), tz=ZoneInfo("Europe/Berlin"))["blocks"]
    assert [(b["start"], b["end"], b["requests"]) for b in blocks] == [
        ("2025-03-30T01:00:00+01:00", "2025-03-30T07:00:00+02:00", 2),
        # back to +01:00 at 01:00 UTC on 2025-10-26: 02:00-03:00 local happens twice, so 02:00-06:00 is five hours
        ("2025-10-26T02:00:00+02:00", "2025-10-26T06:00:00+01:00", 1),
    ]


def test_the_active_window_has_time_left_a_projection_and_counts_requests_in_flight() -> None:
    now = t("2025-03-04 12:30")
    _seed(
        _row(t("2025-03-04 10:30"), 2_000_000, tokens=1000),
        _row(t("2025-03-04 11:30"), 2_000_000, tokens=1000, status=RequestStatus.PENDING),
    )
    (block,) = _load(now, limit=10_000)["blocks"]
    assert block["active"] is True and block["requests"] == 2 and block["start"] == "2025-03-04T10:00:00+00:00"
    # 2 x 2,510 tokens and $0.004 in the 2 hours since the first request; 2h30m left
    assert block["burn_rate"] == {"tokens_per_hour": 2510, "cost_usd_per_hour": "0.002000000"}
    assert block["projection"] == {
        "remaining_minutes": 150,
        "total_tokens": 5020 + 6275,
        "cost_usd": "0.009000000",
        "over_limit": True,
    }
    assert block["over_limit"] is False


def test_blocks_cli_json_active_and_token_limit_max(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = utcnow()
    _seed(
        _row(now - timedelta(days=2), tokens=5000),
        _row(now - timedelta(days=1), tokens=100),
        _row(now - timedelta(minutes=1), tokens=10),
    )
    code, out, err = run_main(capsys, monkeypatch, "blocks", "--json", "--token-limit", "max")
    assert code == 0, err
    data = json.loads(out)
    assert data["token_limit"] == 5000 + 2500 + 5000 + 10
    assert [b["over_limit"] for b in data["blocks"]] == [False, False, False]
    assert [b["active"] for b in data["blocks"]] == [False, False, True]
    code, out, _ = run_main(capsys, monkeypatch, "blocks", "--json", "--active", "--token-limit", "1000")
    (active,) = json.loads(out)["blocks"]
    assert active["active"] is True and active["requests"] == 1
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_main(capsys, monkeypatch, "blocks", "--token-limit", "1000")
    assert code == 0 and "ACTIVE" in out and "over limit" in out and "Active window:" in out and "left" in out
    code, _, err = run_main(capsys, monkeypatch, "blocks", "--token-limit", "lots")
    assert code == 1 and "--token-limit" in err


def test_blocks_totals_agree_with_cost(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    start = t("2025-03-04 08:10")
    _seed(*(_row(start + timedelta(minutes=37 * n), 1_000 + n) for n in range(40)))
    _, out, _ = run_main(capsys, monkeypatch, "blocks", "--json")
    blocks = json.loads(out)["blocks"]
    _, out, _ = run_main(capsys, monkeypatch, "cost", "all", "--json")
    total = json.loads(out)["total"]
    assert sum(b["requests"] for b in blocks) == total["requests"] == 40
    nanos = sum(int(b["cost_usd"].replace(".", "")) for b in blocks)
    assert nanos == int(total["cost_usd"].replace(".", ""))


def test_no_requests_says_how_to_start(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run_main(capsys, monkeypatch, "blocks")
    assert code == 0 and "No requests recorded yet" in out
    code, out, _ = run_main(capsys, monkeypatch, "blocks", "--json")
    assert json.loads(out) == {"token_limit": None, "blocks": []}


START = datetime(2026, 3, 1, tzinfo=UTC)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    minutes=st.lists(st.integers(min_value=0, max_value=60 * 80), max_size=40),
    pending=st.sets(st.integers(min_value=0, max_value=39), max_size=3),
    now_minutes=st.integers(min_value=0, max_value=60 * 90),
)
def test_the_active_window_from_the_last_day_is_the_one_every_hour_gives(
    tmp_path_factory: pytest.TempPathFactory, minutes: list[int], pending: set[int], now_minutes: int
) -> None:
    """The status line's short read (`active_block`) against `load_blocks` over every hour: the same window, the
    same sums, whether the last day holds a 5-hour gap (the chain restarts) or not (every hour is read)."""
    path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    db = open_ledger(path)
    rows = [
        _row(
            START + timedelta(minutes=m),
            nanos=1_000_000 + index,
            status=RequestStatus.PENDING if index in pending else RequestStatus.OK,
        )
        for index, m in enumerate(minutes)
    ]
    insert_records(db, rows)
    now = START + timedelta(minutes=now_minutes, seconds=30)
    expected = [block for block in load_blocks(db) if block.active(now)]
    found = active_block(db, now)
    db.close()
    if not expected:
        assert found is None
        return
    assert found is not None
    assert (found.start, found.totals, found.first, found.last) == (
        expected[0].start,
        expected[0].totals,
        expected[0].first,
        expected[0].last,
    )
