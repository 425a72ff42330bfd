"""A proxied request's settle is written with its final ledger row, in one transaction (`GatewayLedger.carry`,
`ledger.write_requests`): the reservation goes, the cost goes into the budgets once, and the row is marked
charged as it is inserted -- whatever was there before (a sync that came first, a recovery, a retried commit,
another request's row under the same id)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from gateway_testing import StoreFactory, acme_dev, until_waiting

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.gateway import ledger as gateway_ledger
from ccgate.gateway.admission import GatewayAdmission, Hold
from ccgate.gateway.ledger import GatewayLedger, Owner
from ccgate.storage.gateway import GatewayRow, GatewayStore
from ccgate.storage.gateway.instances import recover_dead
from ccgate.storage.gateway.records import Admitted, Charge, IngestResult, KeyIdentity, Reservation

TTL = timedelta(minutes=5)
T = TypeVar("T")


def _record(row_id: str, nanos: int, *, at: datetime | None = None, pending: bool = False) -> RequestRecord:
    at = at or datetime.now(UTC)
    return RequestRecord(
        id=row_id,
        started_at=at,
        ended_at=None if pending else at + timedelta(seconds=1),
        requested_model="claude-sonnet-4-5",
        provider="anthropic",
        status=RequestStatus.PENDING if pending else RequestStatus.OK,
        usage=Usage(input_tokens=10, output_tokens=5),
        cost=Cost(None if pending else nanos, PriceQuality.PRICED),
    )


async def _hold(store: GatewayStore, who: KeyIdentity, instance: str = "gw-1", bound: int = 10_000) -> Reservation:
    result = await store.reserve(
        key_id=who.key.id,
        team_id=who.team.id,
        customer_id=who.team.customer_id,
        provider_id=None,
        bound_nanos=bound,
        instance_id=instance,
        ttl=TTL,
    )
    assert isinstance(result, Admitted)
    return result.reservation


async def _against_a_recovery(db_url: str, first: str, job: Coroutine[Any, Any, T], then: str, what: str) -> T:
    """PostgreSQL: another connection's transaction (a recovery or a sync, say) runs `first`; `job` starts and waits
    for a lock it holds; the transaction then runs `then` and commits. `job`'s result (PostgreSQL fails one of
    the two if they wait on each other in a cycle)."""
    import asyncpg

    other = await asyncpg.connect(db_url)
    try:
        recovery = other.transaction()
        await recovery.start()
        await other.execute(first)
        running = asyncio.ensure_future(job)
        await until_waiting(other, what=what)
        await other.execute(then)
        await recovery.commit()
        return await running
    finally:
        await other.close()


async def _state(store: GatewayStore, who: KeyIdentity) -> list[tuple[int, int]]:
    """(spent, reserved) of each budget that applies to the key."""
    views = await store.budget_views(key_id=who.key.id, team_id=who.team.id, customer_id=who.team.customer_id)
    return [(view.state.spent_nanos, view.state.reserved_nanos) for view in views]


async def _charged(store: GatewayStore, who: KeyIdentity, row_id: str) -> tuple[int | None, str | None]:
    found = await store.db.fetchone(
        "SELECT charged_nanos, charged_by FROM requests WHERE key_id = ? AND id = ?", (who.key.id, row_id)
    )
    assert found is not None
    return (None if found[0] is None else int(found[0]), None if found[1] is None else str(found[1]))


async def _sync(store: GatewayStore, who: KeyIdentity, record: RequestRecord) -> IngestResult:
    """The key's sidecar syncs `record` (`POST /v1/usage`)."""
    return await store.ingest(
        key_id=who.key.id, team_id=who.team.id, customer_id=who.team.customer_id, records=[(record, {})]
    )


def _row(who: KeyIdentity, record: RequestRecord, charge: Charge | None, instance: str = "gw-1") -> GatewayRow:
    return GatewayRow(record, who.key.id, who.team.id, who.team.customer_id, instance_id=instance, charge=charge)


