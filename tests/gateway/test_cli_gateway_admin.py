"""`ccgate gateway admin ...` and `ccgate gateway report` against a real served admin API (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from admin_testing import BOOTSTRAP, ServedAdmin, served_admin
from cli_runner import run_main

from ccgate.storage.gateway import KeyCipher

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def gw(db_url: str, cipher: KeyCipher) -> Iterator[ServedAdmin]:
    with served_admin(db_url, cipher=cipher) as served:
        yield served


@pytest.fixture
def cli(gw: ServedAdmin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`ccgate gateway admin ARGS` with the URL and the bootstrap token in the environment, as a script runs it."""
    monkeypatch.setenv("CCGATE_GATEWAY_URL", gw.url)
    monkeypatch.setenv("CCGATE_GATEWAY_ADMIN_TOKEN", BOOTSTRAP)

    def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        return run_main(capsys, monkeypatch, "gateway", "admin", *args, stdin=stdin)

    return run


def _ok(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 0, err
    return out


def _one_error(result: tuple[int, str, str], *words: str) -> str:
    """Exit 1, one `ccgate: error:` line and one hint line on stderr, nothing on stdout, no traceback."""
    code, out, err = result
    assert code == 1, (out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("ccgate: error: ") and lines[1].startswith("  hint: "), err
    for word in words:
        assert word in err, err
    return err


def test_a_script_sets_up_an_org(cli: Cli, gw: ServedAdmin) -> None:
    _ok(cli("customer", "create", "acme"))
    _ok(cli("team", "create", "core", "--customer", "acme", "--tier", "haiku=groq/llama-3.3-70b"))
    created = json.loads(_ok(cli("key", "create", "--team", "core", "--name", "alice", "--mode", "report", "--json")))
    assert set(created) == {"id", "name", "team", "mode", "key"}
    assert (created["name"], created["team"], created["mode"]) == ("alice", "core", "report")
    assert created["key"].startswith("sk-cg-")
    assert gw.run(gw.store.authenticate_key(created["key"])) is not None
    # without --json the key alone is on stdout (KEY=$(...)), the notice on stderr
    code, out, err = cli("key", "create", "--team", "core", "--name", "bob", "--expires", "2099-12-31")
    assert code == 0 and out.startswith("sk-cg-") and out.count("\n") == 1 and "shown only this once" in err
    bob = gw.run(gw.store.get_key("bob"))
    assert bob.expires_at is not None and bob.expires_at.isoformat() == "2100-01-01T00:00:00+00:00"
    listed = json.loads(_ok(cli("key", "list", "--json")))
    assert [k["name"] for k in listed["keys"]] == ["alice", "bob"]
    table = _ok(cli("key", "list"))
    assert "alice" in table and created["key"] not in table and created["key"][:12] in table
    out = _ok(cli("budget", "set", "--team", "core", "20", "--period", "1d", "--json"))
    budget = json.loads(out)["budgets"][0]
    assert (budget["level"], budget["target"], budget["amount_usd"]) == ("team", "core", "20.000000000")
    _ok(cli("budget", "set", "--key", "alice", "$5.50", "--period", "weekly", "--rolling", "--alert-at", "0.8"))
    _ok(cli("budget", "set", "--customer", "acme", "300", "--period", "1mo"))
    assert len(json.loads(_ok(cli("budget", "list", "--json")))["budgets"]) == 3
    assert "core" in _ok(cli("budget", "list", "--team", "core"))
    _ok(cli("budget", "override", budget["id"], "50"))
    _ok(cli("budget", "reset", budget["id"]))
    _ok(cli("budget", "override", budget["id"], "--clear"))
    _ok(cli("budget", "delete", budget["id"]))
    rate = json.loads(_ok(cli("ratelimit", "set", "--team", "core", "--rpm", "60", "--tpm", "100000", "--json")))
    assert (rate["rpm"], rate["tpm"]) == (60, 100000)
    _ok(cli("ratelimit", "set", "--key", "alice", "--rpm", "10"))
    assert "alice" in _ok(cli("ratelimit", "list"))
    groq = ("provider", "set", "groq", "--kind", "openai", "--base-url", "https://groq.example/v1", "--key-stdin")
    _ok(cli(*groq, stdin="gsk-secret-1\n"))
    assert gw.run(gw.store.provider_api_key("groq")) == "gsk-secret-1"
    providers = _ok(cli("provider", "list", "--json"))
    assert "gsk-secret-1" not in providers and json.loads(providers)["providers"][0]["has_api_key"] is True
    rotated = json.loads(_ok(cli("key", "rotate", "alice", "--grace", "1h", "--json")))
    assert rotated["key"] != created["key"]
    _ok(cli("key", "update", "alice", "--mode", "proxy", "--allow-model", "claude-sonnet-4-5"))
    assert gw.run(gw.store.get_key("alice")).allowed_models == ("claude-sonnet-4-5",)
    _ok(cli("key", "revoke", "alice"))
    assert gw.run(gw.store.authenticate_key(rotated["key"])) is None
    audit = json.loads(_ok(cli("audit", "--json", "--limit", "1000")))
    actions = [entry["action"] for entry in audit["entries"]]
    assert actions[0] == "key.revoke" and actions[-1] == "customer.create"
    assert {entry["actor"] for entry in audit["entries"]} == {"env"}
    assert "key.revoke" in _ok(cli("audit", "--action", "key."))
    assert json.loads(_ok(cli("whoami", "--json"))) == {"name": "env", "role": "admin", "team": None}
    _ok(cli("team", "list"))
    _ok(cli("customer", "list"))


def test_admin_tokens_and_roles_from_the_cli(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _ok(cli("team", "create", "core"))
    code, out, err = cli("token", "create", "finance", "--role", "viewer")
    assert code == 0 and out.startswith("cg-admin-")
    token_file = tmp_path / "viewer-token"
    token_file.write_text(out)
    monkeypatch.delenv("CCGATE_GATEWAY_ADMIN_TOKEN")
    assert json.loads(_ok(cli("--token-file", str(token_file), "whoami", "--json")))["role"] == "viewer"
    _ok(cli("--token-file", str(token_file), "team", "list"))
    err = _one_error(cli("--token-file", str(token_file), "team", "create", "x"), "viewer")
    assert "may not change" in err and "admin role" in err
    assert out.strip() not in err
    monkeypatch.setenv("CCGATE_GATEWAY_ADMIN_TOKEN", BOOTSTRAP)
    tokens = _ok(cli("token", "list", "--json"))
    assert out.strip() not in tokens and json.loads(tokens)["tokens"][0]["name"] == "finance"
    _ok(cli("token", "revoke", "finance"))
    monkeypatch.delenv("CCGATE_GATEWAY_ADMIN_TOKEN")
    _one_error(cli("--token-file", str(token_file), "whoami"), "wrong or revoked", "CCGATE_GATEWAY_ADMIN_TOKEN")


def test_errors_are_one_line_with_a_hint(cli: Cli, gw: ServedAdmin, monkeypatch: pytest.MonkeyPatch) -> None:
    _ok(cli("team", "create", "core"))
    _one_error(cli("budget", "set", "--team", "core", "20", "--period", "fortnight"), "'fortnight' is not a period")
    _one_error(cli("budget", "set", "--team", "core", "--period", "1d", "--", "-5"), "amount_usd", "from 0")
    _one_error(cli("budget", "set", "--team", "nope", "5", "--period", "1d"), "no team 'nope'")
    _one_error(cli("budget", "set", "5", "--period", "1d"), "say what the budget is on")
    _one_error(cli("budget", "set", "--team", "core", "--key", "k", "5", "--period", "1d"), "one of")
    _one_error(cli("key", "create", "--team", "core", "--name", "k", "--mode", "steal"), "proxy or report")
    _one_error(cli("key", "revoke", "ghost"), "no live key 'ghost'", "key list")
    _one_error(cli("team", "create", "core"), "already exists")
    _one_error(cli("ratelimit", "set", "--rpm", "5"), "--team or --key")
    _one_error(cli("provider", "set", "p", "--kind", "grpc"), "anthropic or openai")
    assert gw.run(gw.store.list_budgets()) == []
    assert [k.name for k in gw.run(gw.store.list_keys())] == []
    # a wrong token: 401 in one line, the token never echoed
    monkeypatch.setenv("CCGATE_GATEWAY_ADMIN_TOKEN", "not-the-token-xyz")
    err = _one_error(cli("customer", "list"), "wrong or revoked", "check the admin token")
    assert "not-the-token-xyz" not in err
    # no token at all, stdin not a terminal: say how to give one
    monkeypatch.delenv("CCGATE_GATEWAY_ADMIN_TOKEN")
    _one_error(cli("customer", "list"), "no admin token", "--token-file")
    monkeypatch.setenv("CCGATE_GATEWAY_ADMIN_TOKEN", BOOTSTRAP)
    monkeypatch.delenv("CCGATE_GATEWAY_URL")
    _one_error(cli("customer", "list"), "no gateway URL", "--url")
    _one_error(cli("--url", "ftp://x", "customer", "list"), "not a gateway URL")


def test_an_unreachable_gateway_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        monkeypatch.setenv("CCGATE_GATEWAY_ADMIN_TOKEN", BOOTSTRAP)
        result = run_main(
            capsys, monkeypatch, "gateway", "admin", "--url", f"http://127.0.0.1:{port}", "customer", "list"
        )
    err = _one_error(result, f"cannot reach the gateway at http://127.0.0.1:{port}", "gateway serve")
    assert BOOTSTRAP not in err


def test_gateway_report_prints_the_cost_json_shape_csv_and_a_table(
    gw: ServedAdmin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(BOOTSTRAP + "\n")
    base = ("gateway", "report", "--url", gw.url, "--token-file", str(token_file))
    code, out, err = run_main(capsys, monkeypatch, *base, "--by", "team", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"since", "until", "by", "total", "groups"} and report["by"] == "team"
    assert {
        "requests",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost_usd",
        "unpriced_requests",
    } <= set(report["total"])
    code, out, err = run_main(
        capsys, monkeypatch, *base, "--by", "day", "--since", "2026-01-01", "--until", "2026-01-31", "--csv"
    )
    assert code == 0, err
    assert out.splitlines()[0].startswith("key,requests,input_tokens")
    assert out.splitlines()[-1].startswith("(total),0,")
    code, out, err = run_main(capsys, monkeypatch, *base, "--by", "model")
    assert code == 0 and "Total" in out
    code, out, err = run_main(capsys, monkeypatch, *base, "--by", "colour")
    _one_error((code, out, err), "cannot group by 'colour'")
    _one_error(run_main(capsys, monkeypatch, *base, "--json", "--csv"), "cannot be combined")


def test_the_admin_cli_never_imports_aiohttp(gw: ServedAdmin, tmp_path: Path) -> None:
    """The admin commands run on the standard library's HTTP client: a real process, then its modules."""
    code = (
        "import sys\nfrom ccgate.cli import main\n"
        "sys.argv = ['ccgate', 'gateway', 'admin', 'customer', 'list', '--json']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('aiohttp' in sys.modules, file=sys.stderr)\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CCGATE_")},
        "CCGATE_HOME": str(tmp_path),
        "CCGATE_GATEWAY_URL": gw.url,
        "CCGATE_GATEWAY_ADMIN_TOKEN": BOOTSTRAP,
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"customers": []}
    assert done.stderr.strip() == "False"


def test_credentials_in_the_url_are_refused_without_echoing_them(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCGATE_GATEWAY_ADMIN_TOKEN", BOOTSTRAP)
    url = "http://admin:hunter2-secret@127.0.0.1:9/"
    err = _one_error(run_main(capsys, monkeypatch, "gateway", "admin", "--url", url, "whoami"), "credentials")
    assert "hunter2-secret" not in err


def test_provider_key_without_the_encryption_key_is_refused_and_nothing_stored(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with served_admin(db_url, cipher=None) as keyless:
        monkeypatch.setenv("CCGATE_GATEWAY_ADMIN_TOKEN", BOOTSTRAP)
        args = ("gateway", "admin", "--url", keyless.url, "provider", "set", "anthropic", "--kind", "anthropic")
        result = run_main(capsys, monkeypatch, *args, "--key-stdin", stdin="sk-ant-never-stored\n")
        err = _one_error(result, "CCGATE_GATEWAY_SECRET_KEY is not set", "Fernet")
        assert "sk-ant-never-stored" not in err
        assert keyless.run(keyless.store.list_providers()) == []
        assert keyless.run(keyless.store.list_audit()) == []


@pytest.mark.parametrize(("status", "body"), [(200, b"<html>welcome</html>"), (404, b"not here"), (502, b"")])
def test_a_url_that_is_not_a_gateway_is_one_line(
    status: int, body: bytes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some other web server (or a proxy in front of nothing) at --url: say so, never a traceback."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Other(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Other)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("CCGATE_GATEWAY_ADMIN_TOKEN", BOOTSTRAP)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_main(capsys, monkeypatch, "gateway", "admin", "--url", url, "customer", "list")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    _one_error(result, f"answered HTTP {status}", "not ccgate's admin API", "points at a ccgate gateway")


def test_a_token_that_is_not_ascii_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An HTTP header carries Latin-1 at most: a pasted `€` or a stray byte from the environment must not crash."""
    monkeypatch.setenv("CCGATE_GATEWAY_URL", "http://127.0.0.1:9")  # never reached
    token_file = tmp_path / "token"
    token_file.write_text("cga-abc\u20ac\n", encoding="utf-8")
    result = run_main(capsys, monkeypatch, "gateway", "admin", "--token-file", str(token_file), "whoami")
    assert "€" not in _one_error(result, str(token_file), "ASCII")
    monkeypatch.setenv("CCGATE_GATEWAY_ADMIN_TOKEN", "cga-abc\udc80")
    _one_error(run_main(capsys, monkeypatch, "gateway", "admin", "whoami"), "CCGATE_GATEWAY_ADMIN_TOKEN", "ASCII")
