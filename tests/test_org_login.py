"""`ccgate login`, `logout`, `whoami` against a real in-process gateway: each failure one line, nothing stored."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web
from cli_runner import run_main
from gateway_harness import running_gateway

from ccgate.local.paths import resolve_paths
from ccgate.local.secrets import VIRTUAL_KEY_USERNAME, get_secret


def _stored(home: Path) -> tuple[str | None, str]:
    paths = resolve_paths()
    config = paths.config_file.read_text() if paths.config_file.exists() else ""
    return get_secret(VIRTUAL_KEY_USERNAME, paths=paths), config


async def _cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str, stdin: str | None = None
) -> tuple[int, str, str]:
    """The CLI blocks on its HTTP call, so it runs on a thread while this loop serves the gateway."""
    return await asyncio.to_thread(run_main, capsys, monkeypatch, *args, stdin=stdin)


async def test_login_whoami_logout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}") as gateway:
        await gateway.store.create_budget(level="key", target="ada", limit_nanos=5 * 10**9, period="1d")
        key = gateway.keys["ada"]
        code, out, err = await _cli(capsys, monkeypatch, "login", gateway.url, "--key", "-", stdin=key + "\n")
        assert code == 0, err
        assert "logged in to" in err and "ada" in err and "core" in err and "proxy" in err
        assert "$5.00" in err
        stored, config = _stored(isolated_home)
        assert stored == key
        assert gateway.url in config and key not in config

        code, out, err = await _cli(capsys, monkeypatch, "whoami", "--json")
        assert code == 0, err
        who = json.loads(out)
        assert set(who) >= {"gateway", "key", "team", "customer", "mode", "budgets", "unsynced"}
        assert who["gateway"] == gateway.url and who["team"] == "core" and who["customer"] == "acme"
        assert who["mode"] == "proxy" and who["unsynced"] == 0
        assert who["key"] and key.startswith(who["key"]) and who["key"] != key
        assert who["budgets"][0]["limit_usd"] == "5.000000000"
        assert key not in out

        code, out, err = await _cli(capsys, monkeypatch, "logout")
        assert code == 0 and "logged out" in err
        stored, config = _stored(isolated_home)
        assert stored is None and gateway.url not in config
        code, out, err = await _cli(capsys, monkeypatch, "whoami")
        assert code == 1 and "not logged in" in err and "ccgate login" in err


async def test_wrong_and_revoked_keys_store_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}") as gateway:
        wrong = "sk-cg-" + "x" * 40
        code, out, err = await _cli(capsys, monkeypatch, "login", gateway.url, "--key", wrong)
        assert code == 1
        assert err.count("error:") == 1 and "refused the key" in err and "Traceback" not in err
        assert wrong not in err + out
        assert _stored(isolated_home) == (None, "")

        await gateway.store.revoke_key("bob")
        code, out, err = await _cli(capsys, monkeypatch, "login", gateway.url, "--key", gateway.keys["bob"])
        assert code == 1 and "refused the key" in err and gateway.keys["bob"] not in err
        assert _stored(isolated_home) == (None, "")


async def test_unreachable_and_not_a_gateway(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _, err = await _cli(capsys, monkeypatch, "login", f"http://127.0.0.1:{port}", "--key", "sk-cg-abc")
    assert code == 1 and "cannot reach the gateway" in err and "connection refused" in err
    assert _stored(isolated_home) == (None, "")

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        code, _out, err = await _cli(capsys, monkeypatch, "login", url, "--key", "sk-cg-abc")
        assert code == 1 and "is not a ccgate gateway" in err
    finally:
        await runner.cleanup()
    assert _stored(isolated_home) == (None, "")


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ftp://gateway.example", "not a gateway URL"),
        ("gateway.example", "not a gateway URL"),
        ("https://user:pw@gateway.example", "credentials"),
        ("https://gateway.example/?x=1", "query"),
        ("http://gateway.example", "in clear text"),
        ("http://10.1.2.3:8700", "in clear text"),
    ],
)
async def test_bad_urls_refused_before_any_key_is_sent(
    url: str, said: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    code, out, err = await _cli(capsys, monkeypatch, "login", url, "--key", "sk-cg-secret")
    assert code == 1 and said in err and "Traceback" not in err
    assert "sk-cg-secret" not in err + out
    assert _stored(isolated_home) == (None, "")


async def test_doctor_checks_the_gateway_and_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}", key_cache_seconds=0) as gateway:
        code, _, err = await _cli(capsys, monkeypatch, "login", gateway.url, "--key", gateway.keys["ada"])
        assert code == 0, err

        async def org_checks() -> dict[str, dict[str, str]]:
            _, out, _ = await _cli(capsys, monkeypatch, "doctor", "--json")
            assert gateway.keys["ada"] not in out
            return {c["name"]: c for c in json.loads(out)["checks"] if c["name"] in ("org gateway", "org key")}

        checks = await org_checks()
        assert checks["org gateway"]["state"] == "ok"
        assert checks["org key"]["state"] == "ok" and "proxy mode" in checks["org key"]["detail"]
        await gateway.store.revoke_key("ada")
        checks = await org_checks()
        assert checks["org key"]["state"] == "fail" and "ccgate login" in checks["org key"]["fix"]


async def test_model_commands_say_local_tiers_wait_in_proxy_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}") as gateway:
        code, _, err = await _cli(capsys, monkeypatch, "login", gateway.url, "--key", gateway.keys["ada"])
        assert code == 0, err
    code, _, err = await _cli(capsys, monkeypatch, "model", "list")
    assert code == 0 and "proxy mode" in err and "not used" in err
    code, _, err = await _cli(capsys, monkeypatch, "model", "set", "haiku", "anthropic/claude-haiku-4-5")
    assert code == 0 and "proxy mode" in err
