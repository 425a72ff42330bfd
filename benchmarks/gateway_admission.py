"""How far one database goes before the shared team budget row serialises admission: reserve + settle per second.

    .venv/bin/python benchmarks/gateway_admission.py [--db URL] [--seconds 3] [--instances N]

Every admission of a team locks the team's (and customer's) budget rows, so admissions of one team run one at a
time in the database whatever the number of instances -- on PostgreSQL one batch at a time: the admissions an
instance has waiting while its calls are in flight go together in one transaction (`ccgate_reserve_many_v1`).
This measures that ceiling directly on the store: N concurrent loops of one store, each doing what a request does
to its budgets -- the rate check with the reservation (one round trip), shrink, settle (one round trip, here on
its own; the gateway writes it with the request's ledger row) -- against one key, team and customer budget and a
team rate limit.

With --leases each loop goes through the gateway's own admission (`GatewayAdmission`, one per instance) and ledger
writer, as the data plane does: requests admitted from budget leases, each settle written with a final ledger row
in the writer's batches. That is what a request costs the database now; the team's rows are taken once per lease
(~64 requests) and once per ledger batch.
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


async def run_leased(url: str, concurrency: int, seconds: float, instances: int = 1) -> float:
    """Requests per second through `GatewayAdmission` and `GatewayLedger`, `instances` of each (one store each)."""
    from datetime import UTC, datetime

    from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage, new_request_id
    from ccgate.gateway.admission import GatewayAdmission
    from ccgate.gateway.ledger import GatewayLedger, Owner
    from ccgate.proxy.engine import ClientMeta
    from ccgate.storage.gateway import GatewayStore

    key_id, team_id, customer_id = IDS[url]
    per_store = max(1, concurrency // instances)
    ttl = timedelta(seconds=30)
    gateways = []
    for index in range(instances):
        store = await GatewayStore.open(url, migrate_now=False, max_connections=max(2, per_store))
        ledger = GatewayLedger(store, f"bench-{index}")
        ledger.start()
        admission = GatewayAdmission(
            store, f"bench-{index}", ttl=ttl, carrier=ledger, rate_limited=lambda: frozenset({team_id})
        )
        gateways.append((store, ledger, admission))
    owner = Owner(key_id, team_id, customer_id)
    done = 0
    deadline = time.perf_counter() + seconds

    async def loop(ledger: GatewayLedger, admission: GatewayAdmission) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            meta = ClientMeta(
                extra={"key_id": key_id, "team_id": team_id, "customer_id": customer_id}, request_id=new_request_id()
            )
            hold = await admission.admit(meta, reserve_nanos=2_000_000_000, model="claude-sonnet-4-5")
            admission.shrink(hold, 1_000_000_000)
            await asyncio.sleep(0)  # the reply streams
            now = datetime.now(UTC)
            assert meta.request_id is not None
            record = RequestRecord(
                id=meta.request_id,
                started_at=now,
                ended_at=now,
                requested_model="claude-sonnet-4-5",
                provider="anthropic",
                status=RequestStatus.OK,
                usage=Usage(input_tokens=1_000, output_tokens=100),
                cost=Cost(100_000_000, PriceQuality.PRICED),
            )
            admission.settle(hold, 100_000_000)
            ledger.enqueue(owner, record)
            done += 1
            if ledger.unsaved > 2_000:  # the database is behind: wait for it, as requests would queue
                await ledger.flush()

    began = time.perf_counter()
    await asyncio.gather(*(loop(*gateways[index % instances][1:]) for index in range(concurrency)))
    for _, ledger, _ in gateways:
        await ledger.flush(60)
    elapsed = time.perf_counter() - began
    for store, ledger, admission in gateways:
        await admission.close()
        await ledger.close()
        await store.close()
    return done / elapsed


IDS: dict[str, tuple[str, str, str]] = {}


async def measure(url: str, seconds: float, instances: int = 1, leases: bool = False) -> None:
    IDS[url] = await setup(url)
    for concurrency in (1, 2, 4, 8, 16, 32):
        if concurrency < instances:
            continue
        rate = await (run_leased if leases else run)(url, concurrency, seconds, instances)
        what = "requests/s (leases, settles with rows)" if leases else "admissions/s"
        print(
            f"{url.split(':')[0]:<10} {instances} instance(s), concurrency {concurrency:>2}: {rate:7.1f} {what}",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--instances", type=int, default=1, help="spread the loops over this many stores (instances); default 1"
    )
    parser.add_argument("--leases", action="store_true", help="through GatewayAdmission and the ledger writer")
    args = parser.parse_args()
    if args.db:
        asyncio.run(measure(args.db, args.seconds, args.instances, args.leases))
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

        asyncio.run(measure(asyncio.run(database()), args.seconds, args.instances, args.leases))
        with tempfile.TemporaryDirectory() as folder:
            asyncio.run(measure(f"sqlite://{folder}/gateway.db", args.seconds, args.instances, args.leases))
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
