"""Cost reports and request listings over hand-built ledger rows: the numbers a user sees must add up exactly."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.errors import UserInputError
from ccgate.storage.ledger import insert_records, open_ledger
from ccgate.storage.reports import (
    CostReport,
    LoggedRequest,
    Totals,
    cost_report,
    latest_rowid,
    local_midnight,
    parse_moment,
    period_bounds,
    recent_requests,
    report_to_json,
    requests_by_id,
    spent_nanos,
    unpriced_models,
)

BERLIN = ZoneInfo("Europe/Berlin")
KOLKATA = ZoneInfo("Asia/Kolkata")
FAR_PAST = datetime(2000, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def priced(nanos: int) -> Cost:
    return Cost(nanos=nanos, quality=PriceQuality.PRICED)


UNPRICED = Cost(nanos=None, quality=PriceQuality.UNPRICED)


def rec(
    started: str, model: str | None = "claude-sonnet-4-5", cost: Cost = UNPRICED, **fields: object
) -> RequestRecord:
    record = RequestRecord(started_at=utc(started), requested_model=model, cost=cost, status=RequestStatus.OK)
    for name, value in fields.items():
        setattr(record, name, value)
    return record


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_ledger(tmp_path / "ledger.db")
    yield database
    database.close()


@pytest.fixture
def local_tz() -> Iterator[Callable[[str], None]]:
    """Set the process's local zone the way a user's TZ does; restored afterwards."""
    original = os.environ.get("TZ")

    def set_tz(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield set_tz
    if original is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = original
    time.tzset()


def mixed_rows() -> list[RequestRecord]:
    return [
        rec(
            "2025-03-04T10:00:00",
            cost=priced(1_000_000),
            provider="anthropic",
            project="/p/app",
            session_id="s1",
            usage=Usage(input_tokens=100, output_tokens=10, cache_read_tokens=900, cache_write_5m_tokens=50),
        ),
        rec(
            "2025-03-04T10:30:00",
            model="claude-haiku-4-5",
            cost=Cost(nanos=250_000, quality=PriceQuality.ESTIMATED, priced_model="llama"),
            provider="groq",
            project="/p/app",
            session_id="s1",
            usage=Usage(input_tokens=40, output_tokens=4, cache_write_1h_tokens=60),
        ),
        rec(
            "2025-03-04T11:15:00",
            model="qwen-local",
            cost=UNPRICED,
            provider="ollama",
            project=None,
            session_id="s2",
            routed_model="qwen3-coder",
            usage=Usage(input_tokens=7, output_tokens=3),
        ),
        rec(  # in flight: its usage so far is real spend
            "2025-03-04T11:59:59.999999",
            cost=priced(5),
            provider="anthropic",
            project="/p/web",
            session_id="s2",
            status=RequestStatus.PENDING,
            usage=Usage(input_tokens=1),
        ),
        rec(  # backfilled from Claude Code's transcripts
            "2025-03-04T12:00:00",
            cost=priced(20),
            provider="anthropic",
            project="/p/web",
            source="claude-code",
            usage=Usage(input_tokens=2, output_tokens=2),
        ),
    ]


def test_totals_add_priced_and_estimated_and_count_the_rest(db: Database) -> None:
    insert_records(db, mixed_rows())
    report = cost_report(db, since=FAR_PAST, until=FAR_FUTURE, by=None)
    assert report.groups == []
    assert report.total == Totals(
        requests=5,
        input_tokens=150,
        output_tokens=19,
        cache_read_tokens=900,
        cache_write_tokens=110,
        cost_nanos=1_250_025,
        unpriced_requests=1,
        estimated_requests=1,
        imported_requests=1,
    )
    assert report.total.cache_hit_ratio == pytest.approx(900 / (150 + 900 + 110))


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        (
            "model",
            [("claude-sonnet-4-5", 3, 1_000_025), ("claude-haiku-4-5", 1, 250_000), ("qwen-local", 1, 0)],
        ),
        ("provider", [("anthropic", 3, 1_000_025), ("groq", 1, 250_000), ("ollama", 1, 0)]),
        ("project", [("/p/app", 2, 1_250_000), ("/p/web", 2, 25), ("(none)", 1, 0)]),
        ("session", [("s1", 2, 1_250_000), ("(none)", 1, 20), ("s2", 2, 5)]),
        ("day", [("2025-03-04", 5, 1_250_025)]),
    ],
)
def test_groups(db: Database, by: str, expected: list[tuple[str, int, int]]) -> None:
    insert_records(db, mixed_rows())
    report = cost_report(db, since=FAR_PAST, until=FAR_FUTURE, by=by, tz=UTC)
    assert [(key, totals.requests, totals.cost_nanos) for key, totals in report.groups] == expected
    assert report.total == sum((totals for _, totals in report.groups), Totals())
    assert report.total.requests == 5


def test_range_is_half_open_and_splits_inside_an_hour(db: Database) -> None:
    insert_records(db, mixed_rows())
    report = cost_report(db, since=utc("2025-03-04T10:30:00"), until=utc("2025-03-04T12:00:00"), by="model")
    assert [(key, totals.requests) for key, totals in report.groups] == [
        ("claude-haiku-4-5", 1),
        ("claude-sonnet-4-5", 1),
        ("qwen-local", 1),
    ]


def test_an_unpriced_group_is_flagged_not_zero(db: Database) -> None:
    insert_records(db, mixed_rows())
    report = cost_report(db, since=FAR_PAST, until=FAR_FUTURE, by="provider")
    ollama = dict(report.groups)["ollama"]
    assert ollama.all_unpriced and ollama.unpriced_requests == 1
    assert unpriced_models(db, since=FAR_PAST, until=FAR_FUTURE) == ["qwen3-coder"]


def test_local_day_follows_tz_including_a_dst_change(db: Database, local_tz: Callable[[str], None]) -> None:
    local_tz("America/New_York")  # DST began 2025-03-09 02:00 local: that day has 23 hours
    insert_records(
        db,
        [
            rec("2025-03-09T04:59:59", cost=priced(1)),  # Mar 8, 23:59:59 EST
            rec("2025-03-09T05:00:00", cost=priced(2)),  # Mar 9, 00:00 EST
            rec("2025-03-10T03:59:59", cost=priced(4)),  # Mar 9, 23:59:59 EDT
            rec("2025-03-10T04:00:00", cost=priced(8)),  # Mar 10, 00:00 EDT
        ],
    )
    report = cost_report(db, since=FAR_PAST, until=FAR_FUTURE, by="day")
    assert [(key, totals.cost_nanos) for key, totals in report.groups] == [
        ("2025-03-08", 1),
        ("2025-03-09", 6),
        ("2025-03-10", 8),
    ]
    local_tz("UTC")
    by_utc_day = cost_report(db, since=FAR_PAST, until=FAR_FUTURE, by="day")
    assert [(key, totals.cost_nanos) for key, totals in by_utc_day.groups] == [("2025-03-09", 3), ("2025-03-10", 12)]


def test_half_hour_zones_split_an_hour_between_two_days(db: Database) -> None:
    # Kolkata is UTC+5:30: local midnight falls at 18:30 UTC, in the middle of an hour bucket.
    insert_records(
        db,
        [
            rec("2025-03-04T18:10:00", cost=priced(1)),
            rec("2025-03-04T18:29:59.999999", cost=priced(2)),
            rec("2025-03-04T18:30:00", cost=priced(4)),
            rec("2025-03-04T18:50:00", cost=priced(8)),
            rec("2025-03-05T03:00:00", cost=priced(16)),
        ],
    )
    report = cost_report(db, since=FAR_PAST, until=FAR_FUTURE, by="day", tz=KOLKATA)
    assert [(key, totals.cost_nanos) for key, totals in report.groups] == [("2025-03-04", 3), ("2025-03-05", 28)]


# Random rows in a three-day window and random ranges: the report must equal a brute-force sum.
_rows = st.lists(
    st.builds(
        rec,
        started=st.datetimes(min_value=datetime(2025, 3, 1), max_value=datetime(2025, 3, 3, 23, 59)).map(
            lambda moment: moment.isoformat()
        ),
        model=st.sampled_from([None, "a", "b"]),
        cost=st.one_of(st.just(UNPRICED), st.builds(priced, st.integers(0, 10**6))),
        project=st.sampled_from([None, "/p/x", "/p/y"]),
        usage=st.builds(Usage, st.integers(0, 100), st.integers(0, 100), st.integers(0, 100)),
        # in-flight rows count too, though the roll-ups leave them to `requests` (m005)
        status=st.sampled_from([RequestStatus.OK, RequestStatus.PENDING, RequestStatus.INTERRUPTED]),
    ),
    max_size=40,
)
_moments = st.datetimes(min_value=datetime(2025, 2, 28, 20), max_value=datetime(2025, 3, 4, 4), timezones=st.just(UTC))


def _brute(records: list[RequestRecord]) -> Totals:
    return sum(
        (
            Totals(
                requests=1,
                input_tokens=r.usage.input_tokens,
                output_tokens=r.usage.output_tokens,
                cache_read_tokens=r.usage.cache_read_tokens,
                cache_write_tokens=r.usage.cache_write_tokens,
                cost_nanos=r.cost.nanos or 0,
                unpriced_requests=int(r.cost.nanos is None),
            )
            for r in records
        ),
        Totals(),
    )


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=_rows,
    a=_moments,
    b=_moments,
    tz=st.sampled_from([UTC, BERLIN, KOLKATA, ZoneInfo("America/St_Johns")]),
    project=st.sampled_from([None, "/p/x"]),
)
def test_reports_equal_a_brute_force_sum(
    records: list[RequestRecord],
    a: datetime,
    b: datetime,
    tz: tzinfo,
    project: str | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    since, until = min(a, b), max(a, b)
    database = open_ledger(tmp_path_factory.mktemp("brute") / "ledger.db")
    try:
        insert_records(database, records)
        inside = [r for r in records if since <= r.started_at < until]
        model_report = cost_report(database, since=since, until=until, by="model")
        assert model_report.total == _brute(inside)
        for key, totals in model_report.groups:
            assert totals == _brute([r for r in inside if (r.requested_model or "(none)") == key])
        day_report = cost_report(database, since=since, until=until, by="day", tz=tz)
        days = sorted({r.started_at.astimezone(tz).date().isoformat() for r in inside})
        assert [key for key, _ in day_report.groups] == days
        for key, totals in day_report.groups:
            assert totals == _brute([r for r in inside if r.started_at.astimezone(tz).date().isoformat() == key])
        expected_spend = sum(r.cost.nanos or 0 for r in inside if project is None or r.project == project)
        assert spent_nanos(database, since=since, until=until, project=project) == expected_spend
    finally:
        database.close()


@pytest.mark.parametrize("direction", ["finishes", "reopens"])
@pytest.mark.parametrize("reader", ["sqlite-utils", "plain sqlite3"])
def test_a_row_changing_state_between_a_reports_queries_counts_once(
    tmp_path: Path, direction: str, reader: str
) -> None:
    """The roll-up query and the pending-row query read one snapshot: a request finishing (or reopened) between
    them would otherwise be counted by neither (or by both)."""
    import sqlite3

    path = tmp_path / "ledger.db"
    writer = open_ledger(path)
    start = RequestStatus.PENDING if direction == "finishes" else RequestStatus.OK
    record = rec("2025-03-04T10:15:00", cost=priced(7_000), status=start)
    insert_records(writer, [record])
    after = "ok" if direction == "finishes" else "pending"
    conn = sqlite3.connect(str(path)) if reader == "plain sqlite3" else open_ledger(path).conn
    fired: list[str] = []

    def change_state_between_queries(statement: str) -> None:
        if "status = 'pending'" in statement and not fired:
            fired.append(statement)
            writer.execute("UPDATE requests SET status = ? WHERE id = ?", [after, record.id])
            writer.conn.commit()

    conn.set_trace_callback(change_state_between_queries)
    try:
        reader_db = conn if reader == "plain sqlite3" else Database(conn)
        spent = spent_nanos(reader_db, since=utc("2025-03-04T00:00:00"), until=utc("2025-03-05T00:00:00"))  # type: ignore[arg-type]
        assert fired, "the pending-row query did not run"
        assert spent == 7_000
        # and the change is visible to the next report
        conn.set_trace_callback(None)
        report = cost_report(reader_db, since=FAR_PAST, until=FAR_FUTURE, by=None)  # type: ignore[arg-type]
        assert report.total.requests == 1 and report.total.cost_nanos == 7_000
    finally:
        conn.close()
        writer.close()


def test_pending_rows_are_found_through_their_partial_index(db: Database) -> None:
    """A month's report must not walk every row of the month to find the few in flight."""
    records = [rec(f"2025-03-{day:02d}T{hour:02d}:30:00", cost=priced(1)) for day in range(1, 29) for hour in range(24)]
    records[5].status = RequestStatus.PENDING
    insert_records(db, records)
    db.execute("ANALYZE")
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    report = cost_report(db, since=utc("2025-03-01T00:00:00"), until=utc("2025-04-01T00:00:00"), by="project")
    db.conn.set_trace_callback(None)
    assert report.total.requests == len(records)
    (pending_query,) = [statement for statement in statements if "status = 'pending'" in statement]
    plan = " ".join(str(row[3]) for row in db.execute(f"EXPLAIN QUERY PLAN {pending_query}").fetchall())
    assert "USING INDEX requests_pending" in plan, plan


