"""`ccgate cost`, run the way a user runs it: against the ledger file, with or without a sidecar."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_runner import run_main, table_column
from typer.testing import CliRunner, Result

from ccgate.cli import app
from ccgate.cli._app import reset_context
from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage, utcnow
from ccgate.local.paths import resolve_paths
from ccgate.storage.ledger import insert_records, open_ledger

CCGATE = Path(sys.executable).parent / "ccgate"
DAY = "2025-03-04"


def seed(*records: RequestRecord) -> None:
    db = open_ledger(resolve_paths().ensure().ledger_file)
    insert_records(db, records)
    db.close()


def at(
    text: str, model: str, nanos: int | None, quality: PriceQuality = PriceQuality.PRICED, **fields: object
) -> RequestRecord:
    cost = Cost(nanos=None, quality=PriceQuality.UNPRICED) if nanos is None else Cost(nanos=nanos, quality=quality)
    record = RequestRecord(
        started_at=datetime.fromisoformat(text).replace(tzinfo=UTC),
        requested_model=model,
        routed_model=model,
        cost=cost,
        status=RequestStatus.OK,
        usage=Usage(input_tokens=1000, output_tokens=200, cache_read_tokens=3000),
    )
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def invoke(*args: str) -> Result:
    reset_context()
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    reset_context()
    return result


def set_local_zone(name: str | None) -> None:
    if name is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = name
    time.tzset()


@pytest.fixture(autouse=True)
def utc_local_time() -> Iterator[None]:
    """Local time is UTC unless a test changes it; the zone is restored afterwards."""
    original = os.environ.get("TZ")
    set_local_zone("UTC")
    yield
    set_local_zone(original)


def test_empty_ledger_says_how_to_start() -> None:
    result = invoke("cost")
    assert result.exit_code == 0, result.output
    assert "No requests recorded today. Run `ccgate launch claude` to start metering." in result.output


def test_empty_ledger_json_has_zero_totals() -> None:
    result = invoke("cost", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["by"] == "model" and data["groups"] == []
    assert data["total"]["requests"] == 0 and data["total"]["cost_usd"] == "0.000000000"


def test_table_shows_tokens_cache_hits_cost_and_the_unpriced_hint() -> None:
    seed(
        at(f"{DAY}T09:00:00", "claude-sonnet-4-5", 1_230_000_000),
        at(f"{DAY}T09:05:00", "claude-haiku-4-5", 10_000_000, PriceQuality.ESTIMATED),
        at(f"{DAY}T09:10:00", "qwen3-coder", None),
        at("2025-03-05T00:00:00", "claude-opus-4-1", 99_000_000_000),  # outside the range
    )
    result = invoke("cost", "--since", DAY, "--until", DAY)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "claude-sonnet-4-5" in out and "claude-opus-4-1" not in out
    assert "$1.23" in out
    assert "~$0.01" in out  # estimated is marked
    assert "unpriced" in out and "$0.00" not in out  # never shown as free
    assert "1 request has no known price (qwen3-coder)" in out
    assert "ccgate price set MODEL --input X --output Y" in out and "[prices.MODEL]" in out
    assert "3.0k" in out and "9.0k" in out  # input and cache-read columns (1000 and 3 x 3000)
    assert "75%" in out  # cache hit: 3000 / (1000 + 3000 + 0)
    assert "Total" in out and "~$1.24*" in out


def test_json_groups_by_model_and_by_local_day() -> None:
    seed(
        at(f"{DAY}T09:00:00", "claude-sonnet-4-5", 2_000),
        at(f"{DAY}T23:30:00", "claude-sonnet-4-5", 3_000),
        at(f"{DAY}T10:00:00", "claude-haiku-4-5", 500),
    )
    by_model = json.loads(invoke("cost", "--since", DAY, "--until", DAY, "--by", "model", "--json").output)
    assert [(g["key"], g["requests"], g["cost_usd"]) for g in by_model["groups"]] == [
        ("claude-sonnet-4-5", 2, "0.000005000"),
        ("claude-haiku-4-5", 1, "0.000000500"),
    ]
    assert by_model["since"] == "2025-03-04T00:00:00+00:00" and by_model["until"] == "2025-03-05T00:00:00+00:00"
    # In Berlin (UTC+1) the 23:30 UTC request belongs to the next day.
    set_local_zone("Europe/Berlin")
    by_day = json.loads(invoke("cost", "all", "--by", "day", "--json").output)
    assert [(g["key"], g["requests"]) for g in by_day["groups"]] == [("2025-03-04", 2), ("2025-03-05", 1)]


def test_json_and_csv_break_down_by_model_by_default_as_the_table_does() -> None:
    seed(at(f"{DAY}T09:00:00", "claude-sonnet-4-5", 2_000), at(f"{DAY}T10:00:00", "claude-haiku-4-5", 500))
    data = json.loads(invoke("cost", "all", "--json").output)
    assert data["by"] == "model"
    assert [(g["key"], g["requests"]) for g in data["groups"]] == [("claude-sonnet-4-5", 1), ("claude-haiku-4-5", 1)]
    rows = list(csv.DictReader(io.StringIO(invoke("cost", "all", "--csv").output)))
    assert [row["key"] for row in rows] == ["claude-sonnet-4-5", "claude-haiku-4-5", "(total)"]
    table = invoke("cost", "all").output
    assert "claude-sonnet-4-5" in table and "claude-haiku-4-5" in table
    by_day = json.loads(invoke("cost", "all", "--by", "day", "--json").output)  # --by still overrides it
    assert by_day["by"] == "day" and [g["key"] for g in by_day["groups"]] == [DAY]


def test_csv_has_a_row_per_group_and_a_total() -> None:
    seed(at(f"{DAY}T09:00:00", "a", 1_000_000), at(f"{DAY}T09:01:00", "b", None))
    result = invoke("cost", "all", "--by", "model", "--csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [row["key"] for row in rows] == ["a", "b", "(total)"]
    assert rows[0]["cost_usd"] == "0.001000000" and rows[1]["unpriced_requests"] == "1"
    assert rows[2]["requests"] == "2" and rows[2]["input_tokens"] == "2000"


def test_csv_text_cells_never_start_a_formula_and_numbers_stay_numbers() -> None:
    sessions = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "plain-id"]
    seed(*(at(f"{DAY}T09:0{i}:00", "claude-sonnet-4-5", 1_000_000, session_id=s) for i, s in enumerate(sessions)))
    result = invoke("cost", "all", "--by", "session", "--csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output, newline="")))
    assert sorted(row["key"] for row in rows[:-1]) == sorted(
        ['\'=HYPERLINK("http://x")', "'+1+1", "'-2+3", "'@SUM(A1)", "'\tx", "'\rx", "plain-id"]
    )
    total = rows[-1]
    assert total["key"] == "(total)" and total["cost_usd"] == "0.007000000" and total["input_tokens"] == "7000"


def test_csv_appends_imported_requests_and_cache_hit_ratio() -> None:
    seed(at(f"{DAY}T09:00:00", "a", 1_000_000), at(f"{DAY}T09:01:00", "a", 1_000_000, source="claude-code-import"))
    result = invoke("cost", "all", "--csv")
    header = result.output.splitlines()[0].split(",")
    assert header == [
        "key",
        "requests",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost_usd",
        "unpriced_requests",
        "estimated_requests",
        "imported_requests",
        "cache_hit_ratio",
    ]
    total = list(csv.DictReader(io.StringIO(result.output)))[-1]
    assert total["imported_requests"] == "1" and total["cache_hit_ratio"] == "0.75"


def test_today_counts_a_request_just_made() -> None:
    seed(at(utcnow().replace(tzinfo=None).isoformat(), "claude-sonnet-4-5", 7_000_000_000))
    result = invoke("cost", "today", "--json")
    assert json.loads(result.output)["total"]["cost_usd"] == "7.000000000"
    week = json.loads(invoke("cost", "week", "--json").output)
    since = datetime.fromisoformat(week["since"])
    assert since.weekday() == 0 and datetime.fromisoformat(week["until"]) - since == timedelta(days=7)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("cost", "--by", "colour"), "cannot group by 'colour'"),
        (("cost", "--since", "yesterdayish"), "cannot read 'yesterdayish'"),
        (("cost", "fortnight"), "unknown period 'fortnight'"),
        (("cost", "--since", "2025-03-05", "--until", "2025-03-01"), "the range is empty"),
        (("cost", "--until", "9999-12-31"), "'9999-12-31' is out of range"),
        (("cost", "--since", "0001-01-01T00:00+05:00"), "'0001-01-01T00:00+05:00' is out of range"),
        (("cost", "--json", "--csv"), "--json and --csv cannot be combined"),
    ],
)
def test_bad_input_is_one_line_and_a_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], message: str
) -> None:
    code, out, err = run_main(capsys, monkeypatch, *args)
    assert code == 1 and out == ""
    assert err.startswith(f"ccgate: error: {message}")
    assert "hint:" in err and "Traceback" not in err


def test_subprocess_cost_json(isolated_home: Path) -> None:
    seed(
        at(f"{DAY}T09:00:00", "claude-sonnet-4-5", 12_345_000, project="/p/app"),
        at(f"{DAY}T09:30:00", "claude-sonnet-4-5", None, project=None),
    )
    env = {**os.environ, "CCGATE_HOME": str(isolated_home), "TZ": "UTC"}
    done = subprocess.run(
        [str(CCGATE), "cost", "all", "--by", "project", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data) >= {"since", "until", "by", "total", "groups"}
    assert data["total"]["cost_usd"] == "0.012345000" and data["total"]["unpriced_requests"] == 1
    assert [(g["key"], g["requests"]) for g in data["groups"]] == [("/p/app", 1), ("(none)", 1)]
    bad = subprocess.run([str(CCGATE), "cost", "--by", "x"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "hint:" in bad.stderr


def test_empty_range_names_what_the_user_typed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_main(capsys, monkeypatch, "cost", "--since", "2025-03-02", "--until", "2025-03-01")
    assert code == 1
    expected = "ccgate: error: the range is empty: --since 2025-03-02 is not before --until 2025-03-01"
    assert err.splitlines()[0] == expected


def test_posix_tz_string_gives_cost_and_budgets_the_same_local_day(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    (isolated_home / "config.toml").write_text('[[budgets]]\nperiod = "daily"\nlimit = "20"\n')
    # POSIX: five hours east of UTC, no IANA name; set here only, so the fixture's restore is the last word (a
    # monkeypatch.setenv as well would be undone after it, leaving TZ=XYZ-5 for later test files)
    set_local_zone("XYZ-5")
    code, out, err = run_main(capsys, monkeypatch, "cost", "today", "--json")
    assert code == 0, err
    cost_since = datetime.fromisoformat(json.loads(out)["since"])
    assert cost_since.utcoffset() == timedelta(hours=5) and (cost_since.hour, cost_since.minute) == (0, 0)
    code, out, err = run_main(capsys, monkeypatch, "budget", "show", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["timezone"] != "Etc/UTC"
    assert datetime.fromisoformat(shown["budgets"][0]["since"]) == cost_since


def test_table_keeps_model_ids_and_money_whole_in_80_columns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = Usage(
        input_tokens=123_456_789, output_tokens=9_876_543, cache_read_tokens=1_234_567_890, cache_write_5m_tokens=12_345
    )
    seed(
        at(f"{DAY}T09:00:00", "claude-sonnet-4-5-20250929", 12_340_000_000, usage=busy),
        at(f"{DAY}T09:01:00", "openrouter/meta-llama/llama-3.3-70b-instruct", 3_460_000_000, usage=busy),
    )
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_main(capsys, monkeypatch, "cost", "all")
    assert code == 0, err
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert "claude-sonnet-4-5-20250929" in out  # a common model id fits on one line
    assert "openrouter/meta-llama/llama-3.3-70b-instruct" in table_column(out, "Model", "Reqs")  # a longer one folds
    assert "$12.34" in out and "$3.46" in out and "$15.80" in out

    seed(at(f"{DAY}T09:02:00", "claude-sonnet-4-5-20250929", 1_234_567_890_000_000))
    code, out, err = run_main(capsys, monkeypatch, "cost", "all")
    assert code == 0, err
    assert "…" not in out and "$1,234,580.23" in out and "$1,234,583.69" in out


def estimated(minute: int, note: str | None, status: RequestStatus = RequestStatus.OK) -> RequestRecord:
    record = at(f"{DAY}T09:{minute:02d}:00", "some-model", 1_000_000, PriceQuality.ESTIMATED, status=status)
    record.cost = Cost(nanos=1_000_000, quality=PriceQuality.ESTIMATED, note=note)
    return record


def pricing_note(model: str, usage: Usage) -> str | None:
    """The note pricing itself writes, so that the footnote follows its wording."""
    from ccgate.core.pricing import PriceCatalog

    cost = PriceCatalog().cost(model, usage)
    assert cost.quality is PriceQuality.ESTIMATED
    return cost.note


def test_the_estimate_footnote_says_why_with_a_count_per_reason(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccgate.core.usage import MAX_TOKENS

    # the proxy's note for usage it had to estimate (a cut stream, or a provider that reported none)
    tokens_estimated = "tokens estimated: the provider reported none"
    seed(
        estimated(1, pricing_note("claude-sonnet-9-9", Usage(input_tokens=10))),
        estimated(2, pricing_note("claude-opus-9-9", Usage(input_tokens=10))),
        estimated(3, tokens_estimated, RequestStatus.INTERRUPTED),
        estimated(4, tokens_estimated),
        estimated(5, pricing_note("claude-opus-4-1", Usage(input_tokens=10, speed="fast"))),
        estimated(6, pricing_note("claude-sonnet-4-5", Usage(input_tokens=MAX_TOKENS))),
        estimated(7, None),
        at(f"{DAY}T09:08:00", "claude-sonnet-4-5", 2_000_000),  # priced: not in the footnote
    )
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_main(capsys, monkeypatch, "cost", "all")
    assert code == 0, err
    footnote = out[out.index("~ 7 requests are estimated:") :].splitlines()
    assert footnote[1:7] == [
        "    2 priced from a same-family model: the model is not in the price catalog",
        "    1 cut mid-stream: the output tokens are estimated from what had arrived",
        "    1 the provider reported no usage: tokens estimated from the request and reply sizes",
        "    1 fast mode with no fast-mode price: standard rates used, may be too low",
        "    1 absurd usage reported: tokens clamped or cost capped",
        "    1 estimated for another reason (see cost_note in `ccgate logs --json`)",
    ]


def test_a_single_estimate_reason_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(estimated(1, "tokens estimated: the provider reported none", RequestStatus.INTERRUPTED))
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_main(capsys, monkeypatch, "cost", "all")
    assert code == 0, err
    assert "~ 1 request is estimated: cut mid-stream: the output tokens are estimated from what had arrived" in out
    assert "same-family" not in out
