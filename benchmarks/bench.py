"""ccgate's speed benchmark: added latency, throughput, memory, CLI start-up and `cost` on a large ledger.

    .venv/bin/python benchmarks/bench.py [--quick] [--json out.json]

Everything runs in one go so the ratios compare like with like on a noisy machine. Each server (the mock
upstream, a minimal aiohttp passthrough, the sidecar) is its own process on 127.0.0.1; the load generator is an
aiohttp client in this process. Latency runs interleave the targets in rounds, so drift hits all of them alike.
See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
PY = sys.executable
MB = 1024 * 1024

ANTHROPIC_MODEL = "claude-sonnet-4-5"  # anthropic tier: passed through verbatim
TRANSLATED_MODEL = "claude-haiku-4-5"  # haiku tier: routed to the OpenAI-kind mock
TRANSLATED_TARGET = "gpt-x"


@dataclass(frozen=True, slots=True)
class Settings:
    latency_requests: int  # per target, at concurrency 1
    latency_rounds: int
    warmup: int
    throughput_seconds: float  # per target and round
    throughput_rounds: int
    concurrency: int
    ledger_rows: int
    help_runs: int
    cost_runs: int
    translate_iterations: int
    transcript_lines: int = 200_000


FULL = Settings(
    latency_requests=2000,
    latency_rounds=10,
    warmup=100,
    throughput_seconds=3.0,
    throughput_rounds=7,
    concurrency=32,
    ledger_rows=1_000_000,
    help_runs=10,
    cost_runs=3,
    translate_iterations=1000,
)
QUICK = Settings(
    latency_requests=100,
    latency_rounds=2,
    warmup=10,
    throughput_seconds=1.0,
    throughput_rounds=1,
    concurrency=32,
    ledger_rows=100_000,
    help_runs=3,
    cost_runs=1,
    translate_iterations=50,
    transcript_lines=2_000,
)


# ------------------------------------------------------------------------------------------------ results


@dataclass(slots=True)
class Metric:
    key: str  # stable JSON key
    label: str  # what the table shows
    value: float | None
    unit: str
    target: str | None = None  # human-readable, e.g. "<= 1 ms"
    ok: bool | None = None  # None: informational


@dataclass(slots=True)
class Report:
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        key: str,
        label: str,
        value: float | None,
        unit: str,
        *,
        at_most: float | None = None,
        at_least: float | None = None,
    ) -> None:
        target: str | None = None
        ok: bool | None = None
        if at_most is not None:
            target = f"<= {at_most:g} {unit}"
            ok = value is not None and value <= at_most
        elif at_least is not None:
            target = f">= {at_least:g} {unit}"
            ok = value is not None and value >= at_least
        self.metrics.append(Metric(key, label, value, unit, target, ok))


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; samples need not be sorted."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def log(message: str) -> None:
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


# ------------------------------------------------------------------------------------------------ processes


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment minus anything ccgate or Anthropic reads, plus an isolated CCGATE_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCGATE_", "ANTHROPIC_"))}
    env["CCGATE_HOME"] = str(home)
    # An installed ccgate runs from cached bytecode; with PYTHONDONTWRITEBYTECODE set (as in some shells and CI)
    # every CLI run would compile ccgate's sources again (~100 ms of `--help`). The cache goes outside the tree.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "ccgate-bench-pycache"))
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"  # no D-Bus round trips at start-up
    env["CCGATE_LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


def warm_bytecode(env: dict[str, str]) -> None:
    """Compile what the servers import into the bytecode cache first, as an installed package has it (pip writes
    .pyc at install; the cache prefix here starts empty in a new venv). Otherwise the first sidecar to start
    compiles genai-prices' 1.6 MB data module itself: ~75 MB of transient peak (VmHWM ~140 MB) and ~15 MB of
    RSS it keeps, in the first run only -- a measurement of the compiler, not of the sidecar. A sidecar started
    and stopped once (in its own home) imports exactly what start-up does; the rest is what requests import."""
    home = Path(env["CCGATE_HOME"])
    from ccgate.local.paths import resolve_paths

    paths = resolve_paths(env).ensure()
    sidecar = Server("warm-up sidecar", [PY, "-m", "ccgate.sidecar", "--port", "0"], env, home / "warm.log")
    try:
        sidecar.wait_port(paths.port_file, pid_file=paths.pid_file)
    finally:
        sidecar.stop()
    modules = "ccgate.proxy.engine, ccgate.wire.translate, ccgate.gateway.__main__, ccgate.gateway.app"
    subprocess.run([PY, "-c", f"import {modules}"], env=env, cwd=ROOT, check=True, stdin=subprocess.DEVNULL)


class Server:
    """A server process we started; stopped by its PID (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, cwd=ROOT
        )
        self.port = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_port(self, port_file: Path, *, timeout: float = 30.0, pid_file: Path | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.tail()}")
            with contextlib.suppress(FileNotFoundError, ValueError):
                port = int(port_file.read_text().strip())
                if pid_file is None or int(pid_file.read_text().strip()) == self.pid:
                    self.port = port
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start within {timeout:.0f} s: {self.tail()}")

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(rest.split()[0])
    return out