async def _budgets(store: GatewayStore) -> KeyIdentity:
    who = await acme_dev(store)
    await store.create_budget(level="team", target="core", limit_nanos=10**9, period="1d")
    await store.create_budget(level="key", target="dev", limit_nanos=10**9, period="1mo")
    return who


async def test_the_proxy_settle_rides_with_the_final_row_and_is_never_a_write_of_its_own(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    who = await _budgets(store)
    ledger = GatewayLedger(store, "gw-1")
    ledger.start()
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, carrier=ledger)

    async def no_lone_settle(*args: object, **kwargs: object) -> bool:
        raise AssertionError("the settle was written on its own, not with its row")

    monkeypatch.setattr(store, "settle", no_lone_settle)
    owner = Owner(who.key.id, who.team.id, who.team.customer_id)
    for index in range(30):  # one batch: the spend of each budget is one upsert of the sum
        record = _record(f"r{index}", 1_000 + index)
        hold = Hold(await _hold(store, who), ("b",), row=(who.key.id, record.id))
        admission.settle(hold, record.cost.nanos or 0)
        ledger.enqueue(owner, record)
    assert await ledger.flush()
    await admission.close()
    await ledger.close()
    total = sum(1_000 + index for index in range(30))
    assert await _state(store, who) == [(total, 0), (total, 0)]
    assert await _charged(store, who, "r7") == (1_007, "settle")
    (count,) = await store.db.fetchone("SELECT count(*) FROM reservations") or (None,)
    assert count == 0


async def test_a_settle_whose_row_never_comes_is_written_on_its_own(store: GatewayStore) -> None:
    who = await _budgets(store)
    ledger = GatewayLedger(store, "gw-1")
    ledger.start()
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, carrier=ledger)
    admission.settle(Hold(await _hold(store, who), ("b",), row=(who.key.id, "no-row")), 4_000)
    await asyncio.sleep(0.2)
    await admission.close()
    await ledger.close()
    assert await _state(store, who) == [(4_000, 0), (4_000, 0)]


async def test_a_retried_batch_after_its_commit_went_through_charges_once(store: GatewayStore) -> None:
    """The connection broke after COMMIT reached the server: the writer sends the same batch again."""
    who = await _budgets(store)
    record = _record("once", 5_000)
    charge = Charge(await _hold(store, who), 5_000)
    for _ in range(3):
        assert await store.write_requests([_row(who, record, charge)]) == []
    assert await _state(store, who) == [(5_000, 0), (5_000, 0)]
    assert await _charged(store, who, "once") == (5_000, "settle")


async def test_a_row_synced_first_is_charged_only_what_the_proxy_saw_beyond_it(store: GatewayStore) -> None:
    who = await _budgets(store)
    hold = await _hold(store, who)
    record = _record("shared", 5_000)
    synced = _record("shared", 4_000, at=record.started_at)
    assert (await _sync(store, who, synced)).sent == 1
    assert await store.write_requests([_row(who, record, Charge(hold, 5_000))]) == []
    assert await _state(store, who) == [(5_000, 0), (5_000, 0)]  # 4,000 by the sync, the rest by the proxy
    assert await _charged(store, who, "shared") == (5_000, "settle")


async def test_a_row_recovered_by_another_instance_is_charged_once_by_its_own_final(store: GatewayStore) -> None:
    who = await _budgets(store)
    hold = await _hold(store, who)
    started = datetime.now(UTC)
    partial = _record("long", 2_000, at=started, pending=True)
    partial.cost = Cost(2_000, PriceQuality.PRICED)
    assert await store.write_requests([_row(who, partial, None)]) == []
    assert await recover_dead(store.db, datetime.now(UTC) + TTL * 2) == 1
    spent_by_recovery = (await _state(store, who))[0][0]
    final = _record("long", 6_000, at=started)
    assert await store.write_requests([_row(who, final, Charge(hold, 6_000))]) == []
    assert [spent for spent, _ in await _state(store, who)] == [6_000, 6_000], spent_by_recovery
    assert await _charged(store, who, "long") == (6_000, "settle")


