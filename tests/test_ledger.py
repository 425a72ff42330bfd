"""The ledger file: migrations, row conversion, the background writer, crash recovery and roll-ups."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccgate.core.records import Attempt, Cost, PriceQuality, RequestRecord, RequestStatus, Usage, to_iso
from ccgate.errors import LedgerError
from ccgate.storage import ledger as ledger_module
from ccgate.storage.ledger import (
    check_integrity,
    decode_attempts,
    insert_records,
    open_ledger,
    record_to_row,
    row_to_record,
)
from ccgate.storage.migrations import MIGRATIONS, applied_migrations, migrate
from ccgate.storage.writer import LedgerWriter

T0 = datetime(2025, 3, 4, 12, 0, 0, 123456, tzinfo=UTC)


def full_record(**changes: object) -> RequestRecord:
    record = RequestRecord(
        started_at=T0,
        ended_at=T0 + timedelta(seconds=3),
        source="sidecar",
        session_id="sess-1",
        project="/home/dev/app",
        launch_id="launch-1",
        tier="haiku",
        requested_model="claude-haiku-4-5",
        provider="groq",
        routed_model="llama-3.3-70b-versatile",
        stream=True,
        status=RequestStatus.OK,
        http_status=200,
        usage=Usage(
            input_tokens=10,
            output_tokens=20,
            cache_read_tokens=30,
            cache_write_5m_tokens=40,
            cache_write_1h_tokens=50,
            web_searches=1,
        ),
        cost=Cost(nanos=123_456, quality=PriceQuality.ESTIMATED, priced_model="llama-3.3-70b", note="family"),
        ttfb_ms=120.5,
        latency_ms=3000.25,
        upstream_message_id="msg_01",
        upstream_request_id="req_01",
        attempts=(Attempt("anthropic", "claude-haiku-4-5", 529, "overloaded"), Attempt("groq", "llama", 200)),
        synced_at=T0 + timedelta(minutes=5),
    )
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def fetch(path: Path, record_id: str) -> RequestRecord:
    db = open_ledger(path)
    try:
        rows = list(db.query("SELECT * FROM requests WHERE id = ?", [record_id]))
        assert len(rows) == 1
        return row_to_record(rows[0])
    finally:
        db.close()


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "ledger.db"


@pytest.fixture
def writer(ledger_path: Path) -> Iterator[LedgerWriter]:
    ledger_writer = LedgerWriter(ledger_path)
    ledger_writer.start()
    yield ledger_writer
    ledger_writer.close()


# --- schema -----------------------------------------------------------------------------------------------------


def test_migrations_are_applied_once_and_recorded(ledger_path: Path) -> None:
    db = open_ledger(ledger_path)
    names = [function.__name__ for function in MIGRATIONS]
    assert names == sorted(names) and names[0] == "m001_requests"
    assert applied_migrations(db) == names
    assert migrate(db) == []
    db.close()
    again = open_ledger(ledger_path)  # opening twice is harmless
    assert applied_migrations(again) == names
    assert again.execute("SELECT count(*) FROM _migrations").fetchone()[0] == len(names)
    assert {"requests", "request_rollups", "_migrations"} <= set(again.table_names())
    again.close()


def test_ledger_is_wal_synchronous_normal_and_private(ledger_path: Path) -> None:
    db = open_ledger(ledger_path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    db.close()
    assert stat.S_IMODE(ledger_path.stat().st_mode) == 0o600


def test_indexes_cover_reports_logs_and_import(ledger_path: Path) -> None:
    db = open_ledger(ledger_path)
    indexed = {
        row[0]: [column[2] for column in db.execute(f"PRAGMA index_info('{row[0]}')").fetchall()]
        for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests'")
    }
    columns = {tuple(value[:1]) for value in indexed.values()}
    assert {("started_at",), ("session_id",)} <= columns
    # m004 dropped it: a random-keyed index cost every metered request a page write
    assert ("upstream_message_id",) not in columns
    import_plan = db.execute(
        "EXPLAIN QUERY PLAN SELECT upstream_message_id FROM requests WHERE started_at >= ? AND started_at <= ? "
        "AND upstream_message_id IS NOT NULL AND source != 'import'",
        ["2026-01-01", "2026-01-02"],
    ).fetchall()
    assert "requests_started_at" in str(import_plan)
    plan = db.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM requests WHERE session_id = ? ORDER BY started_at DESC", ["s"]
    ).fetchall()
    assert "requests_session" in str(plan)
    db.close()


def test_a_file_that_is_not_a_database_is_a_ledger_error(ledger_path: Path) -> None:
    ledger_path.parent.mkdir(parents=True)
    ledger_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError) as raised:
        open_ledger(ledger_path)
    assert str(ledger_path) in raised.value.message and raised.value.hint
    writer = LedgerWriter(ledger_path)
    with pytest.raises(LedgerError):
        writer.start()
    writer.close()


# --- rows -------------------------------------------------------------------------------------------------------


def test_record_round_trips_through_a_row() -> None:
    record = full_record()
    row = record_to_row(record)
    assert row["started_at"] == "2025-03-04T12:00:00.123456Z"
    assert row["stream"] == 1 and row["price_quality"] == "estimated" and row["cost_nanos"] == 123_456
    assert row["cache_write_1h_tokens"] == 50
    assert row_to_record(row) == record
    assert set(row) == set(ledger_module.COLUMNS)


@settings(deadline=None, max_examples=50)
@given(
    tokens=st.lists(st.integers(min_value=0, max_value=2**40), min_size=6, max_size=6),
    nanos=st.none() | st.integers(min_value=0, max_value=2**62),
    status=st.sampled_from(list(RequestStatus)),
    moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    speed=st.sampled_from([None, "standard", "fast"]),
)
def test_round_trip_property(
    tokens: list[int], nanos: int | None, status: RequestStatus, moment: datetime, speed: str | None
) -> None:
    quality = PriceQuality.UNPRICED if nanos is None else PriceQuality.PRICED
    names = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens")
    usage = Usage(**dict(zip(names, tokens, strict=False)), web_searches=tokens[5], speed=speed)
    record = RequestRecord(started_at=moment, status=status, usage=usage, cost=Cost(nanos=nanos, quality=quality))
    assert row_to_record(record_to_row(record)) == record


_attempt_text = st.text(st.characters(codec="utf-8"), max_size=12)


@settings(deadline=None, max_examples=100)
@given(
    attempts=st.lists(
        st.builds(
            Attempt,
            provider=_attempt_text,
            model=_attempt_text,
            status=st.none() | st.integers(min_value=100, max_value=599),
            error=st.none() | _attempt_text,
        ),
        max_size=3,
    )
)
def test_the_attempts_column_holds_the_same_text_as_before(attempts: list[Attempt]) -> None:
    """Built without `asdict` for speed: rows written before and after read (and compare) as the same text."""
    expected = json.dumps([dataclasses.asdict(attempt) for attempt in attempts], separators=(",", ":"))
    row = record_to_row(RequestRecord(attempts=tuple(attempts)))
    assert row["attempts"] == expected
    assert decode_attempts(row["attempts"]) == tuple(attempts)


def test_insert_records_ignores_existing_ids_and_counts_rows(ledger_path: Path) -> None:
    db = open_ledger(ledger_path)
    records = [full_record(id=f"id-{n}", started_at=T0 + timedelta(minutes=n)) for n in range(7)]
    assert insert_records(db, records, batch_size=3) == 7
    changed = full_record(id="id-0", requested_model="something-else")
    assert insert_records(db, [changed, full_record(id="id-new")]) == 1
    assert db.execute("SELECT requested_model FROM requests WHERE id = 'id-0'").fetchone()[0] == "claude-haiku-4-5"
    assert db.execute("SELECT count(*) FROM requests").fetchone()[0] == 8
    assert check_integrity(db) == "ok"
    db.close()


# --- writer -----------------------------------------------------------------------------------------------------


def test_pending_progress_final(writer: LedgerWriter, ledger_path: Path) -> None:
    record = RequestRecord(started_at=T0, requested_model="claude-sonnet-4-5", stream=True)
    writer.write_pending(record)
    assert writer.flush()
    assert fetch(ledger_path, record.id).status is RequestStatus.PENDING

    record.usage = Usage(input_tokens=100, cache_read_tokens=5000)
    record.cost = Cost(nanos=42, quality=PriceQuality.PRICED, priced_model="claude-sonnet-4-5")
    record.ttfb_ms = 250.0
    record.provider, record.routed_model = "anthropic", "claude-sonnet-4-5"
    writer.write_progress(record)
    assert writer.flush()
    seen = fetch(ledger_path, record.id)
    assert seen.status is RequestStatus.PENDING
    assert seen.usage == record.usage and seen.cost == record.cost and seen.ttfb_ms == 250.0

    record.status, record.http_status, record.latency_ms = RequestStatus.OK, 200, 900.0
    record.usage = Usage(input_tokens=100, output_tokens=40, cache_read_tokens=5000)
    record.ended_at = T0 + timedelta(seconds=1)
    writer.write_final(record)
    assert writer.flush()
    assert fetch(ledger_path, record.id) == record


def test_the_writer_snapshots_the_record_at_enqueue_time(writer: LedgerWriter, ledger_path: Path) -> None:
    record = RequestRecord(started_at=T0, requested_model="a")
    writer.write_pending(record)
    record.requested_model = "changed-after-enqueue"
    record.status = RequestStatus.OK
    assert writer.flush()
    stored = fetch(ledger_path, record.id)
    assert stored.requested_model == "a" and stored.status is RequestStatus.PENDING


def test_progress_never_reopens_a_finished_row(writer: LedgerWriter, ledger_path: Path) -> None:
    record = RequestRecord(started_at=T0, status=RequestStatus.OK, usage=Usage(output_tokens=9))
    writer.write_final(record)
    late = record.copy()
    late.usage = Usage(output_tokens=1)
    late.status = RequestStatus.PENDING
    writer.write_progress(late)
    assert writer.flush()
    stored = fetch(ledger_path, record.id)
    assert stored.status is RequestStatus.OK and stored.usage.output_tokens == 9


def test_group_commit_writes_a_burst_in_few_transactions(writer: LedgerWriter, ledger_path: Path) -> None:
    # Hold the write lock from another connection so the burst piles up in the queue meanwhile.
    blocker = sqlite3.connect(ledger_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    records = [RequestRecord(started_at=T0 + timedelta(seconds=n), requested_model="m") for n in range(300)]
    for record in records:
        writer.write_pending(record)
        record.status = RequestStatus.OK
        writer.write_final(record)
    before = writer.commits
    blocker.execute("COMMIT")
    blocker.close()
    assert writer.flush(timeout=30)
    # 600 writes: the thread took at most one before blocking, then drained the rest in MAX_BATCH-sized groups.
    assert writer.commits - before <= 2
    db = open_ledger(ledger_path)
    assert db.execute("SELECT count(*), sum(status = 'ok') FROM requests").fetchone() == (300, 300)
    db.close()


def test_a_reader_sees_rows_while_the_writer_runs(writer: LedgerWriter, ledger_path: Path) -> None:
    reader = open_ledger(ledger_path)
    writer.write_final(RequestRecord(started_at=T0, status=RequestStatus.OK))
    assert writer.flush()
    assert reader.execute("SELECT count(*) FROM requests").fetchone()[0] == 1
    writer.write_final(RequestRecord(started_at=T0, status=RequestStatus.OK))
    assert writer.flush()
    assert reader.execute("SELECT count(*) FROM requests").fetchone()[0] == 2
    reader.close()


def test_a_failed_write_is_logged_retried_and_does_not_stop_the_writer(
    writer: LedgerWriter, ledger_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = RequestRecord(started_at=T0)
    bad.status = "not-a-status"  # type: ignore[assignment]
    good = RequestRecord(started_at=T0, status=RequestStatus.OK)
    with caplog.at_level(logging.WARNING, logger="ccgate.storage.writer"):
        writer.write_final(bad)  # must not raise into the caller
        writer.write_final(good)
        assert writer.flush()
    assert writer.failed_writes == 1
    assert "retrying" in caplog.text and "failed twice" in caplog.text
    assert fetch(ledger_path, good.id).status is RequestStatus.OK


def test_a_row_with_unstorable_values_is_written_clamped_not_dropped(
    writer: LedgerWriter, ledger_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One absurd value (a count past 64 bits, a provider's id that is not text) once lost the whole row."""
    from ccgate.core.usage import MAX_TOKENS

    bad = RequestRecord(
        started_at=T0,
        status=RequestStatus.OK,
        requested_model="claude-haiku-4-5",
        usage=Usage(input_tokens=2**64, output_tokens=-(2**64), cache_read_tokens=7),
        cost=Cost(nanos=2**70, quality=PriceQuality.PRICED, note="from the catalog"),
        error_message="half a surrogate \ud800",
        latency_ms=12.5,
    )
    bad.upstream_message_id = {"id": "msg_1"}  # type: ignore[assignment]
    good = RequestRecord(started_at=T0, status=RequestStatus.OK)
    with caplog.at_level(logging.WARNING, logger="ccgate.storage.writer"):
        writer.write_final(bad)
        writer.write_final(good)
        assert writer.flush()
    assert (writer.failed_writes, writer.salvaged_writes) == (0, 1)
    assert "cannot store" in caplog.text and bad.id in caplog.text
    stored = fetch(ledger_path, bad.id)
    assert stored.status is RequestStatus.OK and stored.requested_model == "claude-haiku-4-5"
    assert stored.usage == Usage(input_tokens=MAX_TOKENS, output_tokens=0, cache_read_tokens=7)
    assert (stored.cost.nanos, stored.cost.quality) == (None, PriceQuality.UNPRICED)  # counted as unpriced
    assert stored.upstream_message_id is None and stored.latency_ms == 12.5
    assert stored.error_message == "half a surrogate ?"
    assert stored.cost.note == (
        "ledger could not store error_message, input_tokens, output_tokens, cost_nanos, upstream_message_id "
        "as reported; stored clamped or empty (from the catalog)"
    )
    assert fetch(ledger_path, good.id).status is RequestStatus.OK


