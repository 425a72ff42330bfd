"""The sidecar's aiohttp application: local auth, launch registry, config reload, and the proxy routes."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import ClientSession, web

from ccgate import __version__
from ccgate.core import tags as tags_module
from ccgate.core.loopback import is_loopback_host
from ccgate.core.providers import validate_base_url
from ccgate.core.records import format_usd
from ccgate.core.settings import Config
from ccgate.errors import (
    AuthenticationError,
    CcgateError,
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
    UserInputError,
)
from ccgate.local.config_file import load_config
from ccgate.local.paths import Paths
from ccgate.proxy.engine import Proxy
from ccgate.proxy.responses import error_response
from ccgate.proxy.seams import ClientMeta, ProxyDeps
from ccgate.proxy.serving import background, upstream_session_context
from ccgate.sidecar.admission import AdmissionRequest, BudgetGuard, Reservation
from ccgate.sidecar.connections import ConnectionGuard, GuardedRunner
from ccgate.sidecar.org import OrgLink, OrgSettings
from ccgate.sidecar.process import (
    CHALLENGE_HEADER,
    LAUNCH_HEADER,
    OWN_UPSTREAM_LAUNCH_PREFIX,
    PROOF_HEADER,
    SERVICE_NAME,
    TOKEN_HEADER,
    home_id,
    identity_proof,
    is_valid_nonce,
)

if TYPE_CHECKING:
    from ccgate.core.budgets import BudgetRule
    from ccgate.core.pricing import PriceCatalog
    from ccgate.core.providers import ProviderSpec
    from ccgate.core.routing import Router
    from ccgate.storage.writer import LedgerWriter

log = logging.getLogger("ccgate.sidecar")

PUBLIC_PATHS = frozenset({"/", "/healthz"})
MAX_LAUNCHES = 1000
MAX_PROJECT_CHARS = 4096
PRIVATE_HEADERS = frozenset({TOKEN_HEADER, LAUNCH_HEADER})
# Claude Code's own header; sessions that `ccgate install`'s hook registered are kept under this prefix
SESSION_HEADER = "x-claude-code-session-id"
SESSION_KEY_PREFIX = "session:"
# the routes an installed session may use without the local token (it stays out of settings files)
SESSION_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})


@dataclass
class LaunchInfo:
    launch_id: str
    project: str | None
    started_at: float
    # the developer's own ANTHROPIC_BASE_URL from before `launch`: this launch's `anthropic` upstream
    anthropic_base_url: str | None = None
    # when a request last came through it (time.time()); 0 until then. Past MAX_LAUNCHES the least recently
    # used go first, so a long session is never forgotten for newer, idle ones
    last_used: float = 0.0
    # `ccgate launch --tag`: the ledger text of this launch's tags (`tags.encode`), None without any
    tags: str | None = None

    @property
    def recency(self) -> float:
        return max(self.last_used, self.started_at)


@dataclass
class SidecarState:
    paths: Paths
    config: Config
    environ: Mapping[str, str]
    token: str
    started_at: float = field(default_factory=time.time)
    launches: dict[str, LaunchInfo] = field(default_factory=dict)
    config_mtime: float | None = None
    requests_seen: int = 0
    launches_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    metas: dict[tuple[str | None, str | None, str | None, str | None], ClientMeta] = field(default_factory=dict)
    last_reload_error: str | None = None
    writer: LedgerWriter | None = None
    # per provider: base URL, key source and key fingerprint (never the key), for `launch`, `doctor`, `provider list`
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # org mode (`ccgate login`): the gateway, the key's mode, org budgets and sync health
    org: OrgLink = field(default_factory=OrgLink)


class ProjectBudgets:
    """The sidecar's budgets: global ones and per-project ones (the project comes from the launch)."""

    def __init__(self, guard: BudgetGuard, org: OrgLink | None = None) -> None:
        self.guard = guard
        self.org = org
        self._warned: set[tuple[str, str, str]] = set()

    def applies(self, meta: ClientMeta) -> bool:
        if self.org is not None and self.org.has_budgets():
            return True
        rules = self.guard.rules
        return bool(rules) and any(rule.applies_to(meta.project) for rule in rules)

    async def admit(self, meta: ClientMeta, *, reserve_nanos: int | None, model: str) -> Reservation:
        if self.org is not None:  # report mode's org budgets, then the developer's own
            refusal = self.org.refusal()
            if refusal is not None:
                raise refusal
        return await self.guard.admit(AdmissionRequest(project=meta.project, reserve_nanos=reserve_nanos, model=model))

    def settle(self, reservation: Reservation, actual_nanos: int) -> None:
        self.guard.settle(reservation, actual_nanos)
        if self.org is not None:
            self.org.settled(actual_nanos)
        self._log_warnings()

    def _log_warnings(self) -> None:
        """Once per budget, window and level, the sidecar log says when spend crosses the warning threshold and
        when it reaches (or passes) the limit."""
        from ccgate.core.budgets import BudgetLevel, format_local, warn_level

        thresholds = {rule.key: rule.warn_at for rule in self.guard.rules}
        for state in self.guard.states():
            warn_at = thresholds.get(state.key)
            if warn_at is None:
                continue
            level = warn_level(state, warn_at)
            if level is BudgetLevel.OK:
                continue
            marker = (state.key, state.resets_at.isoformat(), level.value)
            if marker in self._warned:
                continue
            self._warned.add(marker)
            resets = format_local(state.resets_at, self.guard.timezone)
            spent, limit = format_usd(state.spent_nanos), format_usd(state.limit_nanos)
            if state.spent_nanos > state.limit_nanos:
                log.warning(
                    "%s is over its limit: %s spent of %s; requests are refused until %s",
                    state.label,
                    spent,
                    limit,
                    resets,
                )
            elif level is BudgetLevel.EXHAUSTED:
                log.warning(
                    "%s is used up: %s spent of %s; requests are refused until %s", state.label, spent, limit, resets
                )
            else:
                log.warning(
                    "%s: %s spent of %s (warning from %s%%), resets %s",
                    state.label,
                    spent,
                    limit,
                    f"{warn_at * 100:.0f}",
                    resets,
                )

    def release(self, reservation: Reservation) -> None:
        self.guard.release(reservation)

    def shrink(self, reservation: Reservation, bound_nanos: int) -> None:
        self.guard.shrink(reservation, bound_nanos)

    def watch(self, reservation: Reservation, progress: Callable[[], int]) -> None:
        self.guard.watch(reservation, progress)


