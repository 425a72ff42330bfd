"""The sidecar as a real process: start, reuse, stop, stale files, concurrent launches, kill -9 recovery."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccgate.paths import resolve_paths
from ccgate.sidecar.process import pid_alive, read_info, running_sidecar, stop_sidecar

CCGATE = [sys.executable, "-m", "ccgate"]
UPSTREAM_SCRIPT = Path(__file__).parent / "support" / "hang_upstream.py"
SCRIPTED_UPSTREAM = Path(__file__).parent / "support" / "scripted_upstream.py"
# What Claude Code does with the environment `launch` gives it: one request to ANTHROPIC_BASE_URL.
CLIENT_SCRIPT = """\
import http.client, json, os, sys, urllib.parse
url = urllib.parse.urlsplit(os.environ["ANTHROPIC_BASE_URL"])
headers = dict(line.split(": ", 1) for line in os.environ["ANTHROPIC_CUSTOM_HEADERS"].splitlines())
headers.update({"authorization": "Bearer " + os.environ["ANTHROPIC_AUTH_TOKEN"], "content-type": "application/json"})
body = {"model": "claude-opus-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
conn.request("POST", "/v1/messages", body=json.dumps(body), headers=headers)
response = conn.getresponse()
sys.stdout.write(response.read().decode())
sys.exit(0 if response.status == 200 else 3)
"""


def run_ccgate(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CCGATE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def env(isolated_home: Path) -> Iterator[dict[str, str]]:
    environ = dict(os.environ)
    environ["CCGATE_SIDECAR_PORT"] = "0"
    yield environ
    paths = resolve_paths(environ)
    stop_sidecar(paths, timeout=5)
    info = read_info(paths)
    if info is not None and pid_alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)


@pytest.fixture
def upstream_process(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port_file = tmp_path / "upstream.port"
    process = subprocess.Popen(
        [sys.executable, str(UPSTREAM_SCRIPT), str(port_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline, "scripted upstream did not start"
            assert process.poll() is None, "scripted upstream exited"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text().strip()}", process
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def scripted_upstream(tmp_path: Path, name: str) -> Iterator[tuple[str, Path]]:
    """A scripted upstream process; yields its URL and the file where it records each request as a JSON line."""
    port_file, record = tmp_path / f"{name}.port", tmp_path / f"{name}.jsonl"
    record.touch()
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTED_UPSTREAM), "--port-file", str(port_file), "--record", str(record)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists():
            assert time.monotonic() < deadline and process.poll() is None, f"{name} upstream did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text().strip()}", record
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()


def test_launch_forwards_to_the_users_own_anthropic_base_url(env: dict[str, str], tmp_path: Path) -> None:
    """A corporate gateway in ANTHROPIC_BASE_URL keeps getting the session's requests (and its token), metered."""
    client = tmp_path / "client.py"
    client.write_text(CLIENT_SCRIPT)
    with (
        scripted_upstream(tmp_path, "default") as (default_url, default_log),
        scripted_upstream(tmp_path, "corp") as (corp_url, corp_log),
    ):
        env = {
            **env,
            "CCGATE_ANTHROPIC_BASE_URL": default_url,
            "ANTHROPIC_BASE_URL": corp_url + "/",
            "ANTHROPIC_AUTH_TOKEN": "corp-gw-token",
        }
        result = run_ccgate("launch", sys.executable, str(client), env=env)
        assert result.returncode == 0, result.stderr
        said = " ".join(result.stderr.split())  # the console wraps long lines
        assert said == f"ANTHROPIC_BASE_URL is {corp_url}: requests are metered by ccgate and forwarded there"
        assert json.loads(result.stdout)["type"] == "message"
        (seen,) = [json.loads(line) for line in corp_log.read_text().splitlines()]
        assert seen["path"] == "/v1/messages" and seen["headers"]["authorization"] == "Bearer corp-gw-token"
        assert default_log.read_text() == ""
        from ccgate.storage.ledger import open_ledger

        paths = resolve_paths(env)
        stop_sidecar(paths, timeout=5)  # flushes the ledger
        db = open_ledger(paths.ledger_file)
        try:
            (row,) = db.query("select status, launch_id from requests")
        finally:
            db.close()
        assert row["status"] == "ok" and row["launch_id"]


def test_launch_refuses_an_anthropic_base_url_it_cannot_forward_to(env: dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    env = {**env, "ANTHROPIC_BASE_URL": "https://user:secret@corp-gw.example"}
    result = run_ccgate("launch", "touch", str(marker), env=env)
    assert result.returncode == 1
    said = " ".join(result.stderr.split())
    assert "ANTHROPIC_BASE_URL must not contain credentials" in said and "secret" not in said
    assert not marker.exists()


def test_start_status_reuse_stop(env: dict[str, str]) -> None:
    started = run_ccgate("sidecar", "start", env=env)
    assert started.returncode == 0, started.stderr
    assert "started" in started.stderr
    paths = resolve_paths(env)
    info = running_sidecar(paths)
    assert info is not None and pid_alive(info.pid)
    again = run_ccgate("sidecar", "start", env=env)
    assert "already running" in again.stderr
    assert running_sidecar(paths) == info
    status = run_ccgate("sidecar", "status", "--json", env=env)
    payload = json.loads(status.stdout)
    assert payload["running"] is True and payload["pid"] == info.pid
    stopped = run_ccgate("sidecar", "stop", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stderr
    assert not pid_alive(info.pid)
    assert not paths.pid_file.exists()
    status = run_ccgate("sidecar", "status", env=env)
    assert status.returncode == 3 and "not running" in status.stderr


def test_stale_pidfile_is_replaced(env: dict[str, str]) -> None:
    paths = resolve_paths(env).ensure()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    paths.pid_file.write_text(str(dead.pid))
    paths.port_file.write_text("1")
    result = run_ccgate("sidecar", "start", env=env)
    assert result.returncode == 0, result.stderr
    info = running_sidecar(paths)
    assert info is not None and info.pid != dead.pid


def test_two_launches_at_once_share_one_sidecar(env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "child.sh"
    script.write_text('#!/bin/sh\necho "$ANTHROPIC_BASE_URL"\n')
    script.chmod(0o755)
    results: list[subprocess.CompletedProcess[str]] = []

    def launch() -> None:
        results.append(run_ccgate("launch", str(script), env=env))

    threads = [threading.Thread(target=launch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    urls = {r.stdout.strip() for r in results}
    assert len(urls) == 1
    info = running_sidecar(resolve_paths(env))
    assert info is not None and urls == {info.url}


def test_launch_returns_the_child_exit_code_and_exports_env(env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "child.sh"
    script.write_text(
        '#!/bin/sh\nprintf "%s\\n---\\n%s\\n---\\n%s\\n" "$ANTHROPIC_BASE_URL" "$ANTHROPIC_CUSTOM_HEADERS" '
        '"$ANTHROPIC_API_KEY"\nexit 7\n'
    )
    script.chmod(0o755)
    env = {**env, "ANTHROPIC_API_KEY": "sk-ant-mine", "ANTHROPIC_CUSTOM_HEADERS": "X-Team: blue"}
    result = run_ccgate("launch", str(script), "--flag", env=env)
    assert result.returncode == 7, result.stderr
    base_url, headers, api_key = result.stdout.split("\n---\n")
    assert base_url.startswith("http://127.0.0.1:")
    lines = headers.splitlines()
    assert "X-Team: blue" in lines
    assert any(line.startswith("x-ccgate-token: cgt-") for line in lines)
    assert any(line.startswith("x-ccgate-launch: ") for line in lines)
    assert all(line.isascii() for line in lines)
    assert api_key.strip() == "sk-ant-mine"


def test_launch_of_missing_claude_says_how_to_install(env: dict[str, str]) -> None:
    result = run_ccgate("launch", "claude", env={**env, "PATH": "/nonexistent"})
    assert result.returncode == 1
    assert "npm install -g @anthropic-ai/claude-code" in result.stderr
    assert "Traceback" not in result.stderr


def test_kill_9_mid_stream_leaves_an_interrupted_row_with_usage(
    env: dict[str, str], upstream_process: tuple[str, subprocess.Popen[bytes]]
) -> None:
    upstream_url, _ = upstream_process
    env = {**env, "CCGATE_ANTHROPIC_BASE_URL": upstream_url}
    assert run_ccgate("sidecar", "start", env=env).returncode == 0
    paths = resolve_paths(env)
    info = running_sidecar(paths)
    assert info is not None
    token = paths.token_file.read_text().strip()
    body = {
        "model": "claude-opus-4-5",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "please hang"}],
    }
    from ccgate.storage.ledger import check_integrity, open_ledger

    def rows() -> list[dict[str, object]]:
        db = open_ledger(paths.ledger_file)
        try:
            return list(db.query("select * from requests"))
        finally:
            db.close()

    conn = http.client.HTTPConnection("127.0.0.1", info.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/v1/messages",
            body=json.dumps(body),
            headers={"x-ccgate-token": token, "x-api-key": "k", "content-type": "application/json"},
        )
        response = conn.getresponse()
        assert response.status == 200
        assert b"message_start" in response.readline()
        deadline = time.monotonic() + 15
        while True:  # the usage seen in message_start is committed before we pull the plug
            found = rows()
            if found and found[0]["input_tokens"]:
                break
            assert time.monotonic() < deadline, f"usage never reached the ledger: {found}"
            time.sleep(0.05)
        os.kill(info.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(info.pid):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        conn.close()

    restarted = run_ccgate("sidecar", "start", env=env)
    assert restarted.returncode == 0, restarted.stderr
    (row,) = rows()
    assert row["status"] == "interrupted"
    assert row["input_tokens"] == 100
    assert isinstance(row["cost_nanos"], int) and row["cost_nanos"] > 0
    db = open_ledger(paths.ledger_file)
    try:
        assert check_integrity(db) == "ok"
    finally:
        db.close()


def test_stop_never_signals_a_process_that_is_not_our_sidecar(env: dict[str, str]) -> None:
    paths = resolve_paths(env).ensure()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        paths.pid_file.write_text(str(bystander.pid))  # a stale pid file whose pid was reused
        paths.port_file.write_text("1")
        result = run_ccgate("sidecar", "stop", env=env)
        assert result.returncode == 0
        assert "not running" in result.stderr
        assert bystander.poll() is None
        assert not paths.pid_file.exists()
    finally:
        bystander.kill()
        bystander.wait()
