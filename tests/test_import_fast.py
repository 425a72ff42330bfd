"""`import claude-code`'s fast paths give what the plain ones give: msgspec's narrow reading against the full
reading of every line, rows built directly against `to_record`, bulk inserts and parallel reading against
row-by-row, and resuming a transcript where the last run stopped against importing it afresh."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_main as run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccgate.core.pricing import PriceCatalog
from ccgate.core.records import Usage
from ccgate.core.settings import PriceOverride
from ccgate.core.usage import MAX_TOKENS
from ccgate.features import importer
from ccgate.features.importer import (
    Importer,
    ImportStats,
    ProjectResolver,
    _check_line,
    _Malformed,
    import_id,
    read_transcripts,
    to_record,
)
from ccgate.local.paths import resolve_paths
from ccgate.storage import importing
from ccgate.storage.ledger import COLUMNS, insert_records, open_ledger

MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1", "no-such-model-x", "<synthetic>")


def line(
    n: int,
    *,
    message_id: str | None = None,
    output: Any = 10,
    model: str = "claude-sonnet-4-5",
    usage: dict[str, Any] | None = None,
    hour: int = 9,
    session: str = "s-1",
    cwd: str = "/w/app",
) -> str:
    """An assistant line as Claude Code writes it, with a long content block as real ones have."""
    body = (
        usage
        if usage is not None
        else {
            "input_tokens": 100 + n,
            "output_tokens": output,
            "cache_read_input_tokens": 1000 * n,
            "cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100},
            "service_tier": "standard",
        }
    )
    return json.dumps(
        {
            "type": "assistant",
            "sessionId": session,
            "cwd": cwd,
            "requestId": f"req_{n}",
            "timestamp": f"2026-03-0{1 + n % 5}T{hour:02d}:{n % 60:02d}:00.{n % 1000:03d}Z",
            "message": {
                "id": message_id or f"msg_{n}",
                "model": model,
                "role": "assistant",
                "content": [{"type": "text", "text": "y" * (50 + n % 7)}],
                "usage": body,
            },
        }
    )


def user_line(n: int) -> str:
    return json.dumps({"type": "user", "sessionId": "s-1", "message": {"role": "user", "content": "x" * n}})


def corpus(root: Path, files: int = 6, replies: int = 40) -> Path:
    """Transcripts with replies on several lines (output growing), replies repeated across files, odd models."""
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        lines = []
        for r in range(replies):
            n = f * replies + r
            for block in range(1 + n % 3):
                lines.append(line(n, output=10 * (block + 1), model=MODELS[n % 4], hour=n % 24))
            lines.append(user_line(n))
        lines.append(line(3, output=5))  # a copy of a reply from the first file, with less output
        (root / f"session-{f}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def import_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, root: Path) -> dict[str, Any]:
    code, out, err = run(capsys, monkeypatch, "import", "claude-code", "--path", str(root), "--json")
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def ledger_state(ledger: Path | None = None) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every request row (all columns, by id) and every roll-up row."""
    conn = sqlite3.connect(ledger or resolve_paths().ledger_file)
    try:
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM requests ORDER BY id").fetchall()  # noqa: S608
        rollups = conn.execute("SELECT * FROM request_rollups ORDER BY 1, 2, 3, 4, 5").fetchall()
    finally:
        conn.close()
    return rows, rollups


