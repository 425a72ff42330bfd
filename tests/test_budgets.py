"""Budget arithmetic: period syntax, calendar windows across timezones and DST, and the admission rule."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccgate.core.budgets import (
    Admit,
    BudgetLevel,
    BudgetRule,
    BudgetState,
    Period,
    PeriodUnit,
    Reject,
    Wait,
    bucket_size,
    decide,
    format_budget_message,
    local_to_utc,
    parse_period,
    rolling_buckets,
    warn_level,
    window,
)
from ccgate.core.records import usd_to_nanos
from ccgate.errors import BudgetExceededError, UserInputError
from ccgate.wire.envelope import envelope

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
HAVANA = ZoneInfo("America/Havana")  # DST starts at midnight: 00:00 does not exist on its spring day
KOLKATA = ZoneInfo("Asia/Kolkata")  # +05:30
ZONES = [UTC, BERLIN, NEW_YORK, HAVANA, KOLKATA, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("Pacific/Apia")]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- periods ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "unit"),
    [
        ("1min", 1, PeriodUnit.MINUTE),
        ("5min", 5, PeriodUnit.MINUTE),
        ("1h", 1, PeriodUnit.HOUR),
        ("1d", 1, PeriodUnit.DAY),
        ("1w", 1, PeriodUnit.WEEK),
        ("1mo", 1, PeriodUnit.MONTH),
        ("3mo", 3, PeriodUnit.MONTH),
        ("1y", 1, PeriodUnit.YEAR),
        ("daily", 1, PeriodUnit.DAY),
        ("weekly", 1, PeriodUnit.WEEK),
        ("monthly", 1, PeriodUnit.MONTH),
        ("yearly", 1, PeriodUnit.YEAR),
        (" Daily ", 1, PeriodUnit.DAY),
        ("12 H", 12, PeriodUnit.HOUR),
    ],
)
def test_parse_period_accepts_the_documented_forms(text: str, count: int, unit: PeriodUnit) -> None:
    assert parse_period(text) == Period(count, unit)


@pytest.mark.parametrize("text", ["", "day", "1", "d", "0d", "1m", "1 month", "-1d", "1.5h", "1dd", "121mo", "11y"])
def test_parse_period_rejects_anything_else_and_lists_valid_forms(text: str) -> None:
    with pytest.raises(UserInputError) as caught:
        parse_period(text)
    assert caught.value.hint is not None
    assert "1min" in caught.value.hint or "min" in caught.value.hint
    assert "daily" in caught.value.hint


def test_period_names_round_trip() -> None:
    assert parse_period("1d").name == "daily"
    assert parse_period("1mo").name == "monthly"
    assert parse_period("15min").name == "15min"
    for text in ("15min", "2h", "1d", "2w", "1mo", "6mo", "1y", "2y"):
        period = parse_period(text)
        assert parse_period(period.name) == period
        assert parse_period(period.text) == period


# --- calendar windows ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "tz", "start", "end"),
    [
        # Europe/Berlin, last Sunday of March 2026: 02:00 CET -> 03:00 CEST, the day has 23 hours.
        ("1d", utc(2026, 3, 29, 12), BERLIN, utc(2026, 3, 28, 23), utc(2026, 3, 29, 22)),
        # last Sunday of October: 03:00 CEST -> 02:00 CET, 25 hours.
        ("1d", utc(2026, 10, 25, 12), BERLIN, utc(2026, 10, 24, 22), utc(2026, 10, 25, 23)),
        # America/New_York, second Sunday of March 2026.
        ("1d", utc(2026, 3, 8, 20), NEW_YORK, utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)),
        ("1d", utc(2026, 3, 8, 3), NEW_YORK, utc(2026, 3, 7, 5), utc(2026, 3, 8, 5)),
        # Havana skips 00:00-01:00 on 2026-03-08: that day starts at 01:00 local = 05:00 UTC.
        ("1d", utc(2026, 3, 8, 12), HAVANA, utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)),
        ("1d", utc(2026, 3, 8, 4, 59), HAVANA, utc(2026, 3, 7, 5), utc(2026, 3, 8, 5)),
        # a day starts exactly at local midnight
        ("1d", utc(2026, 11, 25, 23), BERLIN, utc(2026, 11, 25, 23), utc(2026, 11, 26, 23)),
        ("1d", utc(2026, 11, 25, 22, 59, 59), BERLIN, utc(2026, 11, 24, 23), utc(2026, 11, 25, 23)),
        # weeks start on Monday (2026-11-26 is a Thursday), also across the autumn change
        ("1w", utc(2026, 11, 26, 12), BERLIN, utc(2026, 11, 22, 23), utc(2026, 11, 29, 23)),
        ("weekly", utc(2026, 10, 25, 12), BERLIN, utc(2026, 10, 18, 22), utc(2026, 10, 25, 23)),
        ("1w", utc(2026, 3, 9, 3), NEW_YORK, utc(2026, 3, 2, 5), utc(2026, 3, 9, 4)),
        # months from the 1st, years from January 1st
        ("1mo", utc(2026, 11, 26, 12), BERLIN, utc(2026, 10, 31, 23), utc(2026, 11, 30, 23)),
        ("1mo", utc(2026, 3, 15), BERLIN, utc(2026, 2, 28, 23), utc(2026, 3, 31, 22)),
        ("monthly", utc(2026, 12, 1, 3), NEW_YORK, utc(2026, 11, 1, 4), utc(2026, 12, 1, 5)),
        ("3mo", utc(2026, 5, 20), UTC, utc(2026, 4, 1), utc(2026, 7, 1)),
        ("1y", utc(2026, 6, 1), BERLIN, utc(2025, 12, 31, 23), utc(2026, 12, 31, 23)),
        ("1y", utc(2026, 12, 31, 23, 30), BERLIN, utc(2026, 12, 31, 23), utc(2027, 12, 31, 23)),
        ("2y", utc(2027, 6, 1), UTC, utc(2026, 1, 1), utc(2028, 1, 1)),
        # minutes and hours sit on the clock
        ("1min", utc(2026, 5, 1, 12, 34, 56), BERLIN, utc(2026, 5, 1, 12, 34), utc(2026, 5, 1, 12, 35)),
        ("15min", utc(2026, 5, 1, 12, 34, 56), NEW_YORK, utc(2026, 5, 1, 12, 30), utc(2026, 5, 1, 12, 45)),
        ("1h", utc(2026, 5, 1, 12, 34), BERLIN, utc(2026, 5, 1, 12), utc(2026, 5, 1, 13)),
        ("1h", utc(2026, 5, 1, 12, 34), KOLKATA, utc(2026, 5, 1, 12, 30), utc(2026, 5, 1, 13, 30)),
        ("1h", utc(2026, 5, 1, 12, 14), KOLKATA, utc(2026, 5, 1, 11, 30), utc(2026, 5, 1, 12, 30)),
        # across the spring change in Berlin: 01:30 CET, then 03:30 CEST
        ("1h", utc(2026, 3, 29, 0, 30), BERLIN, utc(2026, 3, 29, 0), utc(2026, 3, 29, 1)),
        ("1h", utc(2026, 3, 29, 1, 30), BERLIN, utc(2026, 3, 29, 1), utc(2026, 3, 29, 2)),
        # multi-hour windows are wall-clock intervals: 18:00-24:00 CEST, the last of a 23-hour day
        ("6h", utc(2026, 3, 29, 20), BERLIN, utc(2026, 3, 29, 16), utc(2026, 3, 29, 22)),
        ("6h", utc(2026, 5, 1, 3), BERLIN, utc(2026, 4, 30, 22), utc(2026, 5, 1, 4)),
        ("6h", utc(2026, 10, 25, 3), BERLIN, utc(2026, 10, 24, 22), utc(2026, 10, 25, 5)),  # 7 hours
        ("90min", utc(2026, 10, 25, 1, 15), BERLIN, utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 2)),
        ("5h", utc(2026, 5, 1, 21, 30), UTC, utc(2026, 5, 1, 20), utc(2026, 5, 2)),  # cut at midnight
    ],
)
def test_calendar_windows(period: str, now: datetime, tz: ZoneInfo, start: datetime, end: datetime) -> None:
    assert window(parse_period(period), now, tz) == (start, end)


def test_windows_accept_any_aware_now_and_return_utc() -> None:
    now = datetime(2026, 11, 26, 9, 0, tzinfo=BERLIN)
    start, end = window(parse_period("1d"), now, BERLIN)
    assert start.tzinfo is UTC and end.tzinfo is UTC
    assert start == utc(2026, 11, 25, 23)
    with pytest.raises(ValueError, match="aware"):
        window(parse_period("1d"), datetime(2026, 1, 1), BERLIN)


def test_local_to_utc_gap_and_fold() -> None:
    # Berlin 02:30 on the spring day does not exist: the first instant after the gap is 03:00 CEST.
    assert local_to_utc(datetime(2026, 3, 29, 2, 30), BERLIN) == utc(2026, 3, 29, 1)
    # 02:30 on the autumn day happens twice: the first one (CEST) counts.
    assert local_to_utc(datetime(2026, 10, 25, 2, 30), BERLIN) == utc(2026, 10, 25, 0, 30)


PERIOD_TEXTS = ["1min", "5min", "7min", "15min", "1h", "90min", "2h", "5h", "6h", "12h", "24h", "36h", "1d", "2d"]
PERIOD_TEXTS += ["1w", "2w", "1mo", "2mo", "3mo", "1y", "2y"]
periods = st.sampled_from(PERIOD_TEXTS).map(parse_period)
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC)
)


@settings(deadline=None, max_examples=400)
@given(period=periods, now=moments, tz=st.sampled_from(ZONES))
def test_windows_hold_now_and_tile_time(period: Period, now: datetime, tz: ZoneInfo) -> None:
    start, end = window(period, now, tz)
    assert start <= now < end
    assert window(period, start, tz) == (start, end)
    after_start, _ = window(period, end, tz)
    assert after_start == end  # the next window begins where this one ends: no gap, no overlap
    assert window(period, start - timedelta(microseconds=1), tz)[1] == start


# Instants around DST changes (and Apia skipping 2011-12-30 entirely), where windows are most likely to break.
TRANSITIONS = [
    (BERLIN, utc(2026, 3, 29, 1)),
    (BERLIN, utc(2026, 10, 25, 1)),
    (NEW_YORK, utc(2026, 3, 8, 7)),
    (NEW_YORK, utc(2026, 11, 1, 6)),
    (HAVANA, utc(2026, 3, 8, 5)),
    (HAVANA, utc(2026, 11, 1, 5)),
    (ZoneInfo("Australia/Lord_Howe"), utc(2026, 4, 4, 15)),
    (ZoneInfo("Pacific/Apia"), utc(2011, 12, 30, 10)),
]


@settings(deadline=None, max_examples=500)
@given(period=periods, around=st.sampled_from(TRANSITIONS), seconds=st.integers(-2 * 86400, 2 * 86400))
def test_windows_tile_time_around_dst_changes(period: Period, around: tuple[ZoneInfo, datetime], seconds: int) -> None:
    tz, moment = around
    now = moment + timedelta(seconds=seconds)
    start, end = window(period, now, tz)
    assert start <= now < end
    assert window(period, start, tz) == (start, end)
    assert window(period, end, tz)[0] == end
    assert window(period, start - timedelta(microseconds=1), tz)[1] == start
    if period.unit in (PeriodUnit.MINUTE, PeriodUnit.HOUR) and period.approx_duration() <= timedelta(hours=1):
        assert end - start <= period.approx_duration()


@settings(deadline=None, max_examples=300)
@given(period=periods, now=moments, tz=st.sampled_from(ZONES))
def test_calendar_windows_start_at_local_day_boundaries(period: Period, now: datetime, tz: ZoneInfo) -> None:
    if period.unit in (PeriodUnit.MINUTE, PeriodUnit.HOUR):
        return
    start, _ = window(period, now, tz)
    local_start = start.astimezone(tz)
    previous_local_day = (start - timedelta(microseconds=1)).astimezone(tz).date()
    assert previous_local_day < local_start.date()  # the window starts with a new local day
    if period.unit is PeriodUnit.WEEK:
        assert local_start.weekday() == 0
    if period.unit is PeriodUnit.MONTH:
        assert local_start.day == 1
        assert (local_start.month - 1) % period.count == 0
    if period.unit is PeriodUnit.YEAR:
        assert (local_start.month, local_start.day) == (1, 1)


def test_rolling_windows_and_buckets() -> None:
    now = utc(2026, 5, 1, 12, 34, 56)
    assert window(parse_period("1h"), now, BERLIN, calendar=False) == (now - timedelta(hours=1), now)
    assert window(parse_period("1mo"), now, BERLIN, calendar=False)[0] == now - timedelta(days=30)
    assert bucket_size(parse_period("1min")) == timedelta(seconds=1)
    assert bucket_size(parse_period("1h")) == timedelta(minutes=1)
    assert bucket_size(parse_period("1d")) == timedelta(minutes=30)
    buckets = rolling_buckets(parse_period("1h"), now)
    assert buckets[0] == utc(2026, 5, 1, 11, 34)
    assert buckets[-1] == utc(2026, 5, 1, 12, 34)
    assert len(buckets) == 61
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(buckets))


# --- admission -------------------------------------------------------------------------------------------

RESET = utc(2026, 11, 25, 23)


def state(key: str = "1d@*", *, limit: int = 100, spent: int = 0, reserved: int = 0) -> BudgetState:
    return BudgetState(
        key=key, label="daily budget", limit_nanos=limit, spent_nanos=spent, reserved_nanos=reserved, resets_at=RESET
    )


def test_decide_cases() -> None:
    assert decide([], 10) == Admit()
    assert decide([state(spent=50, reserved=30)], 20) == Admit()  # exactly fits
    assert decide([state(spent=50, reserved=30)], 21) == Wait(state(spent=50, reserved=30))
    assert decide([state(spent=50)], 500) == Admit()  # alone: may overshoot by itself
    assert decide([state(spent=100)], 0) == Reject(state(spent=100))
    assert decide([state(spent=130, reserved=10)], 1) == Reject(state(spent=130, reserved=10))
    assert decide([state(limit=0)], 0) == Reject(state(limit=0))
    # several budgets: any rejection wins, then any wait; the blocking budget is the first by key
    roomy, spent_up, busy = state("a", limit=1000), state("b", spent=100), state("c", spent=10, reserved=80)
    assert decide([busy, roomy, spent_up], 20) == Reject(spent_up)
    assert decide([busy, roomy], 20) == Wait(busy)
    assert decide([state("z", spent=10, reserved=80), busy], 20) == Wait(busy)
    with pytest.raises(ValueError, match="negative"):
        decide([state()], -1)


@settings(deadline=None, max_examples=300)
@given(
    limit=st.integers(0, 10_000),
    spent=st.integers(0, 12_000),
    reserved=st.integers(0, 10_000),
    reserve=st.integers(0, 10_000),
)
def test_decide_matches_the_documented_rule(limit: int, spent: int, reserved: int, reserve: int) -> None:
    decision = decide([state(limit=limit, spent=spent, reserved=reserved)], reserve)
    if spent >= limit:
        assert isinstance(decision, Reject)
    elif spent + reserved + reserve <= limit or reserved == 0:
        assert decision == Admit()
    else:
        assert isinstance(decision, Wait)


@settings(deadline=None, max_examples=200)
@given(
    limit=st.integers(1, 5_000),
    spent=st.integers(0, 5_000),
    costs=st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 2_000)), min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_interleaving_overshoots_by_at_most_one_request(
    limit: int, spent: int, costs: list[tuple[int, int]], seed: int
) -> None:
    """Requests arrive, wait, get admitted and settle in a random order; real cost never exceeds the reservation."""
    rng = random.Random(seed)
    requests = [(max(a, b), min(a, b)) for a, b in costs]  # (reservation, real cost)
    pending = list(range(len(requests)))
    in_flight: list[int] = []
    current = state(limit=limit, spent=spent)
    start_spent = spent
    while pending or in_flight:
        if pending and (not in_flight or rng.random() < 0.6):
            index = rng.choice(pending)
            decision = decide([current], requests[index][0])
            if isinstance(decision, Reject):
                pending.remove(index)
            elif isinstance(decision, Admit):
                pending.remove(index)
                in_flight.append(index)
                current = replace(current, reserved_nanos=current.reserved_nanos + requests[index][0])
            elif not in_flight:
                raise AssertionError("a waiting request with nothing in flight would wait forever")
            continue
        index = in_flight.pop(rng.randrange(len(in_flight)))
        reservation, real = requests[index]
        current = replace(
            current, reserved_nanos=current.reserved_nanos - reservation, spent_nanos=current.spent_nanos + real
        )
    largest = max(real for _, real in requests)
    assert current.spent_nanos <= max(limit, start_spent) + largest


def test_warn_level() -> None:
    assert warn_level(state(limit=100, spent=79), Decimal("0.8")) is BudgetLevel.OK
    assert warn_level(state(limit=100, spent=80), Decimal("0.8")) is BudgetLevel.WARN
    assert warn_level(state(limit=100, spent=100), Decimal("0.8")) is BudgetLevel.EXHAUSTED
    assert warn_level(state(limit=3, spent=2), Decimal("0.666666666666666666666666")) is BudgetLevel.WARN


def test_budget_message_names_budget_spend_reset_and_command() -> None:
    spent_up = BudgetState(
        key="1d@*",
        label="daily budget",
        limit_nanos=usd_to_nanos(Decimal(20)),
        spent_nanos=usd_to_nanos(Decimal("20.01")),
        reserved_nanos=0,
        resets_at=utc(2026, 11, 25, 23),
    )
    message = format_budget_message(spent_up, "ccgate budget set daily 40", tz=BERLIN)
    error = BudgetExceededError(message)
    assert envelope(error)["error"]["message"] == (
        "ccgate: daily budget reached: $20.01 spent of $20.00 (resets 2026-11-26 00:00 CET). "
        "Raise it with `ccgate budget set daily 40`"
    )
    assert error.status == 402 and envelope(error)["error"]["type"] == "billing_error"
    assert "credit balance" not in message.lower()
    summer = replace(spent_up, resets_at=utc(2026, 7, 1, 4))
    assert "(resets 2026-07-01 00:00 EDT)" in format_budget_message(summer, "x", tz=NEW_YORK)


def _rule(limit: str, project: str | None = None) -> BudgetRule:
    return BudgetRule("1d@*", parse_period("daily"), usd_to_nanos(Decimal(limit)), project, Decimal("0.8"), "daily")


@pytest.mark.parametrize(
    ("limit", "committed", "suggested"),
    [
        ("20", "0", "40"),  # nothing spent yet: double it
        ("20", "20.01", "40"),  # doubling gets past what is spent
        ("0.01", "0.03", "0.05"),  # doubling would not: a round amount above spent plus the old limit
        ("0.01", "0.02", "0.04"),  # exactly double is not enough either (spent must stay below the limit)
        ("10", "123.45", "200"),
        ("300", "950", "2000"),
        ("0", "0", "10"),  # a zero limit: $10
        ("0", "12", "20"),
    ],
)
def test_raise_command_suggests_an_amount_that_lets_requests_through(
    limit: str, committed: str, suggested: str
) -> None:
    rule = _rule(limit)
    committed_nanos = usd_to_nanos(Decimal(committed))
    assert rule.raise_command(committed_nanos) == f"ccgate budget set daily {suggested}"
    after = BudgetState("1d@*", "daily", usd_to_nanos(Decimal(suggested)), committed_nanos, 0, utc(2026, 1, 2))
    assert isinstance(decide([after], 0), Admit)


def test_raise_command_quotes_the_project() -> None:
    assert _rule("5", "/p/my app").raise_command() == "ccgate budget set daily 10 --project '/p/my app'"


@given(
    limit=st.integers(min_value=0, max_value=10**15),
    committed=st.integers(min_value=0, max_value=10**16),
)
def test_raise_command_always_gets_past_what_is_committed(limit: int, committed: int) -> None:
    rule = BudgetRule("1d@*", parse_period("daily"), limit, None, Decimal("0.8"), "daily")
    amount = Decimal(rule.raise_command(committed).split()[-1])
    assert usd_to_nanos(amount) > committed and usd_to_nanos(amount) >= 2 * limit


def test_date_helpers_are_consistent() -> None:
    # a sanity anchor for the week origin used by `window`
    assert date(1970, 1, 5).weekday() == 0


# ---- reservation bounds -------------------------------------------------------------------------------------

from ccgate.core.budgets import (  # noqa: E402
    DEFAULT_CONTEXT_WINDOW,
    DEFAULT_SERVER_TOOL_USES,
    DEFINED_TOOL_TOKENS,
    IMAGE_TOKENS,
    TOOL_USE_PROMPT_TOKENS,
    BodyScan,
    input_tokens_bound,
    scan_body,
    shrunk_reservation,
    web_search_uses_bound,
)
from ccgate.proxy.engine import parse_messages_head  # noqa: E402

WEB_FETCH_TOOL = {  # Claude Code's own WebFetch: a "url" key in its schema is no URL source
    "name": "WebFetch",
    "input_schema": {"type": "object", "properties": {"url": {"type": "string", "format": "uri"}}},
}


def _body(*content: dict[str, object], tools: list[dict[str, object]] | None = None, **extra: object) -> bytes:
    import json

    body: dict[str, object] = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": list(content)}]}
    if tools is not None:
        body["tools"] = tools
    return json.dumps(body | extra).encode()


def _scans(raw: bytes) -> BodyScan:
    """The proxy's scan (with the head parse) and the body-only scan agree."""
    with_head = scan_body(raw, parse_messages_head(raw))
    assert with_head == scan_body(raw)
    return with_head


