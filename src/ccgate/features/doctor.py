"""`ccgate doctor`'s checks as plain data: each one passed, failed or warns, with the command that fixes it.

No rich or typer here; the CLI renders the list. Nothing here prints a secret: key checks say only whether a
key is present and where from.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccgate.core.providers import is_loopback_url, redact_url
from ccgate.errors import CcgateError

if TYPE_CHECKING:
    from ccgate.core.settings import Config
    from ccgate.local.paths import Paths
    from ccgate.sidecar.process import SidecarInfo

CLAUDE_VERSION_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Check:
    """`ok`: True passed, False failed (doctor exits 1), None a warning worth reading."""

    name: str
    ok: bool | None
    detail: str
    fix: str | None = None

    @property
    def symbol(self) -> str:
        return {True: "✓", False: "✗", None: "!"}[self.ok]

    def to_json(self) -> dict[str, Any]:
        state = {True: "ok", False: "fail", None: "warn"}[self.ok]
        return {"name": self.name, "state": state, "detail": self.detail, "fix": self.fix}


def exit_code(checks: Sequence[Check]) -> int:
    return 1 if any(check.ok is False for check in checks) else 0


# --- single checks ------------------------------------------------------------------------------------------------


def check_config(paths: Paths, environ: Mapping[str, str]) -> tuple[Check, Config | None]:
    """The file parses, every tier target names a known provider, budgets and timezone are valid."""
    from ccgate.core.providers import resolve_providers
    from ccgate.core.routing import Router
    from ccgate.local.config_file import load_config
    from ccgate.local.timezone import resolve_timezone
    from ccgate.sidecar.admission import rules_from_config

    path = paths.config_file
    try:
        config = load_config(path)
        Router(config, resolve_providers(config, environ))
        rules_from_config(config)
        resolve_timezone(config.timezone, environ)
    except CcgateError as error:
        return Check("config", False, error.message, error.hint or f"fix {path}"), None
    where = str(path) if path.exists() else f"{path} (not created yet: defaults)"
    return Check("config", True, f"{where} is valid"), config


def check_keyring(paths: Paths) -> Check:
    from ccgate.local.secrets import backend_description

    try:
        description, is_file = backend_description(paths=paths)
    except CcgateError as error:
        return Check("keyring", False, error.message, error.hint)
    if is_file:
        return Check(
            "keyring",
            None,
            f"secrets fall back to a {description}",
            "install and unlock a keyring (e.g. GNOME Keyring / KWallet / macOS Keychain), "
            "or use CCGATE_<PROVIDER>_API_KEY environment variables",
        )
    return Check("keyring", True, description)


def _port_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def check_sidecar(paths: Paths, config: Config, environ: Mapping[str, str]) -> tuple[Check, SidecarInfo | None]:
    from ccgate.sidecar.process import configured_port, probe_port, read_token, running_sidecar

    info = running_sidecar(paths)
    if info is not None:
        return _running_sidecar_check(paths, info), info
    try:
        port = configured_port(config.sidecar.port, environ)
    except CcgateError as error:
        return Check("sidecar", False, error.message, error.hint or "fix CCGATE_SIDECAR_PORT"), None
    port_fix = "pick another port: `sidecar.port` in config.toml or CCGATE_SIDECAR_PORT"
    if port:
        problem = probe_port(port, read_token(paths), timeout=0.5).problem(paths)
        if problem is not None:  # another home's sidecar, another user's process, or one that cannot prove it is ours
            return Check("sidecar", False, problem.message, problem.hint or port_fix), None
        if _port_taken(port):
            return Check("sidecar", False, f"port {port} is used by another program", port_fix), None
    where = f"port {port}" if port else "a free port"
    return Check("sidecar", None, f"not running (will start on {where})", "`ccgate launch claude` starts it"), None


def _running_sidecar_check(paths: Paths, info: SidecarInfo) -> Check:
    """A running sidecar passes unless its ledger writes are failing: then requests wait in its memory only."""
    from ccgate.sidecar.process import control_request, ledger_write_problem

    detail = f"running (pid {info.pid}) on {info.url}"
    try:
        problem = ledger_write_problem(control_request(paths, "GET", "/_ccgate/status", timeout=2.0))
    except CcgateError as error:
        return Check("sidecar", None, f"{detail}, but its status is unreadable: {error.message}", error.hint)
    if problem is None:
        from ccgate import __version__

        if info.version is not None and info.version != __version__:
            return Check(
                "sidecar",
                None,
                f"{detail} is ccgate {info.version}, this is {__version__}",
                "to run the new version, `ccgate sidecar stop`, then launch again",
            )
        return Check("sidecar", True, detail)
    # requests waiting in memory are lost if the sidecar stops before the ledger takes them: a failure
    return Check("sidecar", False if problem.unsaved else None, f"{detail}; {problem.message}", problem.hint)


def check_sidecar_providers(
    paths: Paths, config: Config, environ: Mapping[str, str], *, used: Sequence[str] = ("anthropic",)
) -> list[Check]:
    """The running sidecar keeps the environment it started with: what it uses for the providers that matter, and
    where that differs from this shell's `CCGATE_<PROVIDER>_BASE_URL` / `_API_KEY` (by key fingerprint only)."""
    from ccgate.core.provider_env import differences, restart_hint
    from ccgate.core.providers import redact_url, resolve_providers
    from ccgate.sidecar.process import control_request, ensure_token

    try:
        status = control_request(paths, "GET", "/_ccgate/status", timeout=2.0)
        providers = resolve_providers(config, environ)
    except CcgateError as error:
        return [Check("sidecar providers", None, f"not compared: {error.message}", error.hint)]
    org = status.get("org") if status else None
    if isinstance(org, dict) and org.get("mode") == "proxy" and isinstance(org.get("gateway"), str):
        # the environment's provider settings do not apply: the org gateway is the one upstream
        return [Check("sidecar providers", True, f"org proxy mode: every request goes to {redact_url(org['gateway'])}")]
    theirs = status.get("providers") if status else None
    if not isinstance(theirs, dict):
        return [Check("sidecar providers", None, "not compared: the running sidecar does not report its providers")]
    found = differences(providers, environ, ensure_token(paths), theirs)
    if found:
        fix = restart_hint()
        return [
            Check(f"sidecar provider {item.provider}", False if item.serious else None, item.message, fix)
            for item in found
        ]
    shown = []
    for name in used:
        view = theirs.get(name)
        if isinstance(view, dict) and isinstance(view.get("base_url"), str):
            shown.append(f"{name} {redact_url(view['base_url'])} (key: {view.get('key_source') or 'none'})")
    detail = "same as your environment" + (f": {', '.join(shown)}" if shown else "")
    return [Check("sidecar providers", True, detail)]


