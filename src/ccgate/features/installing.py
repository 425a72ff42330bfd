"""`ccgate install` / `uninstall` and the hook they install: meter plain `claude`, `claude --resume` and IDE sessions.

What install writes into a Claude Code settings file (merged with what is there):

- `env.ANTHROPIC_BASE_URL` = the sidecar, so every Claude Code that reads the file talks to it;
- a `SessionStart` and a `UserPromptSubmit` hook running `ccgate hook`: it makes sure the sidecar runs and registers
  the session id (with its project, and the user's own upstream) with it, authenticated with the local token.

The local token itself never goes into the file (settings files are often world-readable, project ones committed):
the sidecar lets a token-less request through only when its `X-Claude-Code-Session-Id` was registered by the hook,
it has no `Origin` (no web page), and, where the kernel says, it comes from this user's process.

Before writing, the file is backed up; what it held is remembered (state dir, 0600) so `uninstall` can restore it
byte for byte, or, when the user changed it since, remove only ccgate's entries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from ccgate import env
from ccgate.core.providers import is_loopback_url
from ccgate.errors import CcgateError, UserInputError
from ccgate.local.claude_settings import (
    SettingsFile,
    backup,
    parse_settings,
    read_settings,
    real_path,
    render,
    unified_diff,
    write_atomic,
)
from ccgate.local.paths import Paths

SCOPES = ("user", "project")
HOOK_EVENTS = ("SessionStart", "UserPromptSubmit")
HOOK_TIMEOUT_S = 30
# passed on to the hook, so an IDE that starts Claude Code without the shell's environment finds the same home
CARRIED_VARS = (env.HOME, env.CONFIG, env.DATA_DIR, env.STATE_DIR, env.SIDECAR_PORT)
RECORD_NAME = "claude-install.json"
MAX_HOOK_INPUT = 1024 * 1024
_OUR_HOOK = re.compile(r"(^|[\s/'\"])(ccgate|-m ccgate)['\"]?\s+hook(\s|$)")


@dataclass(frozen=True, slots=True)
class InstallResult:
    path: Path
    scope: str
    changed: bool
    diff: str
    backup: Path | None
    upstream: str | None
    dry_run: bool


@dataclass(frozen=True, slots=True)
class UninstallResult:
    path: Path
    changed: bool
    # "restored": byte for byte as before install; "removed": only ccgate's entries (the file changed since);
    # "deleted": install had created the file; "absent": nothing of ccgate's was there
    how: str
    backup: Path | None


@dataclass(frozen=True, slots=True)
class ActiveInstall:
    """A settings file that routes Claude Code through the sidecar (for `doctor`)."""

    path: Path
    scope: str
    base_url: str
    hooked: bool


# --- where ------------------------------------------------------------------------------------------------------


def settings_path(scope: str, environ: Mapping[str, str], cwd: Path) -> Path:
    """User scope: Claude Code's own settings.json. Project scope: the project's `.claude/settings.local.json` —
    personal and git-ignored by Claude Code, because what install writes (this machine's sidecar port, the path of
    this ccgate) means nothing on a teammate's machine and must not be committed."""
    from ccgate.features.statusline import claude_config_dir

    if scope == "user":
        return claude_config_dir(environ) / "settings.json"
    if scope == "project":
        from ccgate.features.launching import project_of

        return Path(project_of(cwd)) / ".claude" / "settings.local.json"
    raise UserInputError(f"unknown scope {scope!r}", hint="use --scope user or --scope project")


def check_project_file(path: Path) -> None:
    """A project's `.claude/settings.local.json` (or `.claude` itself) may be a link committed by someone else:
    install must not write, back up or delete through it to a file outside the project (another project's
    settings, the user's own, another user's file), nor write a file another user owns."""
    top = path.parent.parent
    target = real_path(path)
    if not target.is_relative_to(top.resolve()):
        raise UserInputError(
            f"{path} is a symbolic link to {target}, outside the project; nothing was changed",
            hint="remove the link (settings.local.json is personal: no repository needs it), then run this again",
        )
    try:
        owner = target.stat().st_uid
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserInputError(f"cannot read {path}: {exc.strerror}", hint="check its permissions") from None
    if hasattr(os, "geteuid") and owner != os.geteuid():
        raise UserInputError(
            f"{path} belongs to another user (uid {owner}); nothing was changed",
            hint="install in a project you own, or use --scope user",
        )