STATE = web.AppKey("state", SidecarState)
# Launch ids are client-supplied: the cache of per-launch request metadata must not grow without bound.
MAX_CACHED_METAS = 1024
PROXY = web.AppKey("proxy", Proxy)
SESSION = web.AppKey("session", ClientSession)
CONNECTIONS = web.AppKey("connections", ConnectionGuard)


@web.middleware
async def guard_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """No open relay: loopback Host only (DNS rebinding), and the local token on everything but health.

    A refused caller's connection is closed after the answer: without the token it cannot hold one open.
    """
    state = request.app[STATE]
    token = request.headers.get(TOKEN_HEADER, "")
    # the token is ASCII: a header of other bytes (aiohttp decodes them to surrogates, which cannot be encoded
    # again) is simply not it, never a 500
    authentic = bool(token) and token.isascii() and hmac.compare_digest(token.encode(), state.token.encode())
    # a token-less request from a Claude Code session that `ccgate install`'s hook registered
    installed = not token and request.path not in PUBLIC_PATHS and _installed_session(request, state)
    request.app[CONNECTIONS].request_seen(request.protocol, authenticated=authentic or installed)
    try:
        if not is_loopback_host(request.host):
            raise _Refused(
                PermissionDeniedError(
                    f"the sidecar only answers requests addressed to 127.0.0.1 or localhost, not {request.host!r}",
                    hint="point ANTHROPIC_BASE_URL at http://127.0.0.1:<port> (`ccgate launch` does this)",
                )
            )
        if request.path not in PUBLIC_PATHS and not (authentic or installed):
            raise _Refused(
                AuthenticationError(
                    "missing or wrong ccgate local token" if token else "missing ccgate local token",
                    hint="start Claude Code with `ccgate launch claude` so requests carry the token"
                    + (
                        "; after `ccgate install`, start a new session (its hook registers it; hooks must be enabled)"
                        if _is_claude(request)
                        else ""
                    ),
                )
            )
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        limit = state.config.sidecar.max_body_mb
        return error_response(
            RequestTooLargeError(
                f"request body is larger than the sidecar's limit of {limit} MB ({exc.text or ''})".strip(),
                hint="raise `sidecar.max_body_mb` in config.toml",
            )
        )
    except web.HTTPNotFound:
        return error_response(NotFoundError(f"no such endpoint: {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed:
        return error_response(NotFoundError(f"method {request.method} is not supported on {request.path}"))
    except _Refused as refused:
        response = error_response(refused.error)
        response.force_close()
        return response
    except CcgateError as error:
        return error_response(error)


class _Refused(Exception):
    """A request refused before it reached a handler; its connection closes after the answer."""

    def __init__(self, error: CcgateError) -> None:
        super().__init__(error.message)
        self.error = error


def _is_claude(request: web.Request) -> bool:
    return SESSION_HEADER in request.headers and TOKEN_HEADER not in request.headers


def _installed_session(request: web.Request, state: SidecarState) -> bool:
    """A token-less request is let through only from a Claude Code session that ccgate's hook registered (with the
    token), never from a web page (browsers send `Origin`), and, where the kernel says, from this user's process."""
    if request.path not in SESSION_PATHS or "Origin" in request.headers:
        return False
    session_id = request.headers.get(SESSION_HEADER)
    if not session_id or SESSION_KEY_PREFIX + session_id not in state.launches:
        return False
    from ccgate.sidecar.peers import peer_uid

    transport = request.transport
    if transport is None:
        return False
    uid = peer_uid(transport.get_extra_info("peername"), transport.get_extra_info("sockname"))
    return uid is None or uid == os.getuid()


def _meta(request: web.Request) -> ClientMeta:
    state = request.app[STATE]
    launch_id = request.headers.get(LAUNCH_HEADER)
    launch = state.launches.get(launch_id) if launch_id else None
    session_id = request.headers.get(SESSION_HEADER)
    session = state.launches.get(SESSION_KEY_PREFIX + session_id) if session_id else None
    if launch is None and launch_id and launch_id.startswith(OWN_UPSTREAM_LAUNCH_PREFIX):
        # its requests belong to the developer's own gateway, whose address this sidecar no longer has: sending
        # them (and their credentials) to the default upstream instead would be worse than refusing them
        raise PermissionDeniedError(
            "this launch forwards to your own ANTHROPIC_BASE_URL, which the ccgate sidecar no longer knows",
            hint="exit and start it again with `ccgate launch claude`",
        )
    for used in (launch, session):
        if used is not None:
            used.last_used = time.time()
    # `launch` knows best; an installed session's settings still decide where Claude Code's requests were meant to go
    project = launch.project if launch else (session.project if session else None)
    upstream = (launch.anthropic_base_url if launch else None) or (session.anthropic_base_url if session else None)
    if state.org.proxy_mode:  # everything goes to the org gateway with the virtual key, never the launch's own
        upstream = None
    tags = launch.tags if launch else None
    meta = state.metas.get((launch_id, project, upstream, tags))
    if meta is None:  # one per launch: frozen, so requests share it
        if len(state.metas) >= MAX_CACHED_METAS:
            state.metas.clear()
        meta = state.metas[(launch_id, project, upstream, tags)] = ClientMeta(
            launch_id=launch_id,
            project=project,
            source="sidecar",
            private_headers=PRIVATE_HEADERS,
            anthropic_base_url=upstream,
            tags=tags,
        )
    return meta


async def messages(request: web.Request) -> web.StreamResponse:
    request.app[STATE].requests_seen += 1
    return await request.app[PROXY].messages(request, _meta(request))


async def count_tokens(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].count_tokens(request, _meta(request))


async def root(request: web.Request) -> web.StreamResponse:
    """Claude Code sends `HEAD /` as a connectivity check; it is never blocked."""
    return web.Response(text="ccgate sidecar\n")


async def healthz(request: web.Request) -> web.StreamResponse:
    """Public; with a challenge header it also proves this sidecar holds the local token (without sending it)."""
    state = request.app[STATE]
    headers: dict[str, str] = {}
    nonce = request.headers.get(CHALLENGE_HEADER)
    if nonce is not None:
        if not is_valid_nonce(nonce):
            raise InvalidRequestError(
                f"{CHALLENGE_HEADER} must be 32 to 128 lowercase hex characters",
                hint="send a fresh random nonce, e.g. secrets.token_hex(32)",
            )
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            headers[PROOF_HEADER] = identity_proof(state.token, nonce, int(sockname[1]))
    return web.json_response(
        {
            "service": SERVICE_NAME,
            "ok": True,
            "version": __version__,
            "pid": os.getpid(),
            "home_id": home_id(state.paths),
        },
        headers=headers,
    )


async def status(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    proxy = request.app[PROXY]
    budgets: list[dict[str, Any]] = []
    admission = proxy.deps.admission
    if isinstance(admission, ProjectBudgets):
        for budget in await admission.guard.snapshot(request.query.get("project")):
            budgets.append(
                {
                    "key": budget.key,
                    "label": budget.label,
                    "limit_nanos": budget.limit_nanos,
                    "spent_nanos": budget.spent_nanos,
                    "reserved_nanos": budget.reserved_nanos,
                    "resets_at": budget.resets_at.isoformat(),
                }
            )
    return web.json_response(
        {
            "service": SERVICE_NAME,
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - state.started_at, 1),
            "inflight": len(proxy.inflight),
            "requests_seen": state.requests_seen,
            "launches": len(state.launches),
            "ledger": str(state.paths.ledger_file),
            "ledger_writes": await _ledger_writes(state.writer, spill_check="spill_check" in request.query),
            "budgets": budgets,
            "connections": request.app[CONNECTIONS].stats(),
            "providers": state.providers,
            "org": state.org.status(),
        }
    )


# A spill line is about 1 KB; a probe of this many bytes per request kept in memory says whether a spill fits.
SPILL_PROBE_BYTES_PER_REQUEST = 2048
SPILL_PROBE_MAX_BYTES = 16 * 1024 * 1024


async def _ledger_writes(writer: LedgerWriter | None, *, spill_check: bool = False) -> dict[str, Any] | None:
    """Requests the ledger could not take yet (kept in memory) and those lost, with SQLite's reason; with
    `spill_check` (`sidecar stop` asks, as it writes a probe file) and some waiting, whether a spill file for them
    would be written now if the sidecar stopped (`spill_ok`)."""
    if writer is None:
        return None
    writes: dict[str, Any] = {"unsaved": writer.unsaved, "dropped": writer.dropped, "last_error": writer.last_error}
    if writer.unsaved and spill_check:
        from ccgate.storage import spill

        size = min(SPILL_PROBE_MAX_BYTES, writer.unsaved * SPILL_PROBE_BYTES_PER_REQUEST)
        writes["spill_ok"] = await asyncio.to_thread(spill.probe, writer.spill_dirs, size) is not None
    return writes


async def register_launch(request: web.Request) -> web.StreamResponse:
    try:
        payload = await request.json()
    except (ValueError, RecursionError):  # RecursionError: nested past ~1,000 levels
        raise InvalidRequestError("launch registration must be JSON") from None
    launch_id = payload.get("launch_id") if isinstance(payload, dict) else None
    if not isinstance(launch_id, str) or not launch_id.isascii() or not 8 <= len(launch_id) <= 64:
        raise InvalidRequestError("launch_id must be an ASCII id of 8 to 64 characters")
    if launch_id.startswith(SESSION_KEY_PREFIX):
        raise InvalidRequestError(f"launch_id must not start with {SESSION_KEY_PREFIX!r}")
    return await _register(request, launch_id, payload)


async def register_session(request: web.Request) -> web.StreamResponse:
    """The SessionStart hook of `ccgate install` registers Claude Code's session id with its project (and upstream)."""
    try:
        payload = await request.json()
    except (ValueError, RecursionError):
        raise InvalidRequestError("session registration must be JSON") from None
    session_id = payload.get("session_id") if isinstance(payload, dict) else None
    if (
        not isinstance(session_id, str)
        or not 8 <= len(session_id) <= 64
        or not all(char.isascii() and (char.isalnum() or char in "-_") for char in session_id)
    ):
        raise InvalidRequestError("session_id must be an id of 8 to 64 letters, digits, '-' or '_'")
    known = request.app[STATE].launches.get(SESSION_KEY_PREFIX + session_id)
    if known is not None and known.anthropic_base_url and payload.get("anthropic_base_url") is None:
        # hooks of two settings files (user and project) both register it: one without the user's gateway must
        # not send the session's credentials to the default upstream
        payload = {**payload, "anthropic_base_url": known.anthropic_base_url}
    return await _register(request, SESSION_KEY_PREFIX + session_id, payload)


async def _register(request: web.Request, launch_id: str, payload: dict[str, Any]) -> web.StreamResponse:
    state = request.app[STATE]
    project = payload.get("project")
    if project is not None and (not isinstance(project, str) or len(project) > MAX_PROJECT_CHARS):
        raise InvalidRequestError(f"project must be a path of at most {MAX_PROJECT_CHARS} characters")
    upstream = payload.get("anthropic_base_url")
    if upstream is not None:
        if not isinstance(upstream, str):
            raise InvalidRequestError("anthropic_base_url must be a URL")
        try:
            upstream = validate_base_url(upstream, "anthropic_base_url")
        except ConfigError as error:
            raise InvalidRequestError(error.message, hint=error.hint) from None
    tags = _registered_tags(payload.get("tags"))
    state.launches[launch_id] = LaunchInfo(launch_id, project, time.time(), upstream, tags=tags)
    if len(state.launches) > MAX_LAUNCHES:
        for old in sorted(state.launches.values(), key=lambda item: item.recency)[:-MAX_LAUNCHES]:
            state.launches.pop(old.launch_id, None)
    snapshot = {
        key: {
            "project": item.project,
            "started_at": item.started_at,
            "anthropic_base_url": item.anthropic_base_url,
            "tags": item.tags,
        }
        for key, item in state.launches.items()
    }
    async with state.launches_lock:
        await asyncio.to_thread(_save_launches, state.paths, snapshot)
    # echoed, so `launch` can tell a sidecar that kept the upstream from an older one that ignored it; the
    # providers as this sidecar uses them, so `launch` can say when the caller's environment differs
    answer: dict[str, Any] = {
        "ok": True,
        "anthropic_base_url": upstream,
        "providers": state.providers,
        "org": state.org.summary(),
    }
    if tags is not None:  # echoed too: a sidecar older than `--tag` would drop them silently
        answer["tags"] = tags_module.decode(tags)
    return web.json_response(answer)


def _registered_tags(value: object) -> str | None:
    """A registration's tags, validated as `launch` validates them (another local process may send anything)."""
    try:
        return tags_module.encode(tags_module.checked(value))
    except UserInputError as error:
        raise InvalidRequestError(error.message, hint=error.hint) from None


async def reload(request: web.Request) -> web.StreamResponse:
    await apply_config(request.app, force=True)
    error = request.app[STATE].last_reload_error
    if error is not None:
        return error_response(ConfigError(f"config not applied: {error}", hint="fix it; `ccgate doctor` checks it"))
    return web.json_response({"ok": True})


def _launches_file(paths: Paths) -> Path:
    return paths.state_dir / "launches.json"


def _save_launches(paths: Paths, snapshot: dict[str, dict[str, Any]]) -> None:
    from ccgate.local.atomic import write_atomic

    write_atomic(_launches_file(paths), json.dumps(snapshot), fsync=False)  # a cache: losing it costs a project name


def _load_launches(paths: Paths) -> dict[str, LaunchInfo]:
    """Launches survive a sidecar restart, so running Claude Code sessions keep their project."""
    try:
        raw = json.loads(_launches_file(paths).read_text())
    except (FileNotFoundError, ValueError, RecursionError):
        return {}
    if not isinstance(raw, dict):
        return {}
    launches: dict[str, LaunchInfo] = {}
    for key, value in raw.items():
        if not isinstance(value, dict):
            continue
        upstream = value.get("anthropic_base_url")
        if upstream is not None:
            try:
                upstream = validate_base_url(str(upstream), "anthropic_base_url")
            except ConfigError:
                # written from validated values only, so the file was edited by hand; the entry is not trusted
                log.error("launch %s has an unusable anthropic_base_url in %s; dropped", key, _launches_file(paths))
                continue
        try:
            tags = tags_module.encode(tags_module.checked(tags_module.decode(value.get("tags"))))
        except UserInputError:
            log.error("launch %s has unusable tags in %s; dropped", key, _launches_file(paths))
            continue
        project, started_at = value.get("project"), value.get("started_at", 0)
        if not (project is None or isinstance(project, str)) or not _finite_number(started_at):
            # a project that is not text would make every ledger write of its requests fail
            log.error("launch %s has an unusable project or started_at in %s; dropped", key, _launches_file(paths))
            continue
        launches[key] = LaunchInfo(key, project, float(started_at), upstream, tags=tags)
    return launches


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class StaticDeps:
    """What a (re)configuration builds off the event loop: providers and their keys, routing, prices, budgets."""

    providers: Mapping[str, ProviderSpec]
    router: Router
    pricer: PriceCatalog
    keys: Mapping[str, str]  # provider name -> API key, for the providers that have one
    key_store: str  # where stored keys come from: "keyring" or "file"
    rules: Sequence[BudgetRule]
    org: OrgSettings | None = None  # logged in to an org gateway: its URL, key and mode


def _build_static_deps(config: Config, environ: Mapping[str, str], paths: Paths | None = None) -> StaticDeps:
    """Blocking part of (re)configuration: keyring reads happen here, off the event loop."""
    from ccgate.core.pricing import PriceCatalog
    from ccgate.core.providers import resolve_providers
    from ccgate.core.routing import Router
    from ccgate.local.secrets import get_provider_key
    from ccgate.sidecar.admission import rules_from_config
    from ccgate.sidecar.org import read_settings

    org = read_settings(config, paths) if paths is not None else None
    providers = resolve_providers(config, environ)
    router = Router(config, providers)
    pricer = PriceCatalog(config.prices)
    pricer.warm()  # the catalog's first load takes most of a second: pay it here, not on a request
    keys: dict[str, str] = {}
    for name in providers:
        try:
            key = get_provider_key(name, environ)
        except Exception as exc:  # a broken keyring must not keep the sidecar down; the user's own auth still works
            log.error("cannot read the key of provider %s: %s", name, exc)
            continue
        if key:
            keys[name] = key
    stored = "keyring"
    if any(not environ.get(providers[name].key_env) for name in keys):
        from ccgate.local.secrets import backend_description

        with contextlib.suppress(Exception):
            stored = "file" if backend_description()[1] else "keyring"
    built = StaticDeps(
        providers=providers,
        router=router,
        pricer=pricer,
        keys=keys,
        key_store=stored,
        rules=rules_from_config(config),
        org=org,
    )
    if org is not None and org.mode == "proxy":
        built = replace(built, **_proxy_mode(config, providers, org))
    return built


def _proxy_mode(config: Config, providers: Mapping[str, Any], org: OrgSettings) -> dict[str, Any]:
    """Every request to the gateway as the `anthropic` provider, with the virtual key as its key (so the
    developer's own credentials are dropped); the org's routing applies there, local tier overrides do not."""
    from ccgate.core.routing import Router

    spec = replace(
        providers["anthropic"],
        base_url=org.url,
        label="the org gateway",
        ccgate_gateway=True,
        unreachable_hint="`ccgate doctor` checks the gateway; if it stays down, tell your platform team",
    )
    gateway = {"anthropic": spec}
    return {
        "providers": gateway,
        "router": Router(replace(config, tiers={}, model_rules={}), gateway),
        "keys": {"anthropic": org.key},
        "key_store": "keyring",
    }


def _apply_org(state: SidecarState, settings: OrgSettings | None) -> None:
    """A new login, logout or key: the sync loop looks again at once (and a refused key gets another try)."""
    org = state.org
    if settings != org.settings:
        if org.settings is not None and settings is not None and settings.mode != org.settings.mode:
            log.info("org mode is now %s", settings.mode)
        org.settings, org.identity, org.key_refused, org.notice = settings, None, None, None
        org.unseen_nanos = org.settled_nanos = 0
    org.wake.set()


def _provider_view(built: StaticDeps, state: SidecarState) -> dict[str, dict[str, Any]]:
    from ccgate.core.provider_env import sidecar_view

    sources = dict.fromkeys(built.keys, built.key_store)
    return sidecar_view(built.providers, state.environ, built.keys, state.token, sources)


async def apply_config(app: web.Application, *, force: bool = False) -> None:
    """Re-read config.toml (and secrets) when it changed; a broken file keeps the last good config."""
    state = app[STATE]
    path = state.paths.config_file
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        mtime = None
    if not force and mtime == state.config_mtime:
        return
    state.config_mtime = mtime
    proxy = app[PROXY]
    try:
        config = await asyncio.to_thread(load_config, path)
        built = await asyncio.to_thread(_build_static_deps, config, state.environ, state.paths)
        admission = proxy.deps.admission
        if isinstance(admission, ProjectBudgets):
            admission.guard.update_rules(built.rules)
    except CcgateError as error:
        state.last_reload_error = error.full_message()
        log.error("config not applied, keeping the previous one: %s", error.full_message())
        return
    state.config = config
    state.last_reload_error = None
    _apply_org(state, built.org)
    guard = app[CONNECTIONS]  # for connections from now on; the keep-alive limit changes at the next start
    guard.header_timeout = config.sidecar.header_timeout_seconds
    guard.max_unauthenticated = config.sidecar.max_unauthenticated_connections
    state.providers = _provider_view(built, state)
    # one swap: a request in flight keeps the deps it started with
    proxy.deps = replace(
        proxy.deps,
        providers=built.providers,
        router=built.router,
        pricer=built.pricer,
        provider_keys=built.keys,
        first_byte_timeout=config.sidecar.first_byte_timeout_seconds,
        stream_idle_timeout=config.sidecar.stream_idle_timeout_seconds,
        max_reply_bytes=config.sidecar.max_reply_mb * 1024 * 1024,
    )
    log.info("config reloaded from %s", path)


async def _watch_config(app: web.Application) -> None:
    while True:
        await asyncio.sleep(1.0)
        try:
            await apply_config(app)
        except Exception:  # the watcher must survive anything; the error is logged
            log.exception("config reload failed")


async def _ledger_writer(app: web.Application) -> AsyncIterator[None]:
    """The ledger writer thread: started first (it replays spills and recovers pending rows), stopped last."""
    from ccgate.storage.writer import LedgerWriter

    state = app[STATE]
    dirs = spill_dirs(state.paths, state.environ)
    writer = LedgerWriter(state.paths.ledger_file, spill_dirs=dirs)
    await asyncio.to_thread(writer.start)
    state.writer = writer
    if writer.replayed:
        log.warning("%d request(s) saved at the last stop were replayed into the ledger", writer.replayed)
    if writer.recovered:
        log.warning("marked %d request(s) left pending by a previous run as interrupted", writer.recovered)
    try:
        yield
    finally:
        await asyncio.to_thread(writer.close)
        await asyncio.to_thread(_report_stop, writer, dirs)


async def _proxy(app: web.Application) -> AsyncIterator[None]:
    """Launches, providers, keys, prices and budgets from the config, and the Proxy on top of them; holds nothing
    to close. A config that cannot be used (an unknown provider) fails the start here, after the writer and the
    session started: their own contexts stop them."""
    from ccgate.storage.ledger import open_ledger
    from ccgate.storage.reports import spent_nanos

    state = app[STATE]
    writer = state.writer
    assert writer is not None  # the ledger writer's context runs first
    state.launches = await asyncio.to_thread(_load_launches, state.paths)
    built = await asyncio.to_thread(_build_static_deps, state.config, state.environ, state.paths)
    state.providers = _provider_view(built, state)
    _apply_org(state, built.org)
    try:
        state.config_mtime = state.paths.config_file.stat().st_mtime
    except FileNotFoundError:
        state.config_mtime = None

    ledger_path = state.paths.ledger_file

    def load_spent(since: Any, until: Any, project: str | None) -> int:
        writer.flush(timeout=5.0)
        db = open_ledger(ledger_path)
        try:
            spent = int(spent_nanos(db, since=since, until=until, project=project))
            # requests only in memory (the ledger refused them, or a replayed spill still waits) count too
            return spent + unsaved_spend(db, writer.unsaved_records(), since=since, until=until, project=project)
        finally:
            db.close()

    guard = BudgetGuard(
        built.rules,
        spent_loader=load_spent,
        tz=_timezone(state.config),
        wait_timeout=state.config.sidecar.budget_wait_seconds,
        # reservation_ttl stays None: in one process a reservation ends with its request (settled, released or
        # cancelled), and a stream may legitimately run for an hour
    )
    app[PROXY] = Proxy(
        ProxyDeps(
            session=app[SESSION],
            providers=built.providers,
            router=built.router,
            pricer=built.pricer,
            ledger=writer,
            admission=ProjectBudgets(guard, state.org),
            provider_keys=built.keys,
            first_byte_timeout=state.config.sidecar.first_byte_timeout_seconds,
            stream_idle_timeout=state.config.sidecar.stream_idle_timeout_seconds,
            max_reply_bytes=state.config.sidecar.max_reply_mb * 1024 * 1024,
        )
    )
    yield


async def _config_watcher(app: web.Application) -> AsyncIterator[None]:
    """Re-reads config.toml once a second; cancelled first on shutdown."""
    async with background(_watch_config(app)):
        yield


async def _org_sync(app: web.Application) -> AsyncIterator[None]:
    """Org mode's usage sync to the gateway, in the background (it never touches a request's path)."""
    from ccgate.sidecar.org import SyncLoop

    state = app[STATE]
    writer = state.writer
    assert writer is not None  # the ledger writer's context runs first
    sync = SyncLoop(state.org, app[SESSION], state.paths.ledger_file, state.environ, lambda: writer.flush(timeout=5.0))
    async with background(sync.run()):
        yield


# One cleanup context per resource, in start order: a failed start stops exactly what had started, and shutdown
# runs them in reverse (watcher, session, ledger writer), as aiohttp's docs advise.
RESOURCES = (_ledger_writer, upstream_session_context(SESSION), _proxy, _org_sync, _config_watcher)


def spill_dirs(paths: Paths, environ: Mapping[str, str]) -> list[Path]:
    from ccgate.storage import spill

    return spill.spill_dirs(paths.runtime_dir, home_id(paths), environ)


def _report_stop(writer: LedgerWriter, dirs: Sequence[Path]) -> None:
    """What became of the requests the ledger refused, for `sidecar stop` to print once this process is gone."""
    from ccgate.storage import spill

    spilled, spill_file = writer.spilled
    spill.write_report(dirs, pid=os.getpid(), spilled=spilled, lost=writer.lost_at_close, spill_file=spill_file)


def unsaved_spend(db: Any, records: Sequence[Any], *, since: Any, until: Any, project: str | None) -> int:
    """Spend of requests only in memory, in [since, until) and the project, less what the ledger already holds
    for them (an earlier state of the same request, counted by `spent_nanos`)."""
    counted = {
        record.id: record.cost.nanos or 0
        for record in records
        if since <= record.started_at < until and (project is None or record.project == project)
    }
    if not counted:
        return 0
    stored = 0
    ids = list(counted)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        sql = f"SELECT coalesce(sum(cost_nanos), 0) FROM requests WHERE id IN ({marks})"  # noqa: S608
        stored += int(db.conn.execute(sql, chunk).fetchone()[0])
    return sum(counted.values()) - stored


def _timezone(config: Config) -> tzinfo | None:
    """The configured zone; a bad name (only a Config built in code can hold one) is logged and the user's
    zone is used instead, so the sidecar still starts."""
    from ccgate.local.timezone import resolve_timezone

    if config.timezone:
        try:
            return resolve_timezone(config.timezone)
        except ConfigError:
            log.error("unknown timezone %r in config; using the system zone", config.timezone)
    return None


def create_runner(app: web.Application) -> web.AppRunner:
    """Handler cancellation on: a client that goes away mid-stream must close the upstream request at once.

    On shutdown, streams get `shutdown_timeout` seconds to finish; the rest are cancelled and recorded as
    interrupted (with the usage seen) before the ledger writer closes. Idle keep-alive connections close after
    `sidecar.keepalive_timeout_seconds`; the connection guard bounds the rest (see `connections`).
    """
    settings = app[STATE].config.sidecar
    return GuardedRunner(
        app,
        app[CONNECTIONS],
        handle_signals=False,
        access_log=None,
        shutdown_timeout=5.0,
        handler_cancellation=True,
        keepalive_timeout=settings.keepalive_timeout_seconds,
    )


def create_app(
    paths: Paths, config: Config, *, token: str, environ: Mapping[str, str] | None = None
) -> web.Application:
    app = web.Application(
        client_max_size=config.sidecar.max_body_mb * 1024 * 1024,
        middlewares=[guard_middleware],
        handler_args={"max_field_size": 65536, "max_line_size": 65536},
    )
    app[STATE] = SidecarState(paths=paths, config=config, environ=dict(environ or os.environ), token=token)
    app[CONNECTIONS] = ConnectionGuard(
        header_timeout=config.sidecar.header_timeout_seconds,
        max_unauthenticated=config.sidecar.max_unauthenticated_connections,
    )
    app.cleanup_ctx.extend(RESOURCES)
    app.router.add_route("HEAD", "/", root)
    app.router.add_get("/", root, allow_head=False)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/_ccgate/status", status)
    app.router.add_post("/_ccgate/launches", register_launch)
    app.router.add_post("/_ccgate/sessions", register_session)
    app.router.add_post("/_ccgate/reload", reload)
    return app