async def test_a_reused_id_is_charged_under_its_fresh_id_not_dropped(store: GatewayStore) -> None:
    who = await _budgets(store)
    await store.write_requests([_row(who, _record("dup", 7_000, at=datetime.now(UTC) - timedelta(minutes=5)), None)])
    ledger = GatewayLedger(store, "gw-1")
    ledger.start()
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, carrier=ledger)
    record = _record("dup", 3_000)
    admission.settle(Hold(await _hold(store, who), ("b",), row=(who.key.id, "dup")), 3_000)
    ledger.enqueue(Owner(who.key.id, who.team.id, who.team.customer_id), record)
    assert await ledger.flush()
    await admission.close()
    await ledger.close()
    assert await _state(store, who) == [(3_000, 0), (3_000, 0)]  # the earlier row was written uncharged
    rows = await store.db.fetch("SELECT id, charged_nanos FROM requests ORDER BY cost_nanos")
    assert [(r[0] == "dup", r[1]) for r in rows] == [(False, 3_000), (True, None)]


async def test_a_dropped_row_keeps_its_settle(store: GatewayStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_QUEUED rows (the database away for long) the oldest row is dropped; its budget spend is not."""
    who = await _budgets(store)
    monkeypatch.setattr(gateway_ledger, "MAX_QUEUED", 1)
    ledger = GatewayLedger(store, "gw-1")  # not started: nothing is written, as with the database away
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, carrier=ledger)
    owner = Owner(who.key.id, who.team.id, who.team.customer_id)
    admission.settle(Hold(await _hold(store, who), ("b",), row=(who.key.id, "first")), 2_000)
    ledger.enqueue(owner, _record("first", 2_000))
    ledger.enqueue(owner, _record("second", 0, pending=True))
    assert ledger.dropped == 1
    await asyncio.sleep(0.2)
    while admission._tasks:
        await asyncio.gather(*list(admission._tasks))
    assert [spent for spent, _ in await _state(store, who)] == [2_000, 2_000]


async def test_a_budget_deleted_before_the_batch_is_skipped_and_the_others_charged(store: GatewayStore) -> None:
    who = await _budgets(store)
    hold = await _hold(store, who)
    (team_budget,) = [b for b in await store.list_budgets() if b.level.value == "team"]
    await store.delete_budget(team_budget.id)
    assert await store.write_requests([_row(who, _record("after", 3_000), Charge(hold, 3_000))]) == []
    assert await _state(store, who) == [(3_000, 0)]


async def test_a_row_dropped_while_its_batch_is_being_written_is_charged_once(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_QUEUED the oldest row is dropped even while the writer is writing it: the batch commits it with
    its settle, so the settle must not also be written on its own (that charged the budgets twice)."""
    who = await _budgets(store)
    monkeypatch.setattr(gateway_ledger, "MAX_QUEUED", 1)
    gate, taken = asyncio.Event(), asyncio.Event()
    write = store.write_requests

    async def held(rows: list[GatewayRow], *args: object, **kwargs: object) -> list[GatewayRow]:
        taken.set()
        await gate.wait()
        return await write(rows, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write_requests", held)
    ledger = GatewayLedger(store, "gw-1", final_linger_s=0)
    ledger.start()
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, carrier=ledger)
    owner = Owner(who.key.id, who.team.id, who.team.customer_id)
    admission.settle(Hold(await _hold(store, who), ("b",), row=(who.key.id, "first")), 2_000)
    ledger.enqueue(owner, _record("first", 2_000))
    await asyncio.wait_for(taken.wait(), 10)  # the writer has taken the row
    ledger.enqueue(owner, _record("second", 0, pending=True))  # drops "first", which is being written
    assert ledger.dropped == 1
    while admission._tasks:
        await asyncio.gather(*list(admission._tasks))
    gate.set()
    assert await ledger.flush()
    await admission.close()
    await ledger.close()
    assert await _state(store, who) == [(2_000, 0), (2_000, 0)]
    assert await _charged(store, who, "first") == (2_000, "settle")


async def _refuse_model(store: GatewayStore, model: str) -> None:
    """The database itself refuses rows of one model (as a constraint would): not a lost connection."""
    if store.db.backend == "sqlite":
        await store.db.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON requests WHEN NEW.requested_model = '{model}' "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        return
    await store.db.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; END $$"
    )
    await store.db.execute(
        f"CREATE TRIGGER refuse BEFORE INSERT ON requests FOR EACH ROW WHEN (NEW.requested_model = '{model}') "
        "EXECUTE FUNCTION refuse()"
    )


