"""The ledger writer when the disk is full: requests wait in memory, bounded, and land once there is room again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.storage.ledger import open_ledger, row_to_record
from ccgate.storage.writer import MAX_BACKLOG, RETRY_SECONDS, LedgerWriter

if TYPE_CHECKING:
    from sqlite_utils import Database

# Each row carries more text than a page holds, so every write needs pages the file does not have yet.
BULKY = "x" * 6000


class FullDisk(LedgerWriter):
    """A writer whose ledger may not grow while `full` is set: SQLite's own `max_page_count` limit, so commits
    fail inside SQLite with SQLITE_FULL ("database or disk is full"), as on a disk with no space left."""

    full = False
    _roomy: int | None = None

    def _commit_rows(self, db: Database, rows: list[tuple[object, ...]]) -> None:
        conn = db.conn
        if self._roomy is None:
            self._roomy = int(conn.execute("PRAGMA max_page_count").fetchone()[0])
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0]) if self.full else self._roomy
        conn.execute(f"PRAGMA max_page_count = {pages}")
        super()._commit_rows(db, rows)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "ledger.db"


@pytest.fixture
def make_writer(ledger_path: Path) -> Iterator[Callable[..., FullDisk]]:
    writers: list[FullDisk] = []

    def make(*, max_backlog: int = MAX_BACKLOG, retry_seconds: float = RETRY_SECONDS) -> FullDisk:
        writer = FullDisk(ledger_path, max_backlog=max_backlog, retry_seconds=retry_seconds)
        writer.start()
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        writer.close()


def request(number: int) -> RequestRecord:
    return RequestRecord(requested_model="claude-haiku-4-5", error_message=f"{number} {BULKY}")


def finish(record: RequestRecord, number: int) -> None:
    record.status = RequestStatus.OK
    record.http_status = 200
    record.usage = Usage(input_tokens=100 + number, output_tokens=20)
    record.cost = Cost(nanos=1000 + number, quality=PriceQuality.PRICED)


def stored(path: Path) -> dict[str, RequestRecord]:
    db = open_ledger(path)
    try:
        return {row["id"]: row_to_record(row) for row in db.query("SELECT * FROM requests")}
    finally:
        db.close()


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_no_request_is_lost_while_the_disk_is_full(
    make_writer: Callable[..., FullDisk], ledger_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = make_writer(retry_seconds=0.2)
    writer.full = True
    records = [request(number) for number in range(30)]
    with caplog.at_level(logging.INFO, logger="ccgate.storage.writer"):
        for record in records:
            writer.write_pending(record)
        assert writer.flush()
        for number, record in enumerate(records):  # each request's later states join the one kept in memory
            finish(record, number)
            writer.write_progress(record)
            writer.write_final(record)
            writer.write_progress(record)  # a late progress write never reopens the finished request
        assert writer.flush()
        time.sleep(0.5)  # a few retries while the disk stays full
        assert (writer.unsaved, writer.dropped, writer.failed_writes) == (30, 0, 0)
        assert writer.last_error == "database or disk is full (SQLITE_FULL)"
        assert stored(ledger_path) == {}

        writer.full = False  # space is back: the next retry lands everything, with no new write to prompt it
        wait_for(lambda: writer.unsaved == 0)
    rows = stored(ledger_path)
    assert set(rows) == {record.id for record in records}
    for number, record in enumerate(records):
        row = rows[record.id]
        assert row.status is RequestStatus.OK and row.usage.input_tokens == 100 + number
        assert row.cost.nanos == 1000 + number and row.error_message == record.error_message
    assert writer.dropped == 0
    # one line when writes start failing and one when they work again: no traceback per row, none per retry
    lines = [entry for entry in caplog.records if entry.name == "ccgate.storage.writer"]
    assert [entry.levelno for entry in lines] == [logging.ERROR, logging.WARNING], caplog.text
    assert "database or disk is full" in lines[0].getMessage() and "keeping" in lines[0].getMessage()
    assert "work again" in lines[1].getMessage()
    assert not any(entry.exc_info for entry in lines)


def test_the_backlog_is_bounded_and_drops_the_oldest(
    make_writer: Callable[..., FullDisk], ledger_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = make_writer(max_backlog=5, retry_seconds=3600)  # no retry before close
    writer.full = True
    records = [request(number) for number in range(8)]
    with caplog.at_level(logging.WARNING, logger="ccgate.storage.writer"):
        for number, record in enumerate(records):
            finish(record, number)
            writer.write_final(record)
            assert writer.flush()
        assert (writer.unsaved, writer.dropped) == (5, 3)
        assert caplog.text.count("dropping the oldest") == 1
        writer.full = False
        writer.close()  # tries once more: the five kept land
    assert set(stored(ledger_path)) == {record.id for record in records[3:]}
    assert (writer.unsaved, writer.dropped) == (0, 3)


def test_what_the_ledger_still_refuses_at_close_is_counted_as_lost(
    make_writer: Callable[..., FullDisk], ledger_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = make_writer()
    writer.full = True
    for number in range(3):
        writer.write_final(request(number))
    with caplog.at_level(logging.ERROR, logger="ccgate.storage.writer"):
        writer.close()
    assert (writer.unsaved, writer.dropped) == (0, 3)
    assert "3 request(s) it could not write are lost" in caplog.text
    assert stored(ledger_path) == {}


def test_a_row_with_an_unstorable_value_waits_too_and_is_salvaged_once_there_is_room(
    make_writer: Callable[..., FullDisk], ledger_path: Path
) -> None:
    """The unstorable value fails first (before SQLite looks for space): it must not get the rows beside it
    dropped, nor be dropped itself while the disk is full."""
    writer = make_writer(retry_seconds=0.2)
    writer.full = True
    bad = request(1)
    bad.status = RequestStatus.OK
    bad.usage = Usage(input_tokens=2**64)
    good = request(2)
    writer.write_final(bad)
    writer.write_final(good)
    assert writer.flush()
    assert (writer.unsaved, writer.dropped, writer.salvaged_writes) == (2, 0, 0)
    writer.full = False
    wait_for(lambda: writer.unsaved == 0)
    rows = stored(ledger_path)
    assert set(rows) == {bad.id, good.id}
    assert rows[bad.id].usage.input_tokens > 0 and "input_tokens" in (rows[bad.id].cost.note or "")
    assert (writer.dropped, writer.salvaged_writes) == (0, 1)


def test_a_spill_at_close_is_replayed_at_the_next_start_and_deleted_only_once_committed(
    ledger_path: Path, tmp_path: Path
) -> None:
    spill_dir = tmp_path / "run" / "spill"
    first = FullDisk(ledger_path, spill_dirs=[tmp_path / "not-a-dir" / "x", spill_dir])
    (tmp_path / "not-a-dir").write_text("a file where a directory would go")  # the first location fails
    first.start()
    first.full = True
    done, unfinished = request(1), request(2)
    finish(done, 1)
    first.write_final(done)
    first.write_pending(unfinished)  # never finished: replayed as interrupted, as a crash would leave it
    first.close()
    assert first.spilled[0] == 2 and first.spilled[1] is not None and first.spilled[1].parent == spill_dir
    assert (first.dropped, first.lost_at_close) == (0, 0)
    (spill_file,) = spill_dir.glob("ledger-spill-*.jsonl")
    assert spill_file.stat().st_mode & 0o777 == 0o600 and stored(ledger_path) == {}

    class StillFull(FullDisk):
        full = True

    second = StillFull(ledger_path, spill_dirs=[spill_dir], retry_seconds=0.2)
    second.start()  # the disk is still full: the replayed requests wait in memory, the file stays
    try:
        assert (second.replayed, second.unsaved) == (2, 2)
        assert {record.id for record in second.unsaved_records()} == {done.id, unfinished.id}
        assert spill_file.exists()
        second.full = False
        wait_for(lambda: second.unsaved == 0)
        assert not spill_file.exists()
    finally:
        second.close()
    rows = stored(ledger_path)
    assert rows[done.id].status is RequestStatus.OK and rows[done.id].cost.nanos == 1001
    assert rows[unfinished.id].status is RequestStatus.INTERRUPTED and rows[unfinished.id].ended_at is not None

    third = FullDisk(ledger_path, spill_dirs=[spill_dir])  # nothing left to replay: idempotent, no duplicates
    third.start()
    third.close()
    assert third.replayed == 0 and stored(ledger_path) == rows


def test_requests_only_in_memory_count_towards_budgets(ledger_path: Path) -> None:
    """Their spend is added to the ledger's, less what the ledger holds of an earlier state of the same request."""
    from datetime import timedelta

    from ccgate.core.records import utcnow
    from ccgate.sidecar.app import unsaved_spend

    record = request(1)
    record.cost = Cost(nanos=400, quality=PriceQuality.PRICED)
    writer = LedgerWriter(ledger_path)
    writer.start()
    writer.write_progress(record)  # the ledger holds 400 of it
    writer.close()
    finish(record, 5000)  # 6000 in memory now
    elsewhere = request(2)
    elsewhere.project = "/other"
    finish(elsewhere, 1)
    db = open_ledger(ledger_path)
    try:
        now = utcnow()
        window = {"since": now - timedelta(hours=1), "until": now + timedelta(hours=1)}
        assert unsaved_spend(db, [record, elsewhere], project=None, **window) == 6000 - 400 + 1001
        assert unsaved_spend(db, [record, elsewhere], project="/other", **window) == 1001
        assert (
            unsaved_spend(db, [record], since=now + timedelta(hours=1), until=now + timedelta(hours=2), project=None)
            == 0
        )
    finally:
        db.close()
