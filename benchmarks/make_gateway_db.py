"""Generate a gateway database the size of a real org's for benchmarking reports and the dashboard.

    .venv/bin/python benchmarks/make_gateway_db.py --db sqlite:///tmp/gw.db --rows 1000000
    .venv/bin/python benchmarks/make_gateway_db.py --db postgresql://postgres@127.0.0.1:5432/bench --rows 1000000

An org of 5 customers, 20 teams and 200 developers' keys, with budgets at every level (customer, team, key,
provider), rate limits and the audit trail their creation leaves; then `rows` finished request rows over
`days` days ending now -- working hours heavier than nights, weekdays than weekends, each developer with
their own projects, models and sessions -- written in bulk (one transaction of multi-row INSERTs on SQLite,
COPY on PostgreSQL), and `request_hourly` and `request_daily` computed from them. Deterministic for a given
--seed (the times follow the clock). `gateway_db(...)` caches a SQLite file per day under the benchmark cache dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ccgate.core.records import to_iso
from ccgate.storage.gateway import GatewayStore

CUSTOMERS = 5
TEAMS_PER_CUSTOMER = 4
KEYS_PER_TEAM = 10
ADMIN = "bench-admin"
# requested model, provider, routed model, input and output nano-dollars per token
MODELS = (
    ("claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5", 3_000, 15_000),
    ("claude-opus-4-1", "anthropic", "claude-opus-4-1", 15_000, 75_000),
    ("claude-haiku-4-5", "groq", "llama-3.3-70b-versatile", 590, 790),
    ("claude-haiku-4-5", "anthropic", "claude-haiku-4-5", 1_000, 5_000),
    ("claude-sonnet-4-5", "openrouter", "qwen/qwen3-coder", 200, 800),
)
# weight of each UTC hour of the day: an org spread over Europe and the Americas
HOUR_WEIGHTS = [1, 1, 1, 1, 1, 2, 4, 8, 12, 14, 14, 13, 12, 13, 15, 16, 15, 13, 10, 8, 6, 4, 2, 1]
COLUMNS = (
    "key_id",
    "id",
    "team_id",
    "customer_id",
    "source",
    "origin",
    "started_at",
    "ended_at",
    "session_id",
    "project",
    "requested_model",
    "provider",
    "routed_model",
    "stream",
    "status",
    "http_status",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cost_nanos",
    "price_quality",
    "ttfb_ms",
    "latency_ms",
    "tags",
    "instance_id",
    "received_at",
    "charged_nanos",
    "charged_by",
)


@dataclass(frozen=True, slots=True)
class Developer:
    key_id: str
    team_id: str
    customer_id: str
    projects: tuple[str, ...]
    models: tuple[int, ...]  # indexes into MODELS, the first one most used
    activity: float  # how busy, relative


async def _make_org(store: GatewayStore, rng: random.Random) -> list[Developer]:
    """The org through the store (so budgets, limits and the audit log are what the admin API would leave)."""
    await store.put_provider("anthropic", kind="anthropic", actor=ADMIN)
    await store.put_provider("groq", kind="openai", base_url="https://api.groq.com/openai/v1", actor=ADMIN)
    developers: list[Developer] = []
    for c in range(CUSTOMERS):
        customer = await store.create_customer(f"customer-{c}", actor=ADMIN)
        for t in range(TEAMS_PER_CUSTOMER):
            team = await store.create_team(f"team-{c}-{t}", customer=customer.name, actor=ADMIN)
            projects = [f"/srv/{team.name}/repo-{n}" for n in range(4)]
            for k in range(KEYS_PER_TEAM):
                created = await store.create_key(team=team.name, name=f"dev-{c}-{t}-{k}", actor=ADMIN)
                first = rng.choice(range(len(MODELS)))
                models = (first, *rng.sample(range(len(MODELS)), 2))
                developers.append(
                    Developer(
                        created.key.id,
                        team.id,
                        customer.id,
                        tuple(rng.sample(projects, rng.randint(1, 2))),
                        models,
                        rng.uniform(0.2, 2.0),
                    )
                )
    return developers


async def _budgets(store: GatewayStore) -> None:
    """Budgets and limits at each level (made before the rows: `_spend` then fills their current windows)."""
    for c in range(CUSTOMERS):
        await store.create_budget(
            level="customer", target=f"customer-{c}", limit_nanos=50_000 * 10**9, period="1mo", actor=ADMIN
        )
        for t in range(TEAMS_PER_CUSTOMER):
            team = f"team-{c}-{t}"
            await store.create_budget(level="team", target=team, limit_nanos=8_000 * 10**9, period="1mo", actor=ADMIN)
            await store.create_budget(level="team", target=team, limit_nanos=600 * 10**9, period="1d", actor=ADMIN)
            await store.set_rate_limit(level="team", target=team, rpm=600, tpm=5_000_000, actor=ADMIN)
            for k in range(KEYS_PER_TEAM):
                key = f"dev-{c}-{t}-{k}"
                await store.create_budget(level="key", target=key, limit_nanos=80 * 10**9, period="1d", actor=ADMIN)
                if k % 3 == 0:
                    await store.set_rate_limit(level="key", target=key, rpm=60, tpm=1_000_000, actor=ADMIN)
    await store.create_budget(
        level="provider", target="anthropic", limit_nanos=200_000 * 10**9, period="1mo", actor=ADMIN
    )


def _times(rng: random.Random, rows: int, days: int, end: datetime) -> list[int]:
    """`rows` start times (microseconds since the epoch) over the `days` days before `end`, in order: weekdays
    and working hours heavier."""
    end_us = int(end.timestamp() * 1_000_000)
    low_us = end_us - days * 86_400_000_000
    first_day = (end - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    first_us = int(first_day.timestamp() * 1_000_000)
    day_weights = [1 if (first_day + timedelta(days=d)).weekday() >= 5 else 5 for d in range(days + 1)]
    chosen_days = rng.choices(range(days + 1), weights=day_weights, k=rows)
    hours = rng.choices(range(24), weights=HOUR_WEIGHTS, k=rows)
    times = []
    for day, hour in zip(chosen_days, hours, strict=True):
        moment = first_us + (day * 24 + hour) * 3_600_000_000 + rng.randrange(3_600_000_000)
        if not low_us <= moment < end_us:  # the first and the last day are partial
            moment = rng.randrange(low_us, end_us)
        times.append(moment)
    times.sort()
    return times


class _Iso:
    """Epoch microseconds -> the ledger's fixed-width ISO text, fast (each minute's prefix is made once)."""

    def __init__(self) -> None:
        self.prefixes: dict[int, str] = {}

    def __call__(self, micros: int) -> str:
        minute, rest = divmod(micros, 60_000_000)
        prefix = self.prefixes.get(minute)
        if prefix is None:
            prefix = self.prefixes[minute] = datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%dT%H:%M:")
        second, micro = divmod(rest, 1_000_000)
        return f"{prefix}{second:02d}.{micro:06d}Z"


@dataclass
class Sums:
    """What the generated rows add up to, gathered as they are made: `request_hourly`, and the spend in the
    budgets' current windows (calendar month and day, UTC) per (level, target id, period)."""

    hourly: dict[tuple[str, ...], list[int]]
    spend: dict[tuple[str, str, str], int]


