"""`ccgate gateway serve` and `ccgate gateway migrate`: what an operator types, and the one-line refusals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cli_runner import run_main

from ccgate.storage.gateway import GatewayStore, KeyCipher, generate_secret_key


def test_migrate_check_then_apply_then_current(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_main(capsys, monkeypatch, "gateway", "migrate", "--check", "--db", db_url, "--json")
    assert code == 1
    report = json.loads(out)
    assert report["pending"] and report["applied"] == [] and report["applied_now"] == []
    code, out, err = run_main(capsys, monkeypatch, "gateway", "migrate", "--db", db_url)
    assert code == 0, err
    assert "applied" in err
    code, out, err = run_main(capsys, monkeypatch, "gateway", "migrate", "--check", "--db", db_url)
    assert code == 0
    assert "up to date" in err


def test_migrate_defaults_to_a_sqlite_file_in_the_data_dir(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    code, _, err = run_main(capsys, monkeypatch, "gateway", "migrate")
    assert code == 0, err
    assert list(isolated_home.rglob("gateway.db"))


def test_serve_refuses_workers_on_sqlite_and_a_database_needing_migrations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite://{tmp_path / 'g.db'}"
    code, _, err = run_main(capsys, monkeypatch, "gateway", "serve", "--db", db, "--workers", "2")
    assert code == 1
    assert "PostgreSQL" in err and "hint:" in err and "Traceback" not in err
    code, _, err = run_main(capsys, monkeypatch, "gateway", "serve", "--db", db, "--port", "0")
    assert code == 1
    assert "pending migration" in err and "ccgate gateway migrate" in err
    code, _, err = run_main(capsys, monkeypatch, "gateway", "serve", "--db", "mysql://x/y")
    assert code == 1 and "sqlite:///" in err


def test_serve_refuses_stored_provider_keys_without_the_secret_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite://{tmp_path / 'g.db'}"

    async def store_a_key() -> None:
        store = await GatewayStore.open(db, cipher=KeyCipher(generate_secret_key()))
        await store.put_provider("anthropic", kind="anthropic", api_key="sk-ant-stored-secret")
        await store.close()

    asyncio.run(store_a_key())
    code, out, err = run_main(capsys, monkeypatch, "gateway", "serve", "--db", db, "--port", "0")
    assert code == 1
    assert "CCGATE_GATEWAY_SECRET_KEY" in err and "Fernet" in err
    assert "sk-ant-stored-secret" not in out + err


def test_serve_help_says_how_to_make_a_secret_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run_main(capsys, monkeypatch, "gateway", "serve", "--help")
    assert code == 0
    assert "CCGATE_GATEWAY_SECRET_KEY" in out and "Fernet.generate_key()" in " ".join(out.split())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310 - loopback
            return int(reply.status)
    except OSError:
        return 0


def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    db = f"sqlite://{tmp_path / 'g.db'}"
    command = [sys.executable, "-m", "ccgate", "gateway", "serve", "--db", db, "--port", str(port), "--migrate"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while _get(f"http://127.0.0.1:{port}/readyz") != 200:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_an_unusable_sqlite_path_is_one_line_and_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for command in ("migrate", "serve"):
        code, _, err = run_main(capsys, monkeypatch, "gateway", command, "--db", f"sqlite://{blocker}/g.db")
        assert code == 1
        assert "cannot open the gateway database" in err and "hint:" in err and "Traceback" not in err


def test_serve_explains_a_busy_port_and_a_bad_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite://{tmp_path / 'g.db'}"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        code, _, err = run_main(capsys, monkeypatch, "gateway", "serve", "--db", db, "--port", port, "--migrate")
    assert code == 1 and "another program uses that port" in err
    code, _, err = run_main(capsys, monkeypatch, "gateway", "serve", "--db", db, "--host", "256.1.1.1", "--port", "0")
    assert code == 1 and "check --host" in err and "Traceback" not in err


def test_serve_refuses_a_trusted_proxy_that_is_not_a_cidr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite://{tmp_path / 'g.db'}"
    code, _, err = run_main(capsys, monkeypatch, "gateway", "serve", "--db", db, "--trusted-proxy", "10.0.0.0/33")
    assert code == 1
    assert "not an address or CIDR" in err and "hint:" in err and "Traceback" not in err
    from ccgate.gateway import __main__ as module

    monkeypatch.setattr(module, "configure_logging", lambda: None)  # the test's logging stays as it is
    assert module.main(["--db", db, "--port", "0", "--trusted-proxy", "lb.example"]) == 1
    assert "not an address or CIDR" in capsys.readouterr().err
