"""Hourly and daily roll-ups: every path that finishes a row adds it to `request_hourly` and `request_daily` once,
and reports read from them give what a scan of the raw rows gives, to the nano-dollar."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage, from_iso, to_iso
from ccgate.gateway.ledger import GatewayLedger, Owner
from ccgate.storage.gateway import GatewayRow, GatewayStore, RowSource, connect
from ccgate.storage.gateway.instances import recover_dead
from ccgate.storage.gateway.migrate import apply, load_migrations
from ccgate.storage.gateway.records import KeyIdentity
from ccgate.storage.reports import NONE_KEY, CostReport, GroupKey, Totals

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
SUM_COLUMNS = (
    "requests, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_nanos, "
    "unpriced_requests, estimated_requests, imported_requests"
)


async def _key(store: GatewayStore, name: str, team: str) -> KeyIdentity:
    if not [c for c in await store.list_customers() if c.name == "acme"]:
        await store.create_customer("acme")
    if not [t for t in await store.list_teams() if t.name == team]:
        await store.create_team(team, customer="acme" if team != "solo" else None)
    created = await store.create_key(team=team, name=name)
    identity = await store.authenticate_key(created.plaintext)
    assert identity is not None
    return identity


def _row(
    who: KeyIdentity,
    row_id: str,
    *,
    at: datetime = T0,
    nanos: int | None = 1_000,
    status: RequestStatus = RequestStatus.OK,
    provider: str = "anthropic",
    instance: str | None = "gw-1",
    row_source: RowSource = RowSource.PROXIED,
    tags: dict[str, str] | None = None,
    **fields: Any,
) -> GatewayRow:
    record = RequestRecord(
        id=row_id,
        started_at=at,
        ended_at=at + timedelta(seconds=1),
        requested_model=fields.pop("model", "claude-sonnet-4-5"),
        provider=provider,
        status=status,
        usage=Usage(input_tokens=10, output_tokens=5, cache_read_tokens=100, cache_write_5m_tokens=7),
        cost=Cost(nanos, fields.pop("quality", PriceQuality.PRICED if nanos is not None else PriceQuality.UNPRICED)),
        **fields,
    )
    customer = who.customer.id if who.customer else None
    return GatewayRow(record, who.key.id, who.team.id, customer, row_source, dict(tags or {}), instance_id=instance)


async def _hourly(store: GatewayStore) -> dict[tuple[str, ...], tuple[int, ...]]:
    rows = await store.db.fetch(
        f"SELECT hour, key_id, team_id, customer_id, project, model, provider, {SUM_COLUMNS} FROM request_hourly"  # noqa: S608
    )
    return {tuple(str(v) for v in row[:7]): tuple(int(v) for v in row[7:]) for row in rows}


async def _hourly_from_raw(store: GatewayStore) -> dict[tuple[str, ...], tuple[int, ...]]:
    """What `request_hourly` must hold: the finished raw rows, summed per hour in Python."""
    rows = await store.db.fetch(
        "SELECT started_at, key_id, team_id, customer_id, project, requested_model, provider, input_tokens, "
        "output_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cost_nanos, price_quality, "
        "origin FROM requests WHERE status != 'pending'"
    )
    sums: dict[tuple[str, ...], list[int]] = {}
    for row in rows:
        dims = (str(row[0])[:13], *(str(v or "") for v in row[1:7]))
        cost = row[12]
        add = [
            1,
            int(row[7]),
            int(row[8]),
            int(row[9]),
            int(row[10]) + int(row[11]),
            int(cost or 0),
            int(cost is None),
            int(cost is not None and row[13] == "estimated"),
            int((row[14] or "gateway") not in ("sidecar", "gateway")),
        ]
        total = sums.setdefault(dims, [0] * 9)
        for index, value in enumerate(add):
            total[index] += value
    return {dims: tuple(values) for dims, values in sums.items()}


async def _daily(store: GatewayStore) -> dict[tuple[str, ...], tuple[int, ...]]:
    rows = await store.db.fetch(
        f"SELECT day, key_id, team_id, customer_id, project, model, provider, {SUM_COLUMNS} FROM request_daily"  # noqa: S608
    )
    return {tuple(str(v) for v in row[:7]): tuple(int(v) for v in row[7:]) for row in rows}


def _by_day(hourly: dict[tuple[str, ...], tuple[int, ...]]) -> dict[tuple[str, ...], tuple[int, ...]]:
    """What `request_daily` must hold: the hours summed per UTC day (no group left at zero requests)."""
    sums: dict[tuple[str, ...], list[int]] = {}
    for dims, values in hourly.items():
        total = sums.setdefault((dims[0][:10], *dims[1:]), [0] * 9)
        for index, value in enumerate(values):
            total[index] += value
    return {dims: tuple(values) for dims, values in sums.items() if values[0]}


async def _team_model_days(store: GatewayStore) -> dict[tuple[str, ...], tuple[int, ...]]:
    rows = await store.db.fetch(f"SELECT day, team_id, model, {SUM_COLUMNS} FROM request_daily_team_model")  # noqa: S608
    return {tuple(str(v) for v in row[:3]): tuple(int(v) for v in row[3:]) for row in rows}


def _by_team_model(days: dict[tuple[str, ...], tuple[int, ...]]) -> dict[tuple[str, ...], tuple[int, ...]]:
    sums: dict[tuple[str, ...], list[int]] = {}
    for dims, values in days.items():
        total = sums.setdefault((dims[0], dims[2], dims[5]), [0] * 9)
        for index, value in enumerate(values):
            total[index] += value
    return {dims: tuple(values) for dims, values in sums.items() if values[0]}


async def _assert_hourly_current(store: GatewayStore) -> None:
    """Every roll-up holds exactly the finished raw rows: the hours, the UTC days, those days per team and model."""
    raw = await _hourly_from_raw(store)
    assert await _hourly(store) == raw
    assert await _daily(store) == _by_day(raw)
    assert await _team_model_days(store) == _by_team_model(_by_day(raw))


# --- each path that finishes a row ------------------------------------------------------------------------------


async def test_pending_then_final_and_replays_count_once(store: GatewayStore) -> None:
    who = await _key(store, "dev", "core")
    pending = _row(who, "r1", status=RequestStatus.PENDING)
    await store.write_requests([pending])
    assert await _hourly(store) == {}  # in flight: not in the roll-ups
    final = _row(who, "r1")
    for _ in range(3):  # the final, and a retried write of it
        await store.write_requests([final])
    await _assert_hourly_current(store)
    ((_, sums),) = (await _hourly(store)).items()
    assert sums[0] == 1 and sums[5] == 1_000


async def test_ingest_replayed_and_a_proxied_row_synced_later_count_once(store: GatewayStore) -> None:
    who = await _key(store, "dev", "core")
    customer = who.customer.id if who.customer else None
    await store.write_requests([_row(who, "proxied", status=RequestStatus.PENDING)])
    await store.write_requests([_row(who, "proxied", nanos=7_000)])
    records = [
        (_row(who, "proxied", nanos=9_999).record, {}),
        (_row(who, "synced", nanos=3_000, source="sidecar").record, {"t": "x"}),
        (_row(who, "unpriced", nanos=None, source="claude-code-import").record, {}),
    ]
    for _ in range(3):
        await store.ingest(key_id=who.key.id, team_id=who.team.id, customer_id=customer, records=records)
    await _assert_hourly_current(store)
    assert sum(s[0] for s in (await _hourly(store)).values()) == 3
    assert sum(s[5] for s in (await _hourly(store)).values()) == 10_000
    assert sum(s[6] for s in (await _hourly(store)).values()) == 1  # unpriced
    assert sum(s[8] for s in (await _hourly(store)).values()) == 1  # imported


async def test_a_sync_first_then_the_proxied_final_is_counted_once(store: GatewayStore) -> None:
    who = await _key(store, "dev", "core")
    customer = who.customer.id if who.customer else None
    await store.ingest(
        key_id=who.key.id, team_id=who.team.id, customer_id=customer, records=[(_row(who, "x").record, {})]
    )
    await store.write_requests([_row(who, "x", nanos=5_000)])  # the proxied final arrives second: dropped
    await _assert_hourly_current(store)
    assert sum(s[0] for s in (await _hourly(store)).values()) == 1


async def test_recovered_rows_count_and_their_late_final_replaces_them(store: GatewayStore) -> None:
    who = await _key(store, "dev", "core")
    await store.write_requests([_row(who, "cut", status=RequestStatus.PENDING, nanos=2_000, instance="gw-a")])
    assert await store.recover_pending(instance_id="gw-a") == 1
    await _assert_hourly_current(store)
    assert [s[:1] + s[5:6] for s in (await _hourly(store)).values()] == [(1, 2_000)]
    # the instance comes back and finishes it, served by another provider after a failover
    await store.write_requests([_row(who, "cut", nanos=6_000, instance="gw-a", provider="groq")])
    await _assert_hourly_current(store)
    hourly = await _hourly(store)
    assert [(dims[6], sums[0], sums[5]) for dims, sums in hourly.items()] == [("groq", 1, 6_000)]  # no empty group


async def test_a_dead_instances_rows_enter_the_hourly_sums(store: GatewayStore) -> None:
    who = await _key(store, "dev", "core")
    now = datetime.now(UTC)
    await store.write_requests([_row(who, "d1", at=now, status=RequestStatus.PENDING, instance="dead")])
    assert await recover_dead(store.db, now + timedelta(seconds=1)) == 1
    await _assert_hourly_current(store)
    assert sum(s[0] for s in (await _hourly(store)).values()) == 1


async def test_two_requests_in_flight_with_one_id_on_two_instances_are_two_rows(store: GatewayStore) -> None:
    who = await _key(store, "dev", "core")
    first = _row(who, "same", status=RequestStatus.PENDING, instance="gw-1", nanos=1_000)
    second = _row(who, "same", at=T0 + timedelta(seconds=1), status=RequestStatus.PENDING, instance="gw-2")
    assert await store.write_requests([first]) == []
    assert await store.write_requests([second]) == [second]  # another request: the caller renames it
    stored = await store.get_request(who.key.id, "same")
    assert stored is not None and stored.instance_id == "gw-1" and stored.record.started_at == T0
    await store.write_requests([_row(who, "same", instance="gw-1", nanos=1_000)])
    await _assert_hourly_current(store)


async def test_the_sink_never_coalesces_two_requests_queued_under_one_id(store: GatewayStore) -> None:
    """A request reused an id whose previous request's final row was still queued: both rows are kept."""
    who = await _key(store, "dev", "core")
    ledger = GatewayLedger(store, "gw-1")
    owner = Owner(who.key.id, who.team.id, who.customer.id if who.customer else None)
    ledger.enqueue(owner, _row(who, "reused", nanos=1_000).record)
    later = _row(who, "reused", at=T0 + timedelta(minutes=1), status=RequestStatus.PENDING, nanos=2_000).record
    ledger.enqueue(owner, later)
    later.status = RequestStatus.OK
    ledger.enqueue(owner, later)
    ledger.start()
    try:
        assert await ledger.flush()
    finally:
        await ledger.close()
    rows = await store.db.fetch("SELECT id, cost_nanos, status FROM requests ORDER BY started_at")
    assert [(r[1], r[2]) for r in rows] == [(1_000, "ok"), (2_000, "ok")]
    assert rows[0][0] == "reused" and rows[1][0] != "reused"
    await _assert_hourly_current(store)


