"""The sidecar's aiohttp application: local auth, launch registry, config reload, and the proxy routes."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ccgate import __version__
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
)
from ccgate.local.config_file import load_config
from ccgate.local.paths import Paths
from ccgate.proxy.engine import ClientMeta, Proxy, ProxyDeps, error_response
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
    from ccgate.storage.writer import LedgerWriter

log = logging.getLogger("ccgate.sidecar")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
PUBLIC_PATHS = frozenset({"/", "/healthz"})
MAX_LAUNCHES = 1000
MAX_PROJECT_CHARS = 4096
PRIVATE_HEADERS = frozenset({TOKEN_HEADER, LAUNCH_HEADER})


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
    metas: dict[tuple[str | None, str | None, str | None], ClientMeta] = field(default_factory=dict)
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
        return any(rule.applies_to(meta.project) for rule in self.guard.rules)

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
CONNECTIONS = web.AppKey("connections", ConnectionGuard)


def _host_is_loopback(host: str | None) -> bool:
    if not host:
        return False
    name = host
    if host.startswith("["):
        name = host[: host.find("]") + 1]
    elif host.count(":") == 1:
        name = host.split(":", 1)[0]
    return name.lower() in LOOPBACK_HOSTS


@web.middleware
async def guard_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """No open relay: loopback Host only (DNS rebinding), and the local token on everything but health.

    A refused caller's connection is closed after the answer: without the token it cannot hold one open.
    """
    state = request.app[STATE]
    token = request.headers.get(TOKEN_HEADER, "")
    authentic = bool(token) and hmac.compare_digest(token.encode(), state.token.encode())
    request.app[CONNECTIONS].request_seen(request.protocol, authenticated=authentic)
    try:
        if not _host_is_loopback(request.host):
            raise _Refused(
                PermissionDeniedError(
                    f"the sidecar only answers requests addressed to 127.0.0.1 or localhost, not {request.host!r}",
                    hint="point ANTHROPIC_BASE_URL at http://127.0.0.1:<port> (`ccgate launch` does this)",
                )
            )
        if request.path not in PUBLIC_PATHS and not authentic:
            raise _Refused(
                AuthenticationError(
                    "missing or wrong ccgate local token" if token else "missing ccgate local token",
                    hint="start Claude Code with `ccgate launch claude` so requests carry the token",
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


def _meta(request: web.Request) -> ClientMeta:
    state = request.app[STATE]
    launch_id = request.headers.get(LAUNCH_HEADER)
    launch = state.launches.get(launch_id) if launch_id else None
    if launch is None and launch_id and launch_id.startswith(OWN_UPSTREAM_LAUNCH_PREFIX):
        # its requests belong to the developer's own gateway, whose address this sidecar no longer has: sending
        # them (and their credentials) to the default upstream instead would be worse than refusing them
        raise PermissionDeniedError(
            "this launch forwards to your own ANTHROPIC_BASE_URL, which the ccgate sidecar no longer knows",
            hint="exit and start it again with `ccgate launch claude`",
        )
    if launch is not None:
        launch.last_used = time.time()
    project = launch.project if launch else None
    # in proxy mode everything goes to the org gateway with the virtual key, never to the launch's own upstream
    upstream = launch.anthropic_base_url if launch and not state.org.proxy_mode else None
    meta = state.metas.get((launch_id, project, upstream))
    if meta is None:  # one per launch: frozen, so requests share it
        if len(state.metas) >= MAX_CACHED_METAS:
            state.metas.clear()
        meta = state.metas[(launch_id, project, upstream)] = ClientMeta(
            launch_id=launch_id,
            project=project,
            source="sidecar",
            private_headers=PRIVATE_HEADERS,
            anthropic_base_url=upstream,
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
    state = request.app[STATE]
    try:
        payload = await request.json()
    except (ValueError, RecursionError):  # RecursionError: nested past ~1,000 levels
        raise InvalidRequestError("launch registration must be JSON") from None
    launch_id = payload.get("launch_id") if isinstance(payload, dict) else None
    if not isinstance(launch_id, str) or not launch_id.isascii() or not 8 <= len(launch_id) <= 64:
        raise InvalidRequestError("launch_id must be an ASCII id of 8 to 64 characters")
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
    state.launches[launch_id] = LaunchInfo(launch_id, project, time.time(), upstream)
    if len(state.launches) > MAX_LAUNCHES:
        for old in sorted(state.launches.values(), key=lambda item: item.recency)[:-MAX_LAUNCHES]:
            state.launches.pop(old.launch_id, None)
    snapshot = {
        key: {"project": item.project, "started_at": item.started_at, "anthropic_base_url": item.anthropic_base_url}
        for key, item in state.launches.items()
    }
    async with state.launches_lock:
        await asyncio.to_thread(_save_launches, state.paths, snapshot)
    # echoed, so `launch` can tell a sidecar that kept the upstream from an older one that ignored it; the
    # providers as this sidecar uses them, so `launch` can say when the caller's environment differs
    return web.json_response(
        {"ok": True, "anthropic_base_url": upstream, "providers": state.providers, "org": state.org.summary()}
    )


async def reload(request: web.Request) -> web.StreamResponse:
    await apply_config(request.app, force=True)
    error = request.app[STATE].last_reload_error
    if error is not None:
        return error_response(ConfigError(f"config not applied: {error}", hint="fix it; `ccgate doctor` checks it"))
    return web.json_response({"ok": True})


def _launches_file(paths: Paths) -> Path:
    return paths.state_dir / "launches.json"


def _save_launches(paths: Paths, snapshot: dict[str, dict[str, Any]]) -> None:
    path = _launches_file(paths)
    fd, tmp = tempfile.mkstemp(prefix=".launches-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(snapshot, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_launches(paths: Paths) -> dict[str, LaunchInfo]:
    """Launches survive a sidecar restart, so running Claude Code sessions keep their project."""
    try:
        raw = json.loads(_launches_file(paths).read_text())
    except (FileNotFoundError, ValueError):
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
        launches[key] = LaunchInfo(key, value.get("project"), float(value.get("started_at", 0)), upstream)
    return launches


def _build_static_deps(config: Config, environ: Mapping[str, str], paths: Paths | None = None) -> dict[str, Any]:
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
    built = {
        "providers": providers,
        "router": router,
        "pricer": pricer,
        "keys": keys,
        "key_store": stored,
        "rules": rules_from_config(config),
        "org": org,
    }
    if org is not None and org.mode == "proxy":
        built.update(_proxy_mode(config, providers, org))
    return built


def _proxy_mode(config: Config, providers: Mapping[str, Any], org: OrgSettings) -> dict[str, Any]:
    """Every request to the gateway as the `anthropic` provider, with the virtual key as its key (so the
    developer's own credentials are dropped); the org's routing applies there, local tier overrides do not."""
    from ccgate.core.routing import Router

    spec = replace(
        providers["anthropic"],
        base_url=org.url,
        label="the org gateway",
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


def _provider_view(built: Mapping[str, Any], state: SidecarState) -> dict[str, dict[str, Any]]:
    from ccgate.core.provider_env import sidecar_view

    keys: dict[str, str] = built["keys"]
    sources = dict.fromkeys(keys, built["key_store"])
    return sidecar_view(built["providers"], state.environ, keys, state.token, sources)


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
            admission.guard.update_rules(built["rules"])
    except CcgateError as error:
        state.last_reload_error = error.full_message()
        log.error("config not applied, keeping the previous one: %s", error.full_message())
        return
    state.config = config
    state.last_reload_error = None
    _apply_org(state, built["org"])
    guard = app[CONNECTIONS]  # for connections from now on; the keep-alive limit changes at the next start
    guard.header_timeout = config.sidecar.header_timeout_seconds
    guard.max_unauthenticated = config.sidecar.max_unauthenticated_connections
    state.providers = _provider_view(built, state)
    # one swap: a request in flight keeps the deps it started with
    proxy.deps = replace(
        proxy.deps,
        providers=built["providers"],
        router=built["router"],
        pricer=built["pricer"],
        provider_keys=built["keys"],
        first_byte_timeout=config.sidecar.first_byte_timeout_seconds,
        stream_idle_timeout=config.sidecar.stream_idle_timeout_seconds,
    )
    log.info("config reloaded from %s", path)


async def _watch_config(app: web.Application) -> None:
    while True:
        await asyncio.sleep(1.0)
        try:
            await apply_config(app)
        except Exception:  # the watcher must survive anything; the error is logged
            log.exception("config reload failed")


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """One ClientSession, one ledger writer, one budget guard per sidecar; closed in order on shutdown."""
    from ccgate.proxy.upstream import create_client_session
    from ccgate.storage.ledger import open_ledger
    from ccgate.storage.reports import spent_nanos
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
    state.launches = await asyncio.to_thread(_load_launches, state.paths)
    built = await asyncio.to_thread(_build_static_deps, state.config, state.environ, state.paths)
    state.providers = _provider_view(built, state)
    _apply_org(state, built["org"])
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
        built["rules"],
        spent_loader=load_spent,
        tz=_timezone(state.config),
        wait_timeout=state.config.sidecar.budget_wait_seconds,
        # reservation_ttl stays None: in one process a reservation ends with its request (settled, released or
        # cancelled), and a stream may legitimately run for an hour
    )
    session = create_client_session()

    app[PROXY] = Proxy(
        ProxyDeps(
            session=session,
            providers=built["providers"],
            router=built["router"],
            pricer=built["pricer"],
            ledger=writer,
            admission=ProjectBudgets(guard, state.org),
            provider_keys=built["keys"],
            first_byte_timeout=state.config.sidecar.first_byte_timeout_seconds,
            stream_idle_timeout=state.config.sidecar.stream_idle_timeout_seconds,
        )
    )
    watcher = asyncio.create_task(_watch_config(app))
    from ccgate.sidecar.org import SyncLoop

    sync = SyncLoop(state.org, session, ledger_path, state.environ, lambda: writer.flush(timeout=5.0))
    syncer = asyncio.create_task(sync.run())
    try:
        yield
    finally:
        for task in (watcher, syncer):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await session.close()
        await asyncio.to_thread(writer.close)
        await asyncio.to_thread(_report_stop, writer, dirs)


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


def _timezone(config: Config) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if config.timezone:
        try:
            return ZoneInfo(config.timezone)
        except ZoneInfoNotFoundError:
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
    app.cleanup_ctx.append(_resources)
    app.router.add_route("HEAD", "/", root)
    app.router.add_get("/", root, allow_head=False)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/_ccgate/status", status)
    app.router.add_post("/_ccgate/launches", register_launch)
    app.router.add_post("/_ccgate/reload", reload)
    return app
