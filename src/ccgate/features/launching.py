"""What `ccgate launch` does: ensure the sidecar, register the launch, run the child with the right env."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

from ccgate import __version__
from ccgate import env as env_names
from ccgate.core.providers import is_loopback_url, redact_url, validate_base_url
from ccgate.core.settings import Config
from ccgate.errors import CcgateError, ConfigError, SidecarError, UserInputError
from ccgate.local.paths import Paths

CLAUDE_INSTALL_HINT = "install Claude Code with `npm install -g @anthropic-ai/claude-code`, then run this again"
# Switches that send Claude Code to a cloud provider's endpoint instead of ANTHROPIC_BASE_URL.
CLOUD_SWITCHES = ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY")


def managed_settings_files(environ: Mapping[str, str]) -> list[Path]:
    """Claude Code's system-wide managed settings (set by an administrator; they win over every other file).

    `CCGATE_CLAUDE_MANAGED_SETTINGS` (paths separated by the OS path separator) replaces the platform's locations.
    """
    override = environ.get(env_names.CLAUDE_MANAGED_SETTINGS)
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


# Refused in a custom header line (tab is legal inside a value): anything else would let one header turn into
# two somewhere along the way, where a reader splits lines on more than `\n` (as `str.splitlines` does).
_HEADER_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def merge_custom_headers(existing: str | None, ours: Mapping[str, str]) -> str:
    """ANTHROPIC_CUSTOM_HEADERS holds `Name: value` lines; keep the user's, replace any stale ccgate ones.

    Lines are split on newlines only; a line holding any other control character is refused, naming the header.
    """
    ours_lower = {name.lower() for name in ours}
    lines: list[str] = []
    for line in (existing or "").split("\n"):
        name = line.split(":", 1)[0].strip()
        bad = _HEADER_CONTROLS.search(line)
        if bad is not None:
            raise UserInputError(
                f"ANTHROPIC_CUSTOM_HEADERS: the header {name!r} holds the control character {bad.group()!r}",
                hint="put one `Name: value` per line, lines separated by a plain newline (\\n) only, "
                "with no control characters (no \\r, \\x0b, \\x85, U+2028) in names or values",
            )
        if line.strip() and name.lower() not in ours_lower:
            lines.append(line)
    lines.extend(f"{name}: {value}" for name, value in ours.items())
    return "\n".join(lines)


def project_settings_files(cwd: Path, home: Path) -> list[Path]:
    """The Claude Code settings a project can carry (shared and local); in the home directory there are none,
    `~/.claude/settings.json` being the user's own settings."""
    if cwd.resolve() == home.resolve():
        return []
    return [cwd / ".claude" / "settings.json", cwd / ".claude" / "settings.local.json"]


