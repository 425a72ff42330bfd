"""Org mode against the gateway on SQLite and on a real PostgreSQL: proxy mode through the sidecar, then sync;
report-mode rows synced exactly once, count and dollars checked at the gateway."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import anthropic
import pytest
from cli_runner import run_main
from gateway_harness import ADMIN_TOKEN, PROVIDER_KEY, Gateway, running_gateway
from sidecar_harness import Harness, running_sidecar

from ccgate.client.org import login, sync
from ccgate.core.pricing import PriceCatalog
from ccgate.core.records import RequestRecord, RequestStatus, Usage
from ccgate.local.config_file import load_config
from ccgate.local.paths import resolve_paths
from ccgate.storage.ledger import insert_records, open_ledger

OWN_KEY = "sk-ant-developer-own-key-0123456789"
MODEL = "claude-sonnet-4-5"


async def _login(gateway: Gateway, key: str) -> None:
    paths = resolve_paths().ensure()
    await asyncio.to_thread(login, paths, load_config(paths.config_file), gateway.url, key)


async def _sync() -> tuple[int, int, int]:
    paths = resolve_paths()
    result = await asyncio.to_thread(sync, paths, load_config(paths.config_file), batch_rows=7)
    return result.sent, result.known, len(result.rejected)


async def test_proxy_mode_then_sync_adds_nothing(db_url: str) -> None:
    async with running_gateway(db_url) as gateway:
        await _login(gateway, gateway.keys["ada"])
        async with running_sidecar(environ={"CCGATE_SYNC_INTERVAL_SECONDS": "3600"}) as harness:
            client = anthropic.AsyncAnthropic(
                base_url=harness.url, api_key=OWN_KEY, default_headers=harness.headers, max_retries=0
            )
            for text in ("one", "two", "three"):
                await client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": text}])
            for request in gateway.upstream.messages_requests:
                assert request.headers["x-api-key"] == PROVIDER_KEY and OWN_KEY not in repr(request.headers)
            local = harness.rows()
            await gateway.flush()  # the gateway's rows are in (else the sync comes first: see the ledger tests)
            sent, known, rejected = await _sync()
            # the sidecar's own sync loop may have sent some of them first (it wakes on a config reload): those
            # came back known to it; what matters is that nothing was stored twice or refused
            assert (sent, rejected) == (0, 0) and known <= 3
            assert all(row["synced_at"] for row in harness.rows())
        rows = await gateway.rows("ada")
        assert sorted(r.record.id for r in rows) == sorted(row["id"] for row in local)
        assert {r.source.value for r in rows} == {"proxied"}


async def test_report_mode_rows_arrive_once_with_their_dollars(db_url: str) -> None:
    async with running_gateway(db_url) as gateway:
        created = await gateway.store.create_key(team="core", name="rita", mode="report")
        await _login(gateway, created.plaintext)
        now = datetime.now(UTC)
        records = [
            RequestRecord(
                started_at=now - timedelta(seconds=60 - i),
                ended_at=now,
                requested_model=MODEL,
                provider="anthropic",
                routed_model=MODEL,
                status=RequestStatus.OK if i % 5 else RequestStatus.INTERRUPTED,
                http_status=200,
                usage=Usage(input_tokens=500 + i, output_tokens=40 + i, cache_write_1h_tokens=i),
            )
            for i in range(30)
        ]
        db = open_ledger(resolve_paths().ledger_file)
        try:
            insert_records(db, records)
        finally:
            db.close()
        assert await _sync() == (30, 0, 0)
        assert await _sync() == (0, 0, 0)
        rows = await gateway.rows("rita")
        assert sorted(r.record.id for r in rows) == sorted(r.id for r in records)
        catalog = PriceCatalog()
        expected = sum(catalog.cost(MODEL, r.usage, provider="anthropic", at=r.started_at).nanos or 0 for r in records)
        assert sum(r.record.cost.nanos or 0 for r in rows) == expected


async def _register(harness: Harness, launch_id: str, project: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{harness.url}/_ccgate/launches",
            json={"launch_id": launch_id, "project": project},
            headers=harness.headers,
        ) as reply,
    ):
        assert reply.status == 200, await reply.text()


async def test_proxied_rows_carry_project_session_and_launch_into_the_gateway_report(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gateway report --by project` attributes proxy-mode requests as exactly as synced ones: the sidecar tells
    the gateway each row's project (any Unicode, percent-encoded on the wire), session and launch."""
    plain, unicode = "/work/plain-project", "/home/zoë/プロジェクト 50%"
    async with running_gateway(db_url) as gateway:
        await _login(gateway, gateway.keys["ada"])
        async with running_sidecar(environ={"CCGATE_SYNC_INTERVAL_SECONDS": "3600"}) as harness:
            await _register(harness, "launch-plain-1", plain)
            await _register(harness, "launch-unicode-2", unicode)
            sends = [("launch-plain-1", "session-a"), ("launch-plain-1", "session-a"), ("launch-unicode-2", "s-b")]
            for launch_id, session_id in sends:
                client = anthropic.AsyncAnthropic(
                    base_url=harness.url,
                    api_key=OWN_KEY,
                    default_headers={**harness.launch_headers(launch_id), "x-claude-code-session-id": session_id},
                    max_retries=0,
                )
                await client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
            for request in gateway.upstream.messages_requests:  # the provider sees none of ccgate's headers
                assert [n for n in request.headers if n.lower().startswith("x-ccgate-")] == []
            local = harness.rows()
            rows = {r.record.id: r.record for r in await gateway.rows("ada")}
            assert len(rows) == 3
            for row in local:
                mine = rows[row["id"]]
                assert (mine.project, mine.session_id, mine.launch_id) == (
                    row["project"],
                    row["session_id"],
                    row["launch_id"],
                )
            assert await _sync() == (0, 3, 0)

        monkeypatch.setenv("CCGATE_GATEWAY_URL", gateway.url)
        monkeypatch.setenv("CCGATE_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
        code, out, err = await asyncio.to_thread(
            run_main, capsys, monkeypatch, "gateway", "report", "--by", "project", "--json"
        )
        assert code == 0, err
        report = json.loads(out)
        groups = {group["key"]: group for group in report["groups"]}
        assert set(groups) == {plain, unicode}
        assert (groups[plain]["requests"], groups[unicode]["requests"]) == (2, 1)
        expected = {p: sum(r.cost.nanos or 0 for r in rows.values() if r.project == p) for p in (plain, unicode)}
        assert {p: Decimal(groups[p]["cost_usd"]) for p in groups} == {
            p: Decimal(n) / 10**9 for p, n in expected.items()
        }


async def test_a_bad_attribution_header_is_dropped_not_an_error(db_url: str) -> None:
    """A client talking to the gateway directly may send anything: an unusable value is left off the row."""
    async with running_gateway(db_url) as gateway:
        client = gateway.client(
            gateway.keys["ada"],
            default_headers={
                "x-ccgate-project": "%FF%FE",  # not UTF-8
                "x-ccgate-session": "has space",
                "x-ccgate-launch": "x" * 500,
            },
        )
        await client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        client = gateway.client(
            gateway.keys["bob"], default_headers={"x-ccgate-project": "a%0Ab", "x-ccgate-session": "sk-ant-oops"}
        )
        await client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        rows = await gateway.rows()
        assert len(rows) == 2
        for row in rows:
            assert (row.record.project, row.record.launch_id) == (None, None)
            assert row.record.session_id is None or not row.record.session_id.startswith(("has", "sk-"))


async def test_the_gateway_records_when_each_key_last_synced_and_shows_it(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`/v1/me` (so `whoami`), the admin's key list and `gateway report --by key` say when each key last synced."""
    from ccgate.client.org import doctor_checks, whoami

    async with running_gateway(db_url) as gateway:
        created = await gateway.store.create_key(team="core", name="rita", mode="report")
        await _login(gateway, created.plaintext)
        paths = resolve_paths()
        before = await asyncio.to_thread(whoami, paths, load_config(paths.config_file))
        assert before.last_sync_at is None
        now = datetime.now(UTC)
        db = open_ledger(paths.ledger_file)
        try:
            insert_records(
                db,
                [
                    RequestRecord(
                        started_at=now - timedelta(seconds=30),
                        ended_at=now,
                        requested_model=MODEL,
                        provider="anthropic",
                        routed_model=MODEL,
                        status=RequestStatus.OK,
                        http_status=200,
                        usage=Usage(input_tokens=100, output_tokens=10),
                    )
                ],
            )
        finally:
            db.close()
        assert await _sync() == (1, 0, 0)
        after = await asyncio.to_thread(whoami, paths, load_config(paths.config_file))
        assert after.last_sync_at is not None
        synced = datetime.fromisoformat(after.last_sync_at)
        assert now - timedelta(minutes=1) <= synced <= datetime.now(UTC)
        checks = await asyncio.to_thread(doctor_checks, paths, load_config(paths.config_file))
        sync_check = next(check for check in checks if check.name == "usage sync")
        assert f"the gateway last took a batch from this key {after.last_sync_at}" in sync_check.detail

        monkeypatch.setenv("CCGATE_GATEWAY_URL", gateway.url)
        monkeypatch.setenv("CCGATE_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)

        def cli(*args: str) -> dict[str, object]:
            code, out, err = run_main(capsys, monkeypatch, *args)
            assert code == 0, err
            data: dict[str, object] = json.loads(out)
            return data

        keys = await asyncio.to_thread(cli, "gateway", "admin", "key", "list", "--json")
        listed = {key["name"]: key for key in keys["keys"]}  # type: ignore[attr-defined]
        assert listed["rita"]["last_sync_at"] == after.last_sync_at
        assert listed["ada"]["last_sync_at"] is None
        report = await asyncio.to_thread(cli, "gateway", "report", "--by", "key", "--json")
        groups = {group["key"]: group for group in report["groups"]}  # type: ignore[attr-defined]
        assert groups["rita"]["last_sync_at"] == after.last_sync_at
        assert groups["rita"]["requests"] == 1
        total = await asyncio.to_thread(cli, "gateway", "report", "--json")  # the `cost --json` shape, unchanged
        assert set(total) == {"since", "until", "by", "total", "groups"}