def test_json_shape(db: Database) -> None:
    insert_records(db, [rec("2025-03-04T10:00:00", cost=priced(12_345_000), usage=Usage(input_tokens=3))])
    since, until = datetime(2025, 3, 4, tzinfo=BERLIN), datetime(2025, 3, 5, tzinfo=BERLIN)
    data = report_to_json(cost_report(db, since=since, until=until, by="model"))
    assert data["since"] == "2025-03-04T00:00:00+01:00" and data["until"] == "2025-03-05T00:00:00+01:00"
    assert data["by"] == "model"
    fields = {
        "requests",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost_usd",
        "unpriced_requests",
    }
    assert fields <= set(data["total"])
    assert data["total"]["cost_usd"] == "0.012345000"
    assert data["total"]["requests"] == 1 and data["total"]["input_tokens"] == 3
    assert len(data["groups"]) == 1
    assert data["groups"][0]["key"] == "claude-sonnet-4-5" and fields <= set(data["groups"][0])


def test_empty_ledger_gives_zero_totals(db: Database) -> None:
    report = cost_report(db, since=FAR_PAST, until=FAR_FUTURE, by=None)
    data = report_to_json(report)
    assert data["total"]["requests"] == 0 and data["total"]["cost_usd"] == "0.000000000"
    assert data["groups"] == [] and data["by"] is None
    assert cost_report(db, since=FAR_PAST, until=FAR_FUTURE, by="day").groups == []
    assert spent_nanos(db, since=FAR_PAST, until=FAR_FUTURE) == 0


