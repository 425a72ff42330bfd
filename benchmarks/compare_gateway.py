"""The org gateway's added latency (and throughput) of two builds side by side, as compare.py does for sidecars.

    .venv/bin/python benchmarks/compare_gateway.py REV [REV] [--requests N] [--throughput-rounds N] [--postgres]

A REV is a git revision or `.` (the working tree; the second defaults to it). Each build serves its own gateway
database (SQLite, or with `--postgres` also PostgreSQL) holding bench.py's org: a key budget, a team budget and a
team rate limit. Requests go to the mock upstream directly and through each gateway, one at a time, the order
rotating every request, so drift hits all alike; added = a gateway's percentile minus the direct one's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from bench import (
    ANTHROPIC_MODEL,
    GATEWAY_KEY_HEADER,
    PY,
    Server,
    Target,
    clean_env,
    encode,
    fresh_postgres_database,
    gateway_org,
    messages_body,
    percentile,
    start_mock,
    start_postgres,
    throughput_run,
    warm_bytecode,
)
from compare import CONCURRENCY, THROUGHPUT_SECONDS, source_tree

HEADERS = {"content-type": "application/json", "anthropic-version": "2023-06-01"}


async def gateway(name: str, tree: Path, db_url: str, work: Path, upstream: str) -> tuple[Server, dict[str, str]]:
    key = await gateway_org(db_url)
    home = work / name
    home.mkdir()
    env = clean_env(
        home, CCGATE_ANTHROPIC_BASE_URL=upstream, CCGATE_ANTHROPIC_API_KEY="sk-ant-bench-dummy", PYTHONPATH=str(tree)
    )
    warm_bytecode(env)
    argv = [PY, "-m", "ccgate.gateway", "--db", db_url, "--port", "0", "--port-file", str(home / "port")]
    server = Server(name, argv, env, home / "log")
    server.wait_port(home / "port")
    return server, {**HEADERS, GATEWAY_KEY_HEADER: key}


async def measure(
    trees: list[Path], requests: int, work: Path, rounds: int, postgres: bool
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    servers: list[Server] = []
    cluster = None
    try:
        mock = start_mock(work / "mock", servers)
        body = encode(messages_body(ANTHROPIC_MODEL))
        targets = [Target("direct", mock.url + "/v1/messages", body, {**HEADERS, "x-api-key": "x"}, b"")]
        backends = ["sqlite"]
        pg_url = None
        if postgres:
            pg_url, cluster = start_postgres()
            if pg_url is not None:
                backends.append("postgresql")
        for backend in backends:
            for index, tree in enumerate(trees):
                name = f"{backend}-{index}"
                if backend == "sqlite":
                    db_url = f"sqlite://{work / (name + '.db')}"
                else:
                    assert pg_url is not None
                    db_url = await fresh_postgres_database(pg_url, f"ccgate_cmp_{index}")
                server, headers = await gateway(name, tree, db_url, work, mock.url)
                servers.append(server)
                targets.append(Target(name, server.url + "/v1/messages", body, headers, b""))
        latency: dict[str, list[float]] = {t.name: [] for t in targets}
        rates: dict[str, list[float]] = {t.name: [] for t in targets[1:]}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one(target: Target) -> float:
                began = time.perf_counter()
                async with session.post(target.url, data=target.body, headers=target.headers) as reply:
                    async for _ in reply.content.iter_any():
                        pass
                    if reply.status != 200:
                        raise RuntimeError(f"{target.name}: HTTP {reply.status}")
                return time.perf_counter() - began

            for _ in range(max(10, requests // 10)):
                for target in targets:
                    await one(target)
            for n in range(requests):
                shift = n % len(targets)
                for target in [*targets[shift:], *targets[:shift]]:
                    latency[target.name].append(await one(target))
            for round_no in range(rounds):
                order = targets[1:] if round_no % 2 == 0 else list(reversed(targets[1:]))
                for target in order:
                    count, elapsed = await throughput_run(session, target, CONCURRENCY, THROUGHPUT_SECONDS)
                    rates[target.name].append(count / elapsed)
        return latency, rates
    except Exception:
        for server in servers:  # what the failing build said, before its folder goes
            tail = server.log_path.read_text(errors="replace").strip().splitlines()[-20:] if server.log_path else []
            if tail:
                print(f"--- {server.log_path.parent.name}: last lines of its log", *tail, sep="\n")
        raise
    finally:
        for server in reversed(servers):
            server.stop()
        if cluster is not None:
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revs", nargs="+", metavar="REV", help="git revisions, or . for the working tree")
    parser.add_argument("--requests", type=int, default=1000, help="per target (default 1000)")
    parser.add_argument("--throughput-rounds", type=int, default=0, help="c=32 rounds per gateway (default 0)")
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL")
    args = parser.parse_args(argv)
    revs = args.revs if len(args.revs) > 1 else [args.revs[0], "."]
    with tempfile.TemporaryDirectory(prefix="ccgate-compare-gw-") as tmp:
        trees = [source_tree(rev, Path(tmp) / f"tree-{i}") for i, rev in enumerate(revs)]
        work = Path(tmp) / "run"
        work.mkdir()
        latency, rates = asyncio.run(measure(trees, args.requests, work, args.throughput_rounds, args.postgres))
    direct = latency.pop("direct")
    d50, d99 = statistics.median(direct) * 1000, percentile(direct, 99) * 1000
    print(f"full-response latency, ms, {args.requests} requests per target; direct p50 {d50:.3f} p99 {d99:.3f}")
    for name, values in latency.items():
        backend, index = name.rsplit("-", 1)
        p50, p99 = statistics.median(values) * 1000, percentile(values, 99) * 1000
        line = f"  {backend:<10} {revs[int(index)]:<12} added p50 {p50 - d50:6.3f}   added p99 {p99 - d99:7.3f}"
        if rates[name]:
            line += f"   c={CONCURRENCY} median {statistics.median(rates[name]):7.1f} req/s"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
