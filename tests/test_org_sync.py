"""`ccgate sync`: every finished row reaches the gateway once, rows from before login only with --since, and
rows the gateway refuses are kept, shown, and not sent again."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_runner import run_main
from gateway_harness import running_gateway

from ccgate.core.pricing import PriceCatalog
from ccgate.core.records import RequestRecord, RequestStatus, Usage
from ccgate.local.paths import resolve_paths
from ccgate.storage.ledger import insert_records, open_ledger

MODEL = "claude-sonnet-4-5"


async def _cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str, stdin: str | None = None
) -> tuple[int, str, str]:
    return await asyncio.to_thread(run_main, capsys, monkeypatch, *args, stdin=stdin)


def _record(started: datetime, status: RequestStatus = RequestStatus.OK, **fields: object) -> RequestRecord:
    record = RequestRecord(
        started_at=started,
        ended_at=None if status is RequestStatus.PENDING else started + timedelta(seconds=2),
        session_id="s-1",
        project="/home/ada/app",
        requested_model=MODEL,
        provider="anthropic",
        routed_model=MODEL,
        stream=True,
        status=status,
        http_status=None if status is RequestStatus.PENDING else 200,
        usage=Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=5000, cache_write_5m_tokens=100),
    )
    return replace(record, **fields)  # type: ignore[arg-type]


def _add(*records: RequestRecord) -> None:
    db = open_ledger(resolve_paths().ledger_file)
    try:
        insert_records(db, records)
    finally:
        db.close()


def _price(records: list[RequestRecord]) -> int:
    catalog = PriceCatalog()
    total = 0
    for record in records:
        nanos = catalog.cost(MODEL, record.usage, provider="anthropic", at=record.started_at).nanos
        assert nanos is not None
        total += nanos
    return total


async def test_sync_sends_each_row_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    before_login = _record(now - timedelta(days=1))
    ancient = _record(now - timedelta(days=600))
    _add(before_login, ancient)
    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}") as gateway:
        code, _, err = await _cli(capsys, monkeypatch, "login", gateway.url, "--key", gateway.keys["ada"])
        assert code == 0, err
        after = [_record(now - timedelta(seconds=30 - i)) for i in range(6)]
        after.append(_record(now - timedelta(seconds=5), RequestStatus.INTERRUPTED, source="sidecar"))
        after.append(_record(now - timedelta(hours=3), source="claude-code-import"))  # imported late, older time
        running = _record(now, RequestStatus.PENDING)
        _add(*after, running)

        code, out, err = await _cli(capsys, monkeypatch, "whoami", "--json")
        assert json.loads(out)["unsynced"] == len(after)

        code, out, err = await _cli(capsys, monkeypatch, "sync", "--json", "--batch-rows", "3")
        assert code == 0, err
        assert json.loads(out) == {"sent": len(after), "known": 0, "rejected": 0, "rejections": []}
        rows = await gateway.rows("ada")
        assert sorted(r.record.id for r in rows) == sorted(r.id for r in after)
        assert sum(r.record.cost.nanos or 0 for r in rows) == _price(after)

        code, out, err = await _cli(capsys, monkeypatch, "sync", "--json")
        assert json.loads(out)["sent"] == 0 and json.loads(out)["known"] == 0

        # the pending request finishes: it goes with the next sync
        db = open_ledger(resolve_paths().ledger_file)
        try:
            db.execute("UPDATE requests SET status = 'ok', ended_at = started_at WHERE id = ?", (running.id,))
            db.conn.commit()
        finally:
            db.close()
        code, out, err = await _cli(capsys, monkeypatch, "sync")
        assert code == 0 and "1 sent, 0 already known, 0 rejected" in err

        # rows from before login only on request; the gateway refuses a row older than it keeps, once
        since = (now - timedelta(days=700)).strftime("%Y-%m-%d")
        code, out, err = await _cli(capsys, monkeypatch, "sync", "--json", "--since", since)
        answer = json.loads(out)
        assert (answer["sent"], answer["rejected"]) == (1, 1)
        assert answer["rejections"][0]["id"] == ancient.id and "started_at" in answer["rejections"][0]["why"]
        code, out, err = await _cli(capsys, monkeypatch, "sync", "--json", "--since", since)
        assert json.loads(out) == {"sent": 0, "known": 0, "rejected": 0, "rejections": []}

        rows = await gateway.rows("ada")
        assert len(rows) == len(after) + 2
        assert len({r.record.id for r in rows}) == len(rows)
        code, out, err = await _cli(capsys, monkeypatch, "whoami", "--json")
        who = json.loads(out)
        assert who["unsynced"] == 0 and who["rejected"] == 1 and who["last_synced_at"]


async def test_sync_with_the_gateway_down_keeps_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}") as gateway:
        code, _, err = await _cli(capsys, monkeypatch, "login", gateway.url, "--key", gateway.keys["ada"])
        assert code == 0, err
        url = gateway.url
    _add(_record(datetime.now(UTC)))
    code, out, err = await _cli(capsys, monkeypatch, "sync")
    assert code == 1 and "cannot reach the gateway" in err and "Traceback" not in err
    code, out, err = await _cli(capsys, monkeypatch, "whoami")
    assert code == 1 and "1 request(s) wait here to be synced" in err and "cannot reach the gateway" in err
    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}", org=False) as gateway:
        # the same database behind a new port: point the config there
        paths = resolve_paths()
        paths.config_file.write_text(paths.config_file.read_text().replace(url, gateway.url))
        code, out, err = await _cli(capsys, monkeypatch, "sync", "--json")
        assert code == 0, err
        assert json.loads(out)["sent"] == 1


async def test_a_batch_stored_but_its_answer_lost_comes_back_known(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway commits a batch and the connection dies before the answer: the rows stay unsynced here, the
    next sync sends them again and the gateway counts them once."""
    import aiohttp
    from aiohttp import web

    async with running_gateway(f"sqlite:///{tmp_path / 'gw.db'}") as gateway:
        lost = 0

        async def forward(request: web.Request) -> web.StreamResponse:
            nonlocal lost
            body = await request.read()
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in ("host", "content-length", "content-encoding")
            }
            async with (
                aiohttp.ClientSession(auto_decompress=False) as session,
                session.request(request.method, gateway.url + request.path, data=body, headers=headers) as answer,
            ):
                data = await answer.read()
                if request.path == "/v1/usage" and lost < 1:
                    lost += 1
                    assert request.transport is not None
                    request.transport.close()  # stored at the gateway, never answered
                    raise ConnectionResetError
                return web.Response(body=data, status=answer.status, content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            front = f"http://127.0.0.1:{runner.addresses[0][1]}"
            code, _, err = await _cli(capsys, monkeypatch, "login", front, "--key", gateway.keys["ada"])
            assert code == 0, err
            records = [_record(datetime.now(UTC) - timedelta(seconds=i)) for i in range(5)]
            _add(*records)
            code, out, err = await _cli(capsys, monkeypatch, "sync", "--json")
            assert code == 1 and "cannot reach the gateway" in err
            assert len(await gateway.rows("ada")) == 5
            code, out, err = await _cli(capsys, monkeypatch, "sync", "--json")
            assert code == 0, err
            assert json.loads(out) == {"sent": 0, "known": 5, "rejected": 0, "rejections": []}
            rows = await gateway.rows("ada")
            assert len(rows) == 5 and sum(r.record.cost.nanos or 0 for r in rows) == _price(records)
        finally:
            await runner.cleanup()


def test_launch_tags_travel_as_an_object() -> None:
    """The ledger keeps a row's launch tags as JSON text (once the tags migration is there); the gateway's
    ingest takes an object, and refuses the row otherwise."""
    from ccgate.storage.org_sync import _tags_as_object

    row: dict[str, object] = {"id": "r1", "tags": '{"ticket": "ABC-1"}'}
    _tags_as_object(row)
    assert row["tags"] == {"ticket": "ABC-1"}
    for text in ("{}", "not json", '["a"]'):
        row = {"id": "r2", "tags": text}
        _tags_as_object(row)
        assert "tags" not in row
