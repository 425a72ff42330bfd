"""What `launch` computes before it runs the child (project, headers, ways around ccgate) and whose --help it is."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_main

from ccgate import __version__
from ccgate.features.launching import bypass_warnings, merge_custom_headers, project_of, terminal_delivers_sigint
from ccgate.local.paths import resolve_paths
from ccgate.sidecar.process import (
    CHALLENGE_HEADER,
    PROOF_HEADER,
    SERVICE_NAME,
    ensure_token,
    home_id,
    identity_proof,
    remove_run_files,
    write_run_files,
)


def test_custom_headers_keep_the_users_lines_and_replace_stale_ccgate_ones() -> None:
    existing = "X-Team: blue\nx-ccgate-token: cgt-old\n\nX-Trace: 1"
    merged = merge_custom_headers(existing, {"x-ccgate-token": "cgt-new", "x-ccgate-launch": "abc123"})
    assert merged.splitlines() == ["X-Team: blue", "X-Trace: 1", "x-ccgate-token: cgt-new", "x-ccgate-launch: abc123"]
    assert merge_custom_headers(None, {"x-ccgate-token": "t"}) == "x-ccgate-token: t"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x85", "\r", "\x00", "\x1b"])
def test_a_custom_header_holding_a_control_character_is_refused_not_split(separator: str) -> None:
    from ccgate.errors import UserInputError

    existing = f"X-Team: blue\nX-Trace: a{separator}X-Forged: yes"
    with pytest.raises(UserInputError) as refused:
        merge_custom_headers(existing, {"x-ccgate-token": "t"})
    assert "ANTHROPIC_CUSTOM_HEADERS" in refused.value.message and "'X-Trace'" in refused.value.message
    assert refused.value.hint and "newline" in refused.value.hint


def test_custom_headers_split_on_newlines_only_and_keep_a_tab_inside_a_value() -> None:
    merged = merge_custom_headers("X-A: one\ttwo\nX-B: three", {"x-ccgate-token": "t"})
    assert merged.split("\n") == ["X-A: one\ttwo", "X-B: three", "x-ccgate-token: t"]


def test_launch_refuses_a_custom_header_with_a_control_character(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_sidecar: FakeSidecar, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    monkeypatch.setenv("ANTHROPIC_CUSTOM_HEADERS", "X-Team: blue\u2028x-ccgate-token: forged")
    code, _, err = run_main(capsys, monkeypatch, "launch", "touch", str(marker))
    assert code == 1 and not marker.exists()
    first, hint = err.splitlines()[-2:]
    assert first.startswith("ccgate: error: ANTHROPIC_CUSTOM_HEADERS: the header 'X-Team'") and "\\u2028" in first
    assert hint.startswith("  hint: ")


def test_project_is_the_git_top_level_or_the_directory_itself(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src" / "deep").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    top = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert project_of(repo / "src" / "deep") == top
    plain = tmp_path / "plain"
    plain.mkdir()
    assert project_of(plain) == str(plain)


# no system-wide managed settings: the machine's own are not the test's business
NO_MANAGED = {"CCGATE_CLAUDE_MANAGED_SETTINGS": ""}


def test_bypasses_are_detected_in_env_and_settings(tmp_path: Path) -> None:
    assert bypass_warnings(NO_MANAGED, tmp_path) == []
    warnings = bypass_warnings(NO_MANAGED | {"CLAUDE_CODE_USE_BEDROCK": "1"}, tmp_path)
    assert len(warnings) == 1 and "CLAUDE_CODE_USE_BEDROCK" in warnings[0]
    settings = tmp_path / ".claude" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(
        json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://proxy.example", "CLAUDE_CODE_USE_VERTEX": "1"}})
    )
    found = bypass_warnings(NO_MANAGED, tmp_path)
    assert any("ANTHROPIC_BASE_URL" in w for w in found)
    assert any("CLAUDE_CODE_USE_VERTEX" in w for w in found)
    settings.write_text("{not json")
    assert bypass_warnings(NO_MANAGED, tmp_path) == []  # a broken settings file is doctor's business, not a crash here


def test_foundry_and_managed_settings_are_bypasses_too(tmp_path: Path) -> None:
    managed = tmp_path / "managed-settings.json"
    environ = {"CCGATE_CLAUDE_MANAGED_SETTINGS": str(managed)}
    assert bypass_warnings(environ, tmp_path) == []
    foundry = bypass_warnings(environ | {"CLAUDE_CODE_USE_FOUNDRY": "1"}, tmp_path)
    assert len(foundry) == 1 and "CLAUDE_CODE_USE_FOUNDRY is set" in foundry[0]
    managed.write_text(
        json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://corp-proxy.example", "CLAUDE_CODE_USE_FOUNDRY": "1"}})
    )
    found = bypass_warnings(environ, tmp_path)
    assert len(found) == 2
    assert all("(managed settings)" in w and "ask whoever manages it" in w for w in found)
    assert "env.ANTHROPIC_BASE_URL" in found[0] and "env.CLAUDE_CODE_USE_FOUNDRY" in found[1]


def test_user_settings_are_read_from_claude_config_dir_when_set(tmp_path: Path) -> None:
    elsewhere = tmp_path / "claude-config"
    elsewhere.mkdir()
    (elsewhere / "settings.json").write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://proxy.example"}}))
    environ = NO_MANAGED
    assert bypass_warnings(environ, tmp_path) == []
    found = bypass_warnings(environ | {"CLAUDE_CONFIG_DIR": str(elsewhere)}, tmp_path)
    assert len(found) == 1 and str(elsewhere / "settings.json") in found[0]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_right_after_launch_is_launchs_own(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    code, out, err = run_main(capsys, monkeypatch, "launch", flag)
    assert code == 0, err
    assert "launch [OPTIONS] COMMAND [ARGS]..." in out and "Everything after COMMAND is passed to it unchanged" in out
    assert "{COMMAND}" not in out
    assert "command not found" not in err


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_after_the_command_goes_to_the_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    import ccgate.features.launching

    launched: list[list[str]] = []

    def fake_run_launch(paths: object, config: object, argv: list[str], *args: object, **kwargs: object) -> int:
        launched.append(argv)
        return 7

    monkeypatch.setattr(ccgate.features.launching, "run_launch", fake_run_launch)
    code, out, _ = run_main(capsys, monkeypatch, "launch", "claude", flag)
    assert code == 7 and out == ""
    assert launched == [["claude", flag]]


class FakeSidecar(http.server.ThreadingHTTPServer):
    """A sidecar on loopback that is healthy, serves this home, proves it holds its token and, like older ones,
    ignores fields it does not know (launch registers with it, then runs its command)."""

    version = __version__
    home = ""
    token = ""
    registrations: list[dict[str, Any]]


class _FakeSidecarHandler(http.server.BaseHTTPRequestHandler):
    server: FakeSidecar
    protocol_version = "HTTP/1.1"  # keep-alive: the token goes on the connection that proved who it is

    def do_GET(self) -> None:
        payload = {"service": SERVICE_NAME, "ok": True, "version": self.server.version, "pid": os.getpid()}
        nonce = self.headers.get(CHALLENGE_HEADER)
        proof = identity_proof(self.server.token, nonce, self.server.server_address[1]) if nonce else None
        self._reply({**payload, "home_id": self.server.home}, {PROOF_HEADER: proof} if proof else {})

    def do_POST(self) -> None:
        self.server.registrations.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self._reply({"ok": True})

    def _reply(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_sidecar(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSidecar]:
    paths = resolve_paths().ensure()
    server = FakeSidecar(("127.0.0.1", 0), _FakeSidecarHandler)
    server.home, server.token, server.registrations = home_id(paths), ensure_token(paths), []
    # should it ever not count as this home's sidecar, launch fails on its port rather than start a real one
    monkeypatch.setenv("CCGATE_SIDECAR_PORT", str(server.server_address[1]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    write_run_files(paths, os.getpid(), server.server_address[1])
    try:
        yield server
    finally:
        remove_run_files(paths, os.getpid())  # nothing may ever try to stop "the sidecar" at this pid
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_older_sidecar_that_would_drop_the_users_base_url_stops_the_launch(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_sidecar: FakeSidecar, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    fake_sidecar.version = "0.0.1"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://corp-gw.example")
    code, _, err = run_main(capsys, monkeypatch, "launch", "touch", str(marker))
    said = " ".join(err.split())
    assert code == 1 and "ignored ANTHROPIC_BASE_URL" in said and "`ccgate sidecar stop`" in said
    assert fake_sidecar.registrations[0]["anthropic_base_url"] == "https://corp-gw.example"
    assert not marker.exists()  # no request of this session can reach the default upstream with the gateway's token


def test_launch_warns_about_a_projects_own_settings_like_doctor(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_sidecar: FakeSidecar, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / ".claude").mkdir(parents=True)
    for name in ("settings.json", "settings.local.json"):
        (project / ".claude" / name).write_text(json.dumps({"env": {"ANTHROPIC_BASE_URL": "https://proxy.example"}}))
    monkeypatch.chdir(project)
    monkeypatch.setenv("COLUMNS", "1000")  # one warning a line, long paths unfolded
    code, _, err = run_main(capsys, monkeypatch, "launch", "true")
    said = err
    assert code == 0
    for name in ("settings.json", "settings.local.json"):
        assert f"{project / '.claude' / name} sets env.ANTHROPIC_BASE_URL" in said
    assert fake_sidecar.registrations[0]["project"] == str(project)


def test_a_sidecar_of_another_version_is_reused_with_a_notice_saying_how_to_restart_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_sidecar: FakeSidecar, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    monkeypatch.setenv("COLUMNS", "1000")
    code, _, err = run_main(capsys, monkeypatch, "launch", "touch", str(marker))
    assert code == 0 and marker.exists() and err == ""  # same version: nothing to say
    fake_sidecar.version = "0.0.1"
    code, _, err = run_main(capsys, monkeypatch, "launch", "touch", str(marker))
    assert code == 0 and len(fake_sidecar.registrations) == 2  # used as it is: other sessions may depend on it
    assert err.splitlines() == [
        f"! the running sidecar is ccgate 0.0.1, this is {__version__}: "
        "to upgrade it, run `ccgate sidecar stop`, then launch again"
    ]


# ---- signals: one Ctrl-C is one SIGINT for the child, and a SIGINT sent to launch alone is passed on


def test_the_terminal_delivers_sigint_only_to_its_foreground_group() -> None:
    def foreground_is(group: int) -> Any:
        return lambda _fd: group

    def hung_up(_fd: int) -> int:
        raise OSError(25, "Inappropriate ioctl for device")

    assert terminal_delivers_sigint(5, foreground_group=foreground_is(100), own_group=lambda: 100)
    assert not terminal_delivers_sigint(5, foreground_group=foreground_is(200), own_group=lambda: 100)  # background
    assert not terminal_delivers_sigint(None, foreground_group=foreground_is(100), own_group=lambda: 100)  # no tty
    assert not terminal_delivers_sigint(5, foreground_group=hung_up, own_group=lambda: 100)


# Stands in for Claude Code: counts the SIGINTs it gets, until a second after the first one (or 20 s).
COUNTING_CHILD = """\
import os, signal, sys, time
seen = []
signal.signal(signal.SIGINT, lambda *_: seen.append(time.monotonic()))
with open(sys.argv[1] + ".tmp", "w") as ready:
    ready.write(str(os.getppid()))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
