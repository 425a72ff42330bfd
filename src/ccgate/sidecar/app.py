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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ccgate import __version__
from ccgate import tags as tags_module
from ccgate.budget_guard import AdmissionRequest, BudgetGuard, Reservation
from ccgate.config import Config, load_config
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
from ccgate.models import format_usd
from ccgate.paths import Paths
from ccgate.providers import validate_base_url
from ccgate.proxy import ClientMeta, Proxy, ProxyDeps, error_response
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


class ProjectBudgets:
    """The sidecar's budgets: global ones and per-project ones (the project comes from the launch)."""

    def __init__(self, guard: BudgetGuard) -> None:
        self.guard = guard
        self._warned: set[tuple[str, str]] = set()

    def applies(self, meta: ClientMeta) -> bool:
        return any(rule.applies_to(meta.project) for rule in self.guard.rules)

    async def admit(self, meta: ClientMeta, *, reserve_nanos: int | None, model: str) -> Reservation:
        return await self.guard.admit(AdmissionRequest(project=meta.project, reserve_nanos=reserve_nanos, model=model))

    def settle(self, reservation: Reservation, actual_nanos: int) -> None:
        self.guard.settle(reservation, actual_nanos)
        self._log_warnings()

    def _log_warnings(self) -> None:
        """Once per budget and window, the sidecar log says when spend crosses the warning threshold."""
        from ccgate.budgets import BudgetLevel, format_local, warn_level

        thresholds = {rule.key: rule.warn_at for rule in self.guard.rules}
        for state in self.guard.states():
            warn_at = thresholds.get(state.key)
            if warn_at is None or warn_level(state, warn_at) is BudgetLevel.OK:
                continue
            marker = (state.key, state.resets_at.isoformat())
            if marker in self._warned:
                continue
            self._warned.add(marker)
            log.warning(
                "%s: %s spent of %s (warning from %s%%), resets %s",
                state.label,
                format_usd(state.spent_nanos),
                format_usd(state.limit_nanos),
                f"{warn_at * 100:.0f}",
                format_local(state.resets_at, self.guard.timezone),
            )

    def release(self, reservation: Reservation) -> None:
        self.guard.release(reservation)


STATE = web.AppKey("state", SidecarState)
# Launch ids are client-supplied: the cache of per-launch request metadata must not grow without bound.
MAX_CACHED_METAS = 1024
PROXY = web.AppKey("proxy", Proxy)


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
    """No open relay: loopback Host only (DNS rebinding), and the local token on everything but health."""
    state = request.app[STATE]
    try:
        if not _host_is_loopback(request.host):
            raise PermissionDeniedError(
                f"the sidecar only answers requests addressed to 127.0.0.1 or localhost, not {request.host!r}",
                hint="point ANTHROPIC_BASE_URL at http://127.0.0.1:<port> (`ccgate launch` does this)",
            )
        if request.path not in PUBLIC_PATHS:
            token = request.headers.get(TOKEN_HEADER, "")
            if not token or not hmac.compare_digest(token.encode(), state.token.encode()):
                raise AuthenticationError(
                    "missing or wrong ccgate local token" if token else "missing ccgate local token",
                    hint="start Claude Code with `ccgate launch claude` so requests carry the token",
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
    except CcgateError as error:
        return error_response(error)


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
    upstream = launch.anthropic_base_url if launch else None
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
            "ledger_writes": _ledger_writes(state.writer),
            "budgets": budgets,
        }
    )


def _ledger_writes(writer: LedgerWriter | None) -> dict[str, Any] | None:
    """Requests the ledger could not take yet (kept in memory) and those lost, with SQLite's reason."""
    if writer is None:
        return None
    return {"unsaved": writer.unsaved, "dropped": writer.dropped, "last_error": writer.last_error}


async def register_launch(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        payload = await request.json()
    except ValueError:
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
    # echoed, so `launch` can tell a sidecar that kept the upstream from an older one that ignored it
    answer: dict[str, Any] = {"ok": True, "anthropic_base_url": upstream}
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
        try:
            tags = tags_module.encode(tags_module.checked(tags_module.decode(value.get("tags"))))
        except UserInputError:
            log.error("launch %s has unusable tags in %s; dropped", key, _launches_file(paths))
            continue
        launches[key] = LaunchInfo(key, value.get("project"), float(value.get("started_at", 0)), upstream, tags=tags)
    return launches


def _build_static_deps(config: Config, environ: Mapping[str, str]) -> dict[str, Any]:
    """Blocking part of (re)configuration: keyring reads happen here, off the event loop."""
    from ccgate.budget_guard import rules_from_config
    from ccgate.pricing import PriceCatalog
    from ccgate.providers import resolve_providers
    from ccgate.routing import Router
    from ccgate.secrets import get_provider_key

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
    return {
        "providers": providers,
        "router": router,
        "pricer": pricer,
        "keys": keys,
        "rules": rules_from_config(config),
    }


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
        built = await asyncio.to_thread(_build_static_deps, config, state.environ)
        admission = proxy.deps.admission
        if isinstance(admission, ProjectBudgets):
            admission.guard.update_rules(built["rules"])
    except CcgateError as error:
        state.last_reload_error = error.full_message()
        log.error("config not applied, keeping the previous one: %s", error.full_message())
        return
    state.config = config
    state.last_reload_error = None
    # one swap: a request in flight keeps the deps it started with
    proxy.deps = replace(
        proxy.deps,
        providers=built["providers"],
        router=built["router"],
        pricer=built["pricer"],
        provider_keys=built["keys"],
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
    from ccgate.storage.ledger import open_ledger
    from ccgate.storage.reports import spent_nanos
    from ccgate.storage.writer import LedgerWriter
    from ccgate.upstream import create_client_session

    state = app[STATE]
    writer = LedgerWriter(state.paths.ledger_file)
    await asyncio.to_thread(writer.start)
    state.writer = writer
    if writer.recovered:
        log.warning("marked %d request(s) left pending by a previous run as interrupted", writer.recovered)
    state.launches = await asyncio.to_thread(_load_launches, state.paths)
    built = await asyncio.to_thread(_build_static_deps, state.config, state.environ)
    try:
        state.config_mtime = state.paths.config_file.stat().st_mtime
    except FileNotFoundError:
        state.config_mtime = None

    ledger_path = state.paths.ledger_file

    def load_spent(since: Any, until: Any, project: str | None) -> int:
        writer.flush(timeout=5.0)
        db = open_ledger(ledger_path)
        try:
            return int(spent_nanos(db, since=since, until=until, project=project))
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
            admission=ProjectBudgets(guard),
            provider_keys=built["keys"],
        )
    )
    watcher = asyncio.create_task(_watch_config(app))
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await session.close()
        await asyncio.to_thread(writer.close)


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
    interrupted (with the usage seen) before the ledger writer closes.
    """
    return web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0, handler_cancellation=True)


def create_app(
    paths: Paths, config: Config, *, token: str, environ: Mapping[str, str] | None = None
) -> web.Application:
    app = web.Application(
        client_max_size=config.sidecar.max_body_mb * 1024 * 1024,
        middlewares=[guard_middleware],
        handler_args={"max_field_size": 65536, "max_line_size": 65536},
    )
    app[STATE] = SidecarState(paths=paths, config=config, environ=dict(environ or os.environ), token=token)
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
