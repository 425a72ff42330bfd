"""`ccgate sidecar stop` while requests wait in the sidecar's memory because its ledger cannot be written: they are
saved to a spill file and written to the ledger by the next start, or the stop says how many are lost.

The sidecar runs as a real process under a file-size limit (RLIMIT_FSIZE): every write that would grow a file
past it fails with EFBIG, which SQLite reports as "database or disk is full" — a full disk for that process.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccgate.local.paths import Paths, resolve_paths
from ccgate.sidecar.process import TOKEN_HEADER, ensure_token, pid_alive, read_info, stop_sidecar
from ccgate.storage.ledger import open_ledger

CCGATE = [sys.executable, "-m", "ccgate"]
SCRIPTED_UPSTREAM = Path(__file__).parent / "support" / "scripted_upstream.py"
# No file of the limited sidecar may grow past this: the ledger's WAL needs 4 KB for its first page.
FILE_LIMIT = 4096


def run_ccgate(
    *args: str, env: dict[str, str], file_limit: int | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run(
        [*CCGATE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False, preexec_fn=limit
    )


@contextlib.contextmanager
def upstream(tmp_path: Path) -> Iterator[str]:
    port_file = tmp_path / "upstream.port"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTED_UPSTREAM), "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and process.poll() is None, "upstream did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text().strip()}"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def env(isolated_home: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    (tmp_path / "xdg").mkdir(mode=0o700)
    (tmp_path / "tmp").mkdir()
    with upstream(tmp_path) as url:
        environ = {
            **os.environ,
            "CCGATE_SIDECAR_PORT": "0",
            "CCGATE_ANTHROPIC_BASE_URL": url,
            "XDG_RUNTIME_DIR": str(tmp_path / "xdg"),
            "TMPDIR": str(tmp_path / "tmp"),
        }
        yield environ
        paths = resolve_paths(environ)
        stop_sidecar(paths, timeout=5)
        info = read_info(paths)
        if info is not None and pid_alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)


def call(paths: Paths, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    info = read_info(paths)
    assert info is not None
    conn = http.client.HTTPConnection("127.0.0.1", info.port, timeout=30)
    try:
        headers = {TOKEN_HEADER: ensure_token(paths), "content-type": "application/json", "x-api-key": "sk-dummy"}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200, answer
        assert isinstance(answer, dict)
        return answer
    finally:
        conn.close()


def unsaved(paths: Paths) -> int:
    writes = call(paths, "GET", "/_ccgate/status")["ledger_writes"]
    assert isinstance(writes, dict)
    return int(writes["unsaved"])


def ledger_rows(paths: Paths) -> list[dict[str, object]]:
    db = open_ledger(paths.ledger_file)
    try:
        return list(db.query("SELECT id, status, cost_nanos FROM requests ORDER BY started_at"))
    finally:
        db.close()


@contextlib.contextmanager
def full_disk(env: dict[str, str], requests: int) -> Iterator[Paths]:
    """A sidecar that can read its ledger but not grow any file, with `requests` served and waiting in memory."""
    paths = resolve_paths(env)
    first = run_ccgate("sidecar", "start", env=env)  # creates the ledger (and the log) with room to spare
    assert first.returncode == 0, first.stderr
    assert run_ccgate("sidecar", "stop", env=env).returncode == 0
    # held open meanwhile, so SQLite's shared-memory index (32 KB) exists already; its WAL is empty, so the
    # sidecar's first write must grow it
    reader = sqlite3.connect(paths.ledger_file)
    try:
        reader.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert paths.ledger_file.with_name("ledger.db-wal").stat().st_size == 0
        yield _limited(env, paths, requests)
    finally:
        reader.close()


def _limited(env: dict[str, str], paths: Paths, requests: int) -> Paths:
    started = run_ccgate("sidecar", "start", env=env, file_limit=FILE_LIMIT)
    assert started.returncode == 0, started.stderr
    body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(requests):
        assert call(paths, "POST", "/v1/messages", body)["type"] == "message"
    deadline = time.monotonic() + 30
    while unsaved(paths) != requests:
        assert time.monotonic() < deadline, "the requests never waited in memory"
        time.sleep(0.05)
    return paths


def test_a_stop_saves_the_requests_the_ledger_refused_and_the_next_start_writes_them(env: dict[str, str]) -> None:
    with full_disk(env, requests=2) as paths:
        assert ledger_rows(paths) == []
        stopped = run_ccgate("sidecar", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    said = " ".join((stopped.stdout + stopped.stderr).split())
    assert "sidecar stopped" in said and "2 request(s) the ledger refused are saved in" in said
    (spill_file,) = (paths.runtime_dir / "spill").glob("ledger-spill-*.jsonl")
    assert spill_file.stat().st_mode & 0o777 == 0o600
    assert ledger_rows(paths) == []
    doctor = run_ccgate("doctor", "--json", env=env)
    (waiting,) = [check for check in json.loads(doctor.stdout)["checks"] if check["name"] == "ledger spill"]
    assert waiting["state"] == "warn" and waiting["detail"].startswith("2 request(s) saved when the sidecar stopped")

    started = run_ccgate("sidecar", "start", env=env)  # room again: the spill goes to the ledger first
    assert started.returncode == 0, started.stderr
    rows = ledger_rows(paths)
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert all(isinstance(row["cost_nanos"], int) and row["cost_nanos"] > 0 for row in rows)
    assert not spill_file.exists()  # deleted only once committed
    doctor = run_ccgate("doctor", "--json", env=env)
    assert "ledger spill" not in [check["name"] for check in json.loads(doctor.stdout)["checks"]]
    status = run_ccgate("sidecar", "stop", env=env)
    assert status.returncode == 0 and "saved in" not in status.stdout + status.stderr


def test_a_stop_that_would_lose_requests_refuses_and_with_force_says_how_many_were_lost(
    env: dict[str, str],
) -> None:
    """Six requests make a spill file larger than any file the sidecar may write: no spill location takes it."""
    with full_disk(env, requests=6) as paths:
        refused = run_ccgate("sidecar", "stop", env=env)
        said = " ".join(refused.stderr.split())
        assert refused.returncode == 1, said
        assert "6 request(s) wait in the sidecar's memory" in said and "--force" in said
        assert unsaved(paths) == 6  # still running, still holding them

        forced = run_ccgate("sidecar", "stop", "--force", env=env)
    said = " ".join(forced.stderr.split())
    assert forced.returncode == 1, said
    assert "6 request(s) it could not write to the ledger are lost" in said
    assert read_info(paths) is None
    assert list(paths.runtime_dir.glob("spill/ledger-spill-*")) == []


def test_cost_after_the_stop_writes_the_spill_itself_when_no_sidecar_runs(env: dict[str, str]) -> None:
    with full_disk(env, requests=1) as paths:
        assert run_ccgate("sidecar", "stop", env=env).returncode == 0
    (spill_file,) = (paths.runtime_dir / "spill").glob("ledger-spill-*.jsonl")
    cost = run_ccgate("cost", "all", "--json", env=env)
    assert cost.returncode == 0, cost.stderr
    assert json.loads(cost.stdout)["total"]["requests"] == 1
    assert "wrote 1 request(s) saved at the last sidecar stop" in " ".join(cost.stderr.split())
    assert not spill_file.exists()
    again = run_ccgate("cost", "all", "--json", env=env)  # nothing left: no message, same total
    assert json.loads(again.stdout)["total"]["requests"] == 1 and again.stderr == ""