# ------------------------------------------------------------------------------------------------ payloads


def messages_body(model: str, size: int = 50_000) -> dict[str, Any]:
    """A Messages API request shaped like Claude Code's, with a ~`size`-byte user message."""
    phrase = "the quick brown fox jumps over a lazy dog while reading source code and tests "
    text = (phrase * (size // len(phrase) + 1))[:size]
    return {
        "model": model,
        "max_tokens": 8192,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are Claude Code, a benchmark.", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        "metadata": {"user_id": json.dumps({"session_id": "00000000-0000-4000-8000-000000000000"})},
    }


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    end_marker: bytes  # the last event a complete reply carries


# ------------------------------------------------------------------------------------------------ load


async def one_request(session: aiohttp.ClientSession, target: Target) -> float:
    """Full-response latency: from sending the request until the last byte of the reply has been read."""
    began = time.perf_counter()
    async with session.post(target.url, data=target.body, headers=target.headers) as response:
        async for _ in response.content.iter_any():
            pass
        status = response.status
    elapsed = time.perf_counter() - began
    if status != 200:
        raise RuntimeError(f"{target.name}: HTTP {status}")
    return elapsed


async def check_reply(session: aiohttp.ClientSession, target: Target) -> None:
    async with session.post(target.url, data=target.body, headers=target.headers) as response:
        data = await response.read()
        if response.status != 200 or target.end_marker not in data[-200:]:
            raise RuntimeError(f"{target.name}: unexpected reply {response.status}: {data[:300]!r}...{data[-200:]!r}")


async def latency_phase(
    session: aiohttp.ClientSession, targets: Sequence[Target], settings: Settings
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    for target in targets:
        await check_reply(session, target)
        for _ in range(settings.warmup):
            await one_request(session, target)
    per_round = max(1, settings.latency_requests // settings.latency_rounds)
    for round_no in range(settings.latency_rounds):
        shift = round_no % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            bucket = samples[target.name]
            for _ in range(per_round):
                bucket.append(await one_request(session, target))
    return samples


async def throughput_run(
    session: aiohttp.ClientSession, target: Target, concurrency: int, seconds: float
) -> tuple[int, float]:
    """`concurrency` workers loop until the deadline; returns (completed requests, elapsed seconds)."""
    done = 0
    began = time.perf_counter()
    deadline = began + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await one_request(session, target)
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.perf_counter() - began


async def sample_memory(pid: int, peak: dict[str, int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            for name, value in memory_kb(pid).items():
                peak[name] = max(peak.get(name, 0), value)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Throughput:
    rates: dict[str, float]  # requests per second, per target
    per_round: dict[str, list[float]]  # the same, round by round (rounds interleave the targets)
    cpu_ms: dict[str, float]  # proxy CPU per request, for targets that have a proxy process
    peak: dict[str, int]  # the sidecar's VmRSS / VmHWM peak, kB
    peaks: dict[str, dict[str, int]] = field(default_factory=dict)  # the same for every sampled server


async def throughput_phase(
    session: aiohttp.ClientSession,
    targets: Sequence[Target],
    settings: Settings,
    proxies: dict[str, int],
    sidecar: str,
    sampled: Sequence[str] = (),
) -> Throughput:
    """Interleaved rounds at the configured concurrency; samples the memory of the sidecar (and of `sampled`)
    while it is loaded."""
    totals: dict[str, list[float]] = {t.name: [0.0, 0.0, 0.0] for t in targets}
    per_round: dict[str, list[float]] = {t.name: [] for t in targets}
    peaks: dict[str, dict[str, int]] = {name: {} for name in (sidecar, *sampled)}
    for target in targets:  # warm the connection pools at this concurrency
        await throughput_run(session, target, settings.concurrency, 0.3)
    for round_no in range(settings.throughput_rounds):
        shift = round_no % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            pid = proxies.get(target.name)
            stop = asyncio.Event()
            sampler = (
                asyncio.create_task(sample_memory(pid, peaks[target.name], stop))
                if target.name in peaks and pid
                else None
            )
            cpu_before = cpu_seconds(pid) if pid else 0.0
            count, elapsed = await throughput_run(session, target, settings.concurrency, settings.throughput_seconds)
            cpu = cpu_seconds(pid) - cpu_before if pid else 0.0
            stop.set()
            if sampler is not None:
                await sampler
            totals[target.name][0] += count
            per_round[target.name].append(count / elapsed)
            totals[target.name][1] += elapsed
            totals[target.name][2] += cpu
    for name, peak in peaks.items():
        with contextlib.suppress(OSError, KeyError):
            peak["VmHWM"] = max(peak.get("VmHWM", 0), memory_kb(proxies[name]).get("VmHWM", 0))
    return Throughput(
        rates={name: count / elapsed for name, (count, elapsed, _) in totals.items()},
        per_round=per_round,
        cpu_ms={name: 1000 * cpu / count for name, (count, _, cpu) in totals.items() if name in proxies and count},
        peak=peaks[sidecar],
        peaks=peaks,
    )


# ------------------------------------------------------------------------------------------------ phases


def sidecar_config(openai_base: str) -> str:
    """The translated-route hook: haiku goes to an OpenAI-kind provider, which has a price."""
    return (
        "[providers.mockai]\n"
        'kind = "openai"\n'
        f'base_url = "{openai_base}"\n\n'
        "[tiers.haiku]\n"
        f'targets = ["mockai/{TRANSLATED_TARGET}"]\n\n'
        f'[prices."{TRANSLATED_TARGET}"]\n'
        "input = 0.5\n"
        "output = 1.5\n"
    )


def start_mock(home: Path, servers: list[Server]) -> Server:
    """The mock upstream in its own process, listed in `servers` (stopped with them) before it is waited for."""
    home.mkdir()
    mock = Server(
        "mock upstream",
        [PY, str(HERE / "mock_upstream.py"), "--port-file", str(home / "port")],
        clean_env(home),
        home / "log",
    )
    servers.append(mock)
    mock.wait_port(home / "port")
    return mock


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the sidecar, GIL holder only (collapsed stacks: `frame;frame;... count`); stop with SIGINT."""
    py_spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    argv = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        "250",
        "--gil",
        "--nonblocking",
        "-o",
        str(out),
    ]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let it attach before the load starts
    return process


def stop_profiler(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


GATEWAY_KEY_HEADER = "x-api-key"


def start_postgres() -> tuple[str | None, Any]:
    """A PostgreSQL for the gateway: CCGATE_TEST_POSTGRES_URL, else a throwaway cluster (tests/support), else
    none (the PostgreSQL gateway is then left out and a note says why)."""
    given = os.environ.get("CCGATE_TEST_POSTGRES_URL")
    if given:
        return given, None
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    try:
        from postgres_cluster import start_cluster

        cluster = start_cluster()
    except (ImportError, RuntimeError) as error:
        log(f"no PostgreSQL for the gateway: {error}")
        return None, None
    return cluster.url, cluster


async def fresh_postgres_database(server: str, name: str | None = None) -> str:
    """A new database on `server` (by default named for this run, so a server given in CCGATE_TEST_POSTGRES_URL
    can hold several runs' or a crashed run's leftovers); `drop_postgres_database` removes it."""
    import asyncpg

    name = name or f"ccgate_bench_{os.getpid()}_{int(time.time())}"
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.rpartition("/")[0] + "/" + name


async def drop_postgres_database(server: str, url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')
    finally:
        await conn.close()


async def gateway_org(db_url: str) -> str:
    """Migrate, and make what the issue asks the gateway to carry: a key budget, a team budget and a rate limit.
    Limits no benchmark reaches, so every request is admitted after the full checks. Returns the virtual key."""
    from ccgate.storage.gateway import GatewayStore

    store = await GatewayStore.open(db_url)
    try:
        await store.create_customer("bench")
        await store.create_team("bench-team", customer="bench")
        key = (await store.create_key(team="bench-team", name="bench-dev")).plaintext
        await store.create_budget(level="key", target="bench-dev", limit_nanos=10**18, period="1d")
        await store.create_budget(level="team", target="bench-team", limit_nanos=10**18, period="1mo")
        await store.set_rate_limit(level="team", target="bench-team", rpm=10**9, tpm=2 * 10**9)
        return key
    finally:
        await store.close()


async def start_gateway(name: str, db_url: str, work: Path, upstream: str) -> tuple[Server, str]:
    key = await gateway_org(db_url)
    home = work / name
    home.mkdir()
    env = clean_env(home, CCGATE_ANTHROPIC_BASE_URL=upstream, CCGATE_ANTHROPIC_API_KEY="sk-ant-bench-dummy")
    argv = [PY, "-m", "ccgate.gateway", "--db", db_url, "--port", "0", "--port-file", str(home / "port")]
    server = Server(name, argv, env, home / "log")
    return server, key


async def proxy_phases(
    report: Report, settings: Settings, work: Path, profile: Path | None = None, profile_target: str = "sidecar"
) -> None:
    from ccgate.local.paths import resolve_paths
    from ccgate.sidecar.process import TOKEN_HEADER, ensure_token
    from ccgate.wire.translate import anthropic_to_openai_request

    servers: list[Server] = []
    profiler: subprocess.Popen[bytes] | None = None
    gateway_dbs: list[tuple[str, str]] = []
    pg_url, cluster = start_postgres()
    try:
        warm_bytecode(clean_env(work / "warm"))
        mock = start_mock(work / "mock", servers)

        pass_home = work / "passthrough"
        pass_home.mkdir()
        passthrough = Server(
            "passthrough",
            [PY, str(HERE / "passthrough.py"), "--upstream", mock.url, "--port-file", str(pass_home / "port")],
            clean_env(pass_home),
            pass_home / "log",
        )
        servers.append(passthrough)

        side_home = work / "sidecar-home"
        side_env = clean_env(side_home, CCGATE_ANTHROPIC_BASE_URL=mock.url, CCGATE_MOCKAI_API_KEY="sk-bench-dummy")
        paths = resolve_paths(side_env).ensure()
        paths.config_file.write_text(sidecar_config(mock.url + "/v1"))
        token = ensure_token(paths)
        sidecar = Server("sidecar", [PY, "-m", "ccgate.sidecar", "--port", "0"], side_env, work / "sidecar.log")
        servers.append(sidecar)
        gateways: list[tuple[Server, str]] = []
        gateway_dbs.append(("gateway-sqlite", f"sqlite://{work / 'gateway.db'}"))
        if pg_url is not None:
            gateway_dbs.append(("gateway-postgresql", await fresh_postgres_database(pg_url)))
        else:
            report.notes.append("no PostgreSQL found: the gateway ran on SQLite only")
        for name, db_url in gateway_dbs:
            gateway, virtual_key = await start_gateway(name, db_url, work, mock.url)
            servers.append(gateway)
            gateways.append((gateway, virtual_key))
        passthrough.wait_port(pass_home / "port")
        sidecar.wait_port(paths.port_file, pid_file=paths.pid_file)
        for gateway, _ in gateways:
            gateway.wait_port(work / gateway.name / "port")
        log(f"servers up: mock {mock.pid}, passthrough {passthrough.pid}, sidecar {sidecar.pid}")
        profiled = {"sidecar": sidecar, **{gateway.name: gateway for gateway, _ in gateways}}
        if profile is not None and profile_target not in profiled:
            raise SystemExit(f"--profile-target must be one of {', '.join(profiled)}")
        profiler = start_profiler(profiled[profile_target].pid, profile) if profile is not None else None

        anthropic_body = encode(messages_body(ANTHROPIC_MODEL))
        translated_body = encode(messages_body(TRANSLATED_MODEL))
        openai_body = encode(
            anthropic_to_openai_request(messages_body(TRANSLATED_MODEL), target_model=TRANSLATED_TARGET)[0]
        )
        headers = {
            "content-type": "application/json",
            "anthropic-version": "2023-06-01",
            "x-api-key": "sk-ant-bench-dummy",
            TOKEN_HEADER: token,
        }
        direct = Target("direct", mock.url + "/v1/messages", anthropic_body, headers, b"message_stop")
        through_pass = Target("passthrough", passthrough.url + "/v1/messages", anthropic_body, headers, b"message_stop")
        through_side = Target("sidecar", sidecar.url + "/v1/messages", anthropic_body, headers, b"message_stop")
        openai_direct = Target("openai-direct", mock.url + "/v1/chat/completions", openai_body, headers, b"[DONE]")
        translated = Target(
            "sidecar-translated", sidecar.url + "/v1/messages", translated_body, headers, b"message_stop"
        )
        gateway_targets = [
            Target(
                gateway.name,
                gateway.url + "/v1/messages",
                anthropic_body,
                {**headers, GATEWAY_KEY_HEADER: virtual_key},
                b"message_stop",
            )
            for gateway, virtual_key in gateways
        ]
        report.notes.append(
            f"request body {len(anthropic_body) / 1000:.1f} KB; mock reply: 21 Anthropic SSE events, "
            "or 200 OpenAI chunks for the translated route"
        )

        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            idle = memory_kb(sidecar.pid)
            log(f"latency at concurrency 1: {settings.latency_requests} requests per target")
            lat = await latency_phase(
                session, [direct, through_pass, through_side, openai_direct, translated, *gateway_targets], settings
            )
            idle_after = memory_kb(sidecar.pid)
            log(f"throughput at concurrency {settings.concurrency}")
            loaded = await throughput_phase(
                session,
                [direct, through_pass, through_side, *gateway_targets],
                settings,
                {
                    "passthrough": passthrough.pid,
                    "sidecar": sidecar.pid,
                    **{gateway.name: gateway.pid for gateway, _ in gateways},
                },
                "sidecar",
                sampled=[gateway.name for gateway, _ in gateways],
            )
            rates, peak = loaded.rates, loaded.peak
        if profiler is not None:
            stop_profiler(profiler)
            profiler = None
            report.notes.append(f"py-spy profile of the {profile_target} (collapsed stacks): {profile}")

        def ms(name: str, pct: float) -> float:
            return percentile(lat[name], pct) * 1000

        for name, label in (
            ("direct", "direct to mock"),
            ("passthrough", "via minimal passthrough"),
            ("sidecar", "via sidecar"),
        ):
            report.add(f"latency_{name}_p50_ms", f"latency p50, {label}", ms(name, 50), "ms")
            report.add(f"latency_{name}_p99_ms", f"latency p99, {label}", ms(name, 99), "ms")
        report.add("added_passthrough_p50_ms", "added p50, passthrough", ms("passthrough", 50) - ms("direct", 50), "ms")
        report.add("added_passthrough_p99_ms", "added p99, passthrough", ms("passthrough", 99) - ms("direct", 99), "ms")
        report.add(
            "added_sidecar_p50_ms", "added p50, sidecar", ms("sidecar", 50) - ms("direct", 50), "ms", at_most=1.0
        )
        report.add(
            "added_sidecar_p99_ms", "added p99, sidecar", ms("sidecar", 99) - ms("direct", 99), "ms", at_most=5.0
        )
        for name, label in (
            ("direct", "direct to mock"),
            ("passthrough", "minimal passthrough"),
            ("sidecar", "sidecar"),
        ):
            report.add(f"throughput_{name}_rps", f"throughput c={settings.concurrency}, {label}", rates[name], "req/s")
        report.add("cpu_passthrough_ms", "CPU per request, minimal passthrough", loaded.cpu_ms["passthrough"], "ms")
        report.add("cpu_sidecar_ms", "CPU per request, sidecar (all threads)", loaded.cpu_ms["sidecar"], "ms")
        # Paired per round (the two run back to back, so a burst of load on this shared machine hits both), then
        # the median: one disturbed round cannot move it the way it moves a ratio of totals.
        ratios = sorted(
            100 * side / base
            for side, base in zip(loaded.per_round["sidecar"], loaded.per_round["passthrough"], strict=True)
            if base
        )
        ratio = statistics.median(ratios) if ratios else None
        report.add("throughput_sidecar_vs_passthrough_pct", "sidecar / passthrough throughput", ratio, "%", at_least=80)
        if ratios:
            report.notes.append(
                f"sidecar / passthrough throughput per round: {', '.join(f'{r:.0f} %' for r in ratios)} "
                "(median reported)"
            )
        report.add("sidecar_rss_idle_mb", "sidecar RSS idle (after warm-up)", idle_after.get("VmRSS", 0) / 1024, "MB")
        report.add("sidecar_rss_peak_mb", "sidecar RSS peak under load", peak.get("VmRSS", 0) / 1024, "MB", at_most=80)
        report.add("sidecar_hwm_mb", "sidecar VmHWM (peak RSS ever)", peak.get("VmHWM", 0) / 1024, "MB", at_most=80)
        report.notes.append(f"sidecar RSS right after start: {idle.get('VmRSS', 0) / 1024:.1f} MB")

        report.add("latency_openai_direct_p50_ms", "latency p50, direct to OpenAI mock", ms("openai-direct", 50), "ms")
        report.add("latency_translated_p50_ms", "latency p50, sidecar translated", ms("sidecar-translated", 50), "ms")
        report.add(
            "added_translated_p50_ms",
            "added p50, translated route",
            ms("sidecar-translated", 50) - ms("openai-direct", 50),
            "ms",
            at_most=2.0,
        )
        report.add(
            "added_translated_p99_ms",
            "added p99, translated route",
            ms("sidecar-translated", 99) - ms("openai-direct", 99),
            "ms",
        )
        report.add(
            "translated_minus_passthrough_route_p50_ms",
            "translated minus Anthropic route, added p50",
            (ms("sidecar-translated", 50) - ms("openai-direct", 50)) - (ms("sidecar", 50) - ms("direct", 50)),
            "ms",
        )
        gateway_metrics(report, settings, lat, loaded, [gateway.name for gateway, _ in gateways])
    finally:
        if profiler is not None:
            stop_profiler(profiler)
        for server in reversed(servers):
            server.stop()
        if pg_url is not None and cluster is None:  # a server of the caller's: leave it as it was
            for _, db_url in gateway_dbs[1:]:
                with contextlib.suppress(Exception):
                    await drop_postgres_database(pg_url, db_url)
        if cluster is not None:
            cluster.stop()


def gateway_metrics(
    report: Report, settings: Settings, lat: dict[str, list[float]], loaded: Throughput, names: Sequence[str]
) -> None:
    """Added latency over a direct call, throughput against the sidecar's in the same rounds, and memory."""

    def ms(name: str, pct: float) -> float:
        return percentile(lat[name], pct) * 1000

    for name in names:
        short = name.removeprefix("gateway-")
        report.add(f"latency_{name.replace('-', '_')}_p50_ms", f"latency p50, via {name}", ms(name, 50), "ms")
        report.add(
            f"added_{name.replace('-', '_')}_p50_ms",
            f"added p50, {name}",
            ms(name, 50) - ms("direct", 50),
            "ms",
            at_most=2.0,
        )
        report.add(
            f"added_{name.replace('-', '_')}_p99_ms", f"added p99, {name}", ms(name, 99) - ms("direct", 99), "ms"
        )
        report.add(
            f"throughput_{name.replace('-', '_')}_rps",
            f"throughput c={settings.concurrency}, {name}",
            loaded.rates[name],
            "req/s",
        )
        ratios = sorted(
            100 * gateway / side
            for gateway, side in zip(loaded.per_round[name], loaded.per_round["sidecar"], strict=True)
            if side
        )
        report.add(
            f"throughput_{name.replace('-', '_')}_vs_sidecar_pct",
            f"{name} / sidecar throughput",
            statistics.median(ratios) if ratios else None,
            "%",
            at_least=50 if short == "sqlite" else 40,
        )
        report.add(f"cpu_{name.replace('-', '_')}_ms", f"CPU per request, {name}", loaded.cpu_ms.get(name), "ms")
        peak = loaded.peaks.get(name, {})
        report.add(
            f"{name.replace('-', '_')}_rss_peak_mb",
            f"{name} RSS peak under load",
            peak.get("VmRSS", 0) / 1024,
            "MB",
            at_most=120,
        )


def translation_cpu(report: Report, settings: Settings) -> None:
    """CPU per request of the translated route's two extra steps, timed in this process."""
    from ccgate.proxy.engine import parse_messages_body, parse_messages_head
    from ccgate.wire import fastjson
    from ccgate.wire.sse import SSEDecoder
    from ccgate.wire.translate import OpenAIStreamTranslator, ToolIdMap, anthropic_to_openai_request

    sys.path.insert(0, str(HERE))
    from mock_upstream import openai_chunks

    body = messages_body(TRANSLATED_MODEL)
    raw = encode(body)
    iterations = settings.translate_iterations
    began = time.perf_counter()
    for _ in range(iterations):
        # as the proxy does: the head to route, an exact parse (big integers) for the body sent on, map, encode
        parse_messages_head(raw)
        out, _ = anthropic_to_openai_request(parse_messages_body(raw, exact=True), target_model=TRANSLATED_TARGET)
        fastjson.dumps(out)
    per_request = (time.perf_counter() - began) / iterations
    report.add("translate_request_us", "translate 50 KB request (parse x2+map+encode)", per_request * 1e6, "us")

    stream = openai_chunks(200)
    began = time.perf_counter()
    for _ in range(iterations):
        translator = OpenAIStreamTranslator(requested_model=TRANSLATED_MODEL, id_map=ToolIdMap())
        decoder = SSEDecoder()
        for chunk in stream:
            for data in decoder.feed_data(chunk):
                if data == b"[DONE]":
                    break
                translator.feed(fastjson.loads(data))
        translator.finish()
    per_stream = (time.perf_counter() - began) / iterations
    report.add("translate_stream_us", "translate 200-chunk stream (decode+map)", per_stream * 1e6, "us")


def _ccgate_argv() -> list[str]:
    script = Path(PY).parent / "ccgate"
    return [str(script)] if script.exists() else [PY, "-m", "ccgate"]


def once_ms(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one run (no warm-up: for what only the first run measures), in ms."""
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.decode()[-500:]}")
    return (time.perf_counter() - began) * 1000


def once_wall_cpu_ms(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system, its worker processes included) of one run, in ms: on a loaded
    machine the CPU time is the number that compares across runs."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = once_ms(argv, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu * 1000


def wall_ms(argv: list[str], env: dict[str, str], runs: int, *, check: bool = True) -> float:
    """Median wall time of `runs` runs (after one untimed warm-up run), in ms."""
    times: list[float] = []
    for n in range(runs + 1):
        began = time.perf_counter()
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        elapsed = time.perf_counter() - began
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.decode()[-500:]}")
        if n:
            times.append(elapsed * 1000)
    return statistics.median(times)


def cli_phase(report: Report, settings: Settings, work: Path) -> None:
    home = work / "cli-home"
    env = clean_env(home)
    report.add(
        "cli_help_ms",
        "`ccgate --help` wall time (median)",
        wall_ms([*_ccgate_argv(), "--help"], env, settings.help_runs),
        "ms",
        at_most=150,
    )
    report.add(
        "python_pass_ms",
        "`python -c pass` wall time (reference)",
        wall_ms([PY, "-c", "pass"], env, settings.help_runs),
        "ms",
    )


def ledger_home(rows: int, cache_dir: Path) -> Path:
    """A CCGATE_HOME holding a `rows`-row ledger ending today; built once per day and reused."""
    today = datetime.now(UTC).strftime("%Y%m%d")
    home = cache_dir / f"ledger-{rows}-{today}"
    if (home / "complete").exists():
        log(f"reusing the {rows:,}-row ledger in {home}")
        return home
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f"ledger-{rows}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    building = Path(tempfile.mkdtemp(prefix=f"building-{rows}-", dir=cache_dir))
    log(f"building a {rows:,}-row ledger (once per day; about 15 s per 100k rows)")
    subprocess.run(
        [PY, str(HERE / "make_ledger.py"), "--rows", str(rows), "--days", "30"],
        env=clean_env(building),
        check=True,
        cwd=ROOT,
    )
    (building / "complete").write_text("ok\n")
    building.rename(home)
    return home


def cost_phase(report: Report, settings: Settings, rows: int, cache_dir: Path) -> None:
    home = ledger_home(rows, cache_dir)
    env = clean_env(home)
    value = wall_ms([*_ccgate_argv(), "cost", "month"], env, settings.cost_runs)
    report.add("cost_month_ms", f"`ccgate cost month`, {rows:,}-row ledger (median)", value, "ms", at_most=500)
    # issue 16's insights, same ledger and period
    for key, args, label in (
        ("cost_day_model_ms", ["cost", "month", "--by", "day,model"], "`ccgate cost month --by day,model`"),
        ("blocks_ms", ["blocks"], "`ccgate blocks` (every window of the ledger)"),
        (
            "cost_what_if_ms",
            ["cost", "month", "--what-if", "haiku=groq/llama-3.3-70b-versatile"],
            "`ccgate cost month --what-if haiku=groq/...`",
        ),
    ):
        value = wall_ms([*_ccgate_argv(), *args], env, settings.cost_runs)
        report.add(key, f"{label}, {rows:,}-row ledger (median)", value, "ms", at_most=500)


def gateway_reports_phase(report: Report, settings: Settings, rows: int, cache_dir: Path) -> None:
    """`gateway report --by team|model|day|key` over 30 days of a `rows`-request gateway database, and every
    dashboard page's server time on it (issue 17), on SQLite (cached) and PostgreSQL (built once for both): see
    gateway_reports.py and dashboard_pages.py."""
    import dashboard_pages
    import gateway_reports

    pg_url, cluster = start_postgres()
    try:
        found = gateway_reports.databases(report.notes.append, rows, cache_dir, pg_url)
        gateway_reports.phase(report.add, rows, settings.cost_runs, found)
        dashboard_pages.phase(report.add, rows, found)
    finally:
        if cluster is not None:
            cluster.stop()


def import_phase(report: Report, settings: Settings, work: Path, cache_dir: Path) -> None:
    """`import claude-code` on a generated corpus (200,000 lines, ~230 MB): a first import into an empty
    ledger, and a re-run with nothing changed (every file skipped unread)."""
    lines = settings.transcript_lines
    corpus = cache_dir / f"transcripts-{lines}"
    if not (corpus / "complete").exists():
        shutil.rmtree(corpus, ignore_errors=True)
        log(f"generating a {lines:,}-line transcript corpus")
        subprocess.run(
            [PY, str(HERE / "make_transcripts.py"), "--lines", str(lines), "--out", str(corpus / "projects")],
            check=True,
            cwd=ROOT,
        )
        (corpus / "complete").write_text("ok\n")
    argv = [*_ccgate_argv(), "import", "claude-code", "--path", str(corpus / "projects"), "--json"]
    firsts, cpus = [], []
    for run in range(settings.cost_runs):
        home = work / f"import-{run}"
        wall, cpu = once_wall_cpu_ms(argv, clean_env(home))
        firsts.append(wall)
        cpus.append(cpu)
    report.add(
        "import_first_ms",
        f"`ccgate import claude-code`, {lines:,} lines, empty ledger (median)",
        statistics.median(firsts),
        "ms",
        at_most=2000,
    )
    report.add(
        "import_first_cpu_ms",
        "`ccgate import claude-code` first run: CPU, user + system, workers included (median)",
        statistics.median(cpus),
        "ms",
    )
    report.add(
        "import_rerun_ms",
        "`ccgate import claude-code` again, nothing changed (median)",
        wall_ms(argv, clean_env(work / "import-0"), settings.cost_runs),
        "ms",
        at_most=300,
    )


# ------------------------------------------------------------------------------------------------ output


def render(report: Report, settings: Settings, quick: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    table = Table(title="ccgate benchmark" + (" (quick: not for judging)" if quick else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("result")
    for metric in report.metrics:
        value = "n/a" if metric.value is None else f"{metric.value:,.2f} {metric.unit}"
        result = "" if metric.ok is None else ("[green]pass[/]" if metric.ok else "[red]FAIL[/]")
        table.add_row(metric.label, value, metric.target or "", result)
    console.print(table)
    for note in report.notes:
        console.print(f"- {note}", highlight=False)


def to_json(report: Report, settings: Settings, quick: bool) -> dict[str, Any]:
    return {
        "quick": quick,
        "when": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {name: getattr(settings, name) for name in Settings.__slots__},
        "metrics": {
            m.key: {"label": m.label, "value": m.value, "unit": m.unit, "target": m.target, "pass": m.ok}
            for m in report.metrics
        },
        "notes": report.notes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: few requests, a 100k-row ledger")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    parser.add_argument("--ledger-rows", type=int, default=None, help="rows in the `cost` ledger")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ccgate-bench-cache",
        help="where generated ledgers are kept between runs",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record a server with py-spy (pip install py-spy into the venv) into this collapsed-stack file",
    )
    parser.add_argument(
        "--profile-target",
        default="sidecar",
        help="which server --profile records: sidecar (default), gateway-sqlite or gateway-postgresql",
    )
    parser.add_argument(
        "--phases",
        default=None,
        help="comma-separated subset to run (proxy, translation, cli, cost, import); default all. The gateway "
        "runs in the proxy phase, beside the sidecar it is compared with",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    rows = args.ledger_rows if args.ledger_rows is not None else settings.ledger_rows
    report = Report()
    phases: list[tuple[str, Callable[[Path], None]]] = [
        ("proxy", lambda work: asyncio.run(proxy_phases(report, settings, work, args.profile, args.profile_target))),
        ("translation CPU", lambda work: translation_cpu(report, settings)),
        ("CLI start-up", lambda work: cli_phase(report, settings, work)),
        ("cost", lambda work: cost_phase(report, settings, rows, args.cache_dir)),
        ("gateway reports and dashboard", lambda work: gateway_reports_phase(report, settings, rows, args.cache_dir)),
        ("import", lambda work: import_phase(report, settings, work, args.cache_dir)),
    ]
    if args.phases is not None:
        # a phase's short name is its first word, lower-cased: proxy, translation, cli, cost, import
        short = {name.split(" ")[0].lower(): name for name, _ in phases}
        wanted = {part.strip() for part in args.phases.split(",") if part.strip()}
        if wanted - short.keys():
            parser.error(f"unknown phase(s) {', '.join(sorted(wanted - short.keys()))}; choose from {', '.join(short)}")
        phases = [(name, phase) for name, phase in phases if name.split(" ")[0].lower() in wanted]
    with tempfile.TemporaryDirectory(prefix="ccgate-bench-") as tmp:
        for name, phase in phases:
            log(f"phase: {name}")
            work = Path(tmp) / name.replace(" ", "-")
            work.mkdir()
            phase(work)
    render(report, settings, args.quick)
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(report, settings, args.quick), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
