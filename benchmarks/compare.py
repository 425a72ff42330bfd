"""Latency (and throughput) of two builds side by side: both sidecars run at once and requests alternate.

    .venv/bin/python benchmarks/compare.py REV [REV] [--requests N] [--throughput-rounds N]

A REV is a git revision (its `src/` is exported to a temporary directory) or `.` for the working tree; the
second defaults to `.`. Full runs of `bench.py` on this VM differ by more than most changes do, because the
machine's speed drifts between runs; here both builds see the same drift, so small differences show. Both use
the same mock upstream (21 Anthropic events, or 200 OpenAI chunks through a translated haiku tier).
With `--throughput-rounds N`, N rounds of `bench.py`'s c=32 load (3 s per build, the builds back to back in
alternating order) follow on the Anthropic route; reported per build: requests/s and sidecar CPU per request,
and the median of the per-round ratios to the first build.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import aiohttp
from bench import (
    ANTHROPIC_MODEL,
    PY,
    ROOT,
    TRANSLATED_MODEL,
    Server,
    Target,
    clean_env,
    cpu_seconds,
    encode,
    messages_body,
    percentile,
    sidecar_config,
    start_mock,
    throughput_run,
    warm_bytecode,
)

ROUTES = {"anthropic": ANTHROPIC_MODEL, "translated": TRANSLATED_MODEL}
CONCURRENCY = 32
THROUGHPUT_SECONDS = 3.0


@dataclass(slots=True)
class Samples:
    latency: dict[tuple[int, str], list[float]]
    rates: dict[int, list[float]] = field(default_factory=dict)  # requests/s per throughput round, per build
    cpu: dict[int, list[float]] = field(default_factory=dict)  # sidecar CPU seconds per round, per build
    counts: dict[int, list[int]] = field(default_factory=dict)  # requests per round, per build


def source_tree(rev: str, into: Path) -> Path:
    """The `src` directory of `rev` (exported with git archive), or the working tree's for `.`."""
    if rev == ".":
        return ROOT / "src"
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)  # noqa: S202 - our own repository's archive
    return into / "src"