def check_provider_keys(config: Config, environ: Mapping[str, str], paths: Paths) -> list[Check]:
    """Providers that tier routes use must have a key (anthropic-kind ones may forward Claude Code's own)."""
    from ccgate.core.providers import resolve_providers
    from ccgate.core.routing import parse_target
    from ccgate.local.secrets import provider_key_source

    used = sorted({parse_target(text).provider for tier in config.tiers.values() for text in tier.targets})
    if not used:
        return [Check("provider keys", True, "no tier overrides: requests go to Anthropic with Claude Code's auth")]
    providers = resolve_providers(config, environ)
    checks = []
    for name in used:
        spec = providers[name]
        label = f"provider {name}"
        try:
            source = provider_key_source(name, environ, paths=paths)
        except CcgateError as error:
            checks.append(Check(label, False, error.message, error.hint))
            continue
        if source is not None:
            checks.append(Check(label, True, f"key present ({source})"))
        elif not spec.requires_key:
            checks.append(Check(label, True, "needs no key"))
        elif spec.kind == "anthropic":
            checks.append(Check(label, True, "no stored key: Claude Code's own credentials are forwarded"))
        else:
            checks.append(
                Check(
                    label,
                    False,
                    "no API key (tier routes use it)",
                    f"`ccgate provider key set {name}` or export {spec.key_env}",
                )
            )
    return checks