async def test_pruning_deletes_raw_rows_only_and_reports_stay(store: GatewayStore) -> None:
    who = await _key(store, "dev", "core")
    await store.write_requests([_row(who, f"r{i}", at=T0 + timedelta(days=i, minutes=7 * i)) for i in range(4)])
    since, until = T0 - timedelta(days=1), T0 + timedelta(days=10)
    before = {by: await store.report(since=since, until=until, by=by) for by in ("key", "day", "model", None)}
    assert await store.prune_requests(before=date(2026, 12, 3)) == 2
    assert len(await store.db.fetch("SELECT id FROM requests")) == 2
    for by, report in before.items():
        after = await store.report(since=since, until=until, by=by)
        assert (after.total, after.groups) == (report.total, report.groups)
    # a row synced late for a pruned day adds to that day's per-day roll-up (what an older release reads)
    customer = who.customer.id if who.customer else None
    late = _row(who, "late", at=T0 + timedelta(hours=1), nanos=50)
    await store.ingest(key_id=who.key.id, team_id=who.team.id, customer_id=customer, records=[(late.record, {})])
    assert await store.prune_requests(before=date(2026, 12, 3)) == 1
    daily = await store.db.fetch("SELECT day, requests, cost_nanos FROM request_rollups ORDER BY day")
    assert [(d, int(n), int(c)) for d, n, c in daily] == [("2026-12-01", 2, 1_050), ("2026-12-02", 1, 1_000)]
    total = await store.report(since=since, until=until, by=None)
    assert total.total.requests == 5 and total.total.cost_nanos == 4_050


