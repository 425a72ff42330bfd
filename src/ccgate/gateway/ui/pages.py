"""The dashboard's pages (GET): overview, teams, keys, requests, audit log; each table also as CSV (`?export=`).

Spend comes from the daily and hourly roll-ups (`storage.gateway.dashboard`), budgets and names from the store's own
methods. A team admin sees its team only; the audit log is for admins and viewers, as in the admin API.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp import web

from ccgate.core.records import utcnow
from ccgate.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from ccgate.gateway.ui import charts
from ccgate.gateway.ui.app import page, session_of, store
from ccgate.gateway.ui.render import exact_usd
from ccgate.storage.gateway import dashboard
from ccgate.storage.gateway.dashboard import Cursor, RequestFilter, Scope, UiSession
from ccgate.storage.gateway.records import Budget, BudgetLevel, BudgetView, RateLimit, VirtualKey
from ccgate.storage.gateway.store import GatewayStore
from ccgate.storage.reports import Totals, totals_to_json

TOTAL_FIELDS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "unpriced_requests",
    "estimated_requests",
    "imported_requests",
)
STATUSES = ("ok", "error", "pending", "interrupted")
PAGE_ROWS = 50
TOPS = ("key", "project", "model")
EXPORT_ROWS = 10_000


# --- shared helpers ------------------------------------------------------------------------------------------------


def scope_of(session: UiSession) -> Scope:
    return Scope(team_id=session.team_id) if session.role == "team_admin" else Scope()


def month_start(day: date) -> datetime:
    return datetime(day.year, day.month, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Period:
    name: str
    since: datetime
    until: datetime
    previous_since: datetime
    previous_until: datetime


def periods(now: datetime) -> list[Period]:
    """Today, this week (from Monday) and this month, UTC, each beside the whole previous one."""
    today = datetime(now.year, now.month, now.day, tzinfo=UTC)
    week = today - timedelta(days=today.weekday())
    month = month_start(today)
    last_month = month_start((month - timedelta(days=1)).date())
    return [
        Period("Today", today, now, today - timedelta(days=1), today),
        Period("This week", week, now, week - timedelta(days=7), week),
        Period("This month", month, now, last_month, month),
    ]


@dataclass(frozen=True, slots=True)
class Names:
    teams: dict[str, str]
    keys: dict[str, str]
    customers: dict[str, str]
    key_records: list[VirtualKey]


async def names(s: GatewayStore) -> Names:
    all_keys = await s.list_keys(include_revoked=True)
    return Names(
        {t.id: t.name for t in await s.list_teams()},
        {k.id: k.name for k in all_keys},
        {c.id: c.name for c in await s.list_customers()},
        all_keys,
    )


def csv_safe(value: object) -> str:
    """A cell a spreadsheet shows as text: a leading = + - @ tab or CR would make it run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_response(name: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([csv_safe(v) for v in row])
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="ccgate-{_file_part(name)}.csv"'},
    )