def bypass_warnings(
    environ: Mapping[str, str],
    home: Path,
    *,
    extra_settings: Sequence[Path] = (),
    sidecar_ports: Sequence[int] = (),
) -> list[str]:
    """Ways Claude Code would go around the sidecar even when launched through it.

    `extra_settings`: more Claude Code settings files to look at (e.g. a project's `.claude/settings.json`).
    `sidecar_ports`: an ANTHROPIC_BASE_URL on loopback at one of these is the sidecar (`ccgate install`), no bypass.
    """
    warnings: list[str] = []
    for var in CLOUD_SWITCHES:
        if environ.get(var) and environ.get(var) not in ("0", "false", ""):
            warnings.append(f"{var} is set: Claude Code talks to the cloud provider directly; unset it to meter")
    from ccgate.features.statusline import claude_config_dir

    managed = managed_settings_files(environ)
    for settings in (claude_config_dir(environ, home) / "settings.json", *extra_settings, *managed):
        try:
            data = json.loads(settings.read_text())
        except (OSError, ValueError, RecursionError):  # RecursionError: nested past ~1,000 levels
            data = None
        env = data.get("env") if isinstance(data, dict) else None
        if not isinstance(env, dict):
            continue
        # managed settings are an administrator's: the user cannot edit them, only ask
        remedy = "ask whoever manages it" if settings in managed else "remove it from that file"
        where = f"{settings} (managed settings)" if settings in managed else str(settings)
        url = env.get("ANTHROPIC_BASE_URL")
        if url and not (isinstance(url, str) and sidecar_ports and is_loopback_url(url, list(sidecar_ports))):
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
    info: Callable[[str], None],
    cwd: Path | None = None,
    tags: Mapping[str, str] | None = None,
) -> int:
    from ccgate.sidecar.process import (
        LAUNCH_HEADER,
        OWN_UPSTREAM_LAUNCH_PREFIX,
        TOKEN_HEADER,
        configured_port,
        ensure_sidecar,
        ensure_token,
    )

    command = argv[0]
    executable = shutil.which(command, path=environ.get("PATH"))
    if executable is None:
        hint = CLAUDE_INSTALL_HINT if command == "claude" else "check the command name and your PATH"
        raise UserInputError(f"command not found: {command}", hint=hint)
    merge_custom_headers(environ.get("ANTHROPIC_CUSTOM_HEADERS"), {})  # a malformed value stops us before any work
    cwd = cwd or Path.cwd()
    port = configured_port(config.sidecar.port, environ)
    sidecar, _ = ensure_sidecar(paths, port=port, environ=environ)
    if sidecar.version is not None and sidecar.version != __version__:
        # not restarted here: other sessions may be using it
        warn(
            f"the running sidecar is ccgate {sidecar.version}, this is {__version__}: "
            "to upgrade it, run `ccgate sidecar stop`, then launch again"
        )
    token = ensure_token(paths)
    upstream = users_upstream(environ.get("ANTHROPIC_BASE_URL"), sidecar.url)
    # the prefix lets the sidecar refuse this launch's requests should it ever forget where they go
    launch_id = (OWN_UPSTREAM_LAUNCH_PREFIX if upstream else "") + uuid.uuid4().hex
    answer = _register(paths, launch_id, project_of(cwd), upstream, warn=warn, tags=tags or {})
    org = answer.get("org") if answer is not None else None
    proxy_mode = isinstance(org, dict) and org.get("mode") == "proxy"
    if isinstance(org, dict):
        for message in org_notices(org, own_upstream=upstream):
            (warn if message.startswith("!") else info)(message.lstrip("! "))
    if answer is not None and not proxy_mode:
        providers = answer.get("providers")
        for message in environment_warnings(
            config, environ, token, providers, command=command, own_anthropic_upstream=upstream is not None
        ):
            warn(message)
    if upstream is not None and not proxy_mode:
        info(f"ANTHROPIC_BASE_URL is {redact_url(upstream)}: requests are metered by ccgate and forwarded there")
    home = Path(environ.get("HOME") or Path.home())
    for message in bypass_warnings(
        environ, home, extra_settings=project_settings_files(cwd, home), sidecar_ports=[sidecar.port]
    ):
        warn(message)

    env = dict(environ)
    env["ANTHROPIC_BASE_URL"] = sidecar.url
    env["ANTHROPIC_CUSTOM_HEADERS"] = merge_custom_headers(
        environ.get("ANTHROPIC_CUSTOM_HEADERS"), {TOKEN_HEADER: token, LAUNCH_HEADER: launch_id}
    )
    env[env_names.LAUNCH_ID] = launch_id
    return _run_child([executable, *argv[1:]], env)


def org_notices(org: Mapping[str, object], *, own_upstream: str | None) -> list[str]:
    """What `launch` says once about the org: where requests go; a leading "!" marks a warning."""
    gateway = str(org.get("gateway") or "")
    shown = redact_url(gateway) if gateway else "your org's gateway"
    notices = []
    if org.get("mode") == "proxy":
        notices.append(f"requests go through the org gateway {shown} with your org key (`ccgate whoami` for budgets)")
        if own_upstream is not None:
            notices.append(f"! ANTHROPIC_BASE_URL ({redact_url(own_upstream)}) is not used: the org gateway is")
    else:
        notices.append(f"usage is reported to the org gateway {shown}; org budgets apply (`ccgate whoami`)")
    notice = org.get("notice")
    if notice:
        notices.append(f"! {notice}")
    refused = org.get("key_refused")
    if refused:
        notices.append(f"! the org gateway refused your key ({refused}): run `ccgate login {gateway}` again")
    return notices


def users_upstream(previous: str | None, sidecar_url: str) -> str | None:
    """The ANTHROPIC_BASE_URL the user had (a corporate gateway, say), validated; None if unset or the sidecar's.

    Their credentials are meant for that endpoint, so the sidecar forwards this launch's requests there.
    """
    if not previous or not previous.strip():
        return None
    try:
        url = validate_base_url(previous, "ANTHROPIC_BASE_URL")
    except ConfigError as error:
        raise UserInputError(
            error.message,
            hint="fix ANTHROPIC_BASE_URL or unset it: ccgate forwards this session's requests to it",
        ) from None
    from urllib.parse import urlsplit

    return None if is_loopback_url(url, [urlsplit(sidecar_url).port or 0]) else url


