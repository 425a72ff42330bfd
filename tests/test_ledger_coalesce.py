"""The writer merges a request's queued writes into one statement without losing or regressing anything."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccgate.core.records import RequestRecord, RequestStatus, Usage, to_iso
from ccgate.storage.ledger import open_ledger
from ccgate.storage.writer import LedgerWriter, _coalesce, _statement_sizes, _Write

T0 = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)


def test_coalesce_keeps_the_latest_state_with_the_strongest_statement() -> None:
    a0, b0 = RequestRecord(), RequestRecord()
    a1 = a0.copy()
    a1.usage = Usage(input_tokens=5)
    a2 = a1.copy()
    a2.status = RequestStatus.OK
    b1 = b0.copy()
    b1.usage = Usage(input_tokens=9)
    merged = _coalesce(
        [
            _Write("pending", a0),
            _Write("pending", b0),
            _Write("progress", a1),
            _Write("final", a2),
            _Write("progress", b1),
        ]
    )
    assert [(w.kind, w.record.id) for w in merged] == [("final", a0.id), ("pending", b0.id)]
    assert merged[0].record.status is RequestStatus.OK
    assert merged[1].record.usage.input_tokens == 9
    # a progress write that arrives after the final one does not reopen the row
    late = _coalesce([_Write("final", a2), _Write("progress", a1)])
    assert late == [_Write("final", a2)]


def test_writer_lands_every_request_once_in_its_final_state(tmp_path: Path) -> None:
    writer = LedgerWriter(tmp_path / "ledger.db")
    writer.start()
    ids = []
    for index in range(300):
        record = RequestRecord(requested_model="m")
        writer.write_pending(record)
        record.usage = Usage(input_tokens=index)
        writer.write_progress(record)
        if index % 3:
            record.status = RequestStatus.OK
            record.usage = Usage(input_tokens=index, output_tokens=1)
            writer.write_final(record)
        ids.append(record.id)
    writer.close()
    db = open_ledger(tmp_path / "ledger.db")
    rows = {row["id"]: row for row in db.query("select id, status, input_tokens, output_tokens from requests")}
    db.close()
    assert set(rows) == set(ids)
    for index, request_id in enumerate(ids):
        row = rows[request_id]
        assert row["input_tokens"] == index
        assert (row["status"], row["output_tokens"]) == (("ok", 1) if index % 3 else ("pending", 0))


_KINDS = ("pending", "progress", "final")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.tuples(st.sampled_from((*_KINDS, "commit")), st.integers(0, 3), st.integers(0, 10_000)), max_size=40
    )
)
def test_batches_land_as_if_every_write_were_applied_in_order(tmp_path: Path, ops: list[tuple[str, int, int]]) -> None:
    """Whatever lands in one transaction, and in whatever order, the rows equal writing each one by one:
    a pending or progress write fills in a row that is still pending (or creates it), a final write always
    lands, and nothing regresses a finished row."""
    db = open_ledger(tmp_path / f"{uuid.uuid4()}.db")
    writer = LedgerWriter(tmp_path / "unused.db")
    requests = [RequestRecord(started_at=T0, session_id=f"s{n}", project="/p", requested_model="m") for n in range(4)]
    model: dict[str, tuple[str, int]] = {}
    batch: list[_Write] = []
    try:
        for kind, index, tokens in [*ops, ("commit", 0, 0)]:
            if kind == "commit":
                if batch:
                    writer._commit(db, _coalesce(batch))
                batch = []
                continue
            record = requests[index].copy()
            record.usage = Usage(input_tokens=tokens)
            record.status = RequestStatus.OK if kind == "final" else RequestStatus.PENDING
            batch.append(_Write(kind, record))  # type: ignore[arg-type]
            current = model.get(record.id)
            if current is None or current[0] == "pending" or kind == "final":
                model[record.id] = (record.status.value, tokens)
        rows = {
            row[0]: row[1:]
            for row in db.execute("SELECT id, status, input_tokens, session_id, project, started_at FROM requests")
        }
        assert {key: value[:2] for key, value in rows.items()} == model
        for request in requests:
            if request.id in rows:
                assert rows[request.id][2:] == (request.session_id, "/p", to_iso(T0))
    finally:
        db.close()


def test_a_transaction_with_more_rows_than_one_statement_takes(tmp_path: Path) -> None:
    writer = LedgerWriter(tmp_path / "unused.db")
    db = open_ledger(tmp_path / "ledger.db")
    try:
        db.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # SQLite before 3.32
        assert writer._rows_per_statement(db.conn) == 16  # 30 rows fit; statements hold powers of two
        records = [RequestRecord(started_at=T0, usage=Usage(input_tokens=n)) for n in range(100)]
        writer._commit(db, [_Write("pending", record) for record in records])
        assert writer.commits == 1
        assert db.execute("SELECT count(*), sum(input_tokens) FROM requests").fetchone() == (100, sum(range(100)))
    finally:
        db.close()


def test_statement_sizes_are_powers_of_two_that_add_up() -> None:
    assert list(_statement_sizes(14, 64)) == [8, 4, 2]
    assert list(_statement_sizes(100, 16)) == [16] * 6 + [4]
    assert list(_statement_sizes(0, 64)) == []
    for total in range(300):
        sizes = list(_statement_sizes(total, 64))
        assert sum(sizes) == total and all(size & (size - 1) == 0 and size <= 64 for size in sizes)
