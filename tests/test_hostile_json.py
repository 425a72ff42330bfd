"""JSON nested past Python's recursion limit (a hostile project's `.claude/settings.json`, a hook's stdin, a
client's registration) is refused or ignored like any other bad JSON: never a traceback, never a 500."""

from __future__ import annotations

import io
import json
from pathlib import Path

import aiohttp
import pytest
from sidecar_harness import running_sidecar

from ccgate.core import tags
from ccgate.errors import UserInputError
from ccgate.features.installing import hook_main
from ccgate.features.launching import bypass_warnings
from ccgate.features.statusline import parse_input
from ccgate.local.claude_settings import read_settings
from ccgate.local.paths import resolve_paths
from ccgate.sidecar.app import _load_launches

DEEP = '{"env": ' + "[" * 100_000 + "]" * 100_000 + "}"


def test_a_deep_settings_file_is_refused_as_not_json(tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(DEEP)
    with pytest.raises(UserInputError, match="not valid JSON"):
        read_settings(settings)
    assert settings.read_text() == DEEP


def test_launch_reads_a_deep_project_settings_file_as_none(tmp_path: Path) -> None:
    project = tmp_path / "settings.json"
    project.write_text(DEEP)
    assert bypass_warnings({}, tmp_path, extra_settings=[project]) == []


def test_the_hook_says_its_input_is_not_json() -> None:
    stderr = io.StringIO()
    assert hook_main([], io.StringIO(DEEP), stderr, {}) == 2
    assert "not JSON" in stderr.getvalue()


def test_the_status_line_and_tags_read_deep_json_as_nothing() -> None:
    assert parse_input(DEEP) == parse_input("")
    assert tags.decode(DEEP) == {}


def test_a_deep_launches_file_reads_as_no_launches() -> None:
    paths = resolve_paths().ensure()
    (paths.state_dir / "launches.json").write_text(DEEP)
    assert _load_launches(paths) == {}


async def test_a_deep_session_registration_is_a_400() -> None:
    async with (
        running_sidecar() as harness,
        aiohttp.ClientSession() as session,
        session.post(f"{harness.url}/_ccgate/sessions", data=DEEP, headers=harness.headers) as resp,
    ):
        assert resp.status == 400
        assert "must be JSON" in (await resp.json())["error"]["message"]


def test_launches_of_the_wrong_types_are_dropped_and_the_rest_kept() -> None:
    """A hand-edited launches.json must not keep the sidecar from starting, nor give requests a project that
    the ledger cannot store."""
    paths = resolve_paths().ensure()
    entries = {
        "bad-time": {"started_at": "yesterday"},
        "inf-time": {"started_at": 1e999},
        "bool-time": {"started_at": True},
        "dict-project": {"project": {"x": 1}, "started_at": 1},
        "good": {"project": "/p", "started_at": 5},
    }
    (paths.state_dir / "launches.json").write_text(json.dumps(entries).replace("Infinity", "1e999"))
    launches = _load_launches(paths)
    assert list(launches) == ["good"]
    assert launches["good"].project == "/p" and launches["good"].started_at == 5.0