async def test_migrations_backfill_hours_from_raw_rows_and_pruned_days_then_days_from_hours(db_url: str) -> None:
    db = await connect(db_url)
    try:
        older = [m for m in load_migrations() if m.name < "0004"]
        await apply(db, older)
        values = (
            "INSERT INTO requests (key_id, id, team_id, source, origin, started_at, status, input_tokens, "
            "cache_write_5m_tokens, cache_write_1h_tokens, cost_nanos, price_quality, provider, received_at) "
            "VALUES (?, ?, ?, 'proxied', ?, ?, ?, 3, 1, 2, ?, ?, 'anthropic', 'x')"
        )
        for row in (
            ("k", "a", "t", None, "2026-12-05T10:15:00.000000Z", "ok", 100, "priced"),
            ("k", "b", "t", "claude-code-import", "2026-12-05T10:45:00.000000Z", "ok", 50, "estimated"),
            ("k", "c", "t", None, "2026-12-05T11:00:00.000000Z", "error", None, "unpriced"),
            ("k", "d", "t", None, "2026-12-05T11:30:00.000000Z", "pending", 999, "priced"),
            ("k", "e", None, None, "2026-12-01T09:00:00.000000Z", "ok", 5, "priced"),  # late row of a pruned day
        ):
            await db.execute(values, row)
        await db.execute(
            "INSERT INTO request_rollups VALUES ('2026-12-01', 'k', '', '', '', '', 'anthropic', 4, 1, 2, 3, 4, 40, "
            "0, 0, 0)"
        )
        await apply(db)
        sql = f"SELECT hour, team_id, provider, {SUM_COLUMNS} FROM request_hourly ORDER BY hour"  # noqa: S608
        rows = await db.fetch(sql)
        assert [tuple(str(v) if i < 3 else int(v) for i, v in enumerate(r)) for r in rows] == [
            ("2026-12-01T00", "", "anthropic", 4, 1, 2, 3, 4, 40, 0, 0, 0),
            ("2026-12-01T09", "", "anthropic", 1, 3, 0, 0, 3, 5, 0, 0, 0),
            ("2026-12-05T10", "t", "anthropic", 2, 6, 0, 0, 6, 150, 0, 1, 1),
            ("2026-12-05T11", "t", "anthropic", 1, 3, 0, 0, 3, 0, 1, 0, 0),
        ]
        # 0007 then sums the hours per UTC day
        sql = f"SELECT day, team_id, provider, {SUM_COLUMNS} FROM request_daily ORDER BY day"  # noqa: S608
        rows = await db.fetch(sql)
        assert [tuple(str(v) if i < 3 else int(v) for i, v in enumerate(r)) for r in rows] == [
            ("2026-12-01", "", "anthropic", 5, 4, 2, 3, 7, 45, 0, 0, 0),
            ("2026-12-05", "t", "anthropic", 3, 9, 0, 0, 9, 150, 1, 1, 1),
        ]
        sql = f"SELECT day, team_id, model, {SUM_COLUMNS} FROM request_daily_team_model ORDER BY day"  # noqa: S608
        rows = await db.fetch(sql)
        assert [tuple(str(v) if i < 3 else int(v) for i, v in enumerate(r)) for r in rows] == [
            ("2026-12-01", "", "", 5, 4, 2, 3, 7, 45, 0, 0, 0),
            ("2026-12-05", "t", "", 3, 9, 0, 0, 9, 150, 1, 1, 1),
        ]
    finally:
        await db.close()