async def test_a_row_the_database_refuses_is_dropped_and_the_writer_and_every_settle_go_on(
    store: GatewayStore,
) -> None:
    """A batch refused for a reason other than a lost connection (a constraint): the writer stopped for good,
    and with it every later request's settle (their reservations held until they lapsed, their spend never
    counted). Now the batch's other rows are written one by one with their settles, the refused row is dropped,
    and its settle is written on its own."""
    who = await _budgets(store)
    await _refuse_model(store, "poison")
    ledger = GatewayLedger(store, "gw-1")
    ledger.start()
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, carrier=ledger)
    owner = Owner(who.key.id, who.team.id, who.team.customer_id)
    for name, nanos in (("before", 1_000), ("bad", 2_000), ("with", 4_000)):
        record = _record(name, nanos)
        if name == "bad":
            record.requested_model = "poison"
        admission.settle(Hold(await _hold(store, who), ("b",), row=(who.key.id, name)), nanos)
        ledger.enqueue(owner, record)
    assert await ledger.flush()
    record = _record("later", 8_000)  # a later batch: the writer still runs
    admission.settle(Hold(await _hold(store, who), ("b",), row=(who.key.id, "later")), 8_000)
    ledger.enqueue(owner, record)
    assert await ledger.flush()
    await admission.close()
    await ledger.close()
    assert ledger.dropped == 1
    assert await _state(store, who) == [(15_000, 0), (15_000, 0)]
    rows = await store.db.fetch("SELECT id, charged_nanos FROM requests WHERE status <> 'pending' ORDER BY id")
    assert [(str(r[0]), int(r[1])) for r in rows] == [("before", 1_000), ("later", 8_000), ("with", 4_000)]


async def test_a_batch_takes_the_hourly_rows_after_the_spend_rows_as_recovery_and_ingest_do(
    store: GatewayStore, db_url: str
) -> None:
    """PostgreSQL: the hourly sums are the last rows any transaction locks (`recover_dead` and `ingest` charge
    the spend rows first). A batch took them before its settles' spend rows, so a recovery or sync charging the
    same budget, between its spend row and the hourly one, closed a cycle with it: PostgreSQL failed one of
    them (the batch, here) and it was written only on the next try."""
    if store.db.backend != "postgresql":
        return
    who = await _budgets(store)
    started = datetime.now(UTC)
    first = _record("first", 1_000, at=started)
    assert await store.write_requests([_row(who, first, Charge(await _hold(store, who), 1_000))]) == []
    charge = Charge(await _hold(store, who), 2_000)
    # a recovery's charge holds the spend rows, then takes its hourly rows, last
    assert (
        await _against_a_recovery(
            db_url,
            "UPDATE budget_spend SET spent_nanos = spent_nanos",
            store.write_requests([_row(who, _record("second", 2_000, at=started), charge)]),
            "UPDATE request_hourly SET requests = requests",
            "the batch (for a spend row)",
        )
    ) == []
    assert await _state(store, who) == [(3_000, 0), (3_000, 0)]


