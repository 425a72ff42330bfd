"""A running sidecar keeps the environment it started with: `launch`, `doctor` and `provider list`, called with
another `CCGATE_<PROVIDER>_BASE_URL` / `_API_KEY`, say what the sidecar uses and how to restart it — comparing
keys by fingerprint, never printing one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ccgate.local.paths import resolve_paths
from ccgate.sidecar.process import pid_alive, read_info, stop_sidecar

CCGATE = [sys.executable, "-m", "ccgate"]
STARTED_WITH = {
    "CCGATE_ANTHROPIC_BASE_URL": "http://127.0.0.1:9/started",
    "CCGATE_GROQ_API_KEY": "gsk-started-with-this-one",
}
LATER = {
    "CCGATE_ANTHROPIC_BASE_URL": "http://127.0.0.1:9/exported-later",
    "CCGATE_GROQ_API_KEY": "gsk-exported-later",
}
KEYS = (STARTED_WITH["CCGATE_GROQ_API_KEY"], LATER["CCGATE_GROQ_API_KEY"])


def run_ccgate(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CCGATE, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def base_env(isolated_home: Path) -> Iterator[dict[str, str]]:
    """A sidecar started with `STARTED_WITH`; the test's calls get whatever environment they are given."""
    environ = {**os.environ, "CCGATE_SIDECAR_PORT": "0"}
    started = run_ccgate("sidecar", "start", env={**environ, **STARTED_WITH})
    assert started.returncode == 0, started.stderr
    yield environ
    paths = resolve_paths(environ)
    stop_sidecar(paths, timeout=5)
    info = read_info(paths)
    if info is not None and pid_alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)


def said(result: subprocess.CompletedProcess[str]) -> str:
    text = " ".join((result.stdout + result.stderr).split())  # the console wraps long lines
    for key in KEYS:
        assert key not in text
    return text


def test_launch_says_when_the_sidecar_uses_other_provider_settings(base_env: dict[str, str], tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text("import sys; sys.exit(7)\n")

    same = run_ccgate("launch", sys.executable, str(child), env={**base_env, **STARTED_WITH})
    assert same.returncode == 7
    assert said(same) == ""

    other = run_ccgate("launch", sys.executable, str(child), env={**base_env, **LATER})
    assert other.returncode == 7  # the launch goes on: other sessions may use this sidecar
    text = said(other)
    assert (
        "anthropic: the sidecar sends requests to a path on http://127.0.0.1:9, your environment says another "
        "path (CCGATE_ANTHROPIC_BASE_URL)" in text
    )
    assert "groq: CCGATE_GROQ_API_KEY here is not the key the sidecar started with" in text
    python = Path(sys.executable).name
    assert f"`ccgate sidecar stop && ccgate launch {python}`" in text

    # a launch with its own ANTHROPIC_BASE_URL sends its Anthropic requests there: the sidecar's does not matter
    own = run_ccgate(
        "launch", sys.executable, str(child), env={**base_env, **LATER, "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/corp"}
    )
    assert own.returncode == 7
    text = said(own)
    assert "anthropic: the sidecar sends" not in text and "groq: CCGATE_GROQ_API_KEY here is not" in text

    without = {key: value for key, value in base_env.items() if key != "CCGATE_GROQ_API_KEY"}
    text = said(run_ccgate("launch", sys.executable, str(child), env={**without, "CCGATE_ANTHROPIC_BASE_URL": ""}))
    assert "groq: the sidecar uses CCGATE_GROQ_API_KEY from when it started; it is not set here" in text
    assert (
        "anthropic: the sidecar sends requests to http://127.0.0.1:9, your environment says https://api.anthropic.com"
        in text
    )


def doctor_checks(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    result = run_ccgate("doctor", "--json", env=env)
    said(result)
    return {check["name"]: check for check in json.loads(result.stdout)["checks"]}


def test_doctor_shows_what_the_sidecar_uses_and_flags_a_difference(base_env: dict[str, str]) -> None:
    checks = doctor_checks({**base_env, **STARTED_WITH})
    assert checks["sidecar providers"]["state"] == "ok"
    assert checks["sidecar providers"]["detail"] == "same as your environment: anthropic http://127.0.0.1:9 (key: none)"

    checks = doctor_checks({**base_env, **LATER})
    assert "sidecar providers" not in checks
    anthropic, groq = checks["sidecar provider anthropic"], checks["sidecar provider groq"]
    assert anthropic["state"] == "fail" and "CCGATE_ANTHROPIC_BASE_URL" in anthropic["detail"]
    assert groq["state"] == "fail" and "not the key the sidecar started with" in groq["detail"]
    assert "`ccgate sidecar stop && ccgate launch claude`" in groq["fix"]

    checks = doctor_checks({**base_env, "CCGATE_ANTHROPIC_BASE_URL": STARTED_WITH["CCGATE_ANTHROPIC_BASE_URL"]})
    assert checks["sidecar provider groq"]["state"] == "warn"  # the sidecar has a key this shell lacks: a warning


def test_provider_list_shows_the_sidecars_settings_beside_the_callers(base_env: dict[str, str]) -> None:
    result = run_ccgate("provider", "list", "--json", env={**base_env, **LATER})
    assert result.returncode == 0, result.stderr
    said(result)
    output = json.loads(result.stdout)
    assert output["sidecar_running"] is True
    rows = {row["name"]: row for row in output["providers"]}
    assert rows["anthropic"]["base_url"] == LATER["CCGATE_ANTHROPIC_BASE_URL"]
    assert rows["anthropic"]["sidecar"]["base_url"] == STARTED_WITH["CCGATE_ANTHROPIC_BASE_URL"]
    assert rows["anthropic"]["sidecar"]["differs"]
    assert rows["groq"]["sidecar"] == {
        "base_url": "https://api.groq.com/openai/v1",
        "key_source": "env",
        "differs": ["groq: CCGATE_GROQ_API_KEY here is not the key the sidecar started with"],
    }
    assert rows["openai"]["sidecar"] == {"base_url": "https://api.openai.com/v1", "key_source": None, "differs": []}
    assert "fingerprint" not in result.stdout

    table = run_ccgate("provider", "list", env={**base_env, **LATER})
    text = said(table)
    assert "differs (env)" in text and "same (no key)" in text
    assert "`ccgate sidecar stop && ccgate launch claude`" in text

    same = said(run_ccgate("provider", "list", env={**base_env, **STARTED_WITH}))
    assert "differs" not in same and "sidecar stop" not in same


def test_sidecar_status_shows_key_sources_but_no_fingerprint(base_env: dict[str, str]) -> None:
    result = run_ccgate("sidecar", "status", "--json", env=base_env)
    assert result.returncode == 0, result.stderr
    said(result)
    providers = json.loads(result.stdout)["status"]["providers"]
    assert providers["groq"] == {"base_url": "https://api.groq.com/openai/v1", "key_source": "env"}
    assert providers["anthropic"]["base_url"] == STARTED_WITH["CCGATE_ANTHROPIC_BASE_URL"]
    assert "fingerprint" not in result.stdout