def generate(
    developers: list[Developer], rows: int, days: int, seed: int, end: datetime, sums_out: Sums
) -> Iterator[tuple[Any, ...]]:
    """The rows, oldest first, as `COLUMNS` values. Row ids are time-ordered, as the gateway's UUIDv7 are."""
    hourly, spend = sums_out.hourly, sums_out.spend
    day_start = end.replace(hour=0, minute=0, second=0, microsecond=0)
    month_us = int(day_start.replace(day=1).timestamp() * 1_000_000)
    day_us = int(day_start.timestamp() * 1_000_000)
    rng = random.Random(seed + 1)
    weights = [d.activity for d in developers]
    sessions: dict[str, tuple[str, str, int]] = {}  # key id -> (session id, project, requests left)
    owners = rng.choices(developers, weights=weights, k=rows)
    tag_texts = [json.dumps({"ticket": f"ENG-{n}"}) for n in range(400)]
    iso = ended_iso = _Iso()
    random_, getrandbits = rng.random, rng.getrandbits

    def randint(low: int, high: int) -> int:  # random.randint's speed is most of the generating time
        return low + int(random_() * (high - low + 1))

    for index, (started, dev) in enumerate(zip(_times(rng, rows, days, end), owners, strict=True)):
        session_id, project, left = sessions.get(dev.key_id, ("", "", 0))
        if left <= 0:
            session_id, project, left = f"{getrandbits(128):032x}", rng.choice(dev.projects), randint(5, 120)
        sessions[dev.key_id] = (session_id, project, left - 1)
        requested, provider, routed, input_rate, output_rate = MODELS[
            dev.models[0] if random_() < 0.7 else dev.models[randint(0, 2)]
        ]
        roll = random_()
        if roll < 0.97:
            status, http = ("ok", 200) if roll < 0.96 else ("interrupted", 200)
            inp, out, read, write = randint(1, 3_000), randint(1, 2_500), randint(0, 120_000), randint(0, 6_000)
        else:
            status, http, inp, out, read, write = "error", 529, 0, 0, 0, 0
        cost = (inp * input_rate + out * output_rate + read * input_rate // 10 + write * input_rate * 5 // 4) // 1000
        ingested = random_() < 0.15
        latency_ms = randint(400, 90_000)
        started_text = iso(started)
        group = (started_text[:13], dev.key_id, dev.team_id, dev.customer_id, project, requested, provider)
        sums = hourly.get(group)
        if sums is None:
            sums = hourly[group] = [0] * 9
        sums[0] += 1
        sums[1] += inp
        sums[2] += out
        sums[3] += read
        sums[4] += write
        sums[5] += cost
        if started >= month_us and cost:
            for target in (("customer", dev.customer_id, "1mo"), ("team", dev.team_id, "1mo")):
                spend[target] = spend.get(target, 0) + cost
            if provider == "anthropic" and not ingested:
                spend["provider", "anthropic", "1mo"] = spend.get(("provider", "anthropic", "1mo"), 0) + cost
            if started >= day_us:
                for target in (("team", dev.team_id, "1d"), ("key", dev.key_id, "1d")):
                    spend[target] = spend.get(target, 0) + cost
        ended_text = ended_iso(started + latency_ms * 1000)
        yield (
            dev.key_id,
            f"{started:014x}{getrandbits(72):018x}",
            dev.team_id,
            dev.customer_id,
            "ingested" if ingested else "proxied",
            "sidecar",
            started_text,
            ended_text,
            session_id,
            project,
            requested,
            provider,
            routed,
            1,
            status,
            http,
            inp,
            out,
            read,
            write,
            cost,
            "priced",
            float(randint(200, 2_000)),
            float(latency_ms),
            tag_texts[randint(0, 399)] if random_() < 0.3 else "{}",
            None if ingested else f"gw-{index % 3}",
            ended_text,
            cost,
            "ingest" if ingested else "settle",
        )


_HOURLY_COLUMNS = (
    "hour, key_id, team_id, customer_id, project, model, provider, requests, input_tokens, output_tokens, "
    "cache_read_tokens, cache_write_tokens, cost_nanos, unpriced_requests, estimated_requests, imported_requests"
)
# the day roll-ups from the hours, as migration 0007 backfills them
_SUMS = (
    "sum(requests), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens), "
    "sum(cost_nanos), sum(unpriced_requests), sum(estimated_requests), sum(imported_requests)"
)
_SUM_NAMES = _HOURLY_COLUMNS.split("provider, ")[1]
DAILY_FILLS = (
    f"INSERT INTO request_daily (day, key_id, team_id, customer_id, project, model, provider, {_SUM_NAMES}) "  # noqa: S608
    f"SELECT substr(hour, 1, 10), key_id, team_id, customer_id, project, model, provider, {_SUMS} "
    "FROM request_hourly GROUP BY substr(hour, 1, 10), key_id, team_id, customer_id, project, model, provider",
    f"INSERT INTO request_daily_team_model (day, team_id, model, {_SUM_NAMES}) "  # noqa: S608
    f"SELECT substr(hour, 1, 10), team_id, model, {_SUMS} FROM request_hourly "
    "GROUP BY substr(hour, 1, 10), team_id, model",
)
_CHUNK_ROWS = 30  # rows per SQLite statement: 30 x 29 values, under SQLite's variable limit
_BATCH = 30 * 1000  # rows handed from the generating thread to the writer at a time
_DONE: list[tuple[Any, ...]] = []


def _produce(rows: Iterator[tuple[Any, ...]], out: queue.Queue[list[tuple[Any, ...]]]) -> None:
    """Generate on a thread while the writer writes (sqlite3 and COPY give the GIL up while they work)."""
    try:
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == _BATCH:
                out.put(batch)
                batch = []
        if batch:
            out.put(batch)
    finally:
        out.put(_DONE)


def _batches(rows: Iterator[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    handoff: queue.Queue[list[tuple[Any, ...]]] = queue.Queue(maxsize=4)
    thread = threading.Thread(target=_produce, args=(rows, handoff), daemon=True)
    thread.start()
    while (batch := handoff.get()) is not _DONE:
        yield batch
    thread.join()


def _hourly_rows(hourly: dict[tuple[str, ...], list[int]]) -> list[tuple[Any, ...]]:
    return [(*group, *sums) for group, sums in sorted(hourly.items())]


def _insert_sqlite(path: str, rows: Iterator[tuple[Any, ...]], hourly: dict[tuple[str, ...], list[int]]) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=OFF")  # a fresh file: nothing to roll back to; WAL again at the end
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")
        marks = "(" + ", ".join("?" for _ in COLUMNS) + ")"
        head = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES "  # noqa: S608 - fixed text
        many = head + ", ".join(marks for _ in range(_CHUNK_ROWS))
        conn.execute("BEGIN")
        for batch in _batches(rows):
            whole = len(batch) - len(batch) % _CHUNK_ROWS
            for start in range(0, whole, _CHUNK_ROWS):
                conn.execute(many, [value for row in batch[start : start + _CHUNK_ROWS] for value in row])
            conn.executemany(head + marks, batch[whole:])
        conn.executemany(
            f"INSERT INTO request_hourly ({_HOURLY_COLUMNS}) VALUES ({', '.join('?' * 16)})",  # noqa: S608
            _hourly_rows(hourly),
        )
        for fill in DAILY_FILLS:
            conn.execute(fill)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


async def _insert_postgres(url: str, rows: Iterator[tuple[Any, ...]], hourly: dict[tuple[str, ...], list[int]]) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        loop = asyncio.get_running_loop()
        batches = _batches(rows)
        while (batch := await loop.run_in_executor(None, next, batches, None)) is not None:
            await conn.copy_records_to_table("requests", records=batch, columns=COLUMNS)
        await conn.copy_records_to_table(
            "request_hourly", records=_hourly_rows(hourly), columns=[c.strip() for c in _HOURLY_COLUMNS.split(",")]
        )
        for fill in DAILY_FILLS:
            await conn.execute(fill)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def _spend(store: GatewayStore, spend: dict[tuple[str, str, str], int], now: datetime) -> None:
    """The generated rows' cost in each budget's current window, as admission would have charged it."""
    from ccgate.storage.gateway.admission import current_window

    providers = {p.name: p.id for p in await store.list_providers()}
    values = []
    for budget in await store.list_budgets():
        target = (
            "anthropic"
            if budget.level.value == "provider" and budget.target_id == providers.get("anthropic")
            else budget.target_id
        )
        nanos = spend.get((budget.level.value, target, budget.period.text), 0)
        if nanos:
            values.append((budget.id, to_iso(current_window(budget, now)[2]), nanos))
    async with store.db.transaction() as conn:
        await conn.executemany(
            "INSERT INTO budget_spend (budget_id, bucket_start, spent_nanos) VALUES (?, ?, ?)", values
        )


def _log(what: str, began: float) -> None:
    print(f"  {what}: {time.perf_counter() - began:.1f} s", file=sys.stderr)


async def _build(db_url: str, rows: int, days: int, seed: int) -> None:
    began = time.perf_counter()
    rng = random.Random(seed)
    end = datetime.now(UTC)
    store = await GatewayStore.open(db_url)
    try:
        developers = await _make_org(store, rng)
        await _budgets(store)
    finally:
        await store.close()
    _log("org", began)
    sums = Sums({}, {})
    hourly = sums.hourly
    generated = generate(developers, rows, days, seed, end, sums)
    if db_url.startswith("sqlite:"):
        path = db_url.removeprefix("sqlite://")
        await asyncio.get_running_loop().run_in_executor(None, _insert_sqlite, path, generated, hourly)
    else:
        await _insert_postgres(db_url, generated, hourly)
    _log("rows and hours", began)
    store = await GatewayStore.open(db_url)
    try:
        await _spend(store, sums.spend, end)
    finally:
        await store.close()
    _log("budget spend", began)


def build(db_url: str, rows: int, *, days: int = 90, seed: int = 0) -> None:
    """Fill an empty gateway database (`sqlite:///FILE` or `postgresql://...`) with an org and `rows` rows."""
    asyncio.run(_build(db_url, rows, days, seed))


def gateway_db(rows: int, cache_dir: Path, *, days: int = 90) -> str:
    """A `sqlite://` URL of a `rows`-row gateway database ending today: built once per day and schema (its newest
    migration) under `cache_dir`."""
    from ccgate.storage.gateway.migrate import load_migrations

    today = datetime.now(UTC).strftime("%Y%m%d")
    schema = load_migrations()[-1].name[:4]
    home = cache_dir / f"gateway-{rows}-{days}d-{today}-m{schema}"
    if (home / "complete").exists():
        return f"sqlite://{home / 'gateway.db'}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f"gateway-{rows}-{days}d-*"):
        shutil.rmtree(stale, ignore_errors=True)
    building = Path(tempfile.mkdtemp(prefix=f"building-gateway-{rows}-", dir=cache_dir))
    build(f"sqlite://{building / 'gateway.db'}", rows, days=days)
    (building / "complete").write_text("ok\n")
    building.rename(home)
    return f"sqlite://{home / 'gateway.db'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="sqlite:///FILE or postgresql://... (an empty database)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    build(args.db, args.rows, days=args.days, seed=args.seed)
    print(f"{args.rows:,} rows in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
