"""Server time of `gateway report --by team|model|day|key` over the last 30 days on the 1M-request gateway database.

    .venv/bin/python benchmarks/gateway_reports.py --db sqlite:///tmp/gw.db     # an existing generated database
    .venv/bin/python benchmarks/gateway_reports.py --rows 1000000                # build (cached) SQLite + PostgreSQL

What is timed is the store's `report` plus its JSON (what the admin API's `/report` handler does), median of
`runs`, in one process: the database's work, not HTTP. `bench.py` runs it as its "gateway reports" phase.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

HERE = Path(__file__).resolve().parent
GROUPINGS = ("team", "model", "day", "key")
TARGET_MS = 300.0


async def time_reports(db_url: str, runs: int) -> dict[str, float]:
    """Median milliseconds per grouping (day in an org zone, New York) over the 30 days before now."""
    from ccgate.storage.gateway import GatewayStore
    from ccgate.storage.reports import report_to_json

    store = await GatewayStore.open(db_url, migrate_now=False)
    try:
        until = datetime.now(UTC)
        since = until - timedelta(days=30)
        timings: dict[str, float] = {}
        for by in GROUPINGS:
            samples = []
            for _ in range(runs + 1):  # the first warms the caches and is dropped
                began = time.perf_counter()
                tz = ZoneInfo("America/New_York") if by == "day" else UTC
                report_to_json(await store.report(since=since, until=until, by=by, tz=tz))
                samples.append((time.perf_counter() - began) * 1000)
            timings[by] = statistics.median(samples[1:])
        return timings
    finally:
        await store.close()


def databases(note: Callable[[str], None], rows: int, cache_dir: Path, pg_url: str | None) -> list[tuple[str, str]]:
    """The `rows`-request gateway database as (backend, URL): SQLite (cached per day and schema), and on
    PostgreSQL (built afresh) when `pg_url` names a server."""
    sys.path.insert(0, str(HERE))
    from make_gateway_db import build, gateway_db

    began = time.perf_counter()
    found = [("sqlite", gateway_db(rows, cache_dir))]
    note(f"gateway database, {rows:,} rows (SQLite, cached per day): ready in {time.perf_counter() - began:.1f} s")
    if pg_url is not None:
        began = time.perf_counter()
        url = asyncio.run(_fresh_database(pg_url))
        build(url, rows)
        note(f"gateway database, {rows:,} rows on PostgreSQL: built in {time.perf_counter() - began:.1f} s (COPY)")
        found.append(("postgresql", url))
    else:
        note("gateway reports and dashboard on PostgreSQL left out: no PostgreSQL server")
    return found


def phase(add: Callable[..., None], rows: int, runs: int, found: list[tuple[str, str]]) -> None:
    """Time the reports on each of `databases(...)` (of `rows` requests)."""
    for backend, url in found:
        for by, value in asyncio.run(time_reports(url, runs)).items():
            add(
                f"gateway_report_{by}_{backend}_ms",
                f"gateway report --by {by}, 30 days, {rows:,}-row DB, {backend} (server, median)",
                value,
                "ms",
                at_most=TARGET_MS,
            )


async def _fresh_database(server: str) -> str:
    import asyncpg

    name = f"ccgate_reports_{os.getpid()}"
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.rpartition("/")[0] + "/" + name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=None, help="time this existing gateway database only")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/ccgate-bench-cache"))
    parser.add_argument("--postgres", default=None, help="a PostgreSQL server URL (else a throwaway cluster)")
    args = parser.parse_args(argv)
    if args.db is not None:
        for by, value in asyncio.run(time_reports(args.db, args.runs)).items():
            print(f"report --by {by}: {value:.1f} ms")
        return 0

    def add(key: str, label: str, value: float, unit: str, **_: Any) -> None:
        print(f"{label}: {value:.1f} {unit}")

    cluster = None
    pg_url = args.postgres
    if pg_url is None:
        sys.path.insert(0, str(HERE.parent / "tests" / "support"))
        from postgres_cluster import start_cluster

        try:
            cluster = start_cluster()
            pg_url = cluster.url
        except RuntimeError as error:
            print(f"no PostgreSQL: {error}", file=sys.stderr)
    try:
        found = databases(lambda text: print(text, file=sys.stderr), args.rows, args.cache_dir, pg_url)
        phase(add, args.rows, args.runs, found)
    finally:
        if cluster is not None:
            cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