def recomputed_rollups(ledger: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(ledger)
    try:
        return conn.execute(
            """
            SELECT substr(started_at, 1, 13) || ':00:00.000000Z', coalesce(requested_model, ''),
                   coalesce(provider, ''), coalesce(project, ''), coalesce(session_id, ''),
                   count(*), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens),
                   sum(cache_write_5m_tokens + cache_write_1h_tokens), coalesce(sum(cost_nanos), 0),
                   sum(cost_nanos IS NULL), sum(cost_nanos IS NOT NULL AND price_quality = 'estimated'),
                   sum(source NOT IN ('sidecar', 'gateway'))
            FROM requests WHERE status != 'pending' GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
            """
        ).fetchall()
    finally:
        conn.close()


def reference_rows(root: Path) -> list[tuple[Any, ...]]:
    """The rows the importer made before it had fast paths: `to_record` and `insert_records`, into a fresh ledger."""
    ledger = root.parent / "reference-ledger.db"
    stats = ImportStats()
    entries = read_transcripts(sorted(root.rglob("*.jsonl")), stats)
    catalog, projects = PriceCatalog({}), ProjectResolver()
    db = open_ledger(ledger)
    try:
        insert_records(db, [to_record(entry, catalog, projects(entry.cwd)) for entry in entries.values()])
    finally:
        db.close()
    rows, _rollups = ledger_state(ledger)
    return rows


# ------------------------------------------------------------------------------------------- reading lines


_count = st.one_of(
    st.integers(-3, 10**6),
    st.integers(2**63, 2**70),
    st.sampled_from([None, True, 2.0, 2.5, 1e30, "7", float("nan")]),
)
_text = st.one_of(st.sampled_from(["", "x", "msg_\ud800", 7, None, "msg_é"]), st.text(max_size=5))


@st.composite
def odd_lines(draw: st.DrawFn) -> bytes:
    usage: dict[str, Any] = {}
    for key in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        if draw(st.booleans()):
            usage[key] = draw(_count)
    if draw(st.booleans()):
        usage["cache_creation"] = draw(
            st.one_of(st.none(), st.just([1]), st.fixed_dictionaries({"ephemeral_1h_input_tokens": _count}))
        )
    if draw(st.booleans()):
        usage["server_tool_use"] = {"web_search_requests": draw(_count)}
    if draw(st.booleans()):
        usage["speed"] = draw(st.sampled_from(["fast", "standard", 3, None]))
    message: Any = {
        "id": draw(st.one_of(st.just("msg_same"), _text)),
        "model": draw(st.one_of(st.sampled_from(MODELS), _text)),
        "usage": draw(st.one_of(st.just(usage), st.sampled_from([None, [], "u"]))),
    }
    if draw(st.booleans()):
        message = draw(st.sampled_from([None, "m", [message]]))
    raw: dict[str, Any] = {
        "type": draw(st.sampled_from(["assistant", "assistant", "user", 3])),
        "message": message,
        "requestId": draw(st.one_of(st.just("req_same"), _text)),
        "sessionId": draw(_text),
        "cwd": draw(_text),
        "timestamp": draw(st.sampled_from(["2026-03-01T10:00:00Z", "0001-01-01T00:00+01:00", "", "now", 5])),
        "content": draw(st.sampled_from(["plain", "assistant", "\ud800", "é"])),
    }
    if draw(st.booleans()):  # a line that is fine but for what the mutation below does
        usage = {"input_tokens": draw(st.integers(0, 9)), "output_tokens": draw(st.integers(0, 9))}
        message = {"id": draw(st.sampled_from(["msg_same", "msg_other"])), "model": "claude-haiku-4-5", "usage": usage}
        raw.update(type="assistant", message=message, timestamp="2026-03-01T10:00:00Z")
    data = json.dumps(raw, allow_nan=True).encode()
    mutation = draw(st.sampled_from(["none", "none", "bad-utf8", "raw-surrogate", "truncate", "crlf", "array"]))
    if mutation == "bad-utf8":
        data = data.replace(b'"content": "', b'"content": "\xff')
    elif mutation == "raw-surrogate":
        data = data.replace(b'"content": "', b'"content": "\xed\xa0\x80')
    elif mutation == "truncate":
        data = data[: draw(st.integers(1, len(data)))]
    elif mutation == "crlf":
        data += b"\r"
    elif mutation == "array":
        data = b"[" + data + b"]"
    return data


def reference_read(data: bytes) -> tuple[dict[str, int], dict[tuple[str, str | None], Any]]:
    """The importer's reading before its fast path: every line split on newlines and checked in full."""
    counts = {"entries": 0, "duplicates": 0, "malformed": 0, "synthetic": 0}
    best: dict[tuple[str, str | None], Any] = {}
    for piece in data.split(b"\n"):
        stripped = piece.strip()
        if b'"assistant"' not in piece and (not stripped or (stripped[:1] == b"{" and stripped[-1:] == b"}")):
            continue
        try:
            checked = _check_line(piece)
        except _Malformed:
            counts["malformed"] += 1
            continue
        if checked is None:
            continue
        if isinstance(checked, str):
            counts["synthetic"] += 1
            continue
        counts["entries"] += 1
        key = (checked[0], checked[1])
        if key in best:
            counts["duplicates"] += 1
            if checked[7] <= best[key][7]:
                continue
        best[key] = checked
    return counts, best


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(odd_lines(), min_size=1, max_size=6), trailing_newline=st.booleans())
def test_narrow_reading_agrees_with_reading_every_line_in_full(
    lines: list[bytes], trailing_newline: bool, tmp_path: Path
) -> None:
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    transcript = tmp_path / "odd.jsonl"
    transcript.write_bytes(data)
    counts, best = reference_read(data)
    default = importer.MIN_AVERAGE_LINE
    try:
        for shortest in (1, default, 10**9):  # read at once whenever possible; as by default; always line by line
            importer.MIN_AVERAGE_LINE = shortest
            stats = ImportStats()
            entries = read_transcripts([transcript], stats)
            assert {name: getattr(stats, name) for name in counts} == counts
            assert stats.lines == len(data.split(b"\n")) - (1 if trailing_newline else 0)
            assert list(entries) == list(best)
            for key, entry in entries.items():
                expected = importer._entry(best[key])
                assert entry == expected
    finally:
        importer.MIN_AVERAGE_LINE = default