def _file_part(name: str) -> str:
    """A header-safe file name: names may hold quotes, slashes or any script."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)[:120]


def totals_row(totals: Totals) -> list[object]:
    data = totals_to_json(totals)
    return [data[name] for name in TOTAL_FIELDS]


def group_csv(name: str, rows: Sequence[tuple[str, Totals]]) -> web.Response:
    return csv_response(name, ["key", *TOTAL_FIELDS], ([key, *totals_row(t)] for key, t in rows))


def export_of(request: web.Request, choices: Sequence[str]) -> str | None:
    value = request.query.get("export")
    if value is None:
        return None
    if value not in choices:
        raise NotFoundError(f"no table {value!r} to export here", hint=f"export one of: {', '.join(choices)}")
    return value


@dataclass(frozen=True, slots=True)
class BudgetLine:
    view: BudgetView
    target: str
    used: float  # spent / limit
    bar: charts.Bar
    runs_out: datetime | None  # at the pace of this window so far, before it resets; None: it lasts


def budget_lines(views: Sequence[BudgetView], target_names: Mapping[str, str], now: datetime) -> list[BudgetLine]:
    lines = []
    for view in views:
        state = view.state
        limit, spent = state.limit_nanos, state.spent_nanos
        used = spent / limit if limit > 0 else (1.0 if spent > 0 else 0.0)
        runs_out = None
        elapsed = (now - view.window_start).total_seconds()
        if spent > 0 and elapsed > 0 and spent < limit:
            # compared in seconds first: at a tiny pace the moment lies past any date a datetime can hold
            needed = (limit - spent) * elapsed / spent
            runs_out = now + timedelta(seconds=needed) if needed < (state.resets_at - now).total_seconds() else None
        elif spent >= limit:
            runs_out = now
        lines.append(
            BudgetLine(
                view,
                target_names.get(view.budget.target_id, view.budget.target_id),
                used,
                charts.budget_bar(limit, spent, state.reserved_nanos),
                runs_out,
            )
        )
    return lines


def budget_csv(name: str, lines: Sequence[BudgetLine]) -> web.Response:
    header = ["level", "target", "period", "rolling", "limit_usd", "spent_usd", "reserved_usd", "left_usd", "resets_at"]
    return csv_response(
        name,
        header,
        (
            [
                line.view.budget.level.value,
                line.target,
                line.view.budget.period.text,
                not line.view.budget.calendar,
                exact_usd(line.view.state.limit_nanos),
                exact_usd(line.view.state.spent_nanos),
                exact_usd(line.view.state.reserved_nanos),
                exact_usd(line.view.state.left_nanos),
                line.view.state.resets_at.isoformat(),
            ]
            for line in lines
        ),
    )


def chart_choice(request: web.Request) -> tuple[int, str]:
    days = 90 if request.query.get("days") == "90" else 30
    stack = "model" if request.query.get("stack") == "model" else "team"
    return days, stack


def chart_start(now: datetime, days: int) -> datetime:
    first = now.date() - timedelta(days=days - 1)
    return datetime(first.year, first.month, first.day, tzinfo=UTC)


def fold_chart(
    cells: Sequence[dashboard.SpendCell], *, now: datetime, days: int, labels: Mapping[str, str]
) -> charts.StackedChart:
    """Spend per UTC day over the last `days` days (today included), stacked by team or model."""
    from ccgate.gateway.ui.render import usd

    first = chart_start(now, days)
    low = first.date().isoformat()
    sums: dict[tuple[str, str], int] = {}
    for cell in cells:
        if cell.day >= low:
            key = (cell.day, cell.group)
            sums[key] = sums.get(key, 0) + cell.cost_nanos
    return charts.stacked_days(sums, first=first.date(), days=days, names=labels, usd=usd)


def fold_period(cells: Sequence[dashboard.SpendCell], since: datetime, until: datetime) -> Totals:
    """Requests, spend and unpriced requests of [since, until) in whole hours (the cards show only these). The
    cells' days start at UTC midnights, as the periods do, so a day is wholly in a period or wholly out."""
    low, high = dashboard.hour_floor(since), dashboard.hour_ceiling(until)
    requests = cost = unpriced = 0
    for cell in cells:
        if cell.within(low, high):
            requests += cell.requests
            cost += cell.cost_nanos
            unpriced += cell.unpriced_requests
    return Totals(requests=requests, cost_nanos=cost, unpriced_requests=unpriced)


async def spend_chart(
    s: GatewayStore, *, now: datetime, days: int, stack: str, scope: Scope, labels: Mapping[str, str]
) -> charts.StackedChart:
    cells = await dashboard.spend_cells(s.db, since=chart_start(now, days), until=now, stack=stack, scope=scope)
    return fold_chart(cells, now=now, days=days, labels=labels)


