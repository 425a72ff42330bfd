"""Connections that never send a request, or never show the token, are closed; the sidecar keeps serving."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from scripted_upstream import ScriptedUpstream, TextReply
from sidecar_harness import Harness, running_sidecar

from ccgate.core.settings import Config, SidecarSettings
from ccgate.local.paths import resolve_paths
from ccgate.sidecar.process import TOKEN_HEADER, ensure_token, read_info

# Every wait is bounded: without the fix these sockets stay open for aiohttp's default hour.
BOUND = 30.0
SLOW_HEAD = b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def short(**extra: Any) -> Config:
    settings = {"header_timeout_seconds": 0.5, "keepalive_timeout_seconds": 1.0, **extra}
    return Config(sidecar=SidecarSettings(**settings))


async def connect(harness: Harness) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(harness.url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the sidecar has closed the connection (EOF or reset), after any answer it sent."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    return True


async def slowloris(writer: asyncio.StreamWriter) -> None:
    """A request head that never ends: one more header line every 0.1 s."""
    writer.write(SLOW_HEAD)
    try:
        for i in range(10_000):
            await asyncio.sleep(0.1)
            writer.write(f"x-slow-{i}: 1\r\n".encode())
            await writer.drain()
    except ConnectionError:
        return


async def status(harness: Harness) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{harness.url}/_ccgate/status", headers=harness.headers) as resp,
    ):
        payload: dict[str, Any] = await resp.json()
    return payload


async def test_idle_and_slowloris_connections_are_closed_and_requests_still_work() -> None:
    async with running_sidecar(config=short()) as harness:
        idle = [await connect(harness) for _ in range(100)]
        slow = [await connect(harness) for _ in range(50)]
        trickles = [asyncio.create_task(slowloris(writer)) for _, writer in slow]
        everyone = [reader for reader, _ in idle + slow]
        assert all(await asyncio.wait_for(asyncio.gather(*(closed_by_peer(r) for r in everyone)), BOUND))
        for task in trickles:
            task.cancel()
        for _, writer in idle + slow:
            writer.close()
        harness.upstream.enqueue(TextReply("still here"))
        client = anthropic.AsyncAnthropic(
            base_url=harness.url, api_key="sk-ant-x", default_headers=harness.headers, max_retries=0
        )
        message = await client.messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].type == "text"
        stats = (await status(harness))["connections"]
        assert stats["closed_slow"] + stats["closed_crowded"] >= 150


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    async with running_sidecar(config=short(header_timeout_seconds=60)) as harness:
        reader, writer = await connect(harness)
        writer.write(
            f"GET /_ccgate/status HTTP/1.1\r\nHost: 127.0.0.1\r\n{TOKEN_HEADER}: {harness.token}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
        assert head.startswith(b"HTTP/1.1 200")
        # the response was kept alive; a second request head that never finishes does not extend it
        writer.write(SLOW_HEAD)
        assert await asyncio.wait_for(closed_by_peer(reader), BOUND)
        writer.close()


async def test_a_request_without_the_token_gets_401_and_its_connection_closed() -> None:
    async with running_sidecar(config=short(header_timeout_seconds=60, keepalive_timeout_seconds=60)) as harness:
        reader, writer = await connect(harness)
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
        data = await asyncio.wait_for(reader.read(), BOUND)  # read() returns at EOF only
        assert data.startswith(b"HTTP/1.1 401")
        writer.close()


async def test_past_the_cap_the_oldest_unauthenticated_connections_are_closed() -> None:
    config = short(header_timeout_seconds=60, keepalive_timeout_seconds=60, max_unauthenticated_connections=5)
    async with running_sidecar(config=config) as harness:
        # a real client's connection carries a token-bearing request: it is never counted against the cap
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{harness.url}/_ccgate/status", headers=harness.headers) as resp:
                assert resp.status == 200
            sockets = [await connect(harness) for _ in range(20)]
            oldest = [reader for reader, _ in sockets[:15]]
            assert all(await asyncio.wait_for(asyncio.gather(*(closed_by_peer(r) for r in oldest)), BOUND))
            # the same kept-alive connection still works
            async with session.get(f"{harness.url}/_ccgate/status", headers=harness.headers) as resp:
                stats = (await resp.json())["connections"]
        assert stats["unauthenticated"] <= 5 and stats["closed_crowded"] >= 15
        for _, writer in sockets:
            writer.close()


# ---- a real sidecar process with a low descriptor limit ------------------------------------------


@contextmanager
def sidecar_process(env: dict[str, str], limit: tuple[int, int]) -> Iterator[subprocess.Popen[bytes]]:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, limit)

    process = subprocess.Popen(
        [sys.executable, "-m", "ccgate.sidecar", "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=low_limit,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def nofile_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc")


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc")
async def test_a_sidecar_with_few_descriptors_outlives_a_flood_of_idle_sockets(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        env = {**os.environ, "CCGATE_ANTHROPIC_BASE_URL": upstream.url}
        paths = resolve_paths(env).ensure()
        paths.config_file.write_text(
            "[sidecar]\nheader_timeout_seconds = 2\nkeepalive_timeout_seconds = 5\n"
            "max_unauthenticated_connections = 16\n"
        )
        token = ensure_token(paths)
        # soft 40 of hard 80: the sidecar raises the soft limit itself, and 80 is still far below the flood
        with sidecar_process(env, (40, 80)) as process:
            info = None
            deadline = time.monotonic() + BOUND
            while info is None or info.pid != process.pid:
                assert process.poll() is None and time.monotonic() < deadline, "the sidecar did not start"
                await asyncio.sleep(0.1)
                info = read_info(paths)
            assert nofile_limits(process.pid) == (80, 80)
            flood = [await asyncio.open_connection("127.0.0.1", info.port) for _ in range(300)]
            client = anthropic.AsyncAnthropic(
                base_url=info.url,
                api_key="sk-ant-x",
                default_headers={TOKEN_HEADER: token},
                max_retries=0,
                timeout=BOUND,
            )
            message = await client.messages.create(
                model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
            assert message.content[0].type == "text"
            for _, writer in flood:
                writer.close()
            assert process.poll() is None
        assert json.loads(json.dumps(upstream.messages_requests[0].json))["model"] == "claude-haiku-4-5"


async def test_a_config_reload_changes_the_cap_for_new_connections() -> None:
    async with running_sidecar(config=short(header_timeout_seconds=60, keepalive_timeout_seconds=60)) as harness:
        harness.paths.config_file.write_text("[sidecar]\nmax_unauthenticated_connections = 2\n")
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{harness.url}/_ccgate/reload", headers=harness.headers) as resp,
        ):
            assert resp.status == 200
        sockets = [await connect(harness) for _ in range(5)]
        oldest = [reader for reader, _ in sockets[:3]]
        assert all(await asyncio.wait_for(asyncio.gather(*(closed_by_peer(r) for r in oldest)), BOUND))
        assert (await status(harness))["connections"]["closed_crowded"] >= 3
        for _, writer in sockets:
            writer.close()