async def test_rebuild_recomputes_hours_from_raw_rows_and_is_audited(store: GatewayStore) -> None:
    who = await _key(store, "dev", "core")
    await store.write_requests([_row(who, f"r{i}", at=T0 + timedelta(hours=i)) for i in range(5)])
    expected = await _hourly(store)
    await store.db.execute("DELETE FROM request_hourly WHERE hour >= '2026-12-01T12'")  # rows an old release missed
    await store.db.execute("UPDATE request_hourly SET requests = 9")
    first, count = await store.rebuild_rollups(since=T0 + timedelta(hours=2, minutes=30), actor="cli:ops")
    assert first == T0 + timedelta(hours=2) and count == 3
    hourly = await _hourly(store)
    assert {k: v for k, v in hourly.items() if k[0] >= "2026-12-01T12"} == {
        k: v for k, v in expected.items() if k[0] >= "2026-12-01T12"
    }
    assert {v[0] for k, v in hourly.items() if k[0] < "2026-12-01T12"} == {9}  # hours before --since untouched
    assert await _daily(store) == _by_day(hourly)  # the days follow the hours, from the day of --since
    await store.db.execute("DELETE FROM request_daily")  # days a release that knows none left out
    await store.db.execute("DELETE FROM request_daily_team_model")
    await store.rebuild_rollups(actor="cli:ops")
    assert await _hourly(store) == expected
    await _assert_hourly_current(store)
    audit = await store.db.fetch("SELECT actor, action, after_json FROM audit_log WHERE action = 'rollups.rebuild'")
    assert [(a, b) for a, b, _ in audit] == [("cli:ops", "rollups.rebuild")] * 2
    assert json.loads(audit[0][2]) == {"since": "2026-12-01T12:00:00.000000Z", "hourly_rows": 3}


# --- reports from hours equal a raw scan --------------------------------------------------------------------------