def environment_warnings(
    config: Config,
    environ: Mapping[str, str],
    token: str,
    sidecar_providers: object,
    *,
    command: str = "claude",
    own_anthropic_upstream: bool = False,
) -> list[str]:
    """What the running sidecar does differently from the caller's `CCGATE_<PROVIDER>_BASE_URL` / `_API_KEY`,
    and how to restart it; nothing when they agree (or the sidecar is too old to say).

    `own_anthropic_upstream`: this launch's Anthropic requests go to the caller's own ANTHROPIC_BASE_URL, so the
    sidecar's `anthropic` base URL does not matter to it."""
    from ccgate.core.provider_env import differences, restart_hint
    from ccgate.core.providers import resolve_providers

    if not isinstance(sidecar_providers, dict):
        return []
    try:
        providers = resolve_providers(config, environ)
    except ConfigError as error:
        return [f"{error.message} (not compared with the running sidecar's providers)"]
    found = [
        item
        for item in differences(providers, environ, token, sidecar_providers)
        if not (own_anthropic_upstream and item.provider == "anthropic" and item.setting == "base_url")
    ]
    if not found:
        return []
    return [*(difference.message for difference in found), restart_hint(Path(command).name)]


def _register(
    paths: Paths,
    launch_id: str,
    project: str,
    upstream: str | None,
    *,
    warn: Callable[[str], None],
    tags: Mapping[str, str],
) -> dict[str, object] | None:
    """Tell the sidecar this launch's project, tags (and upstream); without the upstream, requests must not start.

    Returns the sidecar's answer (None when registration failed and the launch may go on without it)."""
    from ccgate.sidecar.process import control_request

    payload: dict[str, object] = {"launch_id": launch_id, "project": project}
    if tags:
        payload["tags"] = dict(tags)
    if upstream is not None:
        payload["anthropic_base_url"] = upstream
    try:
        answer = control_request(paths, "POST", "/_ccgate/launches", payload)
        if answer is None:
            raise SidecarError("the sidecar stopped")
    except CcgateError as error:
        if upstream is not None:  # the sidecar would send the user's credentials to its default upstream
            raise SidecarError(
                f"could not register this launch with the sidecar ({error.message})",
                hint="run `ccgate doctor`, then launch again",
            ) from None
        lost = "project and tags" if tags else "project"
        warn(f"could not register this launch with the sidecar ({error.message}); {lost} will be unknown")
        return None
    if upstream is not None and answer.get("anthropic_base_url") != upstream:
        raise SidecarError(
            "the running sidecar ignored ANTHROPIC_BASE_URL (it is older than this ccgate) and would send this "
            "session's requests to its default upstream",
            hint="restart it: `ccgate sidecar stop`, then launch again",
        )
    if tags and answer.get("tags") != dict(tags):
        warn("the running sidecar is older than this ccgate and ignores --tag; `ccgate sidecar stop` to upgrade it")
    return answer


def terminal_delivers_sigint(
    tty: int | None,
    *,
    foreground_group: Callable[[int], int] | None = None,
    own_group: Callable[[], int] | None = None,
) -> bool:
    """Whether a Ctrl-C typed at the terminal reaches the child by itself.

    The child runs in our process group, and the terminal signals its foreground group: so exactly when ours is
    that group. Not when there is no controlling terminal, or when we run in the background (`&`, `bg`) —
    whatever SIGINT we get then was sent to us alone and must be passed on.
    """
    if tty is None:
        return False
    try:
        # looked up here, not as defaults: importing this module must work where os has no job control
        return (foreground_group or os.tcgetpgrp)(tty) == (own_group or os.getpgrp)()
    except OSError:  # not our controlling terminal any more (hung up)
        return False


def _controlling_terminal() -> int | None:
    """A descriptor of the controlling terminal (stdin may be a pipe while one is attached), None without one."""
    try:
        return os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return None


def _run_child(args: list[str], env: dict[str, str]) -> int:
    """Same terminal, same exit code; SIGTERM/SIGHUP are forwarded, and SIGINT too unless the terminal sent it.

    A Ctrl-C typed at the terminal reaches the child directly (same process group); forwarding it again would
    make Claude Code see a double Ctrl-C, which means "exit". Asked when the signal comes, since a job can move
    between foreground and background.
    """
    tty = _controlling_terminal()
    child: subprocess.Popen[bytes] | None = None
    early: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and terminal_delivers_sigint(tty):
            return
        if child is None:
            early.append(signum)  # handlers go in before the child starts, so no signal can kill us first
        elif child.poll() is None:
            child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        child = subprocess.Popen(args, env=env)
        for signum in early:
            child.send_signal(signum)
        code = child.wait()  # PEP 475: a forwarded signal does not interrupt the wait
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if tty is not None:
            os.close(tty)
    return 128 - code if code < 0 else code