def check_claude(environ: Mapping[str, str], *, timeout: float = CLAUDE_VERSION_TIMEOUT_S) -> Check:
    from ccgate.features.launching import CLAUDE_INSTALL_HINT

    executable = shutil.which("claude", path=environ.get("PATH"))
    if executable is None:
        return Check("claude", False, "`claude` is not on PATH", CLAUDE_INSTALL_HINT)
    try:
        result = subprocess.run(
            [executable, "--version"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(environ),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return Check("claude", None, f"{executable} did not answer `--version` within {timeout:.0f} s")
    except OSError as error:
        return Check("claude", False, f"cannot run {executable}: {error.strerror}", CLAUDE_INSTALL_HINT)
    lines = (result.stdout or result.stderr).strip().splitlines()
    version = lines[0].strip() if lines else "unknown version"
    if result.returncode != 0:
        return Check("claude", False, f"{executable} --version failed: {version[:200]}", CLAUDE_INSTALL_HINT)
    return Check("claude", True, f"{version} ({executable})")


def _size(path: Path) -> int:
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):
            total += part.stat().st_size
    return total


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size / 1000:.0f} kB"


def move_aside_command(path: Path) -> str:
    """A POSIX shell command moving the ledger and its `-wal`/`-shm` companions aside together (`*.broken`).

    Moving only the main file would leave a write-ahead log behind for the next ledger of that name; the
    companions exist only while a connection is open, so missing ones are skipped.
    """
    import shlex

    parts = " ".join(shlex.quote(f"{path}{suffix}") for suffix in ("", "-wal", "-shm"))
    return f'for f in {parts}; do [ ! -e "$f" ] || mv "$f" "$f.broken"; done'


def check_spills(paths: Paths, environ: Mapping[str, str]) -> list[Check]:
    """Requests a stopped sidecar could not write to the ledger and saved aside: the next start writes them."""
    from ccgate.sidecar.process import home_id
    from ccgate.storage import spill

    found = spill.read_spills(spill.spill_dirs(paths.runtime_dir, home_id(paths), environ))
    if not found.files:
        return []
    where = ", ".join(str(path) for path in found.files[:3]) + (" ..." if len(found.files) > 3 else "")
    return [
        Check(
            "ledger spill",
            None,
            f"{len(found.rows)} request(s) saved when the sidecar stopped with its ledger unwritable wait in {where}",
            "the next sidecar start writes them to the ledger (`ccgate sidecar start`); `ccgate sidecar logs` says "
            "why one could not",
        )
    ]


def check_ledger(paths: Paths, *, full: bool = False) -> Check:
    """Opens and checks the ledger: `PRAGMA quick_check` (fast), or with `full` the slower integrity_check."""
    import sqlite3

    from ccgate.storage.ledger import check_integrity, open_ledger

    path = paths.ledger_file
    if not path.exists():
        return Check("ledger", True, f"{path} not created yet (the first metered request creates it)")
    fix = (
        f"stop the sidecar (`ccgate sidecar stop`), then move the ledger and its -wal/-shm files aside: "
        f"`{move_aside_command(path)}`; ccgate starts a new one"
    )
    try:
        db = open_ledger(path)
    except CcgateError as error:
        return Check("ledger", False, error.message, fix)
    try:
        verdict = check_integrity(db, full=full)
        rows = int(db.execute("SELECT count(*) FROM requests").fetchone()[0])
    except sqlite3.Error as error:
        return Check("ledger", False, f"{path}: {error}", fix)
    finally:
        db.close()
    if verdict != "ok":
        return Check("ledger", False, f"{path} is damaged: {verdict.splitlines()[0][:200]}", fix)
    checked = "integrity ok" if full else "quick check ok"
    return Check("ledger", True, f"{path}: {rows} request(s), {_megabytes(_size(path))}, {checked}")