def test_writes_after_close_are_dropped_quietly(ledger_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = LedgerWriter(ledger_path)
    writer.start()
    writer.close()
    with caplog.at_level(logging.WARNING, logger="ccgate.storage.writer"):
        writer.write_final(RequestRecord())
    assert "closed" in caplog.text
    assert writer.flush() is False
    writer.close()  # idempotent


def test_start_marks_leftover_pending_rows_interrupted_keeping_usage(ledger_path: Path) -> None:
    db = open_ledger(ledger_path)
    usage = Usage(input_tokens=1200, output_tokens=33, cache_read_tokens=40_000)
    cost = Cost(nanos=987_000, quality=PriceQuality.PRICED)
    leftovers = [RequestRecord(started_at=T0, usage=usage, cost=cost) for _ in range(2)]
    done = RequestRecord(started_at=T0, status=RequestStatus.OK)
    insert_records(db, [*leftovers, done])
    db.close()

    writer = LedgerWriter(ledger_path)
    writer.start()
    writer.close()
    assert writer.recovered == 2
    for record in leftovers:
        stored = fetch(ledger_path, record.id)
        assert stored.status is RequestStatus.INTERRUPTED
        assert stored.usage == usage and stored.cost == cost
        assert stored.ended_at is not None and stored.error_type == "interrupted"
    assert fetch(ledger_path, done.id).status is RequestStatus.OK


_CRASHING_SIDECAR = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ccgate.core.records import Cost, PriceQuality, RequestRecord, Usage
    from ccgate.storage.writer import LedgerWriter

    writer = LedgerWriter(Path(sys.argv[1]))
    writer.start()
    record = RequestRecord(id="in-flight", requested_model="claude-opus-4-1", stream=True)
    writer.write_pending(record)
    record.usage = Usage(input_tokens=500, cache_read_tokens=9000)
    record.cost = Cost(nanos=5_000_000, quality=PriceQuality.PRICED)
    writer.write_progress(record)
    writer.flush()
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_kill_9_mid_request_leaves_a_healthy_ledger_and_an_interrupted_row(ledger_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_SIDECAR, str(ledger_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    writer = LedgerWriter(ledger_path)
    writer.start()
    writer.close()
    assert writer.recovered == 1
    stored = fetch(ledger_path, "in-flight")
    assert stored.status is RequestStatus.INTERRUPTED
    assert stored.usage == Usage(input_tokens=500, cache_read_tokens=9000)
    assert stored.cost.nanos == 5_000_000
    db = open_ledger(ledger_path)
    assert check_integrity(db) == "ok"
    db.close()


# --- roll-ups ---------------------------------------------------------------------------------------------------

_ROLLUP_COLUMNS = (
    "requests, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_nanos, "
    "unpriced_requests, estimated_requests, imported_requests"
)
_FROM_REQUESTS = """
    SELECT substr(started_at, 1, 13) || ':00:00.000000Z', coalesce(requested_model, ''), coalesce(provider, ''),
           coalesce(project, ''), coalesce(session_id, ''), count(*), sum(input_tokens), sum(output_tokens),
           sum(cache_read_tokens), sum(cache_write_5m_tokens + cache_write_1h_tokens), coalesce(sum(cost_nanos), 0),
           sum(cost_nanos IS NULL), sum(cost_nanos IS NOT NULL AND price_quality = 'estimated'),
           sum(source NOT IN ('sidecar', 'gateway'))
    FROM requests WHERE status != 'pending' GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
"""

_records = st.builds(
    RequestRecord,
    started_at=st.datetimes(min_value=datetime(2025, 3, 1), max_value=datetime(2025, 3, 3), timezones=st.just(UTC)),
    requested_model=st.sampled_from([None, "claude-sonnet-4-5", "claude-haiku-4-5"]),
    provider=st.sampled_from([None, "anthropic", "groq"]),
    project=st.sampled_from([None, "/p/a", "/p/b"]),
    session_id=st.sampled_from([None, "s1", "s2"]),
    source=st.sampled_from(["sidecar", "claude-code"]),
    status=st.sampled_from(list(RequestStatus)),
    usage=st.builds(Usage, *(st.integers(0, 10_000) for _ in range(5))),
    cost=st.one_of(
        st.just(Cost(nanos=None, quality=PriceQuality.UNPRICED)),
        st.builds(Cost, nanos=st.integers(0, 10**9), quality=st.sampled_from(list(PriceQuality))),
    ),
)


@settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    inserts=st.lists(_records, min_size=1, max_size=25),
    updates=st.lists(st.tuples(st.integers(0, 1000), _records), max_size=15),
    moves=st.lists(st.tuples(st.integers(0, 1000), _records), max_size=10),
    deletes=st.lists(st.integers(0, 1000), max_size=5),
)
def test_rollups_always_equal_the_finished_rows_they_summarise(
    inserts: list[RequestRecord],
    updates: list[tuple[int, RequestRecord]],
    moves: list[tuple[int, RequestRecord]],
    deletes: list[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Pending rows stay out (m005); every way a row can change (finish, reopen, move to another hour, model,
    project or session by a direct UPDATE, delete) keeps the sums exact."""
    path = tmp_path_factory.mktemp("rollups") / "ledger.db"
    writer = LedgerWriter(path)
    writer.start()
    try:
        for record in inserts:
            writer.write_pending(record)
        for index, replacement in updates:  # a final write may move a row to another hour, model, project...
            replacement.id = inserts[index % len(inserts)].id
            writer.write_final(replacement)
            writer.write_progress(replacement)
        assert writer.flush()
    finally:
        writer.close()
    db = open_ledger(path)
    for index, moved in moves:  # the writer never changes these columns; another tool's UPDATE may
        db.execute(
            "UPDATE requests SET started_at = ?, requested_model = ?, project = ?, session_id = ?, status = ?, "
            "input_tokens = ?, cost_nanos = ? WHERE id = ?",
            [
                to_iso(moved.started_at),
                moved.requested_model,
                moved.project,
                moved.session_id,
                moved.status.value,
                moved.usage.input_tokens,
                moved.cost.nanos,
                inserts[index % len(inserts)].id,
            ],
        )
    for index in deletes:
        db.execute("DELETE FROM requests WHERE id = ?", [inserts[index % len(inserts)].id])
    expected = db.execute(_FROM_REQUESTS).fetchall()
    actual = db.execute(
        f"SELECT bucket, model, provider, project, session, {_ROLLUP_COLUMNS} FROM request_rollups "  # noqa: S608
        "ORDER BY 1, 2, 3, 4, 5"
    ).fetchall()
    db.close()
    assert actual == expected


def test_m005_takes_pending_rows_out_of_an_older_ledgers_rollups(ledger_path: Path) -> None:
    """A ledger written by a ccgate before m005 holds pending rows in its roll-ups; upgrading rebuilds them so
    reports, which add pending rows from `requests`, count each request once."""
    from older_ledger import insert_into_older_ledger, open_ledger_as_of

    from ccgate.storage.reports import cost_report

    old = open_ledger_as_of(ledger_path, "m004_drop_message_id_index")
    rows = [
        full_record(id=f"r{index}", started_at=T0 + timedelta(hours=index), status=status, cost=Cost(nanos, quality))
        for index, (status, nanos, quality) in enumerate(
            [
                (RequestStatus.PENDING, 5_000, PriceQuality.PRICED),
                (RequestStatus.OK, 7_000, PriceQuality.PRICED),
                (RequestStatus.INTERRUPTED, 11_000, PriceQuality.ESTIMATED),
            ]
        )
    ]
    insert_into_older_ledger(old, rows)
    assert old.execute("SELECT sum(requests), sum(cost_nanos) FROM request_rollups").fetchone() == (3, 23_000)
    assert "m005_rollups_without_pending_rows" not in applied_migrations(old)
    old.close()

    db = open_ledger(ledger_path)
    try:
        assert applied_migrations(db) == [function.__name__ for function in MIGRATIONS]
        assert db.execute("SELECT sum(requests), sum(cost_nanos) FROM request_rollups").fetchone() == (2, 18_000)
        day = cost_report(db, since=T0 - timedelta(hours=12), until=T0 + timedelta(hours=12), by=None).total
        assert (day.requests, day.cost_nanos) == (3, 23_000)
        db.execute("UPDATE requests SET status = 'ok' WHERE id = 'r0'")  # the pending request finishes
        assert db.execute("SELECT sum(requests), sum(cost_nanos) FROM request_rollups").fetchone() == (3, 23_000)
        day = cost_report(db, since=T0 - timedelta(hours=12), until=T0 + timedelta(hours=12), by=None).total
        assert (day.requests, day.cost_nanos) == (3, 23_000)
    finally:
        db.close()


# --- concurrent opening -----------------------------------------------------------------------------------------

_OPENER = textwrap.dedent(
    """
    import sys
    from ccgate.errors import LedgerError
    from ccgate.storage.ledger import open_ledger

    print("ready", flush=True)
    for line in sys.stdin:  # one ledger path per round; all openers get it at (nearly) the same moment
        try:
            db = open_ledger(__import__("pathlib").Path(line.strip()))
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
            db.close()
            print("ok", mode, flush=True)
        except LedgerError as error:
            print("error", error.message.replace("\\n", " "), flush=True)
    """
)


def test_eight_processes_opening_a_fresh_ledger_at_once_all_succeed(tmp_path: Path) -> None:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        for _ in range(8)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for round_number in range(10):
            path = tmp_path / f"round-{round_number}" / "ledger.db"
            for child in children:
                assert child.stdin is not None
                child.stdin.write(f"{path}\n")
                child.stdin.flush()
            answers = [child.stdout.readline().strip() for child in children if child.stdout is not None]
            assert answers == ["ok wal"] * 8, (round_number, answers)
            db = open_ledger(path)
            assert applied_migrations(db) == [function.__name__ for function in MIGRATIONS]
            assert db.execute("SELECT count(*) FROM _migrations").fetchone()[0] == len(MIGRATIONS)
            db.close()
    finally:
        for child in children:
            if child.stdin is not None:
                child.stdin.close()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(child.pid, signal.SIGKILL)
                child.wait(timeout=30)
            if child.stdout is not None:
                child.stdout.close()


def test_every_ledger_connection_waits_for_locks(ledger_path: Path) -> None:
    db = open_ledger(ledger_path)
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == int(ledger_module.BUSY_TIMEOUT_S * 1000)
    db.close()


def test_request_ids_are_unique_uuids_that_sort_by_creation() -> None:
    import time
    import uuid

    from ccgate.core.records import new_request_id

    first = [new_request_id() for _ in range(20_000)]
    time.sleep(0.002)  # the next millisecond at least
    later = new_request_id()
    assert len(set(first)) == len(first)
    parsed = uuid.UUID(later)
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122) and str(parsed) == later
    assert all(earlier < later for earlier in first)  # text order is time order: the index grows at one end
    assert abs((parsed.int >> 80) - time.time_ns() // 1_000_000) < 5_000


def test_request_ids_stay_unique_across_threads_and_a_fork() -> None:
    """The random bits come from a shared pool: threads must not share a slice, nor a forked child its parent's."""
    import threading

    from ccgate.core.records import new_request_id

    per_thread: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_request_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [request_id for out in per_thread for request_id in out]
    assert len(set(every)) == len(every) == 20_000

    if not hasattr(os, "fork"):
        return
    new_request_id()  # the pool now holds unused random bytes that a child would inherit
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        os.write(write_end, "\n".join(new_request_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write_end)
    parent_ids = {new_request_id()[-20:] for _ in range(50)}
    with os.fdopen(read_end, "rb") as pipe:
        child_ids = {line[-20:] for line in pipe.read().decode().splitlines()}
    os.waitpid(child, 0)
    assert len(child_ids) == 50 and not parent_ids & child_ids