# --- overview ------------------------------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    s = store(request)
    now = utcnow()
    scope = scope_of(session)
    export = export_of(request, ("periods", "keys", "projects", "models", "budgets"))
    spans = periods(now)
    n = await names(s)
    if export == "periods":  # every token count too: a sum per range (the page itself shows spend and requests)
        flat = [span for p in spans for span in ((p.since, p.until), (p.previous_since, p.previous_until))]
        sums = await dashboard.period_totals(s.db, flat, scope=scope)
        return csv_response(
            "periods",
            ["period", "since", "until", *TOTAL_FIELDS],
            ([p.name, p.since.isoformat(), p.until.isoformat(), *totals_row(sums[2 * i])] for i, p in enumerate(spans)),
        )
    month = spans[2]
    if export in ("keys", "projects", "models"):
        by = export[:-1]
        found = await dashboard.groups(s.db, by=by, since=month.since, until=now, scope=scope, limit=10)
        return group_csv(export, [(_label(by, g.id, n), g.totals) for g in found])
    if export == "budgets":
        return budget_csv("budgets", sorted(await _budget_lines(s, session, n, now), key=lambda line: -line.used))
    days, stack = chart_choice(request)
    # one read of the roll-up serves the cards (back to the previous month's start) and the chart. The reads run
    # one after the other: on PostgreSQL side by side they would take several of the pool's connections from the
    # data plane's admissions while a page renders.
    low = min(spans[2].previous_since, chart_start(now, days))
    cells = await dashboard.spend_cells(s.db, since=low, until=now, stack=stack, scope=scope)
    lines = await _budget_lines(s, session, n, now)
    tops = {by: await dashboard.groups(s.db, by=by, since=month.since, until=now, scope=scope, limit=10) for by in TOPS}
    lines.sort(key=lambda line: -line.used)
    cards = [
        (p, fold_period(cells, p.since, p.until), fold_period(cells, p.previous_since, p.previous_until)) for p in spans
    ]
    chart = fold_chart(cells, now=now, days=days, labels=n.teams if stack == "team" else {})
    return page(
        request,
        "overview.html",
        title="Overview",
        cards=cards,
        tops={by: [(g, _label(by, g.id, n)) for g in groups] for by, groups in tops.items()},
        month=month,
        budgets=lines[:10],
        chart=chart,
        days=days,
        stack=stack,
        now=now,
    )


def _label(by: str, group_id: str, n: Names) -> str:
    if by == "key":
        return n.keys.get(group_id, group_id)
    if by == "team":
        return n.teams.get(group_id, group_id) if group_id else ""
    if by == "customer":
        return n.customers.get(group_id, group_id) if group_id else ""
    return group_id


def _targets(n: Names) -> dict[str, str]:
    return {**n.customers, **n.teams, **n.keys}


async def _budget_lines(
    s: GatewayStore, session: UiSession, n: Names, now: datetime, budgets: Sequence[Budget] | None = None
) -> list[BudgetLine]:
    found = list(budgets) if budgets is not None else await s.list_budgets()
    if session.role == "team_admin":
        own = {k.id for k in n.key_records if k.team_id == session.team_id} | {session.team_id}
        found = [b for b in found if b.target_id in own]
    providers = {p.id: p.name for p in await s.list_providers()}
    return budget_lines(await s.budget_states(found, now=now), {**_targets(n), **providers}, now)


# --- teams ---------------------------------------------------------------------------------------------------------


