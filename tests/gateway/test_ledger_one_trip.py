"""The ledger sink's batch in one trip: on SQLite one job, inline or on the database thread (rows, roll-ups and
tokens-per-minute counts together), on PostgreSQL one transaction plus one statement per rate-limited owner."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from gateway_testing import acme_dev

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage, to_iso
from ccgate.gateway.ledger import GatewayLedger, Owner
from ccgate.storage.gateway import GatewayRow, GatewayStore, RateAllowed, RateLimited
from ccgate.storage.gateway.db import Connection, SQLiteDatabase
from ccgate.storage.gateway.ledger import INLINE_ROWS

NOW = datetime.now(UTC)


def _record(row_id: str, status: RequestStatus = RequestStatus.OK, *, tokens: int = 400) -> RequestRecord:
    return RequestRecord(
        id=row_id,
        started_at=NOW,
        ended_at=NOW + timedelta(seconds=1),
        requested_model="claude-sonnet-4-5",
        provider="anthropic",
        status=status,
        usage=Usage(input_tokens=tokens // 2, output_tokens=tokens - tokens // 2),
        cost=Cost(1_000, PriceQuality.PRICED),
    )


def _hops(db: SQLiteDatabase) -> list[object]:
    """Every job handed to the SQLite thread from now on."""
    executor: Any = db._executor
    calls: list[object] = []
    submit = executor.submit

    def counting(function: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(function)
        return submit(function, *args, **kwargs)

    executor.submit = counting
    return calls


async def test_a_sink_batch_is_one_transaction_on_the_event_loop_and_no_hop_to_the_sqlite_thread(
    store: GatewayStore,
) -> None:
    """Rows that are new, rows that finish a pending row, an interrupted row finished by its own request, the
    hourly roll-up and the tokens of two owners: one transaction, run on the loop's own connection (the write
    lock is free), nothing handed to the database thread."""
    if not isinstance(store.db, SQLiteDatabase):
        pytest.skip("SQLite's thread hops")
    assert store.db._inline is not None
    bounds: list[str] = []
    store.db._inline.set_trace_callback(lambda sql: bounds.append(sql) if sql.startswith(("BEGIN", "COMMIT")) else None)
    who = await acme_dev(store)
    await store.set_rate_limit(level="team", target="core", rpm=None, tpm=10_000)
    pending = [GatewayRow(_record(f"r{i}", RequestStatus.PENDING), who.key.id, who.team.id, None) for i in range(3)]
    await store.write_requests(pending)
    batch = [GatewayRow(_record(f"r{i}"), who.key.id, who.team.id, None) for i in range(5)]
    hops = _hops(store.db)
    bounds.clear()
    assert await store.write_requests(batch, {(who.key.id, who.team.id): 2_000, ("other", None): 5}) == []
    assert hops == []
    assert bounds == ["BEGIN IMMEDIATE", "COMMIT"]
    rows = await store.db.fetch("SELECT count(*), sum(cost_nanos) FROM requests WHERE status = 'ok'")
    assert tuple(rows[0]) == (5, 5_000)
    (hourly,) = await store.db.fetch("SELECT sum(requests), sum(cost_nanos) FROM request_hourly")
    assert tuple(hourly) == (5, 5_000)
    ids: dict[str, Any] = {"key_id": who.key.id, "team_id": who.team.id}
    assert isinstance(await store.take_request(**ids), RateAllowed)
    await store.add_tokens(**ids, tokens=8_000)
    assert isinstance(await store.take_request(**ids), RateLimited)  # 2,000 + 8,000 reach the 10,000


async def test_the_sink_counts_finished_tokens_once_and_pending_rows_never(store: GatewayStore) -> None:
    """Through the sink, on both backends: a request's pending and final rows count its tokens once."""
    who = await acme_dev(store)
    await store.set_rate_limit(level="team", target="core", rpm=None, tpm=1_000)
    team_limited = frozenset({who.team.id})
    sink = GatewayLedger(store, "gw-1", rate_limited=lambda: team_limited)
    sink.start()
    owner = Owner(who.key.id, who.team.id, None)
    ids: dict[str, Any] = {"key_id": who.key.id, "team_id": who.team.id}
    try:
        for index in range(2):
            record = _record(f"t{index}", RequestStatus.PENDING, tokens=499)
            sink.enqueue(owner, record)
            assert await sink.flush()
            record.status = RequestStatus.OK
            sink.enqueue(owner, record)
            assert await sink.flush()
        assert isinstance(await store.take_request(**ids), RateAllowed)  # 998 of 1,000
        sink.enqueue(owner, _record("t2", tokens=2))
        assert await sink.flush()
        assert isinstance(await store.take_request(**ids), RateLimited)
    finally:
        await sink.close()


async def test_a_one_trip_body_that_awaits_anything_else_is_rolled_back(store: GatewayStore) -> None:
    """On SQLite the body runs as one job that never yields to the event loop: an await that would suspend is a
    programming error, refused, and nothing of the body is kept."""
    if not isinstance(store.db, SQLiteDatabase):
        pytest.skip("PostgreSQL's one_trip is an ordinary transaction")
    await store.create_customer("acme")

    async def body(conn: Connection) -> None:
        await conn.execute("UPDATE customers SET name = 'renamed'")
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="awaited something other"):
        await store.db.one_trip(body)
    assert [c.name for c in await store.list_customers()] == ["acme"]