async def _raw_report(
    store: GatewayStore, since: datetime, until: datetime, by: str | None, tz: tzinfo, team_id: str | None
) -> CostReport:
    """The report as a scan of every raw row (pending ones too), grouped in Python."""
    rows = await store.db.fetch(
        "SELECT coalesce(k.name, r.key_id), coalesce(t.name, r.team_id, ''), coalesce(c.name, r.customer_id, ''), "
        "r.project, r.requested_model, r.provider, r.session_id, r.tags, r.started_at, r.team_id, "
        "r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_5m_tokens + r.cache_write_1h_tokens, "
        "r.cost_nanos, r.price_quality, r.origin FROM requests r LEFT JOIN virtual_keys k ON k.id = r.key_id "
        "LEFT JOIN teams t ON t.id = r.team_id LEFT JOIN customers c ON c.id = r.customer_id"
    )
    names = ("key", "team", "customer", "project", "model", "provider", "session")
    sums: dict[str, Totals] = {}
    for row in rows:
        started = from_iso(str(row[8]))
        if not since <= started < until or (team_id is not None and row[9] != team_id):
            continue
        if by is None:
            key = ""
        elif by in names:
            key = str(row[names.index(by)] or "")
        elif by == "day":
            key = started.astimezone(tz).date().isoformat()
        else:
            key = str(json.loads(row[7]).get(by[4:], ""))
        cost = row[14]
        totals = Totals(
            1,
            int(row[10]),
            int(row[11]),
            int(row[12]),
            int(row[13]),
            int(cost or 0),
            int(cost is None),
            int(cost is not None and row[15] == "estimated"),
            int((row[16] or "gateway") not in ("sidecar", "gateway")),
        )
        sums[key] = sums.get(key, Totals()) + totals
    groups: list[tuple[GroupKey, Totals]] = [(key or NONE_KEY, totals) for key, totals in sums.items()]
    if by == "day":
        groups.sort(key=lambda group: str(group[0]))
    elif by is not None:
        groups.sort(key=lambda group: (-group[1].cost_nanos, -group[1].requests, group[0]))
    total = sum((t for _, t in groups), Totals())
    return CostReport(since=since, until=until, by=by, total=total, groups=groups if by else [])


@dataclass(frozen=True)
class Planned:
    who: int
    minute: int
    micro: int
    model: str
    provider: str
    project: str | None
    session: str | None
    tag: str | None
    nanos: int | None
    estimated: bool
    origin: str
    path: str


PATHS = ("final", "pending_then_final", "left_pending", "ingest", "recovered", "recovered_then_finished", "replayed")
WINDOW_MINUTES = 3 * 24 * 60
planned_rows = st.lists(
    st.builds(
        Planned,
        who=st.integers(0, 2),
        minute=st.integers(0, WINDOW_MINUTES - 1),
        micro=st.integers(0, 59_999_999),
        model=st.sampled_from(["claude-sonnet-4-5", "claude-haiku-4-5", "mystery"]),
        provider=st.sampled_from(["anthropic", "groq", ""]),
        project=st.sampled_from([None, "/src/a", "/src/b"]),
        session=st.sampled_from([None, "s1", "s2"]),
        tag=st.sampled_from([None, "T-1", "T-2"]),
        nanos=st.one_of(st.none(), st.integers(0, 10**12)),
        estimated=st.booleans(),
        origin=st.sampled_from(["sidecar", "gateway", "claude-code-import"]),
        path=st.sampled_from(PATHS),
    ),
    max_size=40,
)
# London: UTC's days in winter (the daily roll-up serves `day`), not in summer (hours only)
ZONES = (
    UTC,
    ZoneInfo("Europe/Berlin"),
    ZoneInfo("America/New_York"),
    ZoneInfo("Asia/Kolkata"),
    ZoneInfo("Europe/London"),
)
GROUPINGS = (None, "key", "team", "customer", "project", "model", "provider", "day", "session", "tag:ticket")
_eras = itertools.count()


async def _plant(store: GatewayStore, keys: Sequence[KeyIdentity], base: datetime, plan: Sequence[Planned]) -> None:
    """Each planned row reaches the ledger by its path, in batches as the sink and the sync send them."""
    pending: list[GatewayRow] = []
    finals: list[GatewayRow] = []
    recover: list[str] = []
    replays: list[GatewayRow] = []
    for index, p in enumerate(plan):
        who = keys[p.who]
        at = base + timedelta(minutes=p.minute, microseconds=p.micro)
        quality = PriceQuality.ESTIMATED if p.estimated and p.nanos is not None else None
        extra: dict[str, Any] = {"quality": quality} if quality else {}
        row = _row(
            who,
            f"row-{index}",
            at=at,
            nanos=p.nanos,
            provider=p.provider,
            instance=f"gw-{index}",
            model=p.model,
            project=p.project,
            session_id=p.session,
            source=p.origin,
            tags={"ticket": p.tag} if p.tag else {},
            **extra,
        )
        pending_row = _row(who, f"row-{index}", at=at, status=RequestStatus.PENDING, nanos=1, instance=f"gw-{index}")
        if p.path == "ingest":
            customer = who.customer.id if who.customer else None
            for _ in range(2):  # replayed
                await store.ingest(
                    key_id=who.key.id, team_id=who.team.id, customer_id=customer, records=[(row.record, row.tags)]
                )
            continue
        if p.path != "final":
            pending.append(pending_row)
        if p.path in ("recovered", "recovered_then_finished"):
            recover.append(f"gw-{index}")
        if p.path in ("final", "pending_then_final", "recovered_then_finished", "replayed"):
            finals.append(row)
        if p.path == "replayed":  # written again later (the sink never sends one row twice in a batch)
            replays.append(row)
    await store.write_requests(pending)
    for instance in recover:
        await store.recover_pending(instance_id=instance)
    for start in range(0, len(finals), 7):
        await store.write_requests(finals[start : start + 7])
    await store.write_requests(replays)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=planned_rows, data=st.data())
