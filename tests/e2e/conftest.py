"""End-to-end fixtures: the real Claude Code CLI, run through `ccgate launch`, against a scripted upstream."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from scripted_upstream import ScriptedUpstream

from ccgate.local.paths import resolve_paths
from e2e.harness import DUMMY_KEY, E2E, REQUIRE_E2E, ClaudeInstall, claude_installs, find_claude, free_port

INSTALLS = claude_installs()


@pytest.fixture(scope="session", params=INSTALLS, ids=[install.id for install in INSTALLS])
def claude_bin(request: pytest.FixtureRequest) -> str:
    """Every e2e test runs once per pinned Claude Code version (test ids show it)."""
    install: ClaudeInstall = request.param
    found, why = find_claude(install)
    if found is None:
        if REQUIRE_E2E:
            pytest.fail(f"CCGATE_REQUIRE_E2E=1 but {why}")
        pytest.skip(why)
    return found


@pytest.fixture
def e2e_repo(tmp_path: Path) -> Iterator[Path]:
    repo = tmp_path / "project-repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    yield repo


@pytest.fixture
async def e2e(claude_bin: str, e2e_repo: Path, isolated_home: Path) -> AsyncIterator[E2E]:
    async with ScriptedUpstream() as upstream:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("CCGATE_", "ANTHROPIC_"))}
        env.update(
            {
                "PATH": os.pathsep.join([str(Path(claude_bin).parent), env.get("PATH", os.defpath)]),
                "CCGATE_HOME": str(isolated_home),
                "CCGATE_ANTHROPIC_BASE_URL": upstream.url,
                "CCGATE_SIDECAR_PORT": str(free_port()),
                "ANTHROPIC_API_KEY": DUMMY_KEY,
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "DISABLE_AUTOUPDATER": "1",
                # the in-memory test keyring is not importable in subprocesses; no secrets are needed here
                "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
            }
        )
        world = E2E(upstream=upstream, repo=e2e_repo, env=env, paths=resolve_paths(env))
        try:
            yield world
        finally:
            await asyncio.to_thread(world.stop_sidecar)
