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

from ccgate.local.paths import resolve_paths
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


@contextlib.contextmanager
def upstream_server(argv: list[str], port_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A test upstream as its own process, once it has written its port; terminated on exit."""
    process = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline, f"upstream {argv[0]} did not start"
            assert process.poll() is None, f"upstream {argv[0]} exited"
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def upstream_process(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port_file = tmp_path / "upstream.port"
    with upstream_server([str(UPSTREAM_SCRIPT), str(port_file)], port_file) as process:
        yield f"http://127.0.0.1:{port_file.read_text().strip()}", process


@contextlib.contextmanager
def scripted_upstream(tmp_path: Path, name: str) -> Iterator[tuple[str, Path]]:
    """A scripted upstream process; yields its URL and the file where it records each request as a JSON line."""
    port_file, record = tmp_path / f"{name}.port", tmp_path / f"{name}.jsonl"
    record.touch()
    with upstream_server([str(SCRIPTED_UPSTREAM), "--port-file", str(port_file), "--record", str(record)], port_file):
        yield f"http://127.0.0.1:{port_file.read_text().strip()}", record


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


def test_stop_never_signals_another_homes_sidecar_whose_pid_a_stale_file_names(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Run files survive a reboot; a pid they name may now be another home's sidecar, which looks like ours
    by its command line. Only this home's instance lock says a sidecar of ours runs."""
    started = run_ccgate("sidecar", "start", env=env)
    assert started.returncode == 0, started.stderr
    other_home = resolve_paths(env)
    theirs = running_sidecar(other_home)
    assert theirs is not None
    mine_env = {**env, "CCGATE_HOME": str(tmp_path / "my-home")}
    mine = resolve_paths(mine_env).ensure()
    mine.pid_file.write_text(str(theirs.pid))
    mine.port_file.write_text("1")  # nothing answers there
    result = run_ccgate("sidecar", "stop", env=mine_env)
    assert result.returncode == 0 and "not running" in result.stderr
    assert pid_alive(theirs.pid) and running_sidecar(other_home) == theirs
    assert not mine.pid_file.exists()


def test_a_sidecar_that_does_not_answer_keeps_its_files_and_gets_no_twin(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccgate.errors import SidecarError
    from ccgate.sidecar import process

    started = run_ccgate("sidecar", "start", env=env)
    assert started.returncode == 0, started.stderr
    paths = resolve_paths(env)
    info = running_sidecar(paths)
    assert info is not None
    monkeypatch.setattr(process, "START_TIMEOUT", 1.0)
    os.kill(info.pid, signal.SIGSTOP)
    try:
        with pytest.raises(SidecarError, match="running but not answering"):
            process.ensure_sidecar(paths, port=0, environ=env)
        files = read_info(paths)  # its files stay: `status` and `stop` still find it
        assert files is not None and (files.pid, files.port) == (info.pid, info.port)
    finally:
        os.kill(info.pid, signal.SIGCONT)
    assert process.ensure_sidecar(paths, port=0, environ=env) == (info, False)


def test_one_sidecar_per_home_holds_the_instance_lock(tmp_path: Path) -> None:
    from ccgate.sidecar.process import hold_instance_lock, instance_running

    paths = resolve_paths({"CCGATE_HOME": str(tmp_path / "home")})
    assert not instance_running(paths)
    held = hold_instance_lock(paths)
    try:
        assert instance_running(paths)
        # a second holder (in another process, as a second sidecar would be) waits, then gives up clearly
        code = (
            "import sys\n"
            "from ccgate.local.paths import resolve_paths\n"
            "from ccgate.errors import SidecarError\n"
            "from ccgate.sidecar.process import hold_instance_lock\n"
            "try:\n"
            f"    hold_instance_lock(resolve_paths({{'CCGATE_HOME': {str(tmp_path / 'home')!r}}}), timeout=0.3)\n"
            "except SidecarError as error:\n"
            "    print(error.message)\n"
            "    sys.exit(3)\n"
        )
        second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 3 and "another sidecar of this ccgate home" in second.stdout
    finally:
        held.close()
    assert not instance_running(paths)


def test_a_large_log_is_rotated_when_a_sidecar_starts(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from ccgate.sidecar import process

    paths = resolve_paths(env).ensure()
    paths.log_file.parent.mkdir(parents=True, exist_ok=True)
    paths.log_file.write_text("old line\n" * 100)
    monkeypatch.setattr(process, "LOG_ROTATE_BYTES", 500)
    info, started = process.ensure_sidecar(paths, port=0, environ=env)
    assert started and pid_alive(info.pid)
    rotated = paths.log_file.with_name(paths.log_file.name + ".1")
    assert rotated.read_text() == "old line\n" * 100
    assert "old line" not in paths.log_file.read_text()


@pytest.fixture
def replying_upstream(tmp_path: Path) -> Iterator[str]:
    """The scripted upstream as its own process, answering every request with a short reply."""
    port_file = tmp_path / "replying-upstream.port"
    with upstream_server([str(SCRIPTED_UPSTREAM), "--port-file", str(port_file)], port_file):
        yield f"http://127.0.0.1:{port_file.read_text().strip()}"


@pytest.mark.skipif(not hasattr(__import__("resource"), "prlimit"), reason="needs Linux prlimit")
def test_a_full_disk_keeps_requests_in_memory_and_says_so_until_space_returns(
    env: dict[str, str], replying_upstream: str
) -> None:
    """The audit's case: under `ulimit -f`, 60 streams got 200 but 3 rows reached the ledger, and neither
    `sidecar status` nor `doctor` said anything."""
    import resource

    from ccgate.sidecar.process import control_request
    from ccgate.storage.ledger import check_integrity, open_ledger

    env = {**env, "CCGATE_ANTHROPIC_BASE_URL": replying_upstream}
    assert run_ccgate("sidecar", "start", env=env).returncode == 0
    paths = resolve_paths(env)
    info = running_sidecar(paths)
    assert info is not None
    token = paths.token_file.read_text().strip()
    body = json.dumps(
        {"model": "claude-haiku-4-5", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )

    def ok_rows() -> int:
        db = open_ledger(paths.ledger_file)
        try:
            return int(db.execute("select count(*) from requests where status = 'ok'").fetchone()[0])
        finally:
            db.close()

    def writes() -> dict[str, object]:
        status = control_request(paths, "GET", "/_ccgate/status")
        assert status is not None
        return dict(status["ledger_writes"])

    def wait_for(condition: object) -> dict[str, object]:
        deadline = time.monotonic() + 20
        while True:
            current = writes()
            if callable(condition) and condition(current):
                return current
            assert time.monotonic() < deadline, f"ledger writes never settled: {current}"
            time.sleep(0.05)

    soft, hard = resource.prlimit(info.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(info.pid, resource.RLIMIT_FSIZE, (16 * 1024, hard))  # no file of the sidecar grows past 16 KB
    try:
        for _ in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", info.port, timeout=30)
            try:
                headers = {"x-ccgate-token": token, "x-api-key": "k", "content-type": "application/json"}
                conn.request("POST", "/v1/messages", body=body, headers=headers)
                response = conn.getresponse()
                assert response.status == 200
                assert b"message_stop" in response.read()
            finally:
                conn.close()
        full = wait_for(lambda current: current["unsaved"] + ok_rows() == 20)
        assert full["unsaved"] and full["dropped"] == 0 and full["last_error"]

        status = run_ccgate("sidecar", "status", env=env)
        said = " ".join(status.stderr.split())
        assert status.returncode == 0
        assert f"ledger: {full['unsaved']} request(s) not written to the ledger yet" in said
        assert "hint: free disk space; rows are kept in memory and written when it can" in said
        payload = json.loads(run_ccgate("sidecar", "status", "--json", env=env).stdout)
        assert payload["status"]["ledger_writes"]["unsaved"] == full["unsaved"]
        assert payload["status"]["ledger"] == str(paths.ledger_file)
        doctor = json.loads(run_ccgate("doctor", "--json", env=env).stdout)
        (sidecar,) = [check for check in doctor["checks"] if check["name"] == "sidecar"]
        assert sidecar["state"] == "fail" and "not written to the ledger yet" in sidecar["detail"]
    finally:
        resource.prlimit(info.pid, resource.RLIMIT_FSIZE, (soft, hard))

    assert wait_for(lambda current: current["unsaved"] == 0)["dropped"] == 0  # space is back: within a second
    assert ok_rows() == 20
    assert "not written" not in run_ccgate("sidecar", "status", env=env).stderr
    log = paths.log_file.read_text(errors="replace")
    assert "ledger write failed" in log and "work again" in log
    assert "dropped" not in log and "Traceback" not in log
    db = open_ledger(paths.ledger_file)
    try:
        assert check_integrity(db) == "ok"
    finally:
        db.close()