deadline = time.monotonic() + 20
while time.monotonic() < deadline and not (seen and time.monotonic() > seen[0] + 1):
    time.sleep(0.02)
with open(sys.argv[2], "w") as out:
    out.write(str(len(seen)))
"""
# A session of its own on the pty (as a terminal window gives a shell), then launch in the foreground (exec) or as
# a background job (its own process group, like `&`); stdin is the pty or /dev/null.
ON_A_TERMINAL = """\
import os, subprocess, sys
tty, where, command = sys.argv[1], sys.argv[2], sys.argv[3:]
os.close(os.open(tty, os.O_RDWR))  # a session leader opening a terminal makes it its controlling terminal
if where == "foreground":
    os.execvp(command[0], command)
sys.exit(subprocess.Popen(command, process_group=0).wait())
"""


def _launch_on_a_pty(tmp_path: Path, *, where: str, stdin_is_tty: bool) -> tuple[int, Path, Path, Any]:
    import pty
    import sys

    (tmp_path / "child.py").write_text(COUNTING_CHILD)
    ready, result = tmp_path / "ready", tmp_path / "count"
    master, slave = pty.openpty()
    launch = [sys.executable, "-m", "ccgate", "launch", sys.executable, str(tmp_path / "child.py"), str(ready)]
    process = subprocess.Popen(
        [sys.executable, "-c", ON_A_TERMINAL, os.ttyname(slave), where, *launch, str(result)],
        stdin=slave if stdin_is_tty else subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    return master, ready, result, process


def _wait_for(path: Path, process: Any, timeout: float = 30) -> str:
    import time

    deadline = time.monotonic() + timeout
    # the child creates the file, then writes it: an empty file is not its answer yet
    while not path.exists() or not path.read_text():
        assert process.poll() is None or path.exists(), "launch ended early"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)
    return path.read_text()


@pytest.mark.parametrize("stdin_is_tty", [True, False], ids=["stdin-tty", "stdin-not-a-tty"])
def test_one_ctrl_c_at_the_terminal_is_one_sigint_for_the_child(
    fake_sidecar: FakeSidecar, tmp_path: Path, stdin_is_tty: bool
) -> None:
    master, ready, result, process = _launch_on_a_pty(tmp_path, where="foreground", stdin_is_tty=stdin_is_tty)
    try:
        _wait_for(ready, process)
        os.write(master, b"\x03")  # Ctrl-C: the terminal signals its foreground process group
        assert _wait_for(result, process) == "1"
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


def test_a_sigint_sent_to_a_background_launch_alone_reaches_the_child(
    fake_sidecar: FakeSidecar, tmp_path: Path
) -> None:
    import signal

    master, ready, result, process = _launch_on_a_pty(tmp_path, where="background", stdin_is_tty=True)
    launcher = None
    try:
        launcher = int(_wait_for(ready, process))
        os.kill(launcher, signal.SIGINT)  # `kill -INT <pid of ccgate launch>`
        assert _wait_for(result, process) == "1"
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            if launcher is not None:  # in a process group of its own: not taken down with the wrapper
                os.kill(launcher, signal.SIGKILL)
            process.kill()
            process.wait()
        os.close(master)
