"""What `ccgate launch` does: ensure the sidecar, register the launch, run the child with the right env."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

from ccgate.config import Config
from ccgate.errors import CcgateError, UserInputError
from ccgate.paths import Paths
from ccgate.providers import redact_url

CLAUDE_INSTALL_HINT = "install Claude Code with `npm install -g @anthropic-ai/claude-code`, then run this again"
# Switches that send Claude Code to a cloud provider's endpoint instead of ANTHROPIC_BASE_URL.
CLOUD_SWITCHES = ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY")


def managed_settings_files(environ: Mapping[str, str]) -> list[Path]:
    """Claude Code's system-wide managed settings (set by an administrator; they win over every other file).

    `CCGATE_CLAUDE_MANAGED_SETTINGS` (paths separated by the OS path separator) replaces the platform's locations.
    """
    override = environ.get("CCGATE_CLAUDE_MANAGED_SETTINGS")
    if override is not None:
        return [Path(part) for part in override.split(os.pathsep) if part]
    if sys.platform == "darwin":
        return [Path("/Library/Application Support/ClaudeCode/managed-settings.json")]
    if sys.platform == "win32":
        return [
            Path(r"C:\ProgramData\ClaudeCode\managed-settings.json"),
            Path(r"C:\Program Files\ClaudeCode\managed-settings.json"),
        ]
    return [Path("/etc/claude-code/managed-settings.json")]


def project_of(cwd: Path) -> str:
    """The git top-level of the working directory, or the directory itself outside a repository."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return str(cwd)
    top = result.stdout.strip()
    return top if result.returncode == 0 and top else str(cwd)


def merge_custom_headers(existing: str | None, ours: Mapping[str, str]) -> str:
    """ANTHROPIC_CUSTOM_HEADERS holds `Name: value` lines; keep the user's, replace any stale ccgate ones."""
    lines = [
        line
        for line in (existing or "").splitlines()
        if line.strip() and line.split(":", 1)[0].strip().lower() not in {name.lower() for name in ours}
    ]
    lines.extend(f"{name}: {value}" for name, value in ours.items())
    return "\n".join(lines)


def bypass_warnings(environ: Mapping[str, str], home: Path, *, extra_settings: Sequence[Path] = ()) -> list[str]:
    """Ways Claude Code would go around the sidecar even when launched through it.

    `extra_settings`: more Claude Code settings files to look at (e.g. a project's `.claude/settings.json`).
    """
    warnings: list[str] = []
    for var in CLOUD_SWITCHES:
        if environ.get(var) and environ.get(var) not in ("0", "false", ""):
            warnings.append(f"{var} is set: Claude Code talks to the cloud provider directly; unset it to meter")
    from ccgate.statusline import claude_config_dir

    managed = managed_settings_files(environ)
    for settings in (claude_config_dir(environ, home) / "settings.json", *extra_settings, *managed):
        try:
            data = json.loads(settings.read_text())
        except (OSError, ValueError):
            data = None
        env = data.get("env") if isinstance(data, dict) else None
        if not isinstance(env, dict):
            continue
        # managed settings are an administrator's: the user cannot edit them, only ask
        remedy = "ask whoever manages it" if settings in managed else "remove it from that file"
        where = f"{settings} (managed settings)" if settings in managed else str(settings)
        if env.get("ANTHROPIC_BASE_URL"):
            warnings.append(f"{where} sets env.ANTHROPIC_BASE_URL, which overrides ccgate's; {remedy}")
        for var in CLOUD_SWITCHES:
            if env.get(var):
                warnings.append(f"{where} sets env.{var}; requests bypass ccgate while it is there ({remedy})")
    return warnings


def run_launch(
    paths: Paths,
    config: Config,
    argv: list[str],
    environ: Mapping[str, str],
    *,
    warn: Callable[[str], None],
    cwd: Path | None = None,
) -> int:
    from ccgate.sidecar.process import (
        LAUNCH_HEADER,
        TOKEN_HEADER,
        configured_port,
        control_request,
        ensure_sidecar,
        ensure_token,
    )

    command = argv[0]
    executable = shutil.which(command, path=environ.get("PATH"))
    if executable is None:
        hint = CLAUDE_INSTALL_HINT if command == "claude" else "check the command name and your PATH"
        raise UserInputError(f"command not found: {command}", hint=hint)
    cwd = cwd or Path.cwd()
    port = configured_port(config.sidecar.port, environ)
    info, _ = ensure_sidecar(paths, port=port, environ=environ)
    token = ensure_token(paths)
    launch_id = uuid.uuid4().hex
    project = project_of(cwd)
    try:
        control_request(paths, "POST", "/_ccgate/launches", {"launch_id": launch_id, "project": project})
    except CcgateError as error:
        warn(f"could not register this launch with the sidecar ({error.message}); project will be unknown")
    for message in bypass_warnings(environ, Path(environ.get("HOME", str(Path.home())))):
        warn(message)

    previous = environ.get("ANTHROPIC_BASE_URL")
    if previous and previous.rstrip("/") != info.url:
        warn(f"ANTHROPIC_BASE_URL was set to {redact_url(previous)}; this session goes through ccgate instead")
    env = dict(environ)
    env["ANTHROPIC_BASE_URL"] = info.url
    env["ANTHROPIC_CUSTOM_HEADERS"] = merge_custom_headers(
        environ.get("ANTHROPIC_CUSTOM_HEADERS"), {TOKEN_HEADER: token, LAUNCH_HEADER: launch_id}
    )
    env["CCGATE_LAUNCH_ID"] = launch_id
    return _run_child([executable, *argv[1:]], env)


def _run_child(args: list[str], env: dict[str, str]) -> int:
    """Same terminal, same exit code; SIGTERM/SIGHUP are forwarded, and SIGINT too unless it came from a terminal.

    A Ctrl-C typed at the terminal reaches the child directly (same process group); forwarding it again would
    make Claude Code see a double Ctrl-C, which means "exit".
    """
    child = subprocess.Popen(args, env=env)
    interactive = os.isatty(0)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and interactive:
            return
        if child.poll() is None:
            child.send_signal(signum)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, forward),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGHUP: signal.signal(signal.SIGHUP, forward),
    }
    try:
        code = child.wait()  # PEP 475: a forwarded signal does not interrupt the wait
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - code if code < 0 else code
