"""`cost --what-if`: a fixture month re-priced by hand (groq's cache reads cost as much as its input, sonnet's
long-context tier, a target with no price), in JSON, the table and CSV."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from cli_runner import run_main

from ccgate.core.pricing import PriceCatalog, family_model
from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.local.paths import resolve_paths
from ccgate.storage.ledger import insert_records, open_ledger
from ccgate.storage.what_if import parse_scenario

MONTH = ("--since", "2025-03-01", "--until", "2025-03-31")
GROQ = "haiku=groq/llama-3.3-70b-versatile"
SONNET = "opus=anthropic/claude-sonnet-4-5"
NO_PRICE = "sonnet=ollama/qwen3-coder"


def _row(day: int, model: str, nanos: int | None, tier: str | None, **usage: Any) -> RequestRecord:
    cost = Cost(nanos=nanos, quality=PriceQuality.PRICED) if nanos is not None else Cost(None, PriceQuality.UNPRICED)
    return RequestRecord(
        started_at=datetime(2025, 3, day, 12, tzinfo=UTC),
        requested_model=model,
        tier=tier,
        status=RequestStatus.OK,
        usage=Usage(**usage),
        cost=cost,
    )


@pytest.fixture(autouse=True)
def march(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    db = open_ledger(resolve_paths().ensure().ledger_file)
    insert_records(
        db,
        [
            _row(
                3,
                "claude-haiku-4-5",
                5_000_000,
                "haiku",
                input_tokens=1000,
                output_tokens=200,
                cache_read_tokens=3000,
                cache_write_5m_tokens=400,
                cache_write_1h_tokens=100,
            ),
            _row(4, "claude-haiku-4-5", 3_000_000, None, input_tokens=2000, output_tokens=100),  # tier from name
            _row(
                5,
                "claude-opus-4-1",
                20_000_000,
                "opus",
                input_tokens=100,
                output_tokens=50,
                cache_read_tokens=10_000,
                cache_write_1h_tokens=1000,
            ),
            # 210,000 prompt tokens: above claude-sonnet-4-5's 200k threshold, so every token at the higher rates
            _row(
                6,
                "claude-opus-4-1",
                100_000_000,
                "opus",
                input_tokens=150_000,
                output_tokens=1000,
                cache_read_tokens=60_000,
            ),
            _row(7, "claude-sonnet-4-5", 1_000_000, "sonnet", input_tokens=10, output_tokens=10),
            _row(8, "claude-sonnet-4-5", None, "sonnet", input_tokens=10, output_tokens=10),
        ],
    )
    db.close()


# By hand, USD per MTok.
# groq llama-3.3-70b-versatile: input, cache read and cache writes 0.59, output 0.79
#   row 3: (1000 + 3000 + 400 + 100) * 0.59 + 200 * 0.79 = 2655 + 158 = 2813 -> $0.002813
#   row 4: 2000 * 0.59 + 100 * 0.79 = 1180 + 79 = 1259 -> $0.001259           haiku: $0.004072
# claude-sonnet-4-5: 3 / 15 / read 0.3 / 5m 3.75 / 1h 6; above 200k: 6 / 22.5 / read 0.6
#   row 5: 100*3 + 50*15 + 10000*0.3 + 1000*6 = 300 + 750 + 3000 + 6000 = 10050 -> $0.010050
#   row 6: 150000*6 + 1000*22.5 + 60000*0.6 = 900000 + 22500 + 36000 = 958500 -> $0.958500   opus: $0.968550
HAIKU_WHAT_IF = "0.004072000"
OPUS_WHAT_IF = "0.968550000"


def _json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, Any]:
    code, out, err = run_main(capsys, monkeypatch, "cost", *MONTH, "--json", *args)
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def test_two_overrides_and_a_target_without_a_price_by_hand(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _json(capsys, monkeypatch, "--what-if", GROQ, "--what-if", SONNET, "--what-if", NO_PRICE)
    groups = {g["key"]: (g["cost_usd"], g["what_if_cost_usd"], g["what_if_unpriced_requests"]) for g in data["groups"]}
    assert groups == {
        "claude-opus-4-1": ("0.120000000", OPUS_WHAT_IF, 0),
        "claude-haiku-4-5": ("0.008000000", HAIKU_WHAT_IF, 0),
        # no price for the target: both sonnet rows are unpriced in the what-if, never $0 for them
        "claude-sonnet-4-5": ("0.001000000", "0.000000000", 2),
    }
    total = data["total"]
    assert (total["cost_usd"], total["unpriced_requests"]) == ("0.129000000", 1)
    assert (total["what_if_cost_usd"], total["what_if_unpriced_requests"]) == ("0.972622000", 2)
    scenarios = {s["tier"]: (s["target"], s["priced"], s["requests"]) for s in data["what_if"]["scenarios"]}
    assert scenarios == {
        "haiku": ("groq/llama-3.3-70b-versatile", True, 2),
        "opus": ("anthropic/claude-sonnet-4-5", True, 2),
        "sonnet": ("ollama/qwen3-coder", False, 2),
    }
    assert "same tokens" in data["what_if"]["note"]


def test_untouched_tiers_keep_their_recorded_cost_and_unpriced_rows(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _json(capsys, monkeypatch, "--what-if", GROQ)
    assert data["total"]["what_if_cost_usd"] == "0.125072000"  # 0.129 - 0.008 + 0.004072
    assert data["total"]["what_if_unpriced_requests"] == 1
    plain = _json(capsys, monkeypatch)
    assert all(not key.startswith("what_if") for key in plain["total"]) and "what_if" not in plain


def test_what_if_by_day_and_by_project_add_up_to_the_total(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for by in ("day", "project", "tag:ticket"):
        data = _json(capsys, monkeypatch, "--by", by, "--what-if", GROQ, "--what-if", SONNET)
        assert data["total"]["what_if_cost_usd"] == "0.973622000"  # sonnet untouched: + its recorded $0.001
        assert sum(Decimal(g["what_if_cost_usd"]) for g in data["groups"]) == Decimal("0.973622000")
    days = {
        g["key"]: g["what_if_cost_usd"] for g in _json(capsys, monkeypatch, "--by", "day", "--what-if", GROQ)["groups"]
    }
    assert days["2025-03-03"] == "0.002813000" and days["2025-03-04"] == "0.001259000"
    assert days["2025-03-05"] == "0.020000000"  # opus untouched


def test_the_table_says_what_it_re_priced_and_names_the_target_without_a_price(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_main(capsys, monkeypatch, "cost", *MONTH, "--what-if", GROQ, "--what-if", NO_PRICE)
    assert code == 0, err
    text = " ".join(out.split())
    assert "What-if" in out and "haiku → groq/llama-3.3-70b-versatile (2 requests)" in text
    assert "re-prices the same tokens" in text and "another model would have produced different replies" in text
    assert "† ollama/qwen3-coder has no known price: 2 sonnet request(s) left unpriced" in text
    assert "-<$0.01 (-49.1%)" in text  # haiku: 0.004072 vs 0.008
    sonnet = next(line for line in out.splitlines() if "claude-sonnet-4-5" in line)
    assert sonnet.split()[-2:] == ["unpriced", "–"]  # the what-if column: no price, not $0, and no difference
    code, out, _ = run_main(capsys, monkeypatch, "cost", *MONTH, "--csv", "--what-if", GROQ)
    rows = {row["key"]: row for row in csv.DictReader(io.StringIO(out))}
    assert rows["claude-haiku-4-5"]["what_if_cost_usd"] == HAIKU_WHAT_IF
    assert rows["(total)"]["what_if_cost_usd"] == "0.125072000"


@pytest.mark.parametrize("text", ["haiku", "=groq/x", "haiku=", "Haiku Tier=groq/x", "haiku=/x", "haiku=groq/"])
def test_malformed_what_if_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    code, _, err = run_main(capsys, monkeypatch, "cost", "--what-if", text)
    assert code == 1 and "TIER=PROVIDER/MODEL" in err


def test_a_tier_given_twice_is_refused(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run_main(
        capsys, monkeypatch, "cost", "--what-if", GROQ, "--what-if", "haiku=anthropic/claude-opus-4-1"
    )
    assert code == 1 and "names a tier twice" in err


def test_a_bare_tier_word_is_the_newest_claude_model_of_that_family_and_short_names_resolve() -> None:
    catalog = PriceCatalog()
    scenario = parse_scenario("opus=sonnet", catalog)
    assert (scenario.provider, scenario.model) == ("anthropic", family_model("sonnet")) and scenario.rates
    said: list[str] = []
    groq = parse_scenario("haiku=groq/llama-3.3-70b", catalog, info=said.append)
    assert groq.model == "llama-3.3-70b-versatile" and said and groq.rates is not None


def test_what_if_with_last_covers_only_the_groups_shown(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _json(capsys, monkeypatch, "--by", "day", "--last", "2", "--what-if", GROQ)
    assert [group["key"] for group in data["groups"]] == ["2025-03-07", "2025-03-08"]  # sonnet only: untouched
    assert data["total"]["what_if_cost_usd"] == data["total"]["cost_usd"] == "0.001000000"
    assert data["total"]["what_if_unpriced_requests"] == 1


ALL_THREE = ("--what-if", GROQ, "--what-if", SONNET, "--what-if", NO_PRICE)


def test_a_second_run_answers_from_the_price_cache_without_importing_genai_prices(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _json(capsys, monkeypatch, *ALL_THREE)
    script = (
        "import sys\n"
        f"sys.argv = ['ccgate', 'cost', *{MONTH!r}, '--json', *{ALL_THREE!r}]\n"
        "from ccgate.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(repr(sorted(m for m in sys.modules if m.startswith('genai_prices'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == first  # the unpriced target stays unpriced: never $0 from the cache
    assert done.stderr.endswith("[]")


def test_a_price_set_after_a_cached_run_is_what_the_next_run_uses(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _json(capsys, monkeypatch, "--what-if", GROQ)["groups"][1]["what_if_cost_usd"] == HAIKU_WHAT_IF
    config = resolve_paths().config_file
    config.write_text('[prices."llama-3.3-70b-versatile"]\ninput = "1"\noutput = "1"\n', encoding="utf-8")
    # every token at $1/MTok now (cache rates follow the override's input rate): 4500 + 200 + 2000 + 100
    haiku = _json(capsys, monkeypatch, "--what-if", GROQ)["groups"][1]
    assert (haiku["key"], haiku["what_if_cost_usd"]) == ("claude-haiku-4-5", "0.006800000")


def test_a_damaged_price_cache_is_ignored(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    first = _json(capsys, monkeypatch, *ALL_THREE)
    cache = resolve_paths().state_dir / "price-cache.json"
    entries = json.loads(cache.read_text())
    assert len(entries) == 3
    for number, entry in enumerate(entries.values()):  # each damaged its own way
        if number == 0:
            entry["rates"] = {"input": "NaN"}
        elif number == 1:
            entry["rates"]["output"] = "NaN" if entry["rates"] else "1"
        else:
            entry["rates"] = {**(entry["rates"] or {}), "tier_threshold": "200000"}
    cache.write_text(json.dumps(entries))
    assert _json(capsys, monkeypatch, *ALL_THREE) == first
    cache.write_text("{not json")
    assert _json(capsys, monkeypatch, *ALL_THREE) == first
    assert len(json.loads(cache.read_text())) == 3  # rewritten


def test_the_what_if_sums_and_the_estimate_footnote_read_covering_indexes_not_rows() -> None:
    """On a million-row ledger reading whole rows (~600 bytes) made `--what-if` and the `~` footnote slow (m011)."""
    from ccgate.storage.reports import cost_report, estimate_reasons
    from ccgate.storage.what_if import what_if

    db = open_ledger(resolve_paths().ledger_file)
    since, until = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    for by in ("model", "day,model", "provider"):
        report = cost_report(db, since=since, until=until, by=by, tz=UTC)
        what_if(db, report, [parse_scenario(GROQ, PriceCatalog()), parse_scenario(SONNET, PriceCatalog())], tz=UTC)
    estimate_reasons(db, since=since, until=until)
    db.conn.set_trace_callback(None)
    plans = {
        sql: str(db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall())
        for sql in statements
        if "sum(web_searches)" in sql or "cost_note LIKE" in sql
    }
    assert len(plans) == 4
    for sql, plan in plans.items():
        index = "requests_estimated" if "cost_note LIKE" in sql else "COVERING INDEX requests_usage"
        assert index in plan, (sql, plan)
    db.close()


def test_a_price_cache_others_can_write_is_not_believed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _json(capsys, monkeypatch, "--what-if", GROQ)
    cache = resolve_paths().state_dir / "price-cache.json"
    entries = json.loads(cache.read_text())
    for entry in entries.values():  # a well-formed entry making every token free
        entry["rates"].update({name: "0" for name, value in entry["rates"].items() if value == "0.59"})
        entry["rates"].update({"output": "0", "max_output": "0"})
    cache.write_text(json.dumps(entries))
    cache.chmod(0o666)
    assert _json(capsys, monkeypatch, "--what-if", GROQ) == first
