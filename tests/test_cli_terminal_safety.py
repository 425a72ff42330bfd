"""Text from the ledger, config or an upstream never reaches the terminal as control characters or markup."""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from cli_runner import run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from ccgate.core.display import printable
from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.features.statusline import main as statusline_main
from ccgate.local.paths import resolve_paths
from ccgate.storage.ledger import insert_records, open_ledger

# clears the screen, retitles the window, rings the bell; a C1 CSI; a right-to-left override; a line separator
HOSTILE_MODEL = "evil\x1b[2J\x1b]0;pwned\x07\x9b31m\u202egnp.exe\u2028[bold]loud[/bold]:smile:"
HOSTILE_ERROR = "boom\x1b[31m\x85forged\u2066"
# what no output may hold: C0 controls but newline (and the ESC rich's own colours start with is tested apart),
# DEL, C1, bidi embeddings/overrides/isolates, line and paragraph separators
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


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


def seed_hostile() -> None:
    now = datetime.now(UTC)
    records = [
        RequestRecord(
            id=f"req-{index}",
            started_at=now,
            session_id="sess-a",
            requested_model=HOSTILE_MODEL,
            provider="groq",
            routed_model=HOSTILE_MODEL,
            status=RequestStatus.ERROR,
            http_status=500,
            error_type=HOSTILE_ERROR,
            usage=Usage(input_tokens=10, output_tokens=5),
            cost=cost,
        )
        for index, cost in enumerate((Cost(nanos=1000, quality=PriceQuality.PRICED), Cost(None, PriceQuality.UNPRICED)))
    ]
    db = open_ledger(resolve_paths().ensure().ledger_file)
    insert_records(db, records)
    db.close()


def assert_safe(text: str) -> None:
    found = RAW.search(text)
    assert found is None, f"raw {found.group()!r} printed in {text!r}"


@pytest.mark.parametrize(
    "args",
    [("logs",), ("logs", "--errors"), ("cost",), ("cost", "all", "--by", "model"), ("cost", "--by", "provider")],
    ids=" ".join,
)
def test_ledger_text_is_printed_escaped(
    args: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_hostile()
    monkeypatch.setenv("COLUMNS", "300")
    code, out, err = run_main(capsys, monkeypatch, *args)
    assert code == 0, err
    assert_safe(out + err)
    assert "\x1b" not in out + err  # piped: rich adds no colour either
    if args[0] == "logs" or "model" in args or len(args) == 1:
        assert "evil\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m\\u202egnp.exe\\u2028" in out.replace("\n", "")
        assert "[bold]loud[/bold]:smile:" in out.replace("\n", "")  # shown as typed: no markup, no emoji codes
    if args[0] == "logs":
        assert "boom\\x1b[31m\\x85forged\\u2066" in out


def test_logs_prints_one_line_per_request_whatever_the_model_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_hostile()
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = run_main(capsys, monkeypatch, "logs")
    assert code == 0 and len(out.splitlines()) == 2


def test_colours_stay_while_ledger_text_is_escaped(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a colour terminal rich's own escape sequences remain; none of the ledger's get through."""
    seed_hostile()
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    code, out, err = run_main(capsys, monkeypatch, "logs")
    assert code == 0, err
    assert "\x1b[31m" in out or "\x1b[1;31m" in out  # the red error type: rich's styling still works
    for hostile in ("\x1b[2J", "\x1b]0;", "\x9b", "\u202e", "\u2028", "\x85", "\u2066"):
        assert hostile not in out
    assert "\\x1b[2J" in out


def test_json_output_keeps_the_exact_data(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    seed_hostile()
    code, out, _ = run_main(capsys, monkeypatch, "logs", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0]["requested_model"] == HOSTILE_MODEL and rows[0]["error_type"] == HOSTILE_ERROR
    assert_safe(out)  # JSON escapes C0 controls itself; ccgate escapes C1, bidi and separators (same data)


def test_error_messages_are_escaped(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_main(capsys, monkeypatch, "price", "show", HOSTILE_MODEL)
    assert code == 1
    assert err.startswith("ccgate: error: no price known for evil\\x1b[2J")
    assert_safe(out + err)


def test_config_derived_lists_are_escaped(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A model id and a budget's project from config reach `model list`, `budget show` and their warnings."""
    monkeypatch.setenv("COLUMNS", "300")
    code, _, err = run_main(capsys, monkeypatch, "model", "set", "haiku", f"ollama/{HOSTILE_MODEL}", "--force")
    assert_safe(err)
    code, out, err = run_main(capsys, monkeypatch, "model", "list")
    assert code == 0, err
    assert_safe(out + err)
    assert "[bold]loud[/bold]" in out.replace("\n", "")
    code, out, err = run_main(
        capsys, monkeypatch, "budget", "set", "daily", "5", "--project", "/nowhere/evil\x1b[2J\u202ex"
    )
    assert code == 0, err
    assert_safe(out + err)
    code, out, err = run_main(capsys, monkeypatch, "budget", "show")
    assert code == 0, err
    assert_safe(out + err)
    assert "\\x1b[2J" in out.replace("\n", "")


def test_statusline_escapes_the_model_name() -> None:
    sink = io.StringIO()
    payload = {"session_id": "s", "model": {"id": "x", "display_name": HOSTILE_MODEL}}
    assert statusline_main(io.StringIO(json.dumps(payload)), sink) == 0
    line = sink.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert_safe(line)
    assert "\x1b" not in line and "evil\\x1b[2J" in line


@settings(deadline=None)
@given(st.text())
def test_printable_leaves_no_control_character(text: str) -> None:
    shown = printable(text)
    assert RAW.search(shown) is None and "\n" not in shown and "\x1b" not in shown
    assert printable(shown) == shown  # escaping twice changes nothing (the console escapes at two levels)
    assert printable(text, newlines=True).count("\n") == text.count("\n")


def test_printable_keeps_ordinary_text_as_is() -> None:
    text = "claude-sonnet-4-5 → groq/llama-3.3 ünïcödé 日本語 😀"
    assert printable(text) is text
