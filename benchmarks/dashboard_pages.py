"""Each dashboard page's server time (its `Server-Timing: app;dur=`) on a gateway database, signed in as admin.

    .venv/bin/python benchmarks/dashboard_pages.py [--db URL] [--rows 1000000]

`time_pages(db_url)` is what `bench.py` calls on the 1M-request gateway database; it serves that database with a
gateway app in this process (migrating it if needed, pruning nothing), signs in with a throwaway bootstrap admin
token and reads each page a few times, returning the median server milliseconds per page. Without --db this
script builds a SQLite database of --rows synthetic requests first (its hourly roll-up filled in one statement)
and times that. Target (issue 17): every page at most 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TIMING = re.compile(r"app;dur=([0-9.]+)")
REPEAT = 5
TARGET_MS = 300.0


async def time_pages(db_url: str) -> dict[str, float]:
    """Median server ms per page (REPEAT reads each, after one warm-up read)."""
    import aiohttp
    from aiohttp import web

    from ccgate import env
    from ccgate.gateway import keys
    from ccgate.gateway.app import GatewaySettings, create_app, create_runner

    token = "bench-" + secrets.token_urlsafe(24)
    environ = {**os.environ, env.GATEWAY_ADMIN_TOKEN: token}
    settings = GatewaySettings(db_url=db_url, environ=environ, migrate=True, keep_days=0, refresh_seconds=60.0)
    app = create_app(settings)
    runner = create_runner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        pages = await _pages(app[keys.STORE])
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=600)) as http:
            signed = await http.post(
                base + "/ui/login",
                data={"token": token},
                headers={"Origin": base, "Sec-Fetch-Site": "same-origin"},
                allow_redirects=False,
            )
            if signed.status != 303:
                raise RuntimeError(f"sign-in failed: HTTP {signed.status}")
            return {name: await _time(http, base + path) for name, path in pages.items()}
    finally:
        await runner.cleanup()


def phase(add: Callable[..., None], rows: int, found: list[tuple[str, str]]) -> None:
    """`bench.py`'s dashboard phase: every page's server time on each (backend, URL) of the `rows`-request
    gateway database (`gateway_reports.databases`)."""
    for backend, url in found:
        for page, value in asyncio.run(time_pages(url)).items():
            add(
                f"dashboard_{page}_{backend}_ms",
                f"dashboard {page}, {rows:,}-row DB, {backend} (server, median)",
                value,
                "ms",
                at_most=TARGET_MS,
            )


async def _time(http: Any, url: str) -> float:
    times: list[float] = []
    for attempt in range(REPEAT + 1):
        async with http.get(url, allow_redirects=False) as reply:
            await reply.read()
            if reply.status != 200:
                raise RuntimeError(f"{url}: HTTP {reply.status}")
            found = TIMING.fullmatch(reply.headers.get("Server-Timing", ""))
            if found is None:
                raise RuntimeError(f"{url}: no Server-Timing")
            if attempt:
                times.append(float(found.group(1)))
    return round(statistics.median(times), 1)


async def _pages(store: Any) -> dict[str, str]:
    """Every page, with the busiest team and key and a request of that key for the detail pages."""
    team = await store.db.fetchone(
        "SELECT t.name FROM teams t JOIN virtual_keys k ON k.team_id = t.id GROUP BY t.name ORDER BY count(*) DESC"
    )
    key = await store.db.fetchone("SELECT key_id FROM requests ORDER BY started_at DESC LIMIT 1")
    row = await store.db.fetchone("SELECT key_id, id FROM requests ORDER BY started_at DESC LIMIT 1")
    model = await store.db.fetchone("SELECT requested_model FROM requests ORDER BY started_at DESC LIMIT 1")
    from urllib.parse import quote

    pages = {
        "overview": "/ui/",
        "overview_90d_by_model": "/ui/?days=90&stack=model",
        "teams": "/ui/teams",
        "keys": "/ui/keys",
        "requests": "/ui/requests",
        "requests_older": "/ui/requests?after=" + quote(f"{_iso(datetime.now(UTC) - timedelta(days=7))}~~"),
        "audit": "/ui/audit",
        "overview_csv": "/ui/?export=keys",
    }
    if team is not None:
        pages["team"] = "/ui/teams/" + quote(str(team[0]), safe="")
    if key is not None:
        pages["key"] = f"/ui/keys/{key[0]}"
        pages["requests_by_key"] = f"/ui/requests?key={quote(str(key[0]))}"
        pages["requests_by_status"] = "/ui/requests?status=error"
    if model is not None and model[0]:
        pages["requests_by_model"] = "/ui/requests?model=" + quote(str(model[0]))
    if row is not None:
        pages["request"] = f"/ui/requests/{quote(str(row[0]), safe='')}/{quote(str(row[1]), safe='')}"
    return pages


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- a synthetic database, for running this script alone ---------------------------------------------------------

MODELS = ("claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5", "llama-3.3-70b-versatile")
STATUSES = ("ok",) * 97 + ("error", "error", "interrupted")


async def make_database(url: str, rows: int, *, teams: int = 8, keys_per_team: int = 25, days: int = 90) -> None:
    """An org of teams and keys, `rows` finished requests over the last `days` days, and their hourly roll-up."""
    from ccgate.storage.gateway import GatewayStore

    store = await GatewayStore.open(url, migrate_now=True)
    try:
        await store.create_customer("acme")
        key_ids: list[tuple[str, str, str]] = []
        for t in range(teams):
            team = await store.create_team(f"team-{t}", customer="acme")
            for k in range(keys_per_team):
                key = await store.create_key(team=team.id, name=f"dev-{t}-{k}")
                key_ids.append((key.key.id, team.id, team.customer_id or ""))
            await store.create_budget(level="team", target=team.id, limit_nanos=500 * 10**9, period="1mo")
    finally:
        await store.close()
    if url.startswith("sqlite://"):
        _fill(url.removeprefix("sqlite://"), rows, key_ids, days)
    else:
        await _fill_postgres(url, rows, key_ids, days)


def _rows(rows: int, key_ids: list[tuple[str, str, str]], days: int) -> Any:
    rng = random.Random(17)
    now = datetime.now(UTC)
    span = days * 86400
    for index in range(rows):
        key_id, team_id, customer_id = key_ids[rng.randrange(len(key_ids))]
        started = _iso(now - timedelta(seconds=rng.random() * span))
        model = MODELS[rng.randrange(len(MODELS))]
        yield (
            key_id,
            f"r{index:09d}",
            team_id,
            customer_id,
            "proxied",
            "gateway",
            started,
            started,
            f"/work/project-{rng.randrange(30)}",
            model,
            "anthropic",
            model,
            STATUSES[rng.randrange(len(STATUSES))],
            200,
            rng.randrange(50_000),
            rng.randrange(4_000),
            rng.randrange(200_000),
            rng.randrange(1, 400_000_000),
            "priced",
            rng.random() * 20_000,
            started,
        )


COLUMNS = (
    "key_id", "id", "team_id", "customer_id", "source", "origin", "started_at", "ended_at", "project",
    "requested_model", "provider", "routed_model", "status", "http_status", "input_tokens", "output_tokens",
    "cache_read_tokens", "cost_nanos", "price_quality", "latency_ms", "received_at",
)  # fmt: skip
_DIMS = (
    "substr(started_at, 1, 13), key_id, coalesce(team_id, ''), coalesce(customer_id, ''), coalesce(project, ''), "
    "coalesce(requested_model, ''), coalesce(provider, '')"
)
HOURLY_FILL = (
    "INSERT INTO request_hourly (hour, key_id, team_id, customer_id, project, model, provider, requests, "  # noqa: S608
    "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_nanos, unpriced_requests, "
    "estimated_requests, imported_requests) "
    f"SELECT {_DIMS}, count(*), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), "
    "sum(cache_write_5m_tokens + cache_write_1h_tokens), coalesce(sum(cost_nanos), 0), "
    f"sum(CASE WHEN cost_nanos IS NULL THEN 1 ELSE 0 END), 0, 0 FROM requests GROUP BY {_DIMS}"
)


def _daily_fills() -> tuple[str, ...]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_gateway_db import DAILY_FILLS

    return DAILY_FILLS


def _fill(path: str, rows: int, key_ids: list[tuple[str, str, str]], days: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    sql = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"  # noqa: S608
    batch: list[tuple[Any, ...]] = []
    for row in _rows(rows, key_ids, days):
        batch.append(row)
        if len(batch) == 50_000:
            conn.executemany(sql, batch)
            batch.clear()
    conn.executemany(sql, batch)
    conn.execute(HOURLY_FILL)
    for fill in _daily_fills():
        conn.execute(fill)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


async def _fill_postgres(url: str, rows: int, key_ids: list[tuple[str, str, str]], days: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table("requests", records=_rows(rows, key_ids, days), columns=COLUMNS)
        await conn.execute(HOURLY_FILL)
        for fill in _daily_fills():
            await conn.execute(fill)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a gateway database URL (default: build a synthetic SQLite one)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="requests in the synthetic database")
    parser.add_argument("--fill", action="store_true", help="fill the empty --db with synthetic requests first")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    with tempfile.TemporaryDirectory(prefix="ccgate-dashboard-bench-") as folder:
        url = args.db
        if url is None or args.fill:
            url = url or f"sqlite://{Path(folder) / 'gateway.db'}"
            started = time.perf_counter()
            asyncio.run(make_database(url, args.rows))
            print(f"built {args.rows:,} requests in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        timings = asyncio.run(time_pages(url))
    worst = max(timings.values())
    for name, ms in sorted(timings.items(), key=lambda item: -item[1]):
        print(f"{name:24} {ms:8.1f} ms")
    print(f"slowest {worst:.1f} ms (target {TARGET_MS:.0f} ms): {'ok' if worst <= TARGET_MS else 'OVER'}")
    return 0 if worst <= TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
