"""The sidecar's log cannot be flooded by anyone who reaches its port, and rotates by size while it runs."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from ccgate.local.paths import Paths, resolve_paths
from ccgate.sidecar import process
from ccgate.sidecar.logs import FloodLimiter
from ccgate.sidecar.process import pid_alive, read_info, stop_sidecar

MALFORMED = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon in this header\r\n\r\n"
UNAUTHENTICATED = b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"


@pytest.fixture
def sidecar(isolated_home: Path) -> Iterator[tuple[Paths, int]]:
    env = {**os.environ, "CCGATE_SIDECAR_PORT": "0"}
    paths = resolve_paths(env).ensure()
    info, _ = process.ensure_sidecar(paths, port=0, environ=env)
    try:
        yield paths, info.port
    finally:
        stop_sidecar(paths, timeout=10)
        left = read_info(paths)
        if left is not None and pid_alive(left.pid):
            os.kill(left.pid, signal.SIGKILL)


async def send_all(port: int, payload: bytes, count: int, parallel: int = 20) -> list[bytes]:
    """`count` connections, each sending `payload` and reading whatever comes back until the sidecar closes."""
    gate = asyncio.Semaphore(parallel)
    answers: list[bytes] = []

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(payload)
            try:
                answers.append(await asyncio.wait_for(reader.read(), 30))
            finally:
                writer.close()

    await asyncio.gather(*(one() for _ in range(count)))
    return answers


async def test_two_thousand_bad_requests_add_only_a_few_lines(sidecar: tuple[Paths, int]) -> None:
    paths, port = sidecar
    before = paths.log_file.stat().st_size
    malformed = await send_all(port, MALFORMED, 2000)
    refused = await send_all(port, UNAUTHENTICATED, 1000)
    assert all(answer.split(b" ", 2)[1] == b"400" for answer in malformed)
    assert all(answer.split(b" ", 2)[1] == b"401" for answer in refused)
    grown = paths.log_file.stat().st_size - before
    assert grown <= 4096, paths.log_file.read_text()[-3000:]
    stop_sidecar(paths, timeout=10)
    text = paths.log_file.read_text()
    assert "Traceback" not in text
    assert "malformed request (BadHttpMessage)" in text
    # what was held back is reported once, when the sidecar stops at the latest
    assert "suppressed 1990 similar lines" in text


ROTATING_CHILD = """
import logging, os, sys
from pathlib import Path
from ccgate.sidecar.logs import FloodLimiter, SidecarLogHandler

handler = SidecarLogHandler(Path(sys.argv[1]), max_bytes=2000, limiter=FloodLimiter(per_kind=10**6))
log = logging.getLogger("ccgate.test")
log.addHandler(handler)
log.setLevel(logging.INFO)
for i in range(60):
    log.info("line %03d %s", i, "x" * 60)
os.write(2, b"written to stderr directly, after the rotations\\n")
"""


def test_the_log_rotates_by_size_while_the_sidecar_runs(tmp_path: Path) -> None:
    log_file = tmp_path / "sidecar.log"
    with open(log_file, "ab") as handle:  # as `ccgate sidecar start` hands it to the sidecar
        subprocess.run(
            [sys.executable, "-c", ROTATING_CHILD, str(log_file)],
            stdout=handle,
            stderr=handle,
            check=True,
            timeout=60,
        )
    current, rotated = log_file.read_text(), log_file.with_name("sidecar.log.1").read_text()
    assert len(rotated) > 2000 and len(current) <= 2000 + 200
    assert "line 059" in current and "written to stderr directly" in current
    assert "line 058" in rotated or "line 058" in current


def test_a_log_that_is_not_stderr_is_never_moved(tmp_path: Path) -> None:
    """Started in a terminal (or with stderr elsewhere), the sidecar leaves a file of that name alone."""
    log_file = tmp_path / "sidecar.log"
    log_file.write_text("someone else's file\n")
    subprocess.run(
        [sys.executable, "-c", ROTATING_CHILD, str(log_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=60,
    )
    assert log_file.read_text() == "someone else's file\n"
    assert not log_file.with_name("sidecar.log.1").exists()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, exc_info)


def test_each_kind_gets_its_own_allowance_and_one_summary() -> None:
    clock = Clock()
    limiter = FloodLimiter(per_kind=3, interval=60, clock=clock)
    passed = [limiter.admit(record("ccgate.proxy.engine", "failover: %s", i)) for i in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert limiter.admit(record("ccgate.sidecar", "another kind"))
    assert limiter.due() == []  # the window is still open
    clock.now += 61
    (summary,) = limiter.due()
    assert summary.getMessage() == "suppressed 7 similar lines in 60 s: failover: %s"
    assert summary.name == "ccgate.proxy.engine"
    assert limiter.admit(record("ccgate.proxy.engine", "failover: %s", 11))  # a new window


def test_a_malformed_request_is_one_line_without_traceback() -> None:
    try:
        raise BadHttpMessage("Invalid header: x-ccgate-token secret-looking-bytes")
    except BadHttpMessage as exc:
        item = record("aiohttp.server", "Error handling request from %s", "127.0.0.1", exc=exc)
    assert FloodLimiter().admit(item)
    assert item.exc_info is None
    assert item.getMessage() == "Error handling request from 127.0.0.1: malformed request (BadHttpMessage)"


def test_a_real_error_keeps_its_traceback_even_in_a_flood_of_garbage() -> None:
    limiter = FloodLimiter(per_kind=3)
    for _ in range(100):
        try:
            raise BadHttpMessage("garbage")
        except BadHttpMessage as exc:
            limiter.admit(record("aiohttp.server", "Error handling request from %s", "127.0.0.1", exc=exc))
    try:
        raise KeyError("a bug")
    except KeyError as exc:
        item = record("aiohttp.server", "Error handling request from %s", "127.0.0.1", exc=exc)
    assert limiter.admit(item)
    assert item.exc_info is not None
