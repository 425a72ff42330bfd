"""Every test gets its own CCGATE_HOME and HOME, so nothing touches the real user's files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "ccgate-home"
    home.mkdir()
    for key in list(os.environ):
        if key.startswith(("CCGATE_", "ANTHROPIC_")):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CCGATE_HOME", str(home))
    user_home = tmp_path / "user-home"
    user_home.mkdir()
    monkeypatch.setenv("HOME", str(user_home))
    # Claude Code's system-wide managed settings: a test file, never the machine's own
    monkeypatch.setenv("CCGATE_CLAUDE_MANAGED_SETTINGS", str(tmp_path / "managed-settings.json"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "ccgate_testing_keyring.MemoryKeyring")
    # subprocesses (sidecar, CLI) find the test keyring backend and the scripted upstream too
    support = str(Path(__file__).parent / "support")
    existing = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", support + (os.pathsep + existing if existing else ""))
    from ccgate_testing_keyring import MemoryKeyring

    from ccgate.cli._app import reset_context

    MemoryKeyring._store.clear()
    reset_context()
    yield home
    reset_context()


@pytest.fixture
def reload_notices(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Stands in for a running sidecar: every `notify_reload` call is recorded and answered as reloaded."""
    from ccgate.sidecar import process

    calls: list[object] = []

    def fake_notify(paths: object = None) -> bool:
        calls.append(paths)
        return True

    monkeypatch.setattr(process, "notify_reload", fake_notify)
    return calls