async def test_reports_from_hours_equal_a_raw_scan(store: GatewayStore, plan: list[Planned], data: Any) -> None:
    era = next(_eras)
    keys = [await _key(store, f"{name}-{era}", team) for name, team in (("a", "core"), ("b", "web"), ("c", "solo"))]
    base = datetime(2027, 1, 1, tzinfo=UTC) + timedelta(days=10 * era)  # this example's own days
    try:
        await _plant(store, keys, base, plan)
        await _assert_hourly_current(store)
        for _ in range(4):
            low = data.draw(st.integers(-90, WINDOW_MINUTES + 90), label="since minute")
            length = data.draw(st.integers(0, WINDOW_MINUTES + 180), label="minutes")
            since = base + timedelta(minutes=low, seconds=data.draw(st.sampled_from([0, 0, 17.5]), label="seconds"))
            until = since + timedelta(minutes=length)
            by = data.draw(st.sampled_from(GROUPINGS), label="by")
            tz = data.draw(st.sampled_from(ZONES), label="tz")
            team = data.draw(st.sampled_from([None, keys[0].team.id]), label="team")
            got = await store.report(since=since, until=until, by=by, tz=tz, team_id=team)
            want = await _raw_report(store, since, until, by, tz, team)
            assert (got.total, got.groups) == (want.total, want.groups)
    finally:  # the next example sees its own keys' rows only
        team_ids = tuple(key.team.id for key in keys)
        for key in keys:
            await store.db.execute("DELETE FROM requests WHERE key_id = ?", (key.key.id,))
            await store.db.execute("DELETE FROM request_hourly WHERE key_id = ?", (key.key.id,))
            await store.db.execute("DELETE FROM request_daily WHERE key_id = ?", (key.key.id,))
            await store.db.execute("DELETE FROM request_daily_team_model WHERE team_id IN (?, ?, ?)", team_ids)