async def test_a_short_request_is_one_write_after_its_reply(store: GatewayStore) -> None:
    """The sink holds a batch of only pending rows until a final comes (or the delay passes): a request that
    ends meanwhile is written once, final; one that runs longer has its pending row written (a kill then
    leaves it to be recovered as interrupted)."""
    who = await acme_dev(store)
    owner = Owner(who.key.id, who.team.id, None)
    written: list[list[str]] = []
    write = store.write_requests

    async def recording(rows: Any, tokens: Any = None) -> list[GatewayRow]:
        written.append([row.record.status.value for row in rows])
        return await write(rows, tokens)

    store.write_requests = recording  # type: ignore[method-assign]
    sink = GatewayLedger(store, "gw-1", pending_delay_s=3600.0)
    sink.start()
    try:
        record = _record("short", RequestStatus.PENDING)
        sink.enqueue(owner, record)
        for _ in range(5):  # the writer wakes and waits for a final
            await asyncio.sleep(0)
        assert written == []
        record.status = RequestStatus.OK
        sink.enqueue(owner, record)
        assert await sink.flush()
        assert written == [["ok"]]
    finally:
        await sink.close()
    sink = GatewayLedger(store, "gw-1", pending_delay_s=0.001)
    sink.start()
    try:
        sink.enqueue(owner, _record("long", RequestStatus.PENDING))
        assert await sink.flush()
        assert written[1:] == [["pending"]]
        stored = await store.get_request(who.key.id, "long")
        assert stored is not None and stored.record.status is RequestStatus.PENDING
    finally:
        await sink.close()


async def test_metrics_and_the_access_line_come_after_the_reply(store: GatewayStore) -> None:
    """The proxy enqueues a request's final row just before it writes the reply's last byte: what the sink does
    for a final row beyond queueing it (metrics, the access line) runs on a later turn of the loop."""
    who = await acme_dev(store)
    seen: list[str] = []
    sink = GatewayLedger(store, "gw-1", on_final=lambda record, owner: seen.append(record.id))
    sink.start()
    try:
        sink.enqueue(Owner(who.key.id, who.team.id, None), _record("done"))
        assert seen == []
        await asyncio.sleep(0)
        assert seen == ["done"]
    finally:
        await sink.close()


async def test_a_budget_definition_is_parsed_once_and_a_changed_one_again(store: GatewayStore) -> None:
    """Admission reads the budget rows on every request; an unchanged definition is the same parsed `Budget`
    (no period, threshold or timestamp parsing per request), a changed one is read anew."""
    await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=5_000, period="1d")
    (first,) = await store.list_budgets()
    (again,) = await store.list_budgets()
    assert again is first
    await store.db.execute(
        "UPDATE budgets SET limit_nanos = 7000, updated_at = ? WHERE id = ?",
        (to_iso(NOW + timedelta(days=1)), first.id),
    )
    (changed,) = await store.list_budgets()
    assert (changed.limit_nanos, first.limit_nanos) == (7_000, 5_000)


async def test_a_backlogs_batch_goes_to_the_database_thread_not_the_event_loop(store: GatewayStore) -> None:
    """A batch of hundreds of rows (the writer catching up after the database was away) would hold the event
    loop for tens of milliseconds: it runs on the database thread; a usual one runs on the loop."""
    if not isinstance(store.db, SQLiteDatabase):
        pytest.skip("SQLite's thread hops")
    who = await acme_dev(store)
    hops = _hops(store.db)
    small = [GatewayRow(_record(f"s{i}"), who.key.id, who.team.id, None) for i in range(INLINE_ROWS)]
    assert await store.write_requests(small) == []
    assert hops == []
    backlog = [GatewayRow(_record(f"b{i}"), who.key.id, who.team.id, None) for i in range(INLINE_ROWS + 1)]
    assert await store.write_requests(backlog) == []
    assert len(hops) == 1
    (count,) = await store.db.fetch("SELECT count(*) FROM requests")
    assert count[0] == 2 * INLINE_ROWS + 1


@pytest.mark.parametrize(("linger", "batches"), [(0.5, [2]), (0.0, [1, 1])])
async def test_finals_close_together_share_one_batch(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch, linger: float, batches: list[int]
) -> None:
    """The writer lingers a moment after a final row (`FINAL_LINGER_S`): the batch lands while the next request
    waits on its provider, and finals that end close together are one write. Without it each is its own."""
    who = await acme_dev(store)
    written: list[int] = []
    write = store.write_requests

    async def counting(rows: Any, tokens: Any = None) -> Any:
        written.append(len(rows))
        return await write(rows, tokens)

    monkeypatch.setattr(store, "write_requests", counting)
    sink = GatewayLedger(store, "gw-1", final_linger_s=linger)
    sink.start()
    owner = Owner(who.key.id, who.team.id, None)
    try:
        sink.enqueue(owner, _record("a"))
        for _ in range(50):  # the writer wakes (and, without a linger, writes "a")
            await asyncio.sleep(0)
        sink.enqueue(owner, _record("b"))
        assert await sink.flush()
    finally:
        await sink.close()
    assert written == batches
