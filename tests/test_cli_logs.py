"""`ccgate logs`: recent requests from the ledger, filtered, as lines or JSON, and followed live."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from ccgate.cli import app
from ccgate.cli._app import reset_context
from ccgate.core.records import Attempt, Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.local.paths import resolve_paths
from ccgate.storage.ledger import COLUMNS, insert_records, open_ledger
from ccgate.storage.writer import LedgerWriter

CCGATE = Path(sys.executable).parent / "ccgate"


@pytest.fixture(autouse=True)
def utc_local_time() -> Iterator[None]:
    original = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if original is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = original
    time.tzset()


def record(minute: int, **fields: object) -> RequestRecord:
    entry = RequestRecord(
        id=f"req-{minute}",
        started_at=datetime(2025, 3, 4, 9, minute, 5, tzinfo=UTC),
        session_id="sess-a",
        requested_model="claude-haiku-4-5",
        provider="groq",
        routed_model="llama-3.3-70b-versatile",
        status=RequestStatus.OK,
        http_status=200,
        usage=Usage(input_tokens=1234, output_tokens=56, cache_read_tokens=7890),
        cost=Cost(nanos=1_234_500, quality=PriceQuality.PRICED),
        latency_ms=1530.0,
        attempts=(Attempt("groq", "llama-3.3-70b-versatile", 200),),
    )
    for name, value in fields.items():
        setattr(entry, name, value)
    return entry


def seed(*records: RequestRecord) -> None:
    db = open_ledger(resolve_paths().ensure().ledger_file)
    insert_records(db, records)
    db.close()


def invoke(*args: str) -> Result:
    reset_context()
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    reset_context()
    return result


def test_lines_show_time_status_latency_cost_tokens_and_route() -> None:
    seed(
        record(1),
        record(2, requested_model="claude-sonnet-4-5", provider="anthropic", routed_model="claude-sonnet-4-5"),
        record(3, status=RequestStatus.ERROR, http_status=529, error_type="overloaded_error"),
    )
    result = invoke("logs", "-n", "2")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2025-03-04 09:02:05  ok")
    assert "claude-sonnet-4-5" in lines[0] and "→" not in lines[0]
    assert "error" in lines[1] and "529" in lines[1] and "overloaded_error" in lines[1]
    assert "claude-haiku-4-5 → groq/llama-3.3-70b-versatile" in lines[1]
    assert "1.5s" in lines[1] and "$0.0012" in lines[1] and "in 1,234 out 56 cache 7,890r/0w" in lines[1]


def test_json_lines_carry_the_ledger_columns() -> None:
    seed(record(1), record(2, cost=Cost(nanos=None, quality=PriceQuality.UNPRICED)))
    result = invoke("logs", "--json")
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [row["id"] for row in rows] == ["req-1", "req-2"]
    assert set(COLUMNS) <= set(rows[0])
    assert rows[0]["attempts"] == [
        {"provider": "groq", "model": "llama-3.3-70b-versatile", "status": 200, "error": None}
    ]
    assert rows[0]["cost_usd"] == "0.001234500" and rows[1]["cost_usd"] is None
    assert rows[0]["started_at"] == "2025-03-04T09:01:05.000000Z"


def test_errors_and_session_filters() -> None:
    seed(
        record(1),
        record(2, status=RequestStatus.INTERRUPTED),
        record(3, session_id="sess-b", status=RequestStatus.ERROR, http_status=401),
    )
    errors = [json.loads(line)["id"] for line in invoke("logs", "--errors", "--json").output.splitlines()]
    assert errors == ["req-2", "req-3"]
    session = [json.loads(line)["id"] for line in invoke("logs", "--session", "sess-a", "--json").output.splitlines()]
    assert session == ["req-1", "req-2"]


def test_empty_ledger_says_so() -> None:
    result = invoke("logs")
    assert result.exit_code == 0
    assert "No requests recorded yet" in result.output


def _reader(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)


def test_follow_prints_requests_as_they_finish_and_stops_on_ctrl_c(isolated_home: Path) -> None:
    seed(record(1))
    env = {**os.environ, "CCGATE_HOME": str(isolated_home), "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [str(CCGATE), "logs", "-f", "--json", "-n", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert child.stdout is not None
    threading.Thread(target=_reader, args=(child.stdout, lines), daemon=True).start()
    writer = LedgerWriter(resolve_paths().ledger_file)
    try:
        assert json.loads(lines.get(timeout=30))["id"] == "req-1"
        writer.start()
        live = record(30, id="live", status=RequestStatus.PENDING, http_status=None)
        writer.write_pending(live)
        assert writer.flush()
        live.status, live.http_status = RequestStatus.OK, 200
        writer.write_final(live)
        assert writer.flush()
        shown = json.loads(lines.get(timeout=30))
        assert shown["id"] == "live" and shown["status"] == "ok"  # printed once finished, not while pending
    finally:
        writer.close()
        child.send_signal(signal.SIGINT)
        code = child.wait(timeout=30)
    assert code == 0
    assert child.stderr is not None
    stderr = child.stderr.read()
    child.stderr.close()
    assert "Traceback" not in stderr
    assert lines.empty()  # the pending row was not printed on its own
