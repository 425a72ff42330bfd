"""`ccgate import claude-code` over a generated transcript tree shaped like Claude Code's, into a real ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_main as run

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.features.importer import METERED_WINDOW, import_id, metered_message_ids
from ccgate.local.paths import resolve_paths

SESSION = "0b6f1c7e-2a3d-4e5f-8a9b-0c1d2e3f4a5b"
STAMP = "2026-02-14T09:30:15.250Z"


def assistant(
    message_id: str | None,
    request_id: str,
    model: str,
    usage: dict[str, Any],
    *,
    cwd: str,
    block: dict[str, Any] | None = None,
    timestamp: str = STAMP,
    sidechain: bool = False,
) -> str:
    """One assistant line as Claude Code writes it (one per content block of a streamed reply)."""
    message: dict[str, Any] = {
        "model": model,
        "type": "message",
        "role": "assistant",
        "content": [block or {"type": "text", "text": "ok"}],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    if message_id is not None:
        message["id"] = message_id
    return json.dumps(
        {
            "parentUuid": "2d3c4b5a-0000-4000-8000-000000000001",
            "isSidechain": sidechain,
            "userType": "external",
            "cwd": cwd,
            "sessionId": SESSION,
            "version": "2.1.197",
            "gitBranch": "main",
            "message": message,
            "requestId": request_id,
            "type": "assistant",
            "uuid": "9e8d7c6b-0000-4000-8000-000000000002",
            "timestamp": timestamp,
        }
    )


def sonnet_usage(output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": 1000,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 10000,
        "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


@pytest.fixture
def transcripts(tmp_path: Path) -> Path:
    """~/.claude/projects with one session file and one subagent file."""
    repo = tmp_path / "work" / "my-app"
    (repo / ".git").mkdir(parents=True)
    (repo / "src").mkdir()
    cwd = str(repo / "src")
    root = tmp_path / "claude" / "projects"
    project = root / "-work-my-app-src"
    (project / SESSION / "subagents").mkdir(parents=True)
    lines = [
        json.dumps({"type": "summary", "summary": "Fix the tests", "leafUuid": "x"}),
        json.dumps({"type": "user", "message": {"role": "user", "content": "hi"}, "sessionId": SESSION}),
        # one streamed reply on three lines (thinking, text, tool_use); the largest output_tokens is the real one
        assistant("msg_A", "req_A", "claude-sonnet-4-5", sonnet_usage(1), cwd=cwd, block={"type": "thinking"}),
        assistant("msg_A", "req_A", "claude-sonnet-4-5", sonnet_usage(500), cwd=cwd),
        assistant("msg_A", "req_A", "claude-sonnet-4-5", sonnet_usage(3), cwd=cwd, block={"type": "tool_use"}),
        "{this is not json",
        assistant(
            "3c1a7b52-synthetic",
            "",
            "<synthetic>",
            {"input_tokens": 0, "output_tokens": 0},
            cwd=cwd,
        ),
        assistant("msg_B", "req_B", "claude-haiku-4-5", {"input_tokens": 100, "output_tokens": 50}, cwd=cwd),
        "",
    ]
    (project / f"{SESSION}.jsonl").write_text("\n".join(lines))
    subagent = [
        # also went through the sidecar: must not be counted twice
        assistant("msg_C", "req_C", "claude-sonnet-4-5", sonnet_usage(900), cwd=cwd, sidechain=True),
        # an assistant entry without a message id cannot be a request
        assistant(None, "req_D", "claude-sonnet-4-5", sonnet_usage(10), cwd=cwd, sidechain=True),
        # a time before the calendar starts once made UTC: malformed, not a crash
        assistant("msg_E", "req_E", "claude-sonnet-4-5", sonnet_usage(10), cwd=cwd, timestamp="0001-01-01T00:00+01:00"),
    ]
    (project / SESSION / "subagents" / "agent-a1b2c3d.jsonl").write_text("\n".join(subagent) + "\n")
    return root


def metered_by_sidecar(message_id: str) -> None:
    from ccgate.storage.ledger import insert_records, open_ledger

    db = open_ledger(resolve_paths().ledger_file)
    try:
        insert_records(
            db,
            [
                RequestRecord(
                    started_at=datetime(2026, 2, 14, 9, 31, tzinfo=UTC),
                    session_id=SESSION,
                    requested_model="claude-sonnet-4-5",
                    status=RequestStatus.OK,
                    usage=Usage(input_tokens=1000, output_tokens=900),
                    cost=Cost(nanos=16_500_000, quality=PriceQuality.PRICED),
                    upstream_message_id=message_id,
                )
            ],
        )
    finally:
        db.close()


def ledger_rows() -> list[dict[str, Any]]:
    from ccgate.storage.ledger import open_ledger

    db = open_ledger(resolve_paths().ledger_file)
    try:
        return list(db.query("SELECT * FROM requests ORDER BY started_at, upstream_message_id"))
    finally:
        db.close()


# msg_A: 1000 in * $3 + 500 out * $15 + 10000 cache read * $0.30 + 2000 5m writes * $3.75 + 1000 1h writes * $6
# = (3000 + 7500 + 3000 + 7500 + 6000) / 1e6 USD = $0.027
COST_A = 27_000_000
# msg_B (claude-haiku-4-5): 100 in * $1 + 50 out * $5 = 350 / 1e6 USD
COST_B = 350_000


def test_import_counts_costs_and_rerun(
    transcripts: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    metered_by_sidecar("msg_C")
    code, out, err = run(capsys, monkeypatch, "import", "claude-code", "--path", str(transcripts), "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats | {"path": None, "bytes": None} == {
        "path": None,
        "bytes": None,
        "files": 2,
        "lines": 11,
        "entries": 5,  # 3 lines of msg_A, msg_B, msg_C
        "requests": 3,
        "imported": 2,
        "duplicates": 2,
        "already_metered": 1,
        "already_imported": 0,
        "malformed": 3,  # not JSON; no message id; timestamp out of range
        "unchanged_files": 0,
        "synthetic": 1,
        "unpriced": 0,
        "cost_nanos": COST_A + COST_B,
        "cost_usd": "0.027350000",
    }
    assert stats["bytes"] == sum(p.stat().st_size for p in transcripts.rglob("*.jsonl"))

    rows = [row for row in ledger_rows() if row["source"] == "import"]
    assert [row["upstream_message_id"] for row in rows] == ["msg_A", "msg_B"]
    row_a, row_b = rows
    assert row_a["id"] == import_id("msg_A", "req_A")
    assert row_a["upstream_request_id"] == "req_A"
    assert row_a["cost_nanos"] == COST_A and row_b["cost_nanos"] == COST_B
    assert (row_a["input_tokens"], row_a["output_tokens"], row_a["cache_read_tokens"]) == (1000, 500, 10000)
    assert (row_a["cache_write_5m_tokens"], row_a["cache_write_1h_tokens"]) == (2000, 1000)
    assert row_a["session_id"] == SESSION and row_a["status"] == "ok"
    assert row_a["project"] == str(tmp_path / "work" / "my-app")  # the git top-level of the entry's cwd
    assert row_a["started_at"] == "2026-02-14T09:30:15.250000Z"
    assert row_a["requested_model"] == "claude-sonnet-4-5" and row_a["tier"] == "sonnet"
    assert row_b["tier"] == "haiku"
    assert len(ledger_rows()) == 3  # the sidecar's msg_C row and two imported ones

    # a second run adds nothing, and does not even read the files it read to their end
    code, out, err = run(capsys, monkeypatch, "import", "claude-code", "--path", str(transcripts), "--json")
    assert code == 0, err
    again = json.loads(out)
    assert (again["imported"], again["unchanged_files"], again["files"], again["lines"]) == (0, 2, 0, 0)
    assert again["cost_nanos"] == 0
    assert len(ledger_rows()) == 3
    # a file that grew is read from where the last run stopped: only its new request is read, and imported
    main = transcripts / "-work-my-app-src" / f"{SESSION}.jsonl"
    assert main.exists()
    with main.open("a") as handle:
        usage = {"input_tokens": 100, "output_tokens": 50}
        handle.write("\n" + assistant("msg_F", "req_F", "claude-haiku-4-5", usage, cwd=str(tmp_path)))
    code, out, err = run(capsys, monkeypatch, "import", "claude-code", "--path", str(transcripts), "--json")
    third = json.loads(out)
    assert (third["imported"], third["already_imported"], third["unchanged_files"], third["files"]) == (1, 0, 1, 1)
    assert (third["entries"], third["bytes"]) == (
        1,
        len(assistant("msg_F", "req_F", "claude-haiku-4-5", usage, cwd=str(tmp_path))) + 1,
    )
    assert len(ledger_rows()) == 4

    # `cost` counts the imported requests and says so
    code, out, _ = run(capsys, monkeypatch, "cost", "all", "--json")
    assert code == 0
    total = json.loads(out)["total"]
    assert total["requests"] == 4
    assert total["imported_requests"] == 3


def test_human_summary_and_default_path(
    transcripts: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(transcripts.parent))
    code, _, err = run(capsys, monkeypatch, "import", "claude-code")
    assert code == 0, err
    err = " ".join(err.split())  # rich wraps lines at the terminal width
    assert (
        "2 file(s) read, 5 entries, 3 imported, 2 duplicates, 0 already metered, 0 already imported, 3 malformed" in err
    )
    assert "cost $0.06" in err  # 0.027 + 0.00035 + msg_C 0.033, rounded for people (exact in --json)


def test_missing_directory_is_a_user_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(capsys, monkeypatch, "import", "claude-code", "--path", "/nonexistent/claude/projects")
    assert code == 1
    assert "is not a directory of Claude Code transcripts" in err and "--path" in err


def test_metered_message_ids_look_around_each_transcript_time(tmp_path: Path) -> None:
    """Without an index on message ids, a metered row is found only near its transcript line's time."""
    from ccgate.storage.ledger import insert_records, open_ledger

    line_time = datetime(2026, 2, 14, 9, 30, tzinfo=UTC)
    far_line_time = line_time + timedelta(days=40)
    db = open_ledger(tmp_path / "ledger.db")
    try:

        def row(message_id: str, started: datetime, source: str = "sidecar") -> RequestRecord:
            return RequestRecord(
                started_at=started, source=source, status=RequestStatus.OK, upstream_message_id=message_id
            )

        insert_records(
            db,
            [
                row("msg_long_stream", line_time - METERED_WINDOW + timedelta(minutes=1)),
                row("msg_just_after", line_time + timedelta(seconds=2)),
                row("msg_far_line", far_line_time - timedelta(minutes=3)),
                row("msg_outside", line_time - timedelta(days=3)),
                row("msg_imported", line_time, source="import"),
                row("msg_not_asked", line_time),
            ],
        )
        stamps = [
            (message_id, (far_line_time if message_id == "msg_far_line" else line_time).isoformat())
            for message_id in ("msg_long_stream", "msg_just_after", "msg_far_line", "msg_outside", "msg_imported")
        ]
        assert metered_message_ids(db, stamps) == {"msg_long_stream", "msg_just_after", "msg_far_line"}
        assert metered_message_ids(db, []) == set()
        # one message in two transcripts (a resumed session's copy): either line's time finds it
        resumed = [("msg_outside", line_time.isoformat()), ("msg_outside", (line_time - timedelta(days=3)).isoformat())]
        assert metered_message_ids(db, resumed) == {"msg_outside"}
        assert metered_message_ids(db, list(reversed(resumed))) == {"msg_outside"}
        # the ends of the calendar are not an overflow
        extremes = [("msg_x", "9999-12-31T23:59:59.999999Z"), ("msg_y", "0001-01-01T00:00:00Z")]
        assert metered_message_ids(db, extremes) == set()
    finally:
        db.close()


