"""What `cost` and `blocks` load: on a ledger at the latest schema, neither sqlite-utils nor the sidecar's process
module nor genai-prices (each tens of ms of a ~0.3 s command on a 1M-row ledger); an older ledger is migrated."""

from __future__ import annotations

import ast
import json
import sqlite3
import subprocess
import sys

import pytest
from cli_runner import run_main

from ccgate.local.paths import resolve_paths
from ccgate.storage.ledger import open_ledger
from ccgate.storage.migrations import LEDGER

WATCHED = ("sqlite_utils", "ccgate.sidecar.process", "genai_prices", "asyncio", "aiohttp")


def imported_after(argv: list[str]) -> list[str]:
    script = (
        "import sys\n"
        f"sys.argv = ['ccgate', *{argv!r}]\n"
        "from ccgate.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in sys.modules if m in {WATCHED!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return list(ast.literal_eval(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("argv", [["cost", "month"], ["cost", "--by", "day,model", "--json"], ["blocks"]])
def test_reading_commands_skip_sqlite_utils_on_a_current_ledger(argv: list[str]) -> None:
    open_ledger(resolve_paths().ensure().ledger_file).close()
    assert imported_after(argv) == []


def test_cost_migrates_a_ledger_from_an_older_release(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger the previous release left (without m011's indexes) is brought up to date by `cost`."""
    path = resolve_paths().ensure().ledger_file
    open_ledger(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX requests_usage")
    conn.execute("DROP INDEX requests_estimated")
    conn.execute("DELETE FROM _migrations WHERE name = 'm011_report_indexes'")
    conn.commit()
    conn.close()
    code, out, err = run_main(capsys, monkeypatch, "cost", "--json")
    assert code == 0, err
    assert json.loads(out)["total"]["requests"] == 0
    conn = sqlite3.connect(path)
    try:
        names = [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()
    assert names == LEDGER.names()
    assert {"requests_usage", "requests_estimated"} <= indexes
