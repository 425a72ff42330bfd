"""How far one database goes before the shared team budget row serialises admission: reserve + settle per second.

    .venv/bin/python benchmarks/gateway_admission.py [--db URL] [--seconds 3] [--instances N]

Every admission of a team locks the team's (and customer's) budget rows, so admissions of one team run one at a
time in the database whatever the number of instances -- on PostgreSQL one batch at a time: the admissions an
instance has waiting while its calls are in flight go together in one transaction (`ccgate_reserve_many_v1`).
This measures that ceiling directly on the store: N concurrent loops of one store, each doing what a request does
to its budgets -- the rate check with the reservation (one round trip), shrink, settle (one round trip, here on
its own; the gateway writes it with the request's ledger row) -- against one key, team and customer budget and a
team rate limit.
Without --db it starts a throwaway PostgreSQL (tests/support/postgres_cluster.py) and also runs SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def setup(url: str) -> tuple[str, str, str]:
    from ccgate.storage.gateway import GatewayStore

    store = await GatewayStore.open(url)
    try:
        customer = await store.create_customer("c")
        team = await store.create_team("t", customer="c")
        key = (await store.create_key(team="t", name="k")).key
        for level, target in (("customer", "c"), ("team", "t"), ("key", "k")):
            await store.create_budget(level=level, target=target, limit_nanos=10**18, period="1d")
        await store.set_rate_limit(level="team", target="t", rpm=10**9, tpm=2 * 10**9)
        return key.id, team.id, customer.id
    finally:
        await store.close()


async def run(url: str, concurrency: int, seconds: float, instances: int = 1) -> float:
    """Admissions per second of `concurrency` loops spread over `instances` stores (each its own pool and
    batcher, as separate gateway instances on one database would be)."""
    from ccgate.storage.gateway import Admitted, GatewayStore

    key_id, team_id, customer_id = IDS[url]
    per_store = max(1, concurrency // instances)
    stores = [
        await GatewayStore.open(url, migrate_now=False, max_connections=max(2, per_store)) for _ in range(instances)
    ]
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop(store: GatewayStore) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            _, result = await store.admit(
                key_id=key_id,
                team_id=team_id,
                customer_id=customer_id,
                provider_id=None,
                bound_nanos=2_000_000_000,
                instance_id="bench",
                ttl=timedelta(seconds=30),
            )
            assert isinstance(result, Admitted)
            await store.shrink(result.reservation, 1_000_000_000)
            await store.settle(result.reservation, 100_000_000)
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(loop(stores[index % instances]) for index in range(concurrency)))
    elapsed = time.perf_counter() - began
    for store in stores:
        await store.close()
    return done / elapsed


IDS: dict[str, tuple[str, str, str]] = {}


async def measure(url: str, seconds: float, instances: int = 1) -> None:
    IDS[url] = await setup(url)
    for concurrency in (1, 2, 4, 8, 16, 32):
        if concurrency < instances:
            continue
        rate = await run(url, concurrency, seconds, instances)
        print(
            f"{url.split(':')[0]:<10} {instances} instance(s), concurrency {concurrency:>2}: {rate:7.1f} admissions/s",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--instances", type=int, default=1, help="spread the loops over this many stores (instances); default 1"
    )
    args = parser.parse_args()
    if args.db:
        asyncio.run(measure(args.db, args.seconds, args.instances))
        return 0
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from postgres_cluster import start_cluster

    cluster = start_cluster()
    try:
        import asyncpg

        async def database() -> str:
            conn = await asyncpg.connect(cluster.url)
            await conn.execute("CREATE DATABASE admission_bench")
            await conn.close()
            return cluster.url.rpartition("/")[0] + "/admission_bench"

        asyncio.run(measure(asyncio.run(database()), args.seconds, args.instances))
        with tempfile.TemporaryDirectory() as folder:
            asyncio.run(measure(f"sqlite://{folder}/gateway.db", args.seconds, args.instances))
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