def test_fast_ids_are_uuid5_ids() -> None:
    for message_id, request_id in [("msg_1", "req_1"), ("msg_é\u2028", None), ("", ""), ("m" * 500, "r")]:
        assert importer._fast_import_id(message_id, request_id) == import_id(message_id, request_id)


# ------------------------------------------------------------------------------------------- rows and roll-ups


def test_rows_and_rollups_equal_the_record_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every column of every imported row, priced, unpriced, fast mode, web searches, clamped counts."""
    root = corpus(tmp_path / "projects")
    extra = [
        line(900, usage={"input_tokens": 5, "output_tokens": 6, "speed": "fast"}, model="claude-opus-4-6"),
        line(901, usage={"input_tokens": 5, "output_tokens": 2**40, "server_tool_use": {"web_search_requests": 3}}),
        line(902, usage={"input_tokens": 1, "output_tokens": 1}, model="some-local-model"),
    ]
    (root / "extra.jsonl").write_text("\n".join(extra))  # no newline at the end
    monkeypatch.setattr(importing, "BULK_MIN_ROWS", 1)  # the bulk path even for a small import
    import_json(capsys, monkeypatch, root)
    rows, rollups = ledger_state()
    assert rows == reference_rows(root)
    assert rollups == recomputed_rollups(resolve_paths().ledger_file)
    assert len(rows) > 200


def test_bulk_insert_adds_into_existing_rollups_and_puts_trigger_and_indexes_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus

    ledger = resolve_paths().ledger_file
    db = open_ledger(ledger)
    try:
        # a sidecar row in the same hour, model, project and session as imported ones
        insert_records(
            db,
            [
                RequestRecord(
                    started_at=datetime(2026, 3, 2, 1, 1, tzinfo=UTC),
                    requested_model="claude-haiku-4-5",
                    provider="anthropic",
                    project="/w/app",
                    session_id="s-1",
                    status=RequestStatus.OK,
                    usage=Usage(input_tokens=7, output_tokens=8),
                    cost=Cost(nanos=1234, quality=PriceQuality.PRICED),
                )
            ],
        )
        schema = sorted(db.execute("SELECT type, name, sql FROM sqlite_master").fetchall())
    finally:
        db.close()
    monkeypatch.setattr(importing, "BULK_MIN_ROWS", 1)
    import_json(capsys, monkeypatch, corpus(tmp_path / "projects"))
    conn = sqlite3.connect(ledger)
    try:
        assert sorted(conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()) == schema
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    assert ledger_state()[1] == recomputed_rollups(ledger)


def test_a_changed_rollup_trigger_is_left_to_do_its_own_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grouped upsert stands in for the trigger only while the trigger is the one it was written against."""
    ledger = resolve_paths().ledger_file
    db = open_ledger(ledger)
    try:
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'requests_rollup_insert'").fetchone()
        db.execute("DROP TRIGGER requests_rollup_insert")
        db.execute(sql.replace("BEGIN", "BEGIN\n", 1))  # the same work, other text: a later migration's
        db.conn.commit()
    finally:
        db.close()
    monkeypatch.setattr(importing, "BULK_MIN_ROWS", 1)
    import_json(capsys, monkeypatch, corpus(tmp_path / "projects"))
    conn = sqlite3.connect(ledger)
    try:
        (kept,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'requests_rollup_insert'").fetchone()
    finally:
        conn.close()
    assert kept == sql.replace("BEGIN", "BEGIN\n", 1)
    assert ledger_state()[1] == recomputed_rollups(ledger)  # counted once, by the trigger


def test_parallel_reading_gives_what_reading_in_one_process_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importer.default_workers() == 1 and sys.platform != "linux":
        pytest.skip("worker processes are forked on Linux only")
    root = corpus(tmp_path / "projects", files=9)
    files = sorted(root.rglob("*.jsonl"))
    monkeypatch.setattr(importer, "PARALLEL_MIN_BYTES", 0)
    results = []
    for workers in (1, 3):
        ledger = tmp_path / f"ledger-{workers}.db"
        db = open_ledger(ledger)
        try:
            stats = Importer(db=db, catalog=PriceCatalog({}), workers=workers).run(files)
        finally:
            db.close()
        results.append((stats, ledger_state(ledger)))
    (one, state_one), (three, state_three) = results
    assert one == three and state_one == state_three
    assert one.imported == len(state_one[0]) > 200


@pytest.mark.skipif(sys.platform != "linux", reason="worker processes are forked on Linux only")
@pytest.mark.parametrize(
    ("cpus", "load", "workers"), [(2, 0.1, 2), (2, 0.6, 2), (2, 1.2, 1), (2, 6.0, 1), (8, 2.0, 6), (16, 0, 8)]
)
def test_one_worker_per_idle_cpu(cpus: int, load: float, workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cpus)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert importer.default_workers() == workers


# ------------------------------------------------------------------------------------------- re-runs and resuming


def clean_import(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> list[tuple[Any, ...]]:
    """The rows a first import of `root` as it is now makes, in a home of its own."""
    home = tmp_path / "clean-home"
    shutil.rmtree(home, ignore_errors=True)
    monkeypatch.setenv("CCGATE_HOME", str(home))
    try:
        import_json(capsys, monkeypatch, root)
        return ledger_state()[0]
    finally:
        monkeypatch.undo()


def test_grown_truncated_replaced_and_rewritten_transcripts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = corpus(tmp_path / "projects", files=4)
    home = os.environ["CCGATE_HOME"]
    grown, truncated, replaced, rewritten = sorted(root.glob("*.jsonl"))
    first = import_json(capsys, monkeypatch, root)
    assert first["files"] == 4

    # grew: only the new bytes are read (new replies, one of them a line still being written)
    appended = "\n".join([line(700), line(701)[:40]])
    with grown.open("a") as handle:
        handle.write(appended)
    before = truncated.read_text()
    truncated.write_text("\n".join(before.splitlines()[:9]) + "\n" + line(702) + "\n")
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_text(replaced.read_text() + line(703) + "\n")
    fresh.replace(replaced)  # same name, another inode
    overwritten = rewritten.read_text()
    with rewritten.open("r+b") as binary:  # same inode, grown, but the bytes already read are not the same
        binary.seek(0)
        binary.write(line(704, message_id="msg_704").encode() + b"\n")
        binary.seek(0, os.SEEK_END)
        binary.write(line(705).encode() + b"\n")

    monkeypatch.setenv("CCGATE_HOME", home)
    second = import_json(capsys, monkeypatch, root)
    sizes = {path: path.stat().st_size for path in (grown, truncated, replaced, rewritten)}
    assert second["files"] == 4 and second["unchanged_files"] == 0
    assert second["bytes"] == len(appended) + sizes[truncated] + sizes[replaced] + sizes[rewritten]
    assert second["imported"] == 5  # 700, 702, 703, 704, 705 (701 is not a whole line yet)

    # the line being written is finished: read from the start of that line
    with grown.open("a") as handle:
        handle.write(line(701)[40:] + "\n")
    third = import_json(capsys, monkeypatch, root)
    assert (third["files"], third["imported"], third["unchanged_files"]) == (1, 1, 3)
    assert third["bytes"] == len(line(701)) + 1

    fourth = import_json(capsys, monkeypatch, root)
    assert (fourth["files"], fourth["unchanged_files"], fourth["imported"]) == (0, 4, 0)

    # what a clean import of the files as they are now gives, plus rows of lines since cut or overwritten
    rows, clean = ledger_state()[0], clean_import(root, tmp_path, capsys, monkeypatch)
    now = "".join(path.read_text() for path in root.glob("*.jsonl"))

    def replies(text: str) -> set[str]:
        return {json.loads(piece)["message"]["id"] for piece in text.splitlines() if '"assistant"' in piece}

    cut = {message_id for message_id in replies(before) if f'"{message_id}"' not in now}
    assert cut and set(clean) <= set(rows)
    gone = {row[COLUMNS.index("upstream_message_id")] for row in set(rows) - set(clean)}
    assert cut <= gone <= replies(before) | replies(overwritten)


def test_marks_from_before_inodes_still_skip_unchanged_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = corpus(tmp_path / "projects", files=2)
    import_json(capsys, monkeypatch, root)
    conn = sqlite3.connect(resolve_paths().ledger_file)
    with conn:
        conn.execute("UPDATE import_files SET inode = NULL, resume_at = NULL, tail_hash = NULL")
    conn.close()
    again = import_json(capsys, monkeypatch, root)
    assert (again["unchanged_files"], again["files"]) == (2, 0)
    with (root / "session-0.jsonl").open("a") as handle:
        handle.write(line(800) + "\n")
    third = import_json(capsys, monkeypatch, root)
    assert (third["files"], third["imported"], third["already_imported"]) == (1, 1, 40)  # read whole
    assert third["bytes"] == (root / "session-0.jsonl").stat().st_size


KILLER = """
import os, signal, sys
from ccgate.storage import importing

point = sys.argv[1]
importing.BATCH_ROWS = 50
importing.BULK_MIN_ROWS = 1
real_batch, real_marks = importing._insert_batch, importing._save_marks
batches = []

def insert_batch(conn, rows):
    inserted = real_batch(conn, rows)
    batches.append(inserted)
    if point == "mid-transaction":
        os.kill(os.getpid(), signal.SIGKILL)
    return inserted

def save_marks(conn, marks):
    real_marks(conn, marks)
    if point == "before-commit":
        os.kill(os.getpid(), signal.SIGKILL)

def commit_hook():
    if point == "after-first-batch" and batches:
        os.kill(os.getpid(), signal.SIGKILL)

importing._insert_batch = insert_batch
importing._save_marks = save_marks
real_execute = None
from ccgate.storage import ledger
real_open = ledger.open_plain_ledger

def open_ledger(*args, **kwargs):
    db = real_open(*args, **kwargs)
    class Conn:
        def __init__(self, conn):
            self._conn = conn
        def __getattr__(self, name):
            return getattr(self._conn, name)
        def execute(self, sql, *rest):
            result = self._conn.execute(sql, *rest)
            if sql == "COMMIT":
                commit_hook()
            return result
    db.conn = Conn(db.conn)
    return db

ledger.open_plain_ledger = open_ledger
sys.argv = ["ccgate", "import", "claude-code", "--path", sys.argv[2], "--json"]
from ccgate.cli import main
main()
"""


@pytest.mark.parametrize("point", ["mid-transaction", "after-first-batch", "before-commit"])
def test_a_kill_mid_import_then_a_rerun_gives_a_clean_import(
    point: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = corpus(tmp_path / "projects", files=5)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, point, str(root)], env=env, capture_output=True, timeout=120, check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    ledger = resolve_paths().ledger_file
    conn = sqlite3.connect(ledger)
    try:
        (marked,) = conn.execute("SELECT count(*) FROM import_files").fetchone()
        (left,) = conn.execute("SELECT count(*) FROM requests").fetchone()
    finally:
        conn.close()
    assert marked == 0  # never a file marked read without all of its rows
    if point != "before-commit":
        assert left == {"mid-transaction": 0, "after-first-batch": 50}[point]
    rerun = import_json(capsys, monkeypatch, root)
    assert rerun["unchanged_files"] == 0  # no file was marked read without its rows
    rows, rollups = ledger_state()
    assert rollups == recomputed_rollups(ledger)
    conn = sqlite3.connect(ledger)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'requests_rollup_insert'").fetchone() == (
            1,
        )
    finally:
        conn.close()
    assert rows == clean_import(root, tmp_path, capsys, monkeypatch)
    assert left < len(rows)


def test_a_rerun_with_nothing_changed_loads_neither_sqlite_utils_nor_prices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = corpus(tmp_path / "projects", files=2)
    import_json(capsys, monkeypatch, root)
    probe = (
        "import sys\n"
        "from ccgate.cli import main\n"
        f"sys.argv = ['ccgate', 'import', 'claude-code', '--path', {str(root)!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('sqlite_utils', 'genai_prices', 'rich', 'msgspec', 'asyncio') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=60, check=True)
    out = done.stdout.decode().splitlines()
    assert json.loads(out[0])["unchanged_files"] == 2
    assert out[1] == "[]"


def test_a_first_import_loads_no_sqlite_utils(tmp_path: Path) -> None:
    """The import opens, migrates and fills a new ledger with the standard library's sqlite3 alone."""
    root = corpus(tmp_path / "projects", files=2)
    probe = (
        "import sys\n"
        "from ccgate.cli import main\n"
        f"sys.argv = ['ccgate', 'import', 'claude-code', '--path', {str(root)!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('sqlite_utils' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=60, check=True)
    out = done.stdout.decode().splitlines()
    assert json.loads(out[0])["imported"] > 0
    assert out[1] == "False"


def test_a_plain_ledger_is_the_ledger_sqlite_utils_opens(tmp_path: Path) -> None:
    """Same schema, same connection settings, and either opens what the other made."""
    from ccgate.storage.ledger import open_plain_ledger

    def state(db: Any) -> tuple[Any, ...]:
        schema = sorted(db.execute("SELECT type, name, sql FROM sqlite_master").fetchall())
        pragmas = [db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("recursive_triggers", "journal_mode")]
        return (schema, pragmas, db.execute("PRAGMA synchronous").fetchone()[0])

    plain, utils = open_plain_ledger(tmp_path / "a.db"), open_ledger(tmp_path / "b.db")
    try:
        assert state(plain) == state(utils)
    finally:
        plain.close()
        utils.close()
    again, other = open_ledger(tmp_path / "a.db"), open_plain_ledger(tmp_path / "b.db")
    try:
        assert state(again) == state(other)
    finally:
        again.close()
        other.close()


def test_a_bulk_import_writes_with_a_large_page_cache_and_gives_it_back(tmp_path: Path) -> None:
    """SQLite's default 2 MB cache makes the id index and the rebuilt indexes spill; the connection's own
    setting is back afterwards."""
    from ccgate.storage.ledger import open_plain_ledger

    db = open_plain_ledger(tmp_path / "ledger.db")
    try:
        statements: list[str] = []
        db.conn.set_trace_callback(statements.append)
        rows = [
            (f"id-{n}", "2026-03-02T01:00:00.000000Z", None, None, None, "m", 1, 2, 0, 0, 0, 0, 5, "priced", *tail)
            for tail in [(None, None, "msg", None, None)]
            for n in range(importing.BULK_MIN_ROWS)
        ]
        assert importing.insert_import_rows(db, rows) == len(rows)
        db.conn.set_trace_callback(None)
        assert f"PRAGMA cache_size = {-importing.BULK_CACHE_KIB}" in statements
        assert db.execute("PRAGMA cache_size").fetchone()[0] == -2000
    finally:
        db.close()


@pytest.mark.parametrize("chunk", [7, 100, 4096])
def test_reading_in_small_chunks_gives_what_one_read_gives(
    chunk: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines cut between chunks are carried over whole, also a line longer than a chunk and a last line without
    its newline; progress adds up to what was read."""
    root = corpus(tmp_path / "projects", files=2, replies=8)
    files = sorted(root.glob("*.jsonl"))
    with files[1].open("a") as handle:
        handle.write("{not json}\n" + line(500))
    whole_stats = ImportStats()
    whole = read_transcripts(files, whole_stats)
    monkeypatch.setattr(importer, "CHUNK_BYTES", chunk)
    stats, seen = ImportStats(), list[int]()
    marks: list[importing.FileMark] = []
    assert read_transcripts(files, stats, seen.append, marks) == whole
    assert stats == whole_stats and sum(seen) == stats.bytes == sum(path.stat().st_size for path in files)
    assert [mark.resume_at for mark in marks] == [files[0].stat().st_size, files[1].stat().st_size - len(line(500))]


# ------------------------------------------------------------------------------------------- integer pricing


def test_todays_claude_models_have_integer_rates() -> None:
    catalog = PriceCatalog({})
    at = datetime(2026, 11, 1, tzinfo=UTC)
    for model in ("claude-sonnet-4-5", "claude-opus-4-6", "claude-haiku-4-5", "claude-opus-4-9"):
        assert catalog.count_pricer(model, provider="anthropic", at=at) is not None, model
    assert catalog.count_pricer("no-such-model-x", provider="anthropic", at=at) is None


def _catalog_models() -> list[str]:
    from ccgate.core.pricing import _find_gp_provider

    provider = _find_gp_provider("anthropic")
    assert provider is not None
    return [*sorted(str(model.id) for model in provider.models), "claude-opus-4-9", "no-such-model-x"]


_token = st.one_of(st.integers(0, 300_000), st.integers(0, MAX_TOKENS), st.just(MAX_TOKENS))


@settings(deadline=None, max_examples=400)
@given(
    model=st.sampled_from(_catalog_models()),
    counts=st.tuples(_token, _token, _token, _token, _token, st.integers(0, 60)),
    day=st.dates(min_value=date(2024, 1, 1), max_value=date(2027, 12, 31)),
    override=st.sampled_from([None, "1.5", "0.000000000007", "123456.789", "0"]),
)
def test_integer_pricing_equals_decimal_pricing(
    model: str, counts: tuple[int, int, int, int, int, int], day: date, override: str | None
) -> None:
    """Every catalog Claude model (tiered ones and those whose price changed on a date included), a stand-in
    estimate, an unpriced model and config overrides: the integer rates give `cost`'s nano-dollars and labels."""
    overrides = {} if override is None else {model: PriceOverride(input=Decimal(override), output=Decimal("3.25"))}
    catalog = PriceCatalog(overrides)
    at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    expected = catalog.cost(model, Usage(*counts), provider="anthropic", at=at)
    pricer = catalog.count_pricer(model, provider="anthropic", at=at)
    if pricer is None:  # `cost` prices each request: unpriced, several tiers, rates past 12 decimal places
        assert override is None or override == "0.000000000007"
        return
    nanos = pricer.nanos(*counts)
    if nanos is None:  # at a ceiling: `cost` decides (and says so)
        assert "capped" in (expected.note or "") or "counted as" in (expected.note or "")
        return
    assert (nanos, pricer.quality, pricer.priced_model, pricer.note) == (
        expected.nanos,
        expected.quality,
        expected.priced_model,
        expected.note,
    )


_usage_count = st.one_of(st.none(), st.integers(0, 10**6), st.integers(MAX_TOKENS - 1, 2**63))


@settings(deadline=None, max_examples=400)
@given(
    counts=st.fixed_dictionaries(
        {},
        optional={
            "input_tokens": _usage_count,
            "output_tokens": _usage_count,
            "cache_read_input_tokens": _usage_count,
            "cache_creation_input_tokens": _usage_count,
            "cache_creation": st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {},
                    optional={"ephemeral_5m_input_tokens": _usage_count, "ephemeral_1h_input_tokens": _usage_count},
                ),
            ),
            "server_tool_use": st.one_of(
                st.none(), st.fixed_dictionaries({}, optional={"web_search_requests": _usage_count})
            ),
            "speed": st.sampled_from([None, "fast", "standard", "", "x" * 33, 3]),
        },
    )
)
def test_usage_counts_equal_the_one_usage_reading(counts: dict[str, Any]) -> None:
    from ccgate.core.usage import usage_from_anthropic
    from ccgate.wire.fastjson import read_transcript_line

    head = read_transcript_line(
        json.dumps({"type": "assistant", "message": {"id": "m", "model": "x", "usage": counts}}).encode()
    )
    assert head.message is not None and head.message.usage is not None
    usage = usage_from_anthropic(counts)
    assert importer.usage_counts(head.message.usage) == (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_5m_tokens,
        usage.cache_write_1h_tokens,
        usage.web_searches,
        usage.speed,
    )


@settings(deadline=None, max_examples=300)
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    form=st.sampled_from(["ms", "us", "s", "offset", "lower"]),
)
def test_stored_time_equals_parsing_and_formatting(moment: datetime, form: str) -> None:
    from ccgate.core.records import from_iso, to_iso

    text = {
        "ms": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
        "us": moment.isoformat(timespec="microseconds") + "Z",
        "s": moment.isoformat(timespec="seconds") + "Z",
        "offset": moment.isoformat() + "+05:30",
        "lower": moment.isoformat(timespec="milliseconds") + "+00:00",
    }[form]
    if len(text.split("-")[0]) != 4:
        return
    try:
        expected = to_iso(from_iso(text))
    except (ValueError, OverflowError):
        return
    assert importer.valid_time(text)
    assert importer.stored_time(text) == expected


@settings(deadline=None, max_examples=1000)
@given(
    text=st.one_of(
        st.text(alphabet="0123456789-:T.Z+ W,t", max_size=32),
        st.datetimes(timezones=st.just(UTC)).map(lambda moment: moment.isoformat().replace("+00:00", "Z")),
        st.datetimes().map(lambda moment: moment.isoformat() + "Z"),
    )
)
def test_valid_time_agrees_with_parsing_any_text(text: str) -> None:
    from ccgate.core.records import from_iso

    try:
        from_iso(text)
    except (ValueError, OverflowError):
        assert not importer.valid_time(text)
    else:
        assert importer.valid_time(text)


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-29T10:00:00.000Z",
        "2026-13-01T10:00:00.000Z",
        "2026-01-01T24:00:00.000Z",
        "2026-01-01T23:59:60.000Z",
        "0001-01-01T00:00:00.000Z",
        "2024-02-29T23:59:59.999999Z",
        "0001-01-01T00:00+01:00",
        "now",
        "",
    ],
)
def test_valid_time_agrees_with_parsing(text: str) -> None:
    from ccgate.core.records import from_iso

    try:
        from_iso(text)
    except (ValueError, OverflowError):
        assert not importer.valid_time(text)
    else:
        assert importer.valid_time(text)