def sidecar_base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def hook_command(environ: Mapping[str, str], upstream: str | None) -> str:
    """The shell command Claude Code runs: this ccgate by absolute path, with the ccgate variables set now."""
    found = shutil.which("ccgate", path=environ.get("PATH"))
    program = [found] if found else [sys.executable, "-m", "ccgate"]
    carried = [f"{name}={shlex.quote(environ[name])}" for name in CARRIED_VARS if environ.get(name)]
    words = [*carried, *(shlex.quote(word) for word in program), "hook"]
    if upstream is not None:
        words += ["--upstream", shlex.quote(upstream)]
    return " ".join(words)


def is_our_hook_command(command: Any) -> bool:
    return isinstance(command, str) and _OUR_HOOK.search(command) is not None


# --- merging ------------------------------------------------------------------------------------------------------


def merged(data: Mapping[str, Any], base_url: str, command: str) -> dict[str, Any]:
    """`data` with ccgate's entries in: other env variables, hooks and settings are kept as they are."""
    result: dict[str, Any] = json.loads(json.dumps(data))  # a deep copy of plain JSON
    env = result.get("env")
    if env is not None and not isinstance(env, dict):
        raise UserInputError("the settings file's `env` is not an object; nothing was changed", hint="fix the file")
    result["env"] = {**(env or {}), "ANTHROPIC_BASE_URL": base_url}
    hooks = result.get("hooks")
    if hooks is not None and not isinstance(hooks, dict):
        raise UserInputError("the settings file's `hooks` is not an object; nothing was changed", hint="fix the file")
    hooks = dict(hooks or {})
    for event in HOOK_EVENTS:
        groups = hooks.get(event)
        if groups is not None and not isinstance(groups, list):
            raise UserInputError(f"the settings file's `hooks.{event}` is not a list; nothing was changed")
        kept = _without_our_hooks(groups or [])
        kept.append({"hooks": [{"type": "command", "command": command, "timeout": HOOK_TIMEOUT_S}]})
        hooks[event] = kept
    result["hooks"] = hooks
    return result


def _without_our_hooks(groups: Sequence[Any]) -> list[Any]:
    """Matcher groups minus ccgate's hook handlers; a group left empty by that goes too."""
    kept: list[Any] = []
    for group in groups:
        handlers = group.get("hooks") if isinstance(group, dict) else None
        if not isinstance(handlers, list):
            kept.append(group)
            continue
        others = [h for h in handlers if not (isinstance(h, dict) and is_our_hook_command(h.get("command")))]
        if len(others) == len(handlers):
            kept.append(group)
        elif others:
            kept.append({**group, "hooks": others})
    return kept


def without_ours(data: Mapping[str, Any], record: Mapping[str, Any] | None, ports: Sequence[int]) -> dict[str, Any]:
    """`data` minus ccgate's entries, putting back the ANTHROPIC_BASE_URL install replaced (when it knows one)."""
    result: dict[str, Any] = json.loads(json.dumps(data))
    env = result.get("env")
    if isinstance(env, dict):
        current = env.get("ANTHROPIC_BASE_URL")
        ours = record.get("base_url") if record else None
        if isinstance(current, str) and (current == ours or is_loopback_url(current, list(ports))):
            previous = record.get("previous_base_url") if record else None
            if isinstance(previous, str):
                env["ANTHROPIC_BASE_URL"] = previous
            else:
                del env["ANTHROPIC_BASE_URL"]
        if not env and record is not None and not record.get("had_env", True):
            del result["env"]
    hooks = result.get("hooks")
    if isinstance(hooks, dict):
        for event in HOOK_EVENTS:
            groups = hooks.get(event)
            if isinstance(groups, list):
                kept = _without_our_hooks(groups)
                if kept:
                    hooks[event] = kept
                else:
                    del hooks[event]
        if not hooks and record is not None and not record.get("had_hooks", True):
            del result["hooks"]
    return result


# --- install / uninstall ------------------------------------------------------------------------------------------


def _record_file(paths: Paths) -> Path:
    return paths.state_dir / RECORD_NAME


def load_records(paths: Paths) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_record_file(paths).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: value for key, value in data.items() if isinstance(value, dict)}


