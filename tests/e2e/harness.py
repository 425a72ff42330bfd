"""End-to-end harness: run `ccgate launch claude ...` in an isolated world and read what came out.

The suite runs once per Claude Code version `scripts/test` pins (CLAUDE_CODE_PINNED into node_modules/,
CLAUDE_CODE_LATEST into .e2e/claude-latest/), so a change in what the newest release sends fails here rather
than in a user's terminal. A version missing from its prefix is looked up on PATH; without it its tests skip,
unless CCGATE_REQUIRE_E2E=1 (CI), where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
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


SCRIPTS_TEST = REPO / "scripts" / "test"
PACKAGE = "@anthropic-ai/claude-code"


@dataclass(frozen=True, slots=True)
class ClaudeInstall:
    """One Claude Code version the e2e suite runs against, and the npm prefix `scripts/test` installs it into."""

    role: str  # "pinned" or "latest"
    version: str
    prefix: Path

    @property
    def id(self) -> str:
        return f"claude-{self.version}"

    @property
    def binary(self) -> Path:
        return self.prefix / "node_modules" / ".bin" / "claude"

    def installed_version(self) -> str | None:
        manifest = self.prefix / "node_modules" / PACKAGE / "package.json"
        try:
            version = json.loads(manifest.read_text()).get("version")
        except (OSError, ValueError):
            return None
        return version if isinstance(version, str) else None


def claude_installs(script: Path = SCRIPTS_TEST) -> list[ClaudeInstall]:
    """The versions scripts/test pins (its single source of truth), pinned first."""
    text = script.read_text()
    prefixes = {"pinned": REPO, "latest": REPO / ".e2e" / "claude-latest"}
    installs = []
    for role, prefix in prefixes.items():
        match = re.search(rf"^CLAUDE_CODE_{role.upper()}=([0-9][0-9A-Za-z.+-]*)", text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"{script} does not set CLAUDE_CODE_{role.upper()}")
        installs.append(ClaudeInstall(role, match.group(1), prefix))
    return installs


def find_claude(install: ClaudeInstall) -> tuple[str | None, str]:
    """The executable for exactly `install.version`, or None and why not."""
    found = install.installed_version()
    if found == install.version and os.access(install.binary, os.X_OK):
        return str(install.binary), ""
    on_path = shutil.which("claude")
    if on_path is not None and _reported_version(on_path) == install.version:
        return on_path, ""
    where = install.prefix.relative_to(REPO) if install.prefix.is_relative_to(REPO) else install.prefix
    modules = where / "node_modules"
    have = f"{modules} holds {found}" if found else f"nothing in {modules}"
    return None, f"Claude Code {install.version} ({install.role}) not installed ({have}): run scripts/test"


def _reported_version(binary: str) -> str | None:
    try:
        output = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"},
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return output.split(" ", 1)[0].strip() or None


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

    async def plain_claude(self, *args: str, cwd: Path | None = None) -> Completed:
        """`claude ARGS...` itself, without `ccgate launch` (what `ccgate install` is for)."""
        process = await asyncio.create_subprocess_exec(
            "claude",
            *args,
            cwd=cwd or self.repo,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), CLAUDE_TIMEOUT)
        except TimeoutError:
            await _terminate(process)
            stdout, stderr = await process.communicate()
            pytest.fail(f"`claude {' '.join(args)}` did not finish; stderr: {stderr.decode()[-4000:]}")
        assert process.returncode is not None
        return Completed(process.returncode, stdout.decode(), stderr.decode())

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