async def teams(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    s = store(request)
    now = utcnow()
    month = periods(now)[2]
    n = await names(s)
    spend = {g.id: g.totals for g in await dashboard.groups(s.db, by="team", since=month.since, until=now)}
    found = await s.list_teams()
    if session.role == "team_admin":
        found = [t for t in found if t.id == session.team_id]
    live_keys: dict[str, int] = {}
    for k in n.key_records:
        if k.revoked_at is None:
            live_keys[k.team_id] = live_keys.get(k.team_id, 0) + 1
    rows = [
        (t, n.customers.get(t.customer_id or "", ""), live_keys.get(t.id, 0), spend.get(t.id, Totals())) for t in found
    ]
    if export_of(request, ("teams",)):
        return csv_response(
            "teams",
            ["team", "customer", "keys", *TOTAL_FIELDS],
            ([t.name, customer, count, *totals_row(totals)] for t, customer, count, totals in rows),
        )
    return page(request, "teams.html", title="Teams", rows=rows, month=month)


async def team(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    s = store(request)
    found = await s.get_team(request.match_info["name"])
    if session.role == "team_admin" and found.id != session.team_id:
        raise PermissionDeniedError("a team admin sees only its own team", hint="ask an admin or a viewer")
    now = utcnow()
    month = periods(now)[2]
    n = await names(s)
    scope = Scope(team_id=found.id)
    spend = await dashboard.totals(s.db, since=month.since, until=now, scope=scope)
    per_key = {
        g.id: g.totals for g in await dashboard.groups(s.db, by="key", since=month.since, until=now, scope=scope)
    }
    team_keys = [k for k in n.key_records if k.team_id == found.id]
    key_rows = [(k, per_key.get(k.id, Totals())) for k in team_keys]
    budgets = await s.list_budgets(level=BudgetLevel.TEAM, target=found.id)
    lines = await _budget_lines(s, session, n, now, budgets)
    limits = [r for r in await s.list_rate_limits() if r.target_id == found.id]
    export = export_of(request, ("keys", "budgets"))
    if export == "keys":
        return csv_response(
            f"team-{found.name}-keys",
            ["key", "mode", "revoked", *TOTAL_FIELDS],
            ([k.name, k.mode.value, k.revoked_at is not None, *totals_row(t)] for k, t in key_rows),
        )
    if export == "budgets":
        return budget_csv(f"team-{found.name}-budgets", lines)
    days, _ = chart_choice(request)
    chart = await spend_chart(s, now=now, days=days, stack="model", scope=scope, labels={})
    return page(
        request,
        "team.html",
        title=f"Team {found.name}",
        team=found,
        customer=n.customers.get(found.customer_id or "", ""),
        spend=spend,
        month=month,
        key_rows=key_rows,
        budgets=lines,
        rate_limit=limits[0] if limits else None,
        chart=chart,
        days=days,
        may_change=_may_change(session, found.id),
        done=request.query.get("done"),
    )


def _may_change(session: UiSession, team_id: str) -> bool:
    return session.role == "admin" or (session.role == "team_admin" and session.team_id == team_id)


# --- keys ----------------------------------------------------------------------------------------------------------


async def keys_page(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    s = store(request)
    now = utcnow()
    month = periods(now)[2]
    n = await names(s)
    show_revoked = request.query.get("revoked") == "1"
    found = [k for k in n.key_records if show_revoked or k.revoked_at is None]
    if session.role == "team_admin":
        found = [k for k in found if k.team_id == session.team_id]
    spend = {
        g.id: g.totals
        for g in await dashboard.groups(s.db, by="key", since=month.since, until=now, scope=scope_of(session))
    }
    rows = [(k, n.teams.get(k.team_id, ""), spend.get(k.id, Totals())) for k in found]
    rows.sort(key=lambda row: (-row[2].cost_nanos, row[0].name))
    if export_of(request, ("keys",)):
        return csv_response(
            "keys",
            ["key", "team", "mode", "prefix", "created_at", "revoked_at", *TOTAL_FIELDS],
            (
                [
                    k.name,
                    team_name,
                    k.mode.value,
                    k.key_prefix,
                    k.created_at.isoformat(),
                    k.revoked_at.isoformat() if k.revoked_at else "",
                    *totals_row(t),
                ]
                for k, team_name, t in rows
            ),
        )
    team_choices = sorted(
        (name, tid) for tid, name in n.teams.items() if session.role == "admin" or tid == session.team_id
    )
    return page(
        request,
        "keys.html",
        title="Keys",
        rows=rows,
        month=month,
        show_revoked=show_revoked,
        team_choices=team_choices,
        now=now,
    )


async def _key_in_reach(request: web.Request) -> VirtualKey:
    session = session_of(request)
    found = await store(request).get_key(request.match_info["id"])
    if session.role == "team_admin" and found.team_id != session.team_id:
        raise PermissionDeniedError("a team admin sees only its own team's keys", hint="ask an admin or a viewer")
    return found


async def key(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    s = store(request)
    found = await _key_in_reach(request)
    now = utcnow()
    month = periods(now)[2]
    n = await names(s)
    scope = Scope(key_id=found.id)
    spend = await dashboard.totals(s.db, since=month.since, until=now, scope=scope)
    per_model = await dashboard.groups(s.db, by="model", since=month.since, until=now, scope=scope, limit=20)
    lines = await _budget_lines(s, session, n, now, await s.list_budgets(level=BudgetLevel.KEY, target=found.id))
    limits: list[RateLimit] = [r for r in await s.list_rate_limits() if r.target_id == found.id]
    export = export_of(request, ("budgets", "models"))
    if export == "budgets":
        return budget_csv(f"key-{found.name}-budgets", lines)
    if export == "models":
        return group_csv(f"key-{found.name}-models", [(g.id, g.totals) for g in per_model])
    return page(
        request,
        "key.html",
        title=f"Key {found.name}",
        key=found,
        team_name=n.teams.get(found.team_id, ""),
        spend=spend,
        month=month,
        per_model=per_model,
        budgets=lines,
        rate_limit=limits[0] if limits else None,
        may_change=_may_change(session, found.team_id) and found.revoked_at is None,
        done=request.query.get("done"),
        now=now,
    )


# --- requests ------------------------------------------------------------------------------------------------------


def _day(value: str | None, field: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidRequestError(
            f"{field} must be a date or time such as 2026-12-01", hint="pick it from the date field"
        ) from None


def _request_filter(request: web.Request, session: UiSession) -> RequestFilter:
    q = request.query
    for name in q:
        value = q.get(name, "")
        if len(value) > 500 or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise InvalidRequestError(f"the filter {name!r} is not plain text", hint="clear it and pick again")
    status = q.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidRequestError(f"no status {status!r}", hint=f"use one of: {', '.join(STATUSES)}")
    team_id = q.get("team") or None
    if session.role == "team_admin":
        if team_id not in (None, session.team_id):
            raise PermissionDeniedError("a team admin sees only its own team's requests", hint="clear the team filter")
        team_id = session.team_id
    return RequestFilter(
        key_id=q.get("key") or None,
        team_id=team_id,
        project=q.get("project") or None,
        model=q.get("model") or None,
        status=status,
        since=_day(q.get("since"), "since"),
        until=_until(q.get("until")),
    )


def _until(value: str | None) -> datetime | None:
    """A date includes that whole day (as `gateway report --until` does)."""
    moment = _day(value, "until")
    if moment is not None and value is not None and len(value.strip()) == 10:
        moment += timedelta(days=1)
    return moment


async def requests_page(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    s = store(request)
    where = _request_filter(request, session)
    after = None
    if request.query.get("after"):
        after = Cursor.parse(request.query["after"])
        if after is None:
            raise InvalidRequestError("that page link is not valid", hint="start again from the first page")
    n = await names(s)
    if export_of(request, ("requests",)):
        return await _requests_csv(s, where, after, n)
    lines, next_cursor = await dashboard.list_requests(s.db, where, after=after, limit=PAGE_ROWS)
    keep = {k: v for k, v in request.query.items() if k not in ("after", "export")}
    from urllib.parse import urlencode

    key_choices = sorted(
        (k.name, k.id) for k in n.key_records if session.role != "team_admin" or k.team_id == session.team_id
    )
    team_choices = sorted(
        (name, tid) for tid, name in n.teams.items() if session.role != "team_admin" or tid == session.team_id
    )
    return page(
        request,
        "requests.html",
        title="Requests",
        lines=lines,
        names=n,
        filters=where,
        query=dict(keep),
        next_url=None if next_cursor is None else "/ui/requests?" + urlencode({**keep, "after": next_cursor.text()}),
        export_url="/ui/requests?" + urlencode({**keep, "export": "requests"}),
        first_url="/ui/requests?" + urlencode(keep) if after is not None else None,
        key_choices=key_choices,
        team_choices=team_choices,
        statuses=STATUSES,
        since=request.query.get("since", ""),
        until=request.query.get("until", ""),
    )


async def _requests_csv(s: GatewayStore, where: RequestFilter, after: Cursor | None, n: Names) -> web.Response:
    """Up to EXPORT_ROWS rows from here on, read a page at a time."""
    rows: list[list[object]] = []
    cursor = after
    while len(rows) < EXPORT_ROWS:
        lines, cursor = await dashboard.list_requests(s.db, where, after=cursor, limit=500)
        for line in lines:
            rows.append(
                [
                    line.started_at.isoformat(),
                    line.id,
                    n.keys.get(line.key_id, line.key_id),
                    n.teams.get(line.team_id or "", line.team_id or ""),
                    line.project or "",
                    line.requested_model or "",
                    line.provider or "",
                    line.status,
                    line.http_status or "",
                    line.input_tokens,
                    line.output_tokens,
                    line.cache_read_tokens,
                    line.cache_write_tokens,
                    exact_usd(line.cost_nanos),
                    line.price_quality,
                    "" if line.latency_ms is None else f"{line.latency_ms:.0f}",
                ]
            )
        if cursor is None:
            break
    header = [
        "started_at", "id", "key", "team", "project", "model", "provider", "status", "http_status", "input_tokens",
        "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd", "price_quality", "latency_ms",
    ]  # fmt: skip
    return csv_response("requests", header, rows[:EXPORT_ROWS])


async def request_detail(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    s = store(request)
    row = await s.get_request(request.match_info["key_id"], request.match_info["id"])
    if row is None or (session.role == "team_admin" and row.team_id != session.team_id):
        raise NotFoundError("no such request", hint="pick one from the requests page")
    n = await names(s)
    record = row.record
    attempts = [json.dumps(a, default=str) if not isinstance(a, str) else a for a in _attempts(record.attempts)]
    return page(
        request,
        "request.html",
        title="Request",
        row=row,
        record=record,
        key_name=n.keys.get(row.key_id, row.key_id),
        team_name=n.teams.get(row.team_id or "", row.team_id or ""),
        customer_name=n.customers.get(row.customer_id or "", row.customer_id or ""),
        attempts=attempts,
        cache_write=record.usage.cache_write_5m_tokens + record.usage.cache_write_1h_tokens,
    )


def _attempts(attempts: Sequence[Any]) -> list[Any]:
    from dataclasses import asdict, is_dataclass

    return [asdict(a) if is_dataclass(a) and not isinstance(a, type) else a for a in attempts]


# --- audit log -----------------------------------------------------------------------------------------------------


async def audit(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    if session.role == "team_admin":
        raise PermissionDeniedError("the audit log is for admins and viewers", hint="ask an admin or a viewer")
    q = request.query
    actor = q.get("actor") or None
    action = q.get("action") or None
    before = q.get("before") or None
    for value in (actor, action, before):
        if value is not None and (len(value) > 500 or any(ord(c) < 32 for c in value)):
            raise InvalidRequestError("a filter is not plain text", hint="clear it and try again")
    s = store(request)
    export = export_of(request, ("audit",))
    limit = EXPORT_ROWS if export else PAGE_ROWS
    entries = await s.list_audit(actor=actor, action=action, before_id=before, limit=limit)
    shown = [(e, _audit_text(e.before), _audit_text(e.after)) for e in entries]
    if export:
        return csv_response(
            "audit",
            ["at", "actor", "action", "target", "before", "after"],
            ([e.at.isoformat(), e.actor, e.action, e.target or "", b, a] for e, b, a in shown),
        )
    from urllib.parse import urlencode

    keep = {k: v for k, v in q.items() if k in ("actor", "action")}
    next_url = "/ui/audit?" + urlencode({**keep, "before": entries[-1].id}) if len(entries) == limit else None
    return page(
        request,
        "audit.html",
        title="Audit log",
        entries=shown,
        actor=actor or "",
        action=action or "",
        next_url=next_url,
        export_url="/ui/audit?" + urlencode({**keep, "export": "audit"}),
    )


def _audit_text(data: Mapping[str, Any] | None) -> str:
    """Compact JSON of a before/after record; a budget's webhook URL (often a secret itself) shows its host only."""
    if data is None:
        return ""
    shown = dict(data)
    hook = shown.get("webhook_url")
    if isinstance(hook, str) and hook:
        from urllib.parse import urlsplit

        shown["webhook_url"] = f"{urlsplit(hook).scheme}://{urlsplit(hook).hostname}/…"
    return json.dumps(shown, sort_keys=True, ensure_ascii=False, default=str)
