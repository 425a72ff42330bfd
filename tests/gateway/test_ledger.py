"""The gateway ledger: write-ahead rows, idempotent ingest, roll-ups and reports in `cost --json`'s shape."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage
from ccgate.gateway.ledger import GatewayLedger, Owner
from ccgate.storage.gateway import GatewayRow, GatewayStore, RateAllowed, RateLimited, RowSource
from ccgate.storage.gateway.instances import recover_dead
from ccgate.storage.gateway.records import Admitted, KeyIdentity, Reservation
from ccgate.storage.reports import report_to_json

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


async def _key(store: GatewayStore, name: str = "dev", team: str = "core") -> KeyIdentity:
    if not [c for c in await store.list_customers() if c.name == "acme"]:
        await store.create_customer("acme")
    if not [t for t in await store.list_teams() if t.name == team]:
        await store.create_team(team, customer="acme")
    created = await store.create_key(team=team, name=name)
    identity = await store.authenticate_key(created.plaintext)
    assert identity is not None
    return identity


def _record(
    row_id: str,
    *,
    at: datetime = T0,
    nanos: int | None = 1_000,
    model: str = "claude-sonnet-4-5",
    status: RequestStatus = RequestStatus.OK,
    **fields: object,
) -> RequestRecord:
    return RequestRecord(
        id=row_id,
        started_at=at,
        ended_at=at + timedelta(seconds=1),
        requested_model=model,
        provider="anthropic",
        status=status,
        usage=Usage(input_tokens=10, output_tokens=5, cache_read_tokens=100),
        cost=Cost(nanos, PriceQuality.PRICED if nanos is not None else PriceQuality.UNPRICED),
        **fields,  # type: ignore[arg-type]
    )


async def test_ingest_replayed_three_times_stores_once_and_charges_once(store: GatewayStore) -> None:
    who = await _key(store)
    await store.create_budget(level="key", target="dev", limit_nanos=10**9, period="1y")
    now = datetime.now(UTC)
    batch = [(_record(f"row-{i}", at=now), {"ticket": "A-1"}) for i in range(3)]
    results = [
        await store.ingest(key_id=who.key.id, team_id=who.team.id, customer_id=who.team.customer_id, records=batch)
        for _ in range(3)
    ]
    assert [(r.sent, r.known, r.rejected) for r in results] == [(3, 0, 0), (0, 3, 0), (0, 3, 0)]
    (count,) = await store.db.fetch("SELECT count(*) FROM requests")
    assert count[0] == 3
    (view,) = await store.budget_views(key_id=who.key.id, team_id=who.team.id, customer_id=who.team.customer_id)
    assert view.state.spent_nanos == 3_000


async def test_a_proxied_row_later_synced_counts_once(store: GatewayStore) -> None:
    who = await _key(store)
    proxied = _record("shared-id", nanos=7_000, status=RequestStatus.PENDING)
    row = GatewayRow(proxied, who.key.id, who.team.id, who.team.customer_id, RowSource.PROXIED, instance_id="gw-1")
    await store.write_requests([row])  # written ahead
    proxied.status = RequestStatus.OK
    await store.write_requests([row])  # final
    synced = _record("shared-id", nanos=9_999)
    result = await store.ingest(
        key_id=who.key.id, team_id=who.team.id, customer_id=who.team.customer_id, records=[(synced, {})]
    )
    assert (result.sent, result.known) == (0, 1)
    stored = await store.get_request(who.key.id, "shared-id")
    assert stored is not None
    assert stored.source is RowSource.PROXIED and stored.record.cost.nanos == 7_000
    assert stored.record.status is RequestStatus.OK
    report = await store.report(since=T0 - timedelta(days=1), until=T0 + timedelta(days=1), by=None)
    assert report.total.requests == 1 and report.total.cost_nanos == 7_000


async def test_ingest_attributes_rows_to_the_callers_key_and_rejects_bad_rows(store: GatewayStore) -> None:
    caller = await _key(store, "caller")
    other = await _key(store, "other")
    bad_tokens = _record("bad-1")
    bad_tokens.usage = Usage(input_tokens=-5)
    pending = _record("bad-2", status=RequestStatus.PENDING)
    result = await store.ingest(
        key_id=caller.key.id,
        team_id=caller.team.id,
        customer_id=caller.team.customer_id,
        records=[
            (_record("good"), {}),
            (bad_tokens, {}),
            (pending, {}),
            (_record("x" * 500), {}),
            (_record("tagged"), {"k": "v" * 1_000}),
            (_record("good"), {}),  # twice in one batch
        ],
    )
    assert (result.sent, result.known, result.rejected) == (1, 1, 4)
    assert await store.get_request(other.key.id, "good") is None
    assert await store.get_request(caller.key.id, "good") is not None
    # the same row id under another key is another row
    again = await store.ingest(
        key_id=other.key.id, team_id=other.team.id, customer_id=other.team.customer_id, records=[(_record("good"), {})]
    )
    assert again.sent == 1


async def test_report_groups_like_cost_json(store: GatewayStore) -> None:
    alice = await _key(store, "alice", team="core")
    bob = await _key(store, "bob", team="web")
    rows = [
        GatewayRow(
            _record("a1", nanos=1_000, project="/src/app", session_id="s1"),
            alice.key.id,
            alice.team.id,
            alice.team.customer_id,
            tags={"ticket": "T-1"},
        ),
        GatewayRow(
            _record("a2", nanos=2_000, at=T0 + timedelta(hours=20), project="/src/app"),
            alice.key.id,
            alice.team.id,
            alice.team.customer_id,
            tags={"ticket": "T-2"},
        ),
        GatewayRow(
            _record("b1", nanos=None, model="mystery"),
            bob.key.id,
            bob.team.id,
            bob.team.customer_id,
            source=RowSource.INGESTED,
        ),
    ]
    await store.write_requests(rows)
    since, until = T0 - timedelta(days=1), T0 + timedelta(days=2)
    by_key = report_to_json(await store.report(since=since, until=until, by="key"))
    assert set(by_key) == {"since", "until", "by", "total", "groups"}
    assert by_key["total"]["requests"] == 3
    assert by_key["total"]["cost_usd"] == "0.000003000"
    assert by_key["total"]["unpriced_requests"] == 1
    assert by_key["total"]["cache_read_tokens"] == 300
    assert [(g["key"], g["requests"]) for g in by_key["groups"]] == [("alice", 2), ("bob", 1)]
    by_team = await store.report(since=since, until=until, by="team")
    assert [k for k, _ in by_team.groups] == ["core", "web"]
    by_customer = await store.report(since=since, until=until, by="customer")
    assert [k for k, _ in by_customer.groups] == ["acme"]
    by_tag = await store.report(since=since, until=until, by="tag:ticket")
    assert sorted((k, t.cost_nanos) for k, t in by_tag.groups) == [("(none)", 0), ("T-1", 1_000), ("T-2", 2_000)]
    by_day_utc = await store.report(since=since, until=until, by="day")
    assert [k for k, _ in by_day_utc.groups] == ["2026-12-01", "2026-12-02"]
    by_day_tokyo = await store.report(since=since, until=until, by="day", tz=ZoneInfo("Asia/Kolkata"))
    assert [k for k, _ in by_day_tokyo.groups] == ["2026-12-01", "2026-12-02"]  # 10:00Z=15:30, 06:00Z=11:30 +1d
    by_model = await store.report(since=since, until=until, by="model")
    assert {k for k, _ in by_model.groups} == {"claude-sonnet-4-5", "mystery"}
    by_session = await store.report(since=since, until=until, by="session")
    assert {k for k, _ in by_session.groups} == {"s1", "(none)"}
    only_core = await store.report(since=since, until=until, by=None, team_id=alice.team.id)
    assert only_core.total.requests == 2


async def test_pruned_days_still_report_from_rollups(store: GatewayStore) -> None:
    who = await _key(store)
    await store.write_requests(
        [
            GatewayRow(
                _record(f"r{i}", at=T0 + timedelta(days=i), nanos=100), who.key.id, who.team.id, who.team.customer_id
            )
            for i in range(4)
        ]
    )
    since, until = T0 - timedelta(days=1), T0 + timedelta(days=10)
    before = await store.report(since=since, until=until, by="key")
    assert await store.prune_requests(before=date(2026, 12, 3)) == 2
    after = await store.report(since=since, until=until, by="key")
    assert after.total == before.total
    assert after.groups == before.groups
    by_day = await store.report(since=since, until=until, by="day")
    assert [k for k, _ in by_day.groups] == ["2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04"]


async def test_pending_rows_of_a_dead_instance_end_interrupted(store: GatewayStore) -> None:
    who = await _key(store)
    record = _record("p1", status=RequestStatus.PENDING)
    await store.write_requests([GatewayRow(record, who.key.id, who.team.id, None, instance_id="dead")])
    await store.write_requests(
        [GatewayRow(_record("p2", status=RequestStatus.PENDING), who.key.id, who.team.id, None, instance_id="alive")]
    )
    assert await store.recover_pending(instance_id="dead") == 1
    stored = await store.get_request(who.key.id, "p1")
    assert stored is not None and stored.record.status is RequestStatus.INTERRUPTED
    assert stored.record.usage.cache_read_tokens == 100  # the tokens seen stay


async def test_rate_limits_per_minute_for_key_and_team(store: GatewayStore) -> None:
    who = await _key(store)
    await store.set_rate_limit(level="key", target="dev", rpm=2, tpm=None)
    await store.set_rate_limit(level="team", target="core", rpm=None, tpm=1_000)
    minute = datetime(2026, 12, 7, 12, 0, 10, tzinfo=UTC)
    ids = {"key_id": who.key.id, "team_id": who.team.id}
    assert isinstance(await store.take_request(**ids, now=minute), RateAllowed)
    assert isinstance(await store.take_request(**ids, now=minute), RateAllowed)
    limited = await store.take_request(**ids, now=minute)
    assert isinstance(limited, RateLimited)
    assert (limited.kind, limited.limit.level, limited.retry_after_s) == ("requests", "key", 50)
    next_minute = minute + timedelta(minutes=1)
    assert isinstance(await store.take_request(**ids, now=next_minute), RateAllowed)
    await store.add_tokens(**ids, tokens=1_000, now=next_minute)
    limited = await store.take_request(**ids, now=next_minute)
    assert isinstance(limited, RateLimited) and (limited.kind, limited.limit.level) == ("tokens", "team")
    await store.set_rate_limit(level="key", target="dev", rpm=None, tpm=None)
    await store.delete_rate_limit(level="team", target="core")
    assert isinstance(await store.take_request(**ids, now=next_minute), RateAllowed)


async def test_a_budget_set_mid_window_counts_the_window_so_far(store: GatewayStore) -> None:
    who = await _key(store)
    provider = await store.put_provider("anthropic", kind="anthropic")
    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    rows = [
        GatewayRow(
            _record("old", at=month_start - timedelta(seconds=1), nanos=5_000),
            who.key.id,
            who.team.id,
            who.team.customer_id,
        ),
        GatewayRow(_record("in-1", at=month_start, nanos=700), who.key.id, who.team.id, who.team.customer_id),
        GatewayRow(
            _record("in-2", at=now - timedelta(seconds=1), nanos=300), who.key.id, who.team.id, who.team.customer_id
        ),
        GatewayRow(
            _record("synced", at=now - timedelta(seconds=1), nanos=50),
            who.key.id,
            who.team.id,
            who.team.customer_id,
            source=RowSource.INGESTED,
        ),
    ]
    await store.write_requests(rows)
    await store.create_budget(level="team", target="core", limit_nanos=10**6, period="1mo")
    await store.create_budget(level="key", target="dev", limit_nanos=10**6, period="1h", calendar=False)
    await store.create_budget(level="provider", target="anthropic", limit_nanos=10**6, period="1mo")
    views = await store.budget_views(
        key_id=who.key.id, team_id=who.team.id, customer_id=who.team.customer_id, provider_id=provider.id
    )
    spent = {v.budget.level.value: v.state.spent_nanos for v in views}
    assert spent["team"] == 1_050
    assert spent["key"] >= 350  # the last hour (its oldest bucket may reach a little further back)
    assert spent["provider"] == 1_000  # proxied rows only


async def test_a_finished_row_is_never_overwritten_by_a_reused_id(store: GatewayStore) -> None:
    who = await _key(store)
    first = GatewayRow(_record("dup", nanos=7_000), who.key.id, who.team.id, None, instance_id="gw-1")
    assert await store.write_requests([first]) == []
    # the same request's final again (a retry after a broken commit): dropped, not "reused"
    assert await store.write_requests([first]) == []
    other = GatewayRow(
        _record("dup", at=T0 + timedelta(minutes=1), nanos=1, status=RequestStatus.ERROR),
        who.key.id,
        who.team.id,
        None,
        instance_id="gw-2",
    )
    assert await store.write_requests([other]) == [other]
    stored = await store.get_request(who.key.id, "dup")
    assert stored is not None
    assert (stored.record.status, stored.record.cost.nanos, stored.instance_id) == (RequestStatus.OK, 7_000, "gw-1")


async def test_the_ledger_stores_a_request_with_a_reused_id_under_a_fresh_id(store: GatewayStore) -> None:
    who = await _key(store)
    await store.write_requests([GatewayRow(_record("dup", nanos=7_000), who.key.id, who.team.id, None)])
    sink = GatewayLedger(store, "gw-1")
    sink.start()
    owner = Owner(who.key.id, who.team.id, None)
    again = _record("dup", at=T0 + timedelta(minutes=5), nanos=None, status=RequestStatus.PENDING)
    sink.enqueue(owner, again)
    assert await sink.flush()
    again.status, again.cost = RequestStatus.OK, Cost(3_000, PriceQuality.PRICED)
    sink.enqueue(owner, again)
    assert await sink.flush()
    await sink.close()
    rows = await store.db.fetch("SELECT id, status, cost_nanos FROM requests ORDER BY cost_nanos")
    assert [(str(r[1]), int(r[2])) for r in rows] == [("ok", 3_000), ("ok", 7_000)]
    assert str(rows[1][0]) == "dup" and str(rows[0][0]) != "dup"


async def _spent(store: GatewayStore, who: KeyIdentity) -> int:
    (view,) = await store.budget_views(key_id=who.key.id, team_id=who.team.id, customer_id=who.team.customer_id)
    return view.state.spent_nanos


async def _hold(store: GatewayStore, who: KeyIdentity, instance: str, ttl_s: float = 60.0) -> Reservation:
    result = await store.reserve(
        key_id=who.key.id,
        team_id=who.team.id,
        customer_id=who.team.customer_id,
        provider_id=None,
        bound_nanos=10_000,
        instance_id=instance,
        ttl=timedelta(seconds=ttl_s),
    )
    assert isinstance(result, Admitted)
    return result.reservation


async def test_a_row_synced_first_and_proxied_afterwards_is_charged_once(store: GatewayStore) -> None:
    who = await _key(store)
    await store.create_budget(level="key", target="dev", limit_nanos=10**9, period="1y")
    hold = await _hold(store, who, "gw-1")
    synced = _record("shared", at=datetime.now(UTC), nanos=4_000)
    result = await store.ingest(
        key_id=who.key.id, team_id=who.team.id, customer_id=who.team.customer_id, records=[(synced, {})]
    )
    assert result.sent == 1
    await store.settle(hold, 5_000, row=(who.key.id, "shared"))
    assert await _spent(store, who) == 5_000  # the request's cost once, not 4,000 + 5,000


async def test_a_recovered_row_settled_later_by_its_own_instance_is_charged_once(store: GatewayStore) -> None:
    """An instance lost the database longer than the hold TTL mid-stream: another instance recovered its row
    (charging the cost so far), then the first one came back and settled the whole cost."""
    who = await _key(store)
    await store.create_budget(level="key", target="dev", limit_nanos=10**9, period="1y")
    hold = await _hold(store, who, "gw-1", ttl_s=0.001)
    started = datetime.now(UTC)
    partial = _record("long", at=started, nanos=2_000, status=RequestStatus.PENDING)
    await store.write_requests([GatewayRow(partial, who.key.id, who.team.id, None, instance_id="gw-1")])
    assert await recover_dead(store.db, datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert await _spent(store, who) == 2_000
    await store.settle(hold, 6_000, row=(who.key.id, "long"))
    assert await _spent(store, who) == 6_000  # not 2,000 + 6,000
    final = _record("long", at=started, nanos=6_000)  # its own final replaces the recovered row
    await store.write_requests([GatewayRow(final, who.key.id, who.team.id, None, instance_id="gw-1")])
    stored = await store.get_request(who.key.id, "long")
    assert stored is not None and stored.record.status is RequestStatus.OK and stored.record.cost.nanos == 6_000


async def test_reusing_a_request_id_does_not_make_requests_free(store: GatewayStore) -> None:
    who = await _key(store)
    await store.create_budget(level="key", target="dev", limit_nanos=10**9, period="1y")
    hold = await _hold(store, who, "gw-1")
    await store.settle(hold, 5_000, row=(who.key.id, "same"))
    await store.write_requests([GatewayRow(_record("same", nanos=5_000), who.key.id, who.team.id, None)])
    for _ in range(2):
        await store.settle(await _hold(store, who, "gw-1"), 3_000, row=(who.key.id, "same"))
    assert await _spent(store, who) == 11_000


async def test_settling_on_one_instance_never_marks_another_instances_row_of_the_same_id(store: GatewayStore) -> None:
    """A sidecar's row id in flight on two instances at once: each settle charges the budgets, and each row's
    `charged_nanos` is its own request's cost (gw-2's settle must not mark gw-1's pending row)."""
    who = await _key(store)
    await store.create_budget(level="key", target="dev", limit_nanos=10**9, period="1y")
    first = _record("twice", nanos=None, status=RequestStatus.PENDING)
    await store.write_requests([GatewayRow(first, who.key.id, who.team.id, None, instance_id="gw-1")])
    await store.settle(await _hold(store, who, "gw-2"), 3_000, row=(who.key.id, "twice"))
    await store.settle(await _hold(store, who, "gw-1"), 5_000, row=(who.key.id, "twice"))
    assert await _spent(store, who) == 8_000
    row = await store.db.fetchone(
        "SELECT charged_nanos, instance_id FROM requests WHERE key_id = ? AND id = ?", (who.key.id, "twice")
    )
    assert row is not None and (int(row[0]), str(row[1])) == (5_000, "gw-1")