async def _finished_sums(
    store: GatewayStore, low: str, high: str, column: str | None, where: tuple[str, str] | None
) -> dict[str, Totals]:
    """The finished raw rows whose UTC hour is in [low, high), summed per `column` in Python (what the dashboard's
    roll-up reads must give)."""
    rows = await store.db.fetch(
        "SELECT started_at, key_id, team_id, customer_id, project, requested_model, provider, input_tokens, "
        "output_tokens, cache_read_tokens, cache_write_5m_tokens + cache_write_1h_tokens, cost_nanos, price_quality, "
        "origin FROM requests WHERE status != 'pending'"
    )
    names = ("key_id", "team_id", "customer_id", "project", "model", "provider")
    sums: dict[str, Totals] = {}
    for row in rows:
        if not low <= str(row[0])[:13] < high:
            continue
        if where is not None and row[1 + names.index(where[0])] != where[1]:
            continue
        group = "" if column is None else str(row[1 + names.index(column)] or "")
        cost = row[11]
        add = Totals(
            1,
            int(row[7]),
            int(row[8]),
            int(row[9]),
            int(row[10]),
            int(cost or 0),
            int(cost is None),
            int(cost is not None and row[12] == "estimated"),
            int((row[13] or "gateway") not in ("sidecar", "gateway")),
        )
        sums[group] = sums.get(group, Totals()) + add
    return sums


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=planned_rows, data=st.data())
async def test_dashboard_reads_from_days_and_hours_equal_a_raw_scan(
    store: GatewayStore, plan: list[Planned], data: Any
) -> None:
    """The dashboard's totals, groups and per-slot cells (whole UTC days from the day roll-ups, hours at the
    edges) over any range, unscoped, for a team and for a key."""
    from ccgate.storage.gateway import dashboard
    from ccgate.storage.gateway.dashboard import Scope

    era = next(_eras)
    keys = [await _key(store, f"{name}-{era}", team) for name, team in (("a", "core"), ("b", "web"), ("c", "solo"))]
    base = datetime(2027, 1, 1, tzinfo=UTC) + timedelta(days=10 * era)
    try:
        await _plant(store, keys, base, plan)
        for _ in range(4):
            low = data.draw(st.integers(-90, WINDOW_MINUTES + 90), label="since minute")
            since = base + timedelta(minutes=low)
            until = since + timedelta(minutes=data.draw(st.integers(0, WINDOW_MINUTES + 180), label="minutes"))
            scope, where = data.draw(
                st.sampled_from(
                    [
                        (Scope(), None),
                        (Scope(team_id=keys[0].team.id), ("team_id", keys[0].team.id)),
                        (Scope(key_id=keys[1].key.id), ("key_id", keys[1].key.id)),
                    ]
                ),
                label="scope",
            )
            high_hour = dashboard.hour_ceiling(until)
            want = await _finished_sums(store, dashboard.hour_floor(since), high_hour, None, where)
            got = await dashboard.totals(store.db, since=since, until=until, scope=scope)
            assert got == want.get("", Totals())
            by = data.draw(st.sampled_from(sorted(dashboard.GROUP_COLUMNS)), label="by")
            column = dashboard.GROUP_COLUMNS[by].removeprefix("r.")
            wanted = await _finished_sums(store, dashboard.hour_floor(since), high_hour, column, where)
            groups = await dashboard.groups(store.db, by=by, since=since, until=until, scope=scope)
            assert {g.id: g.totals for g in groups} == wanted
            stack = data.draw(st.sampled_from(["team", "model"]), label="stack")
            cells = await dashboard.spend_cells(store.db, since=since, until=until, stack=stack, scope=scope)
            folded: dict[str, int] = {}
            for cell in cells:
                folded[cell.group] = folded.get(cell.group, 0) + cell.cost_nanos
            column = dashboard.GROUP_COLUMNS[stack].removeprefix("r.")
            wanted = await _finished_sums(store, dashboard.hour_floor(since), high_hour, column, where)
            assert folded == {k: t.cost_nanos for k, t in wanted.items()}
    finally:
        team_ids = tuple(key.team.id for key in keys)
        for key in keys:
            await store.db.execute("DELETE FROM requests WHERE key_id = ?", (key.key.id,))
            await store.db.execute("DELETE FROM request_hourly WHERE key_id = ?", (key.key.id,))
            await store.db.execute("DELETE FROM request_daily WHERE key_id = ?", (key.key.id,))
            await store.db.execute("DELETE FROM request_daily_team_model WHERE team_id IN (?, ?, ?)", team_ids)


@pytest.mark.parametrize(
    ("zone", "whole"),
    [("UTC", True), ("Europe/Berlin", True), ("Asia/Kolkata", False), ("Australia/Lord_Howe", False)],
)
def test_whole_hour_zones(zone: str, whole: bool) -> None:
    from ccgate.storage.gateway.ledger import whole_hour_zone

    assert whole_hour_zone(ZoneInfo(zone), datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)) is whole


@pytest.mark.parametrize(
    ("zone", "first", "last", "utc_days"),
    [
        ("UTC", "2026-01-01", "2027-01-01", True),
        ("Europe/London", "2026-01-01", "2026-03-29", True),  # BST starts at 01:00 UTC on the 29th
        ("Europe/London", "2026-01-01", "2026-03-30", False),
        ("Europe/London", "2026-10-26", "2026-12-01", True),
        ("Africa/Abidjan", "2026-01-01", "2027-01-01", True),
        ("Europe/Berlin", "2026-01-01", "2026-01-02", False),
        ("America/New_York", "2026-01-01", "2026-01-02", False),
    ],
)
def test_utc_days_zones(zone: str, first: str, last: str, utc_days: bool) -> None:
    from ccgate.storage.gateway.ledger import utc_days_zone

    def midnight(day: str) -> datetime:
        return datetime.fromisoformat(day).replace(tzinfo=UTC)

    assert utc_days_zone(ZoneInfo(zone), midnight(first), midnight(last)) is utc_days


async def test_a_second_request_under_an_id_in_flight_on_this_instance_gets_its_own_row(db_url: str) -> None:
    import aiohttp
    from gateway_harness import running_gateway
    from scripted_upstream import TextReply

    async with running_gateway(db_url) as gateway, aiohttp.ClientSession() as http:
        gateway.upstream.enqueue(TextReply(cut_after_events=2, then="hang"), TextReply())
        headers = {"x-api-key": gateway.keys["ada"], "x-ccgate-request-id": "dup-1", "anthropic-version": "2023-06-01"}
        body = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 5,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        }
        async with http.post(f"{gateway.url}/v1/messages", json=body, headers=headers) as first:
            assert first.status == 200
            await gateway.upstream.wait_for_requests(1)
            client = gateway.client(gateway.keys["ada"], default_headers={"x-ccgate-request-id": "dup-1"})
            await client.messages.create(
                model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "y"}]
            )
            rows = {row.record.id: row.record.status for row in await gateway.rows("ada")}
            assert rows.pop("dup-1") is RequestStatus.PENDING  # the first, still streaming, kept its id
            assert list(rows.values()) == [RequestStatus.OK]  # the second: its own row under a fresh id
            # the row ids stay in the gateway: a provider never sees an x-ccgate-* header
            assert all("x-ccgate-request-id" not in r.headers for r in gateway.upstream.messages_requests)