TEXT = {"type": "text", "text": 'a "type":"url" written in text is escaped, so it never counts'}


@pytest.mark.parametrize(
    ("content", "tools", "extra", "expected"),
    [
        ((TEXT,), None, {}, BodyScan()),
        ((TEXT,), [WEB_FETCH_TOOL], {}, BodyScan(tools=True)),
        (
            ({"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},),
            None,
            {},
            BodyScan(images=1, unbounded=True),
        ),
        (
            ({"type": "document", "source": {"type": "file", "file_id": "file_011"}},),
            None,
            {},
            BodyScan(images=1, unbounded=True),
        ),
        (
            ({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},),
            None,
            {},
            BodyScan(images=1, unbounded=True),  # a PDF's pages are billed as images and text, whatever its bytes
        ),
        (
            (
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                {
                    "type": "tool_result",
                    "tool_use_id": "t",
                    "content": [
                        {"type": "image", "source": {"data": "iVBO", "media_type": "image/png", "type": "base64"}}
                    ],
                },
            ),
            None,
            {},
            BodyScan(images=2),
        ),
        (
            (TEXT,),
            [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}, WEB_FETCH_TOOL],
            {},
            BodyScan(tools=True, defined_tools=1, unbounded=True, input_grows=True, web_search_tools=1),
        ),
        (
            (TEXT,),
            [{"type": "code_execution_20250825", "name": "code_execution"}],
            {},
            BodyScan(tools=True, defined_tools=1, unbounded=True, input_grows=True),
        ),
        (
            (TEXT,),
            [{"type": "bash_20250124", "name": "bash"}, {"type": "text_editor_20250728", "name": "e"}],
            {},
            BodyScan(tools=True, defined_tools=2),  # client tools: hidden definitions, but no fetched input
        ),
        (
            (TEXT,),
            None,
            {"mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "x"}]},
            BodyScan(unbounded=True, input_grows=True),
        ),
    ],
)
def test_the_body_scan_finds_what_bills_beyond_the_bytes(
    content: tuple[dict[str, object], ...],
    tools: list[dict[str, object]] | None,
    extra: dict[str, object],
    expected: BodyScan,
) -> None:
    assert _scans(_body(*content, tools=tools, **extra)) == expected


def test_the_scan_reads_json_with_any_spacing() -> None:
    import json

    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}],
            }
        ],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
    }
    for raw in (json.dumps(body, indent=2).encode(), json.dumps(body, separators=(" , ", " :\n ")).encode()):
        scan = _scans(raw)
        assert scan.unbounded and scan.input_grows and scan.images == 1 and scan.web_search_tools == 1


