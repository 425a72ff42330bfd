"""The writer merges a request's queued writes into one statement without losing or regressing anything."""

from __future__ import annotations

from pathlib import Path

from ccgate.models import RequestRecord, RequestStatus, Usage
from ccgate.storage.ledger import open_ledger
from ccgate.storage.writer import LedgerWriter, _coalesce, _Write


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