async def test_the_benchmark_database_has_its_hourly_roll_ups_and_budget_spend_current(db_url: str) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from make_gateway_db import _build

    await _build(db_url, 3_000, days=10, seed=3)
    store = await GatewayStore.open(db_url)
    try:
        assert len(await store.list_keys()) == 200 and len(await store.list_teams()) == 20
        assert len(await store.db.fetch("SELECT id FROM requests")) == 3_000
        await _assert_hourly_current(store)
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        for budget in await store.list_budgets():  # what admission would have charged in the current window
            (view,) = await store.budget_states([budget])
            start = today if budget.period.text == "1d" else today.replace(day=1)
            if budget.level.value == "provider":
                where, target = "provider = 'anthropic' AND source = 'proxied'", []
            else:
                where, target = f"{budget.level.value}_id = ?", [budget.target_id]
            (row,) = await store.db.fetch(
                f"SELECT coalesce(sum(cost_nanos), 0) FROM requests WHERE {where} AND started_at >= ?",  # noqa: S608
                [*target, to_iso(start)],
            )
            assert view.state.spent_nanos == int(row[0]), (budget.level, budget.period.text)
        assert await store.list_audit(limit=5)
    finally:
        await store.close()


def test_rollups_rebuild_command(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from cli_runner import run_main

    code, _, err = run_main(capsys, monkeypatch, "gateway", "rollups", "rebuild", "--db", db_url)
    assert code == 1 and "pending migration" in err and "Traceback" not in err  # a database not made yet

    async def seed() -> None:
        store = await GatewayStore.open(db_url)
        try:
            who = await _key(store, "dev", "core")
            await store.write_requests([_row(who, f"r{i}", at=T0 + timedelta(hours=i)) for i in range(3)])
            await store.db.execute("DELETE FROM request_hourly")
        finally:
            await store.close()

    asyncio.run(seed())
    code, out, err = run_main(
        capsys, monkeypatch, "gateway", "rollups", "rebuild", "--db", db_url, "--since", "2026-12-01", "--json"
    )
    assert code == 0, err
    assert json.loads(out) == {"since": "2026-12-01T00:00:00.000000Z", "hourly_rows": 3}
    code, _, err = run_main(capsys, monkeypatch, "gateway", "rollups", "rebuild", "--db", db_url, "--since", "soon")
    assert code == 1 and "--since" in err and "hint:" in err and "Traceback" not in err
    code, _, err = run_main(capsys, monkeypatch, "gateway", "rollups", "rebuild", "--db", db_url)
    assert code == 0 and "rebuilt the hourly roll-ups for all hours: 3 row(s)" in err


def test_a_range_splits_into_whole_utc_days_and_the_hours_at_its_edges() -> None:
    from ccgate.storage.gateway.dashboard import SpendCell, roll_up_parts

    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)

    assert roll_up_parts(at("2026-12-01T10:30"), at("2026-12-04T02:00")) == [
        ("hour", "2026-12-01T10", "2026-12-02T00"),
        ("day", "2026-12-02", "2026-12-04"),
        ("hour", "2026-12-04T00", "2026-12-04T02"),
    ]
    assert roll_up_parts(at("2026-12-01T00:00"), at("2026-12-03T00:00")) == [("day", "2026-12-01", "2026-12-03")]
    assert roll_up_parts(at("2026-12-01T05:00"), at("2026-12-02T05:00")) == [("hour", "2026-12-01T05", "2026-12-02T05")]
    assert roll_up_parts(at("2026-12-01T05:10"), at("2026-12-01T05:20")) == [("hour", "2026-12-01T05", "2026-12-01T06")]
    assert roll_up_parts(at("2026-12-01T05:00"), at("2026-12-01T05:00")) == []
    day = SpendCell("2026-12-02", "t", 5, 1, 0)
    assert day.within("2026-12-02T00", "2026-12-03T00") and day.within("2026-12-01T00", "2026-12-07T13")
    assert not day.within("2026-12-02T01", "2026-12-07T00") and not day.within("2026-12-01T00", "2026-12-02T23")
    hour = SpendCell("2026-12-02T23", "t", 5, 1, 0)
    assert hour.within("2026-12-02T23", "2026-12-03T00") and not hour.within("2026-12-03T00", "2026-12-04T00")