def test_the_input_bound_adds_the_hidden_parts_and_goes_to_the_context_window_when_unbounded() -> None:
    assert input_tokens_bound(BodyScan(), 500, 200_000) == 500
    hidden = BodyScan(tools=True, defined_tools=2, images=3)
    assert input_tokens_bound(hidden, 500, 200_000) == 500 + TOOL_USE_PROMPT_TOKENS + 2 * DEFINED_TOOL_TOKENS + 3 * (
        IMAGE_TOKENS
    )
    assert input_tokens_bound(BodyScan(unbounded=True), 500, 200_000) == 200_000
    assert input_tokens_bound(BodyScan(unbounded=True), 500, None) == DEFAULT_CONTEXT_WINDOW
    assert input_tokens_bound(BodyScan(unbounded=True), 3_000_000, 200_000) == 3_000_000  # the bigger one


def test_web_search_uses_come_from_max_uses_else_a_stated_cap() -> None:
    one = BodyScan(web_search_tools=1)
    assert web_search_uses_bound(BodyScan(), None) == 0
    assert web_search_uses_bound(one, [{"type": "web_search_20250305", "max_uses": 5}]) == 5
    assert web_search_uses_bound(one, [{"type": "web_search_20250305"}]) == DEFAULT_SERVER_TOOL_USES
    for bad in (0, -1, True, "5", 2.5):
        assert web_search_uses_bound(one, [{"type": "web_search_20250305", "max_uses": bad}]) == (
            DEFAULT_SERVER_TOOL_USES
        )
    assert web_search_uses_bound(one, [{"type": "web_search_20250305", "max_uses": 10**30}]) == 10_000
    assert web_search_uses_bound(BodyScan(web_search_tools=2), "not a list") == 2 * DEFAULT_SERVER_TOOL_USES
    assert web_search_uses_bound(one, []) == DEFAULT_SERVER_TOOL_USES  # seen by the scan, not in `tools`