def check_install(environ: Mapping[str, str], *, cwd: Path | None, port: int | None) -> tuple[Check, bool]:
    """Whether `ccgate install` routes plain `claude` here (user scope, or this project); (check, active)."""
    from ccgate.features.installing import active_installs

    installs = active_installs(environ, cwd, port or 0)
    if not installs:
        return (
            Check(
                "install",
                True,
                "not installed: only `ccgate launch claude` is metered (`ccgate install` meters plain `claude`, "
                "`claude --resume` and IDE sessions too)",
            ),
            False,
        )
    unhooked = [item for item in installs if not item.hooked]
    if unhooked:
        scope = unhooked[0].scope
        return (
            Check(
                "install",
                False,
                f"{unhooked[0].path} points Claude Code at the sidecar but has no ccgate SessionStart hook: "
                "the sidecar refuses its sessions",
                f"run `ccgate install --scope {scope}` again, or `ccgate uninstall --scope {scope}`",
            ),
            True,
        )
    where = ", ".join(f"{item.path} ({item.scope})" for item in installs)
    return Check("install", True, f"active in {where}: plain `claude` and IDE sessions are metered"), True


def check_bypasses(
    environ: Mapping[str, str],
    *,
    home: Path,
    cwd: Path | None,
    sidecar: SidecarInfo | None,
    port: int | None,
    installed: bool = False,
) -> list[Check]:
    """Every way Claude Code can go around the sidecar: settings files, cloud-provider switches, the shell."""
    from ccgate.features.launching import bypass_warnings, project_settings_files

    extra = project_settings_files(cwd, home) if cwd is not None else []
    ours = [candidate for candidate in (port, sidecar.port if sidecar is not None else None) if candidate]
    warnings = bypass_warnings(environ, home, extra_settings=extra, sidecar_ports=ours)
    checks = [Check("bypass", False, warning) for warning in warnings]
    exported = environ.get("ANTHROPIC_BASE_URL")
    if exported and installed and not is_loopback_url(exported, ours):
        # Claude Code's settings `env` wins over the shell's: plain `claude` goes through the sidecar anyway
        checks.append(
            Check(
                "bypass",
                None,
                f"ANTHROPIC_BASE_URL={redact_url(exported)} is exported in this shell, but `ccgate install` "
                "overrides it: plain `claude` is metered and does not go there",
                "to meter and forward to it, run `ccgate uninstall`, then `ccgate install` from this shell",
            )
        )
    elif exported and not is_loopback_url(exported, ours):
        checks.append(
            Check(
                "bypass",
                None,
                f"ANTHROPIC_BASE_URL={redact_url(exported)} is exported in this shell: "
                "`claude` started without `ccgate launch` sends requests there, unmetered",
                "start Claude Code with `ccgate launch claude` (it meters the requests and still forwards "
                "them to this URL), or run `ccgate install`",
            )
        )
    if not checks:
        checks.append(Check("bypass", True, "nothing routes Claude Code around ccgate"))
    return checks


# --- all of them --------------------------------------------------------------------------------------------------


def run_checks(
    paths: Paths,
    environ: Mapping[str, str],
    *,
    cwd: Path | None = None,
    claude_timeout: float = CLAUDE_VERSION_TIMEOUT_S,
    full: bool = False,
) -> list[Check]:
    """Every check in display order; a broken config skips the checks that need it (and says so)."""
    from ccgate.core.settings import Config
    from ccgate.sidecar.process import configured_port

    home = Path(environ.get("HOME") or Path.home())
    config_check, config = check_config(paths, environ)
    checks = [config_check, check_keyring(paths)]
    sidecar_check, sidecar = check_sidecar(paths, config or Config(), environ)
    checks.append(sidecar_check)
    if config is not None and sidecar is not None:
        from ccgate.core.routing import parse_target

        targets = {parse_target(text).provider for tier in config.tiers.values() for text in tier.targets}
        checks.extend(check_sidecar_providers(paths, config, environ, used=sorted(targets | {"anthropic"})))
    if config is not None:
        checks.extend(check_provider_keys(config, environ, paths))
    else:
        checks.append(Check("provider keys", None, "not checked: the config is invalid", config_check.fix))
    checks.append(check_claude(environ, timeout=claude_timeout))
    checks.append(check_ledger(paths, full=full))
    checks.extend(check_spills(paths, environ))
    try:
        port: int | None = configured_port((config or Config()).sidecar.port, environ)
    except CcgateError:
        port = None
    install_check, installed = check_install(environ, cwd=cwd, port=port)
    checks.append(install_check)
    checks.extend(check_bypasses(environ, home=home, cwd=cwd, sidecar=sidecar, port=port, installed=installed))
    return checks