def _save_records(paths: Paths, records: Mapping[str, Any]) -> None:
    """0600: the remembered original may hold the user's API keys (settings `env`)."""
    path = _record_file(paths)
    if not records:
        path.unlink(missing_ok=True)
        return
    write_atomic(path, json.dumps(dict(records), indent=2).encode(), mode=0o600)


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _upstream(settings: SettingsFile, environ: Mapping[str, str], base_url: str, port: int) -> str | None:
    """The ANTHROPIC_BASE_URL Claude Code used before (the file's, else the shell's): install must not lose it."""
    from ccgate.features.launching import users_upstream

    env = settings.data.get("env")
    in_file = env.get("ANTHROPIC_BASE_URL") if isinstance(env, dict) else None
    installed = _installed_upstream(settings.data)
    if installed is not None:  # installed before (maybe on another port): the URL in the file is a sidecar's
        return installed or None
    if isinstance(in_file, str) and in_file.strip():
        return users_upstream(in_file, base_url)
    exported = environ.get("ANTHROPIC_BASE_URL")
    upstream = users_upstream(exported, base_url)
    if upstream is not None and "@" in upstream.split("//", 1)[-1].split("/", 1)[0]:
        raise UserInputError(
            "the exported ANTHROPIC_BASE_URL carries credentials, which install would write into a settings file",
            hint="put the credentials in ANTHROPIC_AUTH_TOKEN or ANTHROPIC_API_KEY, then run this again",
        )
    return upstream


def _installed_upstream(data: Mapping[str, Any]) -> str | None:
    """The `--upstream` of a ccgate hook already in the file ("" without one); None when there is no ccgate hook."""
    hooks = data.get("hooks")
    groups = hooks.get("SessionStart") if isinstance(hooks, dict) else None
    for group in groups if isinstance(groups, list) else []:
        handlers = group.get("hooks") if isinstance(group, dict) else None
        for handler in handlers if isinstance(handlers, list) else []:
            command = handler.get("command") if isinstance(handler, dict) else None
            if not is_our_hook_command(command):
                continue
            try:
                words = shlex.split(str(command))
            except ValueError:
                continue
            if "--upstream" in words[:-1]:
                return words[words.index("--upstream") + 1]
            return ""
    return None


def install(
    paths: Paths,
    port: int,
    environ: Mapping[str, str],
    *,
    scope: str = "user",
    cwd: Path,
    dry_run: bool = False,
    now: datetime,
) -> InstallResult:
    """Merge ccgate's entries into the settings file of `scope`; idempotent; `dry_run` only computes the diff."""
    if port == 0:
        raise UserInputError(
            "install needs a fixed sidecar port (CCGATE_SIDECAR_PORT is 0): settings files name the port",
            hint="set `sidecar.port` in config.toml or CCGATE_SIDECAR_PORT to a port number",
        )
    path = settings_path(scope, environ, cwd)
    if scope == "project":
        check_project_file(path)
    settings = read_settings(path)
    base_url = sidecar_base_url(port)
    upstream = _upstream(settings, environ, base_url, port)
    command = hook_command(environ, upstream)
    new_text = render(merged(settings.data, base_url, command))
    changed = new_text != settings.text or not settings.exists
    if settings.exists and merged(settings.data, base_url, command) == settings.data:
        changed = False
    diff = unified_diff(path, settings.text, new_text) if changed else ""
    if dry_run or not changed:
        return InstallResult(path, scope, changed, diff, None, upstream, dry_run)
    key = str(real_path(path))
    records = load_records(paths)
    record = records.get(key)
    saved = backup(settings, now)
    new_raw = new_text.encode("utf-8")
    if record is None:
        env = settings.data.get("env")
        previous = env.get("ANTHROPIC_BASE_URL") if isinstance(env, dict) else None
        record = {
            "scope": scope,
            "existed": settings.exists,
            "original": base64.b64encode(settings.raw).decode() if settings.raw is not None else None,
            "mode": settings.mode,
            "previous_base_url": previous if isinstance(previous, str) and upstream is not None else None,
            "had_env": "env" in settings.data,
            "had_hooks": "hooks" in settings.data,
        }
    elif record.get("written_sha256") != (_sha256(settings.raw) if settings.raw is not None else None):
        record["exact"] = False  # changed by the user since: the original bytes would undo their edits
    record.update({"base_url": base_url, "command": command, "written_sha256": _sha256(new_raw)})
    if scope == "project" and "git_exclude" not in record:
        record["git_exclude"] = _exclude_from_git(path)
    records[key] = record
    _save_records(paths, records)  # first: a write interrupted after this still knows what to restore
    write_atomic(path, new_raw, mode=settings.mode if settings.mode is not None else 0o600)
    return InstallResult(path, scope, True, diff, saved, upstream, False)