def test_bad_grouping_is_a_user_error(db: Database) -> None:
    with pytest.raises(UserInputError) as raised:
        cost_report(db, since=FAR_PAST, until=FAR_FUTURE, by="colour")
    assert "model" in (raised.value.hint or "")


# --- periods -----------------------------------------------------------------------------------------------------

NOW = datetime(2025, 12, 31, 23, 30, tzinfo=UTC)  # already Jan 1 in Berlin


@pytest.mark.parametrize(
    ("period", "since", "until"),
    [
        ("today", date(2026, 1, 1), date(2026, 1, 2)),
        ("yesterday", date(2025, 12, 31), date(2026, 1, 1)),
        ("week", date(2025, 12, 29), date(2026, 1, 5)),  # Monday to Monday
        ("month", date(2026, 1, 1), date(2026, 2, 1)),
    ],
)
def test_periods_are_calendar_aligned_in_local_time(period: str, since: date, until: date) -> None:
    assert period_bounds(period, now=NOW, tz=BERLIN) == (local_midnight(since, BERLIN), local_midnight(until, BERLIN))


def test_all_runs_until_now_and_unknown_periods_are_refused() -> None:
    since, until = period_bounds("all", now=NOW, tz=BERLIN)
    assert since.year == 1970 and until == NOW
    with pytest.raises(UserInputError):
        period_bounds("fortnight", now=NOW, tz=BERLIN)