async def test_a_sync_of_the_row_committed_while_the_batch_writes_it_is_not_charged_twice(
    open_store: StoreFactory, db_url: str
) -> None:
    """PostgreSQL: the sidecar's sync of a proxied request inserts its row (charged by the sync) after the batch
    read what its rows were already charged, and commits while the batch waits to insert the same row. The
    batch's settle must subtract what the sync charged (read again once the row is found), not charge it all
    again."""
    store = await open_store()
    if store.db.backend != "postgresql":
        return
    import asyncpg

    syncing = await open_store(migrate_now=False)
    who = await _budgets(store)
    started = datetime.now(UTC)
    first = _record("first", 1_000, at=started)  # the hour's rollup row exists
    assert await store.write_requests([_row(who, first, Charge(await _hold(store, who), 1_000))]) == []
    charge = Charge(await _hold(store, who), 5_000)
    other = await asyncpg.connect(db_url)
    try:
        hold_rollup = other.transaction()
        await hold_rollup.start()
        await other.execute("UPDATE request_hourly SET requests = requests")  # the sync stops before its rollup
        sync = asyncio.ensure_future(_sync(syncing, who, _record("shared", 4_000, at=started)))
        for waiting in (1, 2):  # the sync waits for the rollup, then the batch for the sync's row
            if waiting == 2:
                batch = asyncio.ensure_future(
                    store.write_requests([_row(who, _record("shared", 5_000, at=started), charge)])
                )
            await until_waiting(other, waiting)
        await hold_rollup.commit()
        assert (await sync).sent == 1
        assert await batch == []
    finally:
        await other.close()
    assert await _state(store, who) == [(6_000, 0), (6_000, 0)]  # 1,000 + 4,000 by the sync + the 1,000 beyond
    assert await _charged(store, who, "shared") == (5_000, "settle")


async def test_a_sync_and_a_batch_of_the_same_row_never_wait_on_each_other_in_a_cycle(
    open_store: StoreFactory, db_url: str
) -> None:
    """PostgreSQL: a batch writing a request's row holds the row, then (adding the first spend to a new bucket)
    needs the budget's row for the foreign key. A sync of the same request took the budget rows first and then
    the row: a cycle, and PostgreSQL failed the batch. The sync takes the budget rows after its rows now, as a
    recovery does."""
    store = await open_store()
    if store.db.backend != "postgresql":
        return
    import asyncpg

    syncing = await open_store(migrate_now=False)
    who = await _budgets(store)
    started = datetime.now(UTC)
    charge = Charge(await _hold(store, who), 5_000)
    other = await asyncpg.connect(db_url)
    try:
        admitting = other.transaction()
        await admitting.start()
        await other.execute("SELECT 1 FROM budgets FOR UPDATE")  # an admission holds the budget rows
        sync = asyncio.ensure_future(_sync(syncing, who, _record("shared", 4_000, at=started)))
        for waiting in (1, 2):  # the sync waits, then the batch
            if waiting == 2:
                batch = asyncio.ensure_future(
                    store.write_requests([_row(who, _record("shared", 5_000, at=started), charge)])
                )
            await until_waiting(other, waiting)
        await admitting.commit()
        results = await asyncio.gather(sync, batch, return_exceptions=True)
    finally:
        await other.close()
    assert [type(result).__name__ for result in results] == ["IngestResult", "list"], results
    assert await _state(store, who) == [(5_000, 0), (5_000, 0)]