EXCLUDE_COMMENT = "# added by `ccgate install --scope project`; `ccgate uninstall --scope project` removes it"


def _git(top: Path, *args: str) -> str | None:
    import subprocess

    try:
        result = subprocess.run(["git", *args], cwd=top, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _exclude_from_git(path: Path) -> str | None:
    """Keep the project's settings.local.json out of commits (Claude Code's own ignore rule exists only when it
    created the file): a line in `.git/info/exclude`, which is never committed. Returns that file, if changed."""
    top = path.parent.parent
    relative = "/" + path.relative_to(top).as_posix()
    if _git(top, "rev-parse", "--show-toplevel") is None or _git(top, "check-ignore", "-q", relative[1:]) is not None:
        return None  # not a git repository, or already ignored
    where = _git(top, "rev-parse", "--git-path", "info/exclude")
    if not where:
        return None
    exclude = (top / where).resolve()
    try:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        # bytes: git does not require UTF-8 there, and a Latin-1 comment must neither stop install nor be rewritten
        data = exclude.read_bytes() if exclude.exists() else b""
        prefix = b"" if not data or data.endswith(b"\n") else b"\n"
        with exclude.open("ab") as handle:
            handle.write(prefix + f"{EXCLUDE_COMMENT}\n{relative}\n".encode())
    except OSError:
        return None  # only a convenience: the install itself stands
    return str(exclude)


def _unexclude_from_git(exclude: Any, path: Path) -> None:
    if not isinstance(exclude, str):
        return
    relative = "/" + path.relative_to(path.parent.parent).as_posix()
    target = Path(exclude)
    try:
        lines = target.read_bytes().splitlines(keepends=True)
        ours = (EXCLUDE_COMMENT.encode(), relative.encode())
        for index in range(len(lines) - 1):
            if (lines[index].rstrip(b"\n"), lines[index + 1].rstrip(b"\n")) == ours:
                del lines[index : index + 2]
                target.write_bytes(b"".join(lines))
                return
    except OSError:
        return


def uninstall(
    paths: Paths, port: int, environ: Mapping[str, str], *, scope: str = "user", cwd: Path, now: datetime
) -> UninstallResult:
    """Put the settings file back as it was before install; if the user changed it since, remove only ccgate's part."""
    path = settings_path(scope, environ, cwd)
    if scope == "project":
        check_project_file(path)
    key = str(real_path(path))
    records = load_records(paths)
    record = records.get(key)
    settings = read_settings(path)
    if record is not None:
        _unexclude_from_git(record.get("git_exclude"), path)
    if record is not None and _untouched_since_install(settings, record):
        # the file is byte for byte what install wrote: nothing of the user's to back up
        original = record.get("original")
        saved = None
        if original is None:
            real_path(path).unlink(missing_ok=True)
            how = "deleted"
        else:
            raw = base64.b64decode(original)
            mode = record.get("mode")
            write_atomic(path, raw, mode=mode if isinstance(mode, int) else 0o600)
            how = "restored"
        records.pop(key, None)
        _save_records(paths, records)
        return UninstallResult(path, True, how, saved)
    if not settings.exists:
        records.pop(key, None)
        _save_records(paths, records)
        return UninstallResult(path, False, "absent", None)
    stripped = without_ours(settings.data, record, [port] if port else [])
    records.pop(key, None)
    if stripped == settings.data:
        _save_records(paths, records)
        return UninstallResult(path, False, "absent", None)
    saved = backup(settings, now)
    write_atomic(path, render(stripped).encode("utf-8"), mode=settings.mode or 0o600)
    _save_records(paths, records)
    return UninstallResult(path, True, "removed", saved)


def _untouched_since_install(settings: SettingsFile, record: Mapping[str, Any]) -> bool:
    if record.get("exact") is False or settings.raw is None:
        return False
    return record.get("written_sha256") == _sha256(settings.raw)


def active_installs(environ: Mapping[str, str], cwd: Path | None, port: int) -> list[ActiveInstall]:
    """Settings files whose `env.ANTHROPIC_BASE_URL` is this sidecar (user scope, and the project's files)."""
    from ccgate.features.launching import project_settings_files
    from ccgate.features.statusline import claude_config_dir

    home = Path(environ.get("HOME") or Path.home())
    candidates = [("user", claude_config_dir(environ, home) / "settings.json")]
    if cwd is not None:
        from ccgate.features.launching import project_of

        top = Path(project_of(cwd))
        candidates += [("project", file) for file in project_settings_files(top, home)]
    found = []
    for scope, file in candidates:
        try:
            data = parse_settings(file, real_path(file).read_bytes())
        except (OSError, CcgateError):
            continue
        env = data.get("env")
        url = env.get("ANTHROPIC_BASE_URL") if isinstance(env, dict) else None
        if not isinstance(url, str) or not port or not is_loopback_url(url, [port]):
            continue
        hooks = data.get("hooks")
        starts = hooks.get("SessionStart") if isinstance(hooks, dict) else None
        hooked = isinstance(starts, list) and _without_our_hooks(starts) != starts
        found.append(ActiveInstall(file, scope, url, hooked))
    return found


# --- the hook -----------------------------------------------------------------------------------------------------


def hook_main(argv: Sequence[str], stdin: IO[str], stderr: IO[str], environ: Mapping[str, str]) -> int:
    """`ccgate hook [--upstream URL]`, run by Claude Code on SessionStart and UserPromptSubmit.

    Makes sure the sidecar runs and knows this session. On failure it says so on stderr and exits 2: on
    UserPromptSubmit that stops the prompt with the message (instead of requests failing to connect); SessionStart
    cannot stop a session, so the next prompt's hook tries again.
    """
    upstream = argv[1] if len(argv) == 2 and argv[0] == "--upstream" else None
    try:
        event = _read_event(stdin)
        _ensure_registered(environ, event, upstream)
    except CcgateError as error:
        hint = f" ({error.hint})" if error.hint else ""
        stderr.write(
            f"ccgate: {error.message}{hint}. This Claude Code sends its requests to the ccgate sidecar, so they "
            "fail until it runs: run `ccgate sidecar start` (`ccgate doctor` says more; `ccgate uninstall` "
            "stops routing Claude Code through ccgate).\n"
        )
        return 2
    return 0


def _read_event(stdin: IO[str]) -> dict[str, Any]:
    text = stdin.read(MAX_HOOK_INPUT + 1)
    if len(text) > MAX_HOOK_INPUT:
        raise UserInputError("the hook input from Claude Code is larger than 1 MB")
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        raise UserInputError("the hook input from Claude Code is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("session_id"), str):
        raise UserInputError("the hook input from Claude Code has no session_id")
    return event


def _ensure_registered(environ: Mapping[str, str], event: Mapping[str, Any], upstream: str | None) -> None:
    from ccgate.features.launching import project_of
    from ccgate.local.config_file import load_config
    from ccgate.local.paths import resolve_paths
    from ccgate.sidecar.process import configured_port, control_request, ensure_sidecar

    paths = resolve_paths(dict(environ)).check()
    config = load_config(paths.config_file)
    ensure_sidecar(paths, port=configured_port(config.sidecar.port, environ), environ=environ)
    cwd = event.get("cwd")
    project = project_of(Path(cwd)) if isinstance(cwd, str) and os.path.isdir(cwd) else None
    payload: dict[str, Any] = {"session_id": event["session_id"], "project": project}
    if upstream is not None:
        payload["anthropic_base_url"] = upstream
    answer = control_request(paths, "POST", "/_ccgate/sessions", payload)
    if answer is None:
        raise UserInputError("the sidecar stopped while this session was being registered")
    if upstream is not None and answer.get("anthropic_base_url") != upstream:
        raise UserInputError(
            "the running sidecar is older than this ccgate and would send this session's requests to its default "
            "upstream",
            hint="restart it: `ccgate sidecar stop`",
        )