def test_parse_moment() -> None:
    assert parse_moment("2025-03-04", tz=BERLIN) == datetime(2025, 3, 4, tzinfo=BERLIN)
    assert parse_moment("2025-03-04", tz=BERLIN, end=True) == datetime(2025, 3, 5, tzinfo=BERLIN)
    assert parse_moment("2025-03-04T14:30", tz=BERLIN) == datetime(2025, 3, 4, 14, 30, tzinfo=BERLIN)
    assert parse_moment("2025-03-04T14:30:00Z", tz=BERLIN) == datetime(2025, 3, 4, 14, 30, tzinfo=UTC)
    assert parse_moment("2025-03-04T14:30+05:30").utcoffset() == timedelta(hours=5, minutes=30)
    with pytest.raises(UserInputError) as raised:
        parse_moment("last tuesday")
    assert "2025-03-01" in (raised.value.hint or "")


@pytest.mark.parametrize("text", ["9999-12-31", "0001-01-01T00:00+05:00", "0001-01-01"])
def test_parse_moment_out_of_range_is_a_user_error(text: str) -> None:
    with pytest.raises(UserInputError, match="out of range") as raised:
        # --until 9999-12-31 means "through that day"; year 1 at +05:00 is before year 1 in UTC
        parse_moment(text, tz=ZoneInfo("Asia/Tokyo"), end=text == "9999-12-31")
    assert raised.value.hint


