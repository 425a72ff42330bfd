"""Org mode against the gateway on SQLite and on a real PostgreSQL: proxy mode through the sidecar, then sync;
report-mode rows synced exactly once, count and dollars checked at the gateway."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import anthropic
from gateway_harness import PROVIDER_KEY, Gateway, running_gateway
from sidecar_harness import running_sidecar

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
            assert await _sync() == (0, 3, 0)
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