async def measure(trees: list[Path], requests: int, work: Path, throughput_rounds: int = 0) -> Samples:
    from ccgate.local.paths import resolve_paths
    from ccgate.sidecar.process import TOKEN_HEADER, ensure_token

    servers: list[Server] = []
    try:
        mock = start_mock(work / "mock", servers)
        sidecars: list[tuple[Server, dict[str, str]]] = []
        for index, tree in enumerate(trees):
            home = work / f"sidecar-{index}"
            env = clean_env(home, CCGATE_ANTHROPIC_BASE_URL=mock.url, CCGATE_MOCKAI_API_KEY="x", PYTHONPATH=str(tree))
            warm_bytecode(env)
            paths = resolve_paths(env).ensure()
            paths.config_file.write_text(sidecar_config(mock.url + "/v1"))
            headers = {
                "content-type": "application/json",
                "anthropic-version": "2023-06-01",
                "x-api-key": "sk-ant-bench-dummy",
                TOKEN_HEADER: ensure_token(paths),
            }
            sidecar = Server(f"sidecar {index}", [PY, "-m", "ccgate.sidecar", "--port", "0"], env, home / "log")
            servers.append(sidecar)
            sidecar.wait_port(paths.port_file, pid_file=paths.pid_file)
            sidecars.append((sidecar, headers))
        bodies = {route: encode(messages_body(model)) for route, model in ROUTES.items()}
        samples: dict[tuple[int, str], list[float]] = {(i, r): [] for i in range(len(trees)) for r in ROUTES}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one(index: int, route: str) -> float:
                sidecar, headers = sidecars[index]
                began = time.perf_counter()
                async with session.post(sidecar.url + "/v1/messages", data=bodies[route], headers=headers) as reply:
                    async for _ in reply.content.iter_any():
                        pass
                    if reply.status != 200:
                        raise RuntimeError(f"{sidecar.name}: HTTP {reply.status}: {sidecar.tail()}")
                return time.perf_counter() - began

            for _ in range(max(10, requests // 10)):  # warm-up
                for index in range(len(trees)):
                    for route in ROUTES:
                        await one(index, route)
            for n in range(requests):
                order = list(range(len(trees)))
                if n % 2:
                    order.reverse()
                for route in ROUTES:
                    for index in order:
                        samples[(index, route)].append(await one(index, route))
            result = Samples(samples)
            if throughput_rounds:
                targets = [
                    Target(sidecar.name, sidecar.url + "/v1/messages", bodies["anthropic"], headers, b"message_stop")
                    for sidecar, headers in sidecars
                ]
                await throughput(session, targets, [sidecar.pid for sidecar, _ in sidecars], throughput_rounds, result)
        return result
    finally:
        for server in reversed(servers):
            server.stop()


async def throughput(
    session: aiohttp.ClientSession, targets: list[Target], pids: list[int], rounds: int, into: Samples
) -> None:
    """c=32 rounds, the builds back to back in alternating order, so outside load hits both alike."""
    for target in targets:  # warm the connection pools at this concurrency
        await throughput_run(session, target, CONCURRENCY, 0.3)
    for round_no in range(rounds):
        order = list(range(len(targets)))
        if round_no % 2:
            order.reverse()
        for index in order:
            before = cpu_seconds(pids[index])
            count, elapsed = await throughput_run(session, targets[index], CONCURRENCY, THROUGHPUT_SECONDS)
            into.cpu.setdefault(index, []).append(cpu_seconds(pids[index]) - before)
            into.rates.setdefault(index, []).append(count / elapsed)
            into.counts.setdefault(index, []).append(count)


def print_throughput(revs: list[str], samples: Samples) -> None:
    rounds = len(samples.rates.get(0, []))
    print(f"throughput at c={CONCURRENCY}, anthropic route, {rounds} rounds of {THROUGHPUT_SECONDS:g} s per build")
    for index, rev in enumerate(revs):
        rates = samples.rates[index]
        cpu_ms = 1000 * sum(samples.cpu[index]) / max(1, sum(samples.counts[index]))
        line = f"  {rev:<16} median {statistics.median(rates):7.1f} req/s   sidecar CPU {cpu_ms:6.3f} ms/request"
        if index:
            ratios = [mine / first for mine, first in zip(rates, samples.rates[0], strict=True)]
            listed = ", ".join(f"{ratio:.0%}" for ratio in sorted(ratios))
            line += f"   vs {revs[0]}: median {statistics.median(ratios):.1%} ({listed})"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revs", nargs="+", metavar="REV", help="git revisions, or . for the working tree")
    parser.add_argument("--requests", type=int, default=1500, help="per build and route (default 1500)")
    parser.add_argument(
        "--throughput-rounds", type=int, default=0, help="also compare throughput at c=32 in N rounds (default 0)"
    )
    args = parser.parse_args(argv)
    revs = args.revs if len(args.revs) > 1 else [args.revs[0], "."]
    with tempfile.TemporaryDirectory(prefix="ccgate-compare-") as tmp:
        trees = [source_tree(rev, Path(tmp) / f"tree-{i}") for i, rev in enumerate(revs)]
        work = Path(tmp) / "run"
        work.mkdir()
        samples = asyncio.run(measure(trees, args.requests, work, args.throughput_rounds))
    print(f"full-response latency, ms, {args.requests} requests per build and route, builds alternating")
    for route in ROUTES:
        for index, rev in enumerate(revs):
            values = samples.latency[(index, route)]
            p50, p99 = statistics.median(values) * 1000, percentile(values, 99) * 1000
            print(f"  {route:<10} {rev:<16} p50 {p50:7.3f}   p99 {p99:7.3f}")
    if args.throughput_rounds:
        print_throughput(revs, samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