def test_a_shrunk_reservation_never_grows() -> None:
    assert shrunk_reservation(100, 40) == 40
    assert shrunk_reservation(100, 400) == 100
    assert shrunk_reservation(100, 0) == 0
    with pytest.raises(ValueError):
        shrunk_reservation(100, -1)


def test_a_type_spelt_with_escapes_is_not_a_way_around_the_bound() -> None:
    r"""`"\u0075rl"` is "url" to the provider; legitimate clients never escape plain ASCII letters, so any such
    escape makes the scan assume the worst."""
    for raw in (
        rb'{"model":"m","messages":[{"role":"user","content":[{"type":"image","source":{"type":"\u0075rl","url":"u"}}]}]}',
        rb'{"model":"m","tools":[{"type":"web_search_2025030\u0035","name":"w"}],"messages":[]}',
    ):
        scan = _scans(raw)
        assert scan.unbounded and scan.input_grows
    # what clients do escape -- control characters, HTML's <>&, non-ASCII text -- changes nothing
    text = rb'"\u001b[31m caf\u00e9 \u4e2d \u003cb\u003e \u0026 \"quoted\" and code: \\u0075rl"'
    assert _scans(rb'{"model":"m","messages":[{"role":"user","content":' + text + b"}]}") == BodyScan()