# ------------------------------------------------------------------------------------------- one read per buffer


@pytest.mark.parametrize(
    "odd",
    [
        b'{"type":"user","a":1}{"type":"user","b":2}',  # two values on one line
        b'{"type":"\\u0061ssistant","message":{"id":"m9","model":"claude-haiku-4-5","usage":{}},"timestamp":"2026-03-01T10:00:00Z"}',
        b'{"type":"user","message":"not an object"}',  # refused by the narrow reading: the whole buffer falls back
        b"{not json}",
    ],
)
def test_reading_a_buffer_at_once_gives_what_reading_line_by_line_gives(
    odd: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every other line fine, a line that would let the values of a buffer read at once slip against its
    lines (two on one line, an `assistant` spelled with an escape, a field of another type) changes nothing."""
    data = b"\n".join([line(1).encode(), odd, line(2).encode(), user_line(5).encode(), line(1, output=99).encode()])
    transcript = tmp_path / "odd.jsonl"
    transcript.write_bytes(data + b"\n")
    counts, best = reference_read(data)
    monkeypatch.setattr(importer, "MIN_AVERAGE_LINE", 1)  # short lines too: this is about reading at once
    stats = ImportStats()
    entries = read_transcripts([transcript], stats)
    assert {name: getattr(stats, name) for name in counts} == counts
    assert list(entries) == list(best) and stats.lines == 5
    for key, entry in entries.items():
        assert entry == importer._entry(best[key])


def test_a_buffer_of_many_tiny_lines_is_read_line_by_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading at once builds an object per line: not for a buffer of millions of `{}` lines."""
    transcript = tmp_path / "tiny.jsonl"
    transcript.write_bytes(b"{}\n" * 200_000 + line(1).encode() + b"\n")
    at_once: list[int] = []
    real = importer.FileScan._take_heads

    def take_heads(self: importer.FileScan, buf: bytes, heads: list[Any], starts: list[int]) -> None:
        at_once.append(len(heads))
        real(self, buf, heads, starts)

    monkeypatch.setattr(importer.FileScan, "_take_heads", take_heads)
    stats = ImportStats()
    assert list(read_transcripts([transcript], stats)) == [("msg_1", "req_1")]
    assert stats.lines == 200_001 and at_once == []