async def test_a_batch_opening_a_new_spend_bucket_never_waits_in_a_cycle_with_a_recovery(
    store: GatewayStore, db_url: str
) -> None:
    """PostgreSQL: a batch adds spend to its budgets' buckets in the budgets' order; the first spend of a bucket
    inserts its row, which takes the budget's row for the foreign key. A recovery (or a sync) takes the budget
    rows first and then the spend rows: holding the team's spend row while it waited for the key's budget row
    for a new bucket, the batch closed a cycle and PostgreSQL failed it. Every bucket row the batch needs is
    made before it adds to any."""
    if store.db.backend != "postgresql":
        return
    who = await _budgets(store)
    team, _ = sorted(await store.list_budgets(), key=lambda budget: budget.level.rank)
    hold = await _hold(store, who)
    team_only = Reservation(hold.id, (team.id,), hold.amount_nanos, hold.instance_id, hold.expires_at)
    started = datetime.now(UTC)
    # the team's bucket has a row, the key's not yet
    assert await store.write_requests([_row(who, _record("first", 1_000, at=started), Charge(team_only, 1_000))]) == []
    charge = Charge(await _hold(store, who), 2_000)
    # a recovery's charge takes the budget rows, then its spend rows
    assert (
        await _against_a_recovery(
            db_url,
            "SELECT 1 FROM budgets ORDER BY lock_rank, id FOR UPDATE",
            store.write_requests([_row(who, _record("second", 2_000, at=started), charge)]),
            "UPDATE budget_spend SET spent_nanos = spent_nanos",
            "the batch (for a budget row)",
        )
    ) == []
    assert await _state(store, who) == [(3_000, 0), (2_000, 0)]


async def test_a_lone_settle_opening_a_new_spend_bucket_never_waits_in_a_cycle_with_a_recovery(
    store: GatewayStore, db_url: str
) -> None:
    """PostgreSQL: the same for a settle written on its own (`ccgate_settle_v3`, migration 0012): it makes every
    bucket row it needs before it adds to any. `ccgate_settle_v2` added in the budgets' order, inserting a new
    bucket's row (the key's) while it held the team's spend row, and a recovery holding the budget rows and
    waiting for that spend row closed a cycle."""
    if store.db.backend != "postgresql":
        return
    who = await _budgets(store)
    team, _ = sorted(await store.list_budgets(), key=lambda budget: budget.level.rank)
    hold = await _hold(store, who)
    team_only = Reservation(hold.id, (team.id,), hold.amount_nanos, hold.instance_id, hold.expires_at)
    assert await store.settle(team_only, 1_000)  # the team's bucket has a row, the key's not yet
    reservation = await _hold(store, who)
    # a recovery's charge takes the budget rows, then its spend rows
    assert await _against_a_recovery(
        db_url,
        "SELECT 1 FROM budgets ORDER BY lock_rank, id FOR UPDATE",
        store.settle(reservation, 2_000),
        "UPDATE budget_spend SET spent_nanos = spent_nanos",
        "the settle (for a budget row)",
    )
    assert await _state(store, who) == [(3_000, 0), (2_000, 0)]


async def test_a_budget_deleted_while_a_batch_settles_on_it_never_waits_in_a_cycle(
    store: GatewayStore, db_url: str
) -> None:
    """PostgreSQL: a batch deletes its reservations (and with them their budget links), then adds to the spend
    rows. Deleting a budget took its spend rows first and its reservation links after: with a batch settling on
    that budget, a cycle, and PostgreSQL failed one of them. It takes the links, then the budget row, then the
    spend rows now; the batch skips the deleted budget and charges the other."""
    if store.db.backend != "postgresql":
        return
    import asyncpg

    who = await _budgets(store)
    team, _ = sorted(await store.list_budgets(), key=lambda budget: budget.level.rank)
    started = datetime.now(UTC)
    assert (
        await store.write_requests(
            [_row(who, _record("first", 1_000, at=started), Charge(await _hold(store, who), 1_000))]
        )
        == []
    )
    charge = Charge(await _hold(store, who), 2_000)
    # connections in the pool before anything waits (a connection opened meanwhile was not ready in time here)
    await asyncio.gather(*(store.db.fetch("SELECT pg_sleep(0.05)") for _ in range(3)))
    other = await asyncpg.connect(db_url)
    try:
        settling = other.transaction()
        await settling.start()
        await other.execute("UPDATE budget_spend SET spent_nanos = spent_nanos")  # a lone settle, say
        jobs: list[asyncio.Future[object]] = []
        for waiting in (1, 2):  # the deletion waits, then the batch
            if waiting == 1:
                jobs.append(asyncio.ensure_future(store.delete_budget(team.id)))
            else:
                jobs.append(
                    asyncio.ensure_future(
                        store.write_requests([_row(who, _record("second", 2_000, at=started), charge)])
                    )
                )
            await until_waiting(other, waiting)
        await settling.commit()
        results = await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        await other.close()
    assert results == [None, []], results
    assert await _state(store, who) == [(3_000, 0)]  # the key's budget; the team's is gone