def test_absurd_token_counts_are_imported_clamped_and_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """2**62 tokens overflowed SQLite's integers and 1e30 Decimal's precision: the import crashed, importing nothing."""
    from ccgate.core.usage import MAX_TOKENS

    transcript = tmp_path / "absurd.jsonl"
    lines = [
        assistant("msg_big", "req_big", "claude-haiku-4-5", {"input_tokens": 2**62, "output_tokens": 2**62}, cwd="/w"),
        assistant("msg_e30", "req_e30", "claude-haiku-4-5", {"input_tokens": 1e30, "output_tokens": 7}, cwd="/w"),
        assistant("msg_B", "req_B", "claude-haiku-4-5", {"input_tokens": 100, "output_tokens": 50}, cwd="/w"),
    ]
    transcript.write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, monkeypatch, "import", "claude-code", "--path", str(transcript), "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert (stats["imported"], stats["malformed"]) == (3, 0)
    rows = {row["upstream_message_id"]: row for row in ledger_rows() if row["source"] == "import"}
    big, e30, normal = rows["msg_big"], rows["msg_e30"], rows["msg_B"]
    assert (big["input_tokens"], big["output_tokens"]) == (MAX_TOKENS, MAX_TOKENS)
    assert big["cost_nanos"] == MAX_TOKENS * 1_000 + MAX_TOKENS * 5_000
    assert (e30["input_tokens"], e30["output_tokens"]) == (MAX_TOKENS, 7)
    for row in (big, e30):
        assert row["price_quality"] == "estimated" and f"more than {MAX_TOKENS:,} tokens" in row["cost_note"]
    assert (normal["cost_nanos"], normal["price_quality"]) == (COST_B, "priced")
    assert stats["cost_nanos"] == big["cost_nanos"] + e30["cost_nanos"] + COST_B


