"""End-to-end harness: run `ccgate launch claude ...` in an isolated world and read what came out.

Claude Code is looked up in the repo's node_modules first (the pinned version `scripts/test` installs), then
on PATH. Without it the e2e tests skip, unless CCGATE_REQUIRE_E2E=1 (CI), where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scripted_upstream import ScriptedUpstream

from ccgate import env as env_names
from ccgate.local.paths import Paths

REPO = Path(__file__).resolve().parents[2]
# Read at import: the autouse isolation fixture removes every CCGATE_* variable before a test runs.
REQUIRE_E2E = os.environ.get(env_names.REQUIRE_E2E) == "1"
CLAUDE_TIMEOUT = 120.0
CCGATE_TIMEOUT = 60.0
DUMMY_KEY = "sk-ant-dummy"


def find_claude() -> str | None:
    local = REPO / "node_modules" / ".bin" / "claude"
    if local.exists() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("claude")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except ValueError:
            pytest.fail(f"expected JSON on stdout, got {self.stdout!r}; stderr: {self.stderr[-2000:]}")

    def explain(self) -> str:
        return f"exit {self.returncode}\nstdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-4000:]}"


@dataclass(slots=True)
class E2E:
    """One isolated world: a temp git repo, HOME, CCGATE_HOME, sidecar port and a scripted upstream."""

    upstream: ScriptedUpstream
    repo: Path
    env: dict[str, str]
    paths: Paths

    def project(self) -> str:
        """The repo's top-level path as git prints it (what `launch` records as the project)."""
        return subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=self.repo, capture_output=True, text=True, check=True
        ).stdout.strip()

    async def run(self, *args: str, timeout: float = CCGATE_TIMEOUT) -> Completed:
        """Run `ccgate ARGS...` in the repo without blocking the upstream's event loop."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ccgate",
            *args,
            cwd=self.repo,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            await _terminate(process)
            stdout, stderr = await process.communicate()
            command = " ".join(args)
            pytest.fail(f"`ccgate {command}` did not finish in {timeout:.0f}s; stderr: {stderr.decode()[-4000:]}")
        assert process.returncode is not None
        return Completed(process.returncode, stdout.decode(), stderr.decode())

    async def claude(self, *args: str) -> Completed:
        return await self.run("launch", "claude", *args, timeout=CLAUDE_TIMEOUT)

    async def cost(self, *args: str) -> dict[str, Any]:
        result = await self.run("cost", "today", *args, "--json")
        assert result.returncode == 0, result.explain()
        data = result.json()
        assert isinstance(data, dict), data
        return data

    def local_token(self) -> str | None:
        try:
            return self.paths.token_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def stop_sidecar(self) -> None:
        """`ccgate sidecar stop`, then SIGKILL by the pid file if the sidecar is somehow still alive."""
        pid = _read_pid(self.paths)
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                [sys.executable, "-m", "ccgate", "sidecar", "stop"],
                env=self.env,
                cwd=self.repo,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=CCGATE_TIMEOUT,
                check=False,
            )
        if pid is not None and _is_our_sidecar(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _terminate(process: asyncio.subprocess.Process) -> None:
    """SIGTERM (launch forwards it to claude), SIGKILL if that is not enough."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()


def _read_pid(paths: Paths) -> int | None:
    try:
        return int(paths.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _is_our_sidecar(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"ccgate" in cmdline
