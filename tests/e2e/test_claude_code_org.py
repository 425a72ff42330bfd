"""The real Claude Code through `ccgate launch` in org proxy mode: sidecar -> gateway -> scripted upstream.

Also the secrets check: the virtual key is nowhere but the secrets store (not in config, logs, ledger, any
`--json` output, or the arguments of the processes ccgate starts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import ADMIN_TOKEN, PROVIDER_KEY, running_gateway

from e2e.harness import DUMMY_KEY, E2E
from gateway.conftest import db_url, postgres_server  # noqa: F401 - fixtures: the gateway on SQLite and PostgreSQL

pytestmark = pytest.mark.e2e


def _files_holding(root: Path, secret: bytes, *, skip: set[Path]) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and path not in skip and secret in path.read_bytes()]


async def _admin(e2e: E2E, url: str, *args: str) -> Any:
    """`ccgate gateway ARGS --json` as the platform team runs it (URL and admin token in its environment only)."""
    saved = dict(e2e.env)
    e2e.env.update({"CCGATE_GATEWAY_URL": url, "CCGATE_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        result = await e2e.run("gateway", *args, "--json")
    finally:
        e2e.env.clear()
        e2e.env.update(saved)
    assert result.returncode == 0, result.explain()
    return json.loads(result.stdout)


async def test_proxy_mode_with_the_real_claude_code(e2e: E2E, db_url: str) -> None:  # noqa: F811
    # the `sync` below must find the rows unsynced: on a busy machine the run outlasts the 10 s background sync
    e2e.env["CCGATE_SYNC_INTERVAL_SECONDS"] = "3600"
    async with running_gateway(db_url, upstream=e2e.upstream) as gateway:
        created = await _admin(e2e, gateway.url, "admin", "key", "create", "--team", "core", "--name", "eve")
        assert created["mode"] == "proxy"
        key = created["key"]
        login = await e2e.run("login", gateway.url, "--key", key)
        assert login.returncode == 0, login.explain()
        assert "proxy" in login.stderr

        text = await e2e.claude("-p", "say hi", "--output-format", "json")
        assert text.returncode == 0, text.explain()
        assert "org gateway" in text.stderr  # launch says once where requests go
        tool = await e2e.claude(
            "-p",
            "Please run echo hello-from-tool with the Bash tool.",
            "--allowedTools",
            "Bash(echo:*)",
            "--output-format",
            "json",
        )
        assert tool.returncode == 0, tool.explain()
        assert "hello-from-tool" in tool.json()["result"]

        hits = e2e.upstream.messages_requests
        assert len(hits) >= 3
        for hit in hits:  # the org's provider key upstream; neither the developer's key nor the virtual key
            assert hit.headers["x-api-key"] == PROVIDER_KEY
            seen = repr(hit.headers) + hit.body.decode(errors="replace")
            assert DUMMY_KEY not in seen and key not in seen

        sidecar_pid = int(e2e.paths.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{sidecar_pid}/cmdline").read_bytes()
        assert key.encode() not in cmdline

        outputs = []
        for args in (("whoami", "--json"), ("sync", "--json"), ("logs", "--json"), ("sidecar", "status", "--json")):
            result = await e2e.run(*args)
            assert result.returncode == 0, result.explain()
            outputs.append(result.stdout + result.stderr)
        doctor = await e2e.run("doctor", "--json")
        outputs.append(doctor.stdout + doctor.stderr)
        checks = {check["name"]: check for check in json.loads(doctor.stdout)["checks"]}
        assert checks["sidecar providers"]["state"] == "ok", checks
        assert "org proxy mode" in checks["sidecar providers"]["detail"]
        assert checks["org key"]["state"] == "ok" and checks["org gateway"]["state"] == "ok", checks
        assert json.loads(outputs[1]) == {"sent": 0, "known": len(hits), "rejected": 0, "rejections": []}
        for output in outputs:
            assert key not in output

        e2e.stop_sidecar()
        local = [json.loads(line) for line in (await e2e.run("logs", "--json", "-n", "100")).stdout.splitlines()]
        rows = await gateway.rows("eve")
        assert sorted(r.record.id for r in rows) == sorted(row["id"] for row in local)
        assert len(rows) == len(hits)
        # the org's report attributes every proxied request to the key and to the launch's project
        by_key = await _admin(e2e, gateway.url, "report", "--by", "key")
        assert [(g["key"], g["requests"]) for g in by_key["groups"]] == [("eve", len(hits))]
        assert by_key["groups"][0]["last_sync_at"] is not None  # the `sync` above reached the gateway
        projects = {row["project"] for row in local}
        assert len(projects) == 1 and None not in projects
        by_project = await _admin(e2e, gateway.url, "report", "--by", "project")
        assert [(g["key"], g["requests"]) for g in by_project["groups"]] == [(projects.pop(), len(hits))]
        assert by_key["total"] == by_project["total"]

        secrets_file = e2e.paths.secrets_file
        assert _files_holding(Path(e2e.env["CCGATE_HOME"]), key.encode(), skip={secrets_file}) == []
        assert key in secrets_file.read_text() and secrets_file.stat().st_mode & 0o077 == 0


async def test_report_mode_with_the_real_claude_code(e2e: E2E, tmp_path: Path) -> None:
    import asyncio

    from ccgate.features.statusline import render

    e2e.env["CCGATE_SYNC_INTERVAL_SECONDS"] = "0.3"
    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}") as gateway:
        created = await gateway.store.create_key(team="core", name="rita", mode="report")
        login = await e2e.run("login", gateway.url, "--key", created.plaintext)
        assert login.returncode == 0, login.explain()

        first = await e2e.claude("-p", "say hi", "--output-format", "json")
        assert first.returncode == 0, first.explain()
        assert "reported to the org gateway" in first.stderr
        hits = e2e.upstream.messages_requests
        assert hits and all(hit.headers.get("x-api-key") == DUMMY_KEY for hit in hits)  # their own credentials
        synced = await e2e.run("sync", "--json")
        assert synced.returncode == 0, synced.explain()
        rows = await gateway.rows("rita")
        assert len(rows) == len(hits)
        assert all(row.source.value == "ingested" for row in rows)

        await gateway.store.create_budget(level="key", target="rita", limit_nanos=1000, period="1d")
        for _ in range(300):  # the sidecar refreshes the org budgets from /v1/me after each sync round
            if "org budget used up" in render("{}"):
                break
            await asyncio.sleep(0.1)
        second = await e2e.claude("-p", "say hi again", "--output-format", "json")
        assert "402" in second.stdout + second.stderr, second.explain()
        assert "org budget" in second.stdout + second.stderr, second.explain()
        assert len(e2e.upstream.messages_requests) == len(hits)  # refused before the provider