def test_negative_or_non_integer_counts_make_a_line_malformed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`"input_tokens": -5, "output_tokens": "abc"` was imported as a normal request of 0 tokens."""
    transcript = tmp_path / "odd.jsonl"
    bad_usages: list[dict[str, Any]] = [
        {"input_tokens": -5, "output_tokens": "abc"},
        {"input_tokens": 10, "output_tokens": 2.5},
        {"input_tokens": 10, "output_tokens": 3, "cache_creation": {"ephemeral_5m_input_tokens": -1}},
        {"input_tokens": True, "output_tokens": 3},
    ]
    lines = [
        assistant(f"msg_bad{index}", f"req_bad{index}", "claude-haiku-4-5", usage, cwd="/w")
        for index, usage in enumerate(bad_usages)
    ]
    # nulls are how the API says "none": still a good line
    null_cache = {"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": None, "cache_creation": None}
    lines.append(assistant("msg_B", "req_B", "claude-haiku-4-5", null_cache, cwd="/w"))
    transcript.write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, monkeypatch, "import", "claude-code", "--path", str(transcript), "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert (stats["entries"], stats["imported"], stats["malformed"]) == (1, 1, 4)
    assert stats["cost_nanos"] == COST_B
    assert [row["upstream_message_id"] for row in ledger_rows()] == ["msg_B"]


def test_text_that_is_not_utf8_makes_a_line_malformed_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`\\ud800` is valid JSON but no UTF-8: SQLite refused it on insert and the import stopped with nothing in."""
    transcript = tmp_path / "surrogate.jsonl"
    lines = [
        assistant("msg_\ud800", "req_1", "claude-haiku-4-5", {"input_tokens": 1, "output_tokens": 1}, cwd="/w"),
        assistant("msg_2", "req_2", "claude-haiku-4-5", {"input_tokens": 1, "output_tokens": 1}, cwd="/w/\udcff"),
        assistant(
            "msg_B", "req_B", "claude-haiku-4-5", {"input_tokens": 100, "output_tokens": 50}, cwd="/w/\u00e9\U0001f600"
        ),
    ]
    transcript.write_text("\n".join(lines) + "\n")  # json.dumps escapes the surrogates as \ud800, as JSON allows
    code, out, err = run(capsys, monkeypatch, "import", "claude-code", "--path", str(transcript), "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert (stats["imported"], stats["malformed"]) == (1, 2)
    (row,) = ledger_rows()
    assert row["upstream_message_id"] == "msg_B" and row["project"] == "/w/\u00e9\U0001f600"


def test_the_copy_with_most_output_wins_whatever_the_order(tmp_path: Path) -> None:
    """Copies of one reply are checked like any line (a bad copy is malformed, not a winner), and the one with
    the most output tokens is kept: the first of equal ones, even when a later copy has less."""
    from ccgate.features.importer import ImportStats, read_transcripts

    def copy(output: Any, cwd: str) -> str:
        return assistant("msg_C", "req_C", "claude-haiku-4-5", {"input_tokens": 7, "output_tokens": output}, cwd=cwd)

    transcript = tmp_path / "copies.jsonl"
    lines = [copy(5, "/a"), copy(40, "/b"), copy(40, "/c"), copy(-1, "/d"), copy(9000.5, "/e"), copy(12, "/f")]
    transcript.write_text("\n".join(lines) + "\n")
    stats = ImportStats()
    best = read_transcripts([transcript], stats)
    assert (stats.entries, stats.duplicates, stats.malformed, stats.requests) == (4, 3, 2, 1)
    (entry,) = best.values()
    assert (entry.cwd, entry.usage.output_tokens, entry.usage.input_tokens) == ("/b", 40, 7)