async def test_a_row_dropped_while_a_refused_batch_is_written_row_by_row_is_charged_once(
    store: GatewayStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused batch's rows are written one by one; one dropped past MAX_QUEUED meanwhile has had its settle
    written on its own, so it is not written (and charged) again."""
    who = await _budgets(store)
    await _refuse_model(store, "poison")
    monkeypatch.setattr(gateway_ledger, "MAX_QUEUED", 2)
    gate, alone = asyncio.Event(), asyncio.Event()
    write = store.write_requests

    async def held(rows: list[GatewayRow], *args: object, **kwargs: object) -> list[GatewayRow]:
        if len(rows) == 1 and rows[0].record.id == "bad":  # the refused row, alone
            alone.set()
            await gate.wait()
        return await write(rows, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write_requests", held)
    ledger = GatewayLedger(store, "gw-1")
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, carrier=ledger)
    owner = Owner(who.key.id, who.team.id, who.team.customer_id)
    for name, nanos in (("bad", 2_000), ("good", 4_000)):
        record = _record(name, nanos)
        if name == "bad":
            record.requested_model = "poison"
        admission.settle(Hold(await _hold(store, who), ("b",), row=(who.key.id, name)), nanos)
        ledger.enqueue(owner, record)
    ledger.start()
    await asyncio.wait_for(alone.wait(), 10)
    ledger.enqueue(owner, _record("x", 0, pending=True))  # drops "bad", being written
    ledger.enqueue(owner, _record("y", 0, pending=True))  # drops "good": its settle goes on its own
    while admission._tasks:
        await asyncio.gather(*list(admission._tasks))
    gate.set()
    assert await ledger.flush()
    await admission.close()
    await ledger.close()
    assert await _state(store, who) == [(6_000, 0), (6_000, 0)]


async def test_a_request_id_reused_while_the_first_charge_is_queued_charges_each_request_once(
    store: GatewayStore,
) -> None:
    """A client reuses a request id while the first request's final row and settle are still queued: the second
    request goes under a fresh id, and each row carries its own request's charge."""
    who = await _budgets(store)
    ledger = GatewayLedger(store, "gw-1")  # not started yet: both requests' rows wait in the queue
    admission = GatewayAdmission(store, "gw-1", ttl=TTL, carrier=ledger)
    owner = Owner(who.key.id, who.team.id, who.team.customer_id)
    first_at = datetime.now(UTC) - timedelta(seconds=5)
    admission.settle(Hold(await _hold(store, who), ("b",), row=(who.key.id, "same")), 1_000)
    ledger.enqueue(owner, _record("same", 1_000, at=first_at))
    second = _record("same", 3_000)
    ledger.enqueue(owner, _record("same", 0, at=second.started_at, pending=True))
    admission.settle(Hold(await _hold(store, who), ("b",), row=(who.key.id, "same")), 3_000)
    ledger.enqueue(owner, second)
    ledger.start()
    assert await ledger.flush()
    await admission.close()
    await ledger.close()
    assert await _state(store, who) == [(4_000, 0), (4_000, 0)]
    rows = await store.db.fetch("SELECT id, cost_nanos, charged_nanos FROM requests ORDER BY cost_nanos")
    assert [(r[0] == "same", int(r[1]), int(r[2])) for r in rows] == [(True, 1_000, 1_000), (False, 3_000, 3_000)]
