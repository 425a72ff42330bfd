"""The writer's group-commit window: milliseconds while idle, wider under a gateway's load."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ccgate.core.records import RequestRecord
from ccgate.storage.writer import (
    LINGER_BUSY_RATE,
    LINGER_IDLE_RATE,
    LINGER_MAX_SECONDS,
    LINGER_SECONDS,
    LedgerWriter,
    _WriteRate,
    commit_window,
    decayed_rate,
)


def test_the_window_is_short_when_idle_and_wide_under_load() -> None:
    assert LINGER_SECONDS == 0.004
    assert LINGER_MAX_SECONDS == 0.025
    assert commit_window(0.0) == LINGER_SECONDS
    assert commit_window(LINGER_IDLE_RATE) == LINGER_SECONDS  # a developer's sidecar
    assert LINGER_SECONDS < commit_window((LINGER_IDLE_RATE + LINGER_BUSY_RATE) / 2) < LINGER_MAX_SECONDS
    assert commit_window(LINGER_BUSY_RATE) == LINGER_MAX_SECONDS  # a gateway: a few hundred writes a second
    assert commit_window(1e9) == LINGER_MAX_SECONDS
    assert commit_window(-1.0) == LINGER_SECONDS
    assert commit_window(math.nan) == LINGER_SECONDS
    assert commit_window(math.inf) == LINGER_MAX_SECONDS


@settings(deadline=None)
@given(st.floats(min_value=0, max_value=1e6), st.floats(min_value=0, max_value=1e6))
def test_the_window_never_shrinks_as_the_rate_grows(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert LINGER_SECONDS <= commit_window(low) <= commit_window(high) <= LINGER_MAX_SECONDS


def test_the_rate_follows_a_steady_load_and_falls_back_when_it_stops() -> None:
    rate = 0.0
    for _ in range(500):  # 5 s of batches 10 ms apart, 4 writes each: 400 writes/s
        rate = decayed_rate(rate, 0.01, 4)
    assert 380 < rate < 420
    assert decayed_rate(rate, 10.0) < 1.0  # ten quiet seconds later it is idle again
    assert decayed_rate(rate, -5.0) == rate  # a clock going backwards changes nothing


def test_the_writer_widens_the_window_under_a_burst_and_narrows_it_when_quiet() -> None:
    estimate = _WriteRate(at=100.0)
    assert estimate.window(100.0) == LINGER_SECONDS
    estimate.observe(100.0, 2000)  # one batch drained 2,000 queued writes
    assert estimate.window(100.05) == LINGER_MAX_SECONDS
    assert estimate.window(110.0) == LINGER_SECONDS


def test_an_idle_writer_commits_a_lone_row_after_one_short_window(tmp_path: Path) -> None:
    windows: list[float] = []
    lingered = threading.Event()

    def linger(seconds: float) -> None:
        windows.append(seconds)
        lingered.set()

    path = tmp_path / "ledger.db"
    writer = LedgerWriter(path, linger=linger)
    writer.start()
    try:
        record = RequestRecord(requested_model="claude-opus-5-5")
        writer.write_pending(record)
        assert lingered.wait(30)
        # no flush, no close: the row lands by itself once the window is over
        found = _wait_for_row(path, record.id)
        assert found, "the lone row was not committed after its window"
        assert windows == [LINGER_SECONDS]
        assert writer.commits == 1
    finally:
        writer.close()


def _wait_for_row(path: Path, request_id: str) -> bool:
    """Poll the ledger through a second connection (as `ccgate cost` reads it), for at most ~30 s."""
    for _ in range(3000):
        with contextlib.closing(sqlite3.connect(path)) as conn:
            if conn.execute("SELECT 1 FROM requests WHERE id = ?", (request_id,)).fetchone():
                return True
        time.sleep(0.01)
    return False