SAO_PAULO = ZoneInfo("America/Sao_Paulo")  # DST began at midnight on 2018-11-04: that day had no 00:00


@pytest.mark.parametrize("now", [datetime(2018, 11, 4, 15, tzinfo=UTC), datetime(2025, 3, 30, 1, 30, tzinfo=UTC)])
@pytest.mark.parametrize("tz", [SAO_PAULO, BERLIN, ZoneInfo("Asia/Kolkata")])
def test_cost_periods_start_where_budget_windows_start(now: datetime, tz: tzinfo) -> None:
    from ccgate.core.budgets import parse_period, window

    for period, budget_period in (("today", "1d"), ("week", "1w"), ("month", "1mo")):
        assert period_bounds(period, now=now, tz=tz) == window(parse_period(budget_period), now, tz)
    start, end = period_bounds("today", now=now, tz=tz)
    assert start.tzinfo is tz and end.tzinfo is tz  # shown in local time, e.g. in `cost --json`


def test_a_posix_tz_string_is_the_local_zone(local_tz: Callable[[str], None]) -> None:
    local_tz("XYZ-5")
    start, _ = period_bounds("today", now=datetime(2025, 3, 1, 20, tzinfo=UTC))
    assert start.isoformat() == "2025-03-02T00:00:00+05:00"


# --- listings ---------------------------------------------------------------------------------------------------


def test_recent_requests_filters_and_orders(db: Database) -> None:
    insert_records(
        db,
        [
            rec("2025-03-04T10:00:00", session_id="s1", id="a"),
            rec("2025-03-04T10:01:00", session_id="s2", id="b", status=RequestStatus.ERROR, http_status=529),
            rec("2025-03-04T10:02:00", session_id="s1", id="c", status=RequestStatus.INTERRUPTED),
            rec("2025-03-04T10:03:00", session_id="s1", id="d", http_status=200),
        ],
    )
    insert_records(db, [rec("2025-03-01T00:00:00", id="imported-late")])  # written last, started first

    def ids(entries: list[LoggedRequest]) -> list[str]:
        return [entry.record.id for entry in entries]

    assert ids(recent_requests(db, limit=3, errors_only=False, session=None, after_rowid=None)) == ["b", "c", "d"]
    assert ids(recent_requests(db, limit=9, errors_only=True, session=None, after_rowid=None)) == ["b", "c"]
    assert ids(recent_requests(db, limit=9, errors_only=False, session="s1", after_rowid=None)) == ["a", "c", "d"]
    first_two = recent_requests(db, limit=9, errors_only=False, session=None, after_rowid=None)
    cursor = next(entry for entry in first_two if entry.record.id == "b").rowid
    after = recent_requests(db, limit=9, errors_only=False, session=None, after_rowid=cursor)
    assert ids(after) == ["c", "d", "imported-late"]  # write order
    assert latest_rowid(db) == after[-1].rowid
    assert ids(requests_by_id(db, ["d", "a", "missing"])) == ["a", "d"]


def test_cost_report_dataclass_is_what_json_reads(db: Database) -> None:
    report = CostReport(since=FAR_PAST, until=FAR_FUTURE, by="model", total=Totals(requests=2), groups=[])
    assert report_to_json(report)["total"]["requests"] == 2
