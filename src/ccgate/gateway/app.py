"""The gateway's aiohttp application: virtual-key auth, the proxy routes, identity and ingest, health.

Each request runs through the shared `Proxy` core with deps bound to its key: the key's router (tier
overrides, allowed models), the process's database admission bound to the routed provider, and a ledger sink
that attributes rows to the key, its team and its customer. The upstream never sees a virtual key (the core
forwards no client credentials here) and the client never sees a provider key.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import aiohttp
from aiohttp import web

from ccgate import __version__, env
from ccgate.core import attribution
from ccgate.core.records import RequestRecord, to_iso
from ccgate.core.routing import Route
from ccgate.errors import CcgateError, InvalidRequestError, NotFoundError, PermissionDeniedError, RequestTooLargeError
from ccgate.gateway import keys
from ccgate.gateway.admission import GatewayAdmission, RequestAdmission
from ccgate.gateway.auth import (
    KEY_CACHE_SECONDS,
    UNKNOWN_LOOKUPS_PER_SECOND,
    UNKNOWN_LOOKUPS_PER_SECOND_TOTAL,
    KeyCache,
    admin_token_limiter,
    client_address,
    parse_trusted_proxies,
    presented_key,
)
from ccgate.gateway.ledger import GatewayLedger, KeyLedger, Owner
from ccgate.gateway.metrics import CONTENT_TYPE, GatewayMetrics, budget_exposition
from ccgate.gateway.routing import KeyRouter
from ccgate.gateway.webhooks import Webhooks, check_alerts
from ccgate.proxy.engine import ClientMeta, Proxy, ProxyDeps, error_response
from ccgate.proxy.serving import background, upstream_session_context
from ccgate.storage.gateway.migrate import MigrationStatus
from ccgate.storage.gateway.records import BudgetLevel, KeyIdentity, KeyMode
from ccgate.storage.gateway.store import GatewayStore
from ccgate.storage.reports import usd_string

log = logging.getLogger("ccgate.gateway")
# one line per finished request: ids, names, model, status and cost -- never a key, a token or a body
access = logging.getLogger("ccgate.gateway.access")

ADMIN_TOKEN_ENV = env.GATEWAY_ADMIN_TOKEN
REQUEST_ID_HEADER = "x-ccgate-request-id"
# Headers a developer's sidecar adds for the gateway; never forwarded to a provider.
PRIVATE_HEADERS = frozenset({REQUEST_ID_HEADER, "x-ccgate-token"}) | attribution.HEADERS
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz"})


@dataclass(frozen=True)
class GatewaySettings:
    """How one gateway process runs; `gateway serve` and `python -m ccgate.gateway` fill it from flags."""

    db_url: str
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    instance_id: str = field(default_factory=lambda: secrets.token_hex(8))
    # apply pending migrations at start; otherwise a database that needs them is refused
    migrate: bool = False
    key_cache_seconds: float = KEY_CACHE_SECONDS
    # database look-ups of unknown keys per client address and second (past it: 429)
    unknown_keys_per_second: float = UNKNOWN_LOOKUPS_PER_SECOND
    # the same for all clients together
    unknown_keys_total_per_second: float = UNKNOWN_LOOKUPS_PER_SECOND_TOTAL
    # CIDRs of load balancers in front of the gateway: behind them, X-Forwarded-For names the client
    trusted_proxies: tuple[str, ...] = ()
    # a budget hold lapses this long after its instance stops renewing it (renewed every third of it)
    reservation_ttl_seconds: float = 30.0
    # a request that only reservations keep out waits while they move, up to this long without progress
    budget_wait_seconds: float = 30.0
    max_body_mb: int = 64
    # the most of a whole provider reply read into memory, and of one unfinished stream event (past it: a 502 or
    # an `error` event, not an ever-growing buffer)
    max_reply_mb: int = 64
    # how often provider configs, their keys and which keys and teams have rate limits are re-read: a new rate
    # limit or provider key takes effect within this bound
    refresh_seconds: float = 2.0
    db_connections: int = 10
    # per-key series on /metrics (one per developer: off unless asked for)
    metrics_per_key: bool = False
    # raw request rows older than this many days are rolled up and deleted (roll-ups stay); 0 keeps them all
    keep_days: int = 90
    retention_interval_seconds: float = 3600.0
    # budget-alert webhooks may post to loopback, private and link-local addresses (off: an admin's URL must not
    # reach what only the gateway can reach)
    allow_private_webhooks: bool = False


@dataclass(frozen=True)
class Upstreams:
    """Providers, their keys and prices; swapped whole when provider configs change."""

    providers: Mapping[str, Any]
    provider_keys: Mapping[str, str]
    provider_ids: Mapping[str, str]
    pricer: Any
    # ids of the keys and teams that have a rate limit: requests of the others skip the check's round trip
    rate_limited: frozenset[str] = frozenset()
    # ids of the customers, teams, keys and providers that have a budget, as of `budget_generation` of this
    # process's store: requests of the others skip the reservation's round trips (None: not known)
    budgeted: frozenset[str] | None = None
    budget_generation: int = -1


@dataclass
class Live:
    """The app's current `Upstreams` (an app's own state cannot change once it serves; this box's can)."""

    upstreams: Upstreams


@dataclass
class KeyEntry:
    """What requests with one key share, rebuilt whenever the key cache re-reads the key."""

    identity: KeyIdentity
    router: KeyRouter
    sink: KeyLedger
    extra: Mapping[str, str]


SETTINGS = web.AppKey("settings", GatewaySettings)
KEYS = web.AppKey("keys", KeyCache)
LEDGER = web.AppKey("ledger", GatewayLedger)
ADMISSION = web.AppKey("admission", GatewayAdmission)
UPSTREAMS = web.AppKey("upstreams", Live)
SESSION = web.AppKey("session", aiohttp.ClientSession)
ENTRIES = web.AppKey("entries", dict[str, KeyEntry])
METRICS = web.AppKey("metrics", GatewayMetrics)
WEBHOOKS = web.AppKey("webhooks", Webhooks)


class NoProviderKeyError(CcgateError):
    """Every target of a route is a provider the gateway holds no API key for: the org's setup, not the caller."""

    status = 503
    error_type = "api_error"
    should_retry = False


class _RequestRouter:
    """The key's router, remembering the route it gave so admission can find the provider's budgets. Targets
    whose provider the gateway has no key for are left out; a route left without any is the admin's to fix."""

    __slots__ = ("inner", "last", "upstreams")

    def __init__(self, inner: KeyRouter, upstreams: Upstreams) -> None:
        self.inner = inner
        self.upstreams = upstreams
        self.last: Route | None = None

    def route(self, model: str) -> Route:
        route = self.inner.route(model)
        keys, providers = self.upstreams.provider_keys, self.upstreams.providers
        usable = tuple(
            target
            for target in route.targets
            if target.provider in keys or not getattr(providers.get(target.provider), "requires_key", True)
        )
        if not usable:
            names = ", ".join(sorted({target.provider for target in route.targets}))
            raise NoProviderKeyError(
                f"the gateway has no API key for {names}, so it cannot serve {model!r}",
                hint="ask your gateway admin to store one (`ccgate gateway admin provider ...`) "
                "or set CCGATE_<PROVIDER>_API_KEY where the gateway runs",
            )
        if len(usable) != len(route.targets):
            route = Route(tier=route.tier, targets=usable, overridden=route.overridden)
        self.last = route
        return route


# ---- middleware and auth ----------------------------------------------------------------------------------------


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error in Anthropic's envelope with a message that says what to do; never a bare 500."""
    response = await _answer(request, handler)
    route = request.match_info.route.resource
    request.app[METRICS].response(route.canonical if route is not None else "other", response.status)
    return response


async def _answer(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_mb
        return error_response(
            RequestTooLargeError(
                f"request body is larger than the gateway's limit of {limit} MB",
                hint="start a new conversation, or ask the gateway admin to raise --max-body-mb",
            )
        )
    except web.HTTPNotFound:
        return error_response(NotFoundError(f"no such endpoint: {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed:
        return error_response(NotFoundError(f"method {request.method} is not supported on {request.path}"))
    except CcgateError as error:
        if error.status >= 500:
            log.error("%s %s: %s", request.method, request.path, error.message)
        return error_response(error)


async def _entry(request: web.Request) -> KeyEntry:
    """The caller's key (401 otherwise), with its router and ledger sink."""
    app = request.app
    identity = await app[KEYS].authenticate(presented_key(request.headers), client_address(request))
    entries: dict[str, KeyEntry] = app[ENTRIES]
    entry = entries.get(identity.key.id)
    if entry is None or entry.identity is not identity:
        if len(entries) >= 10_000:
            entries.clear()
        owner = Owner.of(identity)
        entry = entries[identity.key.id] = KeyEntry(
            identity=identity,
            router=KeyRouter(identity),
            sink=app[LEDGER].for_key(owner),
            extra={"key_id": owner.key_id, "team_id": owner.team_id or "", "customer_id": owner.customer_id or ""},
        )
    return entry


def _proxy_mode(entry: KeyEntry) -> None:
    if entry.identity.key.mode is KeyMode.REPORT:
        raise PermissionDeniedError(
            f"key {entry.identity.key.name!r} is a report-mode key: it reports usage, it does not proxy requests",
            hint="use your own provider credentials with `ccgate login` in report mode, or ask for a proxy-mode key",
        )


def _request_id(request: web.Request) -> str | None:
    """A sidecar's row id becomes this row's id (within the key); anything unusable is ignored."""
    value = request.headers.get(REQUEST_ID_HEADER)
    from ccgate.gateway.ingest import looks_like_a_key

    if value and len(value) <= 128 and value.isascii() and value.isprintable() and " " not in value:
        return None if looks_like_a_key(value) else value
    return None


def _proxy(request: web.Request, entry: KeyEntry, *, admitted: bool) -> tuple[Proxy, ClientMeta]:
    app = request.app
    upstreams = app[UPSTREAMS].upstreams
    router = _RequestRouter(entry.router, upstreams)
    deps = ProxyDeps(
        session=app[SESSION],
        providers=upstreams.providers,
        router=router,
        pricer=upstreams.pricer,
        ledger=entry.sink,
        admission=RequestAdmission(app[ADMISSION], router) if admitted else None,
        provider_keys=upstreams.provider_keys,
        max_reply_bytes=app[SETTINGS].max_reply_mb * 1024 * 1024,
        max_reply_setting="gateway serve --max-reply-mb",
    )
    project, session_id, launch_id = attribution.decode(request.headers)
    meta = ClientMeta(
        session_id=session_id,
        project=project,
        launch_id=launch_id,
        source="gateway",
        forward_client_auth=False,
        private_headers=PRIVATE_HEADERS,
        extra=entry.extra,
        request_id=_request_id(request),
    )
    return Proxy(deps), meta


# ---- data plane -------------------------------------------------------------------------------------------------


async def messages(request: web.Request) -> web.StreamResponse:
    entry = await _entry(request)
    _proxy_mode(entry)
    proxy, meta = _proxy(request, entry, admitted=True)
    if meta.request_id is None:
        return await proxy.messages(request, meta)
    ledger, key_id = request.app[LEDGER], entry.identity.key.id
    if not ledger.claim_id(key_id, meta.request_id):  # the same id in flight twice: this one gets a fresh id
        return await proxy.messages(request, replace(meta, request_id=None))
    try:
        return await proxy.messages(request, meta)
    finally:
        ledger.release_id(key_id, meta.request_id)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """Authenticated and routed like a message, but never budgeted, rate limited or recorded."""
    entry = await _entry(request)
    _proxy_mode(entry)
    proxy, meta = _proxy(request, entry, admitted=False)
    return await proxy.count_tokens(request, meta)


async def me(request: web.Request) -> web.StreamResponse:
    """Who the key is and what it may spend: `ccgate login`, `whoami` and the statusline read it."""
    entry = await _entry(request)
    identity = entry.identity
    key = identity.key
    store = request.app[keys.STORE]
    views = await store.budget_views(
        key_id=key.id, team_id=identity.team.id, customer_id=identity.customer.id if identity.customer else None
    )
    synced = (await store.last_syncs(key.id)).get(key.id)
    budgets = [
        {
            "id": view.budget.id,
            "level": view.budget.level.value,
            "label": view.budget.label,
            "period": view.budget.period.text,
            "calendar": view.budget.calendar,
            "limit_usd": usd_string(view.state.limit_nanos),
            "spent_usd": usd_string(view.state.spent_nanos),
            "reserved_usd": usd_string(view.state.reserved_nanos),
            "left_usd": usd_string(view.state.left_nanos),
            "resets_at": to_iso(view.state.resets_at),
        }
        for view in views
    ]
    return web.json_response(
        {
            "key": key.name,
            "key_prefix": key.key_prefix,
            "team": identity.team.name,
            "customer": identity.customer.name if identity.customer else None,
            "mode": key.mode.value,
            "allowed_models": None if key.allowed_models is None else list(key.allowed_models),
            "allowed_providers": None if key.allowed_providers is None else list(key.allowed_providers),
            "tier_overrides": identity.tier_overrides,
            "expires_at": None if key.expires_at is None else to_iso(key.expires_at),
            "budgets": budgets,
            # when the gateway last took a usage batch from this key (None: never)
            "last_sync_at": None if synced is None else to_iso(synced),
            # the caller used the key the org rotated out: it works until `grace_until`, then only the new one
            "rotated": identity.via_previous,
            "grace_until": to_iso(key.previous_valid_until)
            if identity.via_previous and key.previous_valid_until
            else None,
        }
    )


async def usage(request: web.Request) -> web.StreamResponse:
    """A sidecar's batch of finished rows: stored once per (key, row id), attributed to the caller's key."""
    from ccgate.gateway.admin_input import read_capped
    from ccgate.gateway.ingest import MAX_BODY_BYTES, parse_batch

    entry = await _entry(request)
    raw = await read_capped(request, MAX_BODY_BYTES)
    if raw is None:
        raise RequestTooLargeError(
            f"a usage batch is at most {MAX_BODY_BYTES // (1024 * 1024)} MB", hint="send it in smaller batches"
        )
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequestError("a usage batch must be JSON", hint="send the rows as `ccgate sync` does") from None
    parsed = parse_batch(payload, request.app[UPSTREAMS].upstreams.pricer)
    owner = Owner.of(entry.identity)
    result = await request.app[keys.STORE].ingest(
        key_id=owner.key_id, team_id=owner.team_id, customer_id=owner.customer_id, records=parsed.rows
    )
    if result.sent:  # ingested spend crosses alert thresholds too
        webhooks = request.app[WEBHOOKS]
        webhooks.spawn(
            check_alerts(
                request.app[keys.STORE],
                webhooks.post,
                key_id=owner.key_id,
                team_id=owner.team_id,
                customer_id=owner.customer_id,
                moments=[record.started_at for record, _ in parsed.rows],  # the windows the rows were charged in
            )
        )
    rejected = [{"id": row_id, "why": why} for row_id, why in parsed.rejected]
    rejected += [{"id": row_id, "why": "refused by the store"} for row_id in result.rejected_ids]
    return web.json_response({"sent": result.sent, "known": result.known, "rejected": rejected})


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus exposition, for an admin token (the environment's, or a named one of any role)."""
    from ccgate.errors import AuthenticationError
    from ccgate.gateway.admin import principal_for

    token = presented_key(request.headers) or ""
    allowed = bool(token) and await principal_for(request, token) is not None
    if not allowed:
        raise AuthenticationError(
            "/metrics needs an admin token", hint="send it as Authorization: Bearer (CCGATE_GATEWAY_ADMIN_TOKEN)"
        )
    body = request.app[METRICS].exposition() + await _budget_gauges(request.app)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _budget_gauges(app: web.Application) -> bytes:
    """Budget left per budget, read from the database now (a few reads per scrape, none per request)."""
    store = app[keys.STORE]
    per_key = app[SETTINGS].metrics_per_key
    budgets = await store.list_budgets()
    if not per_key:
        budgets = [b for b in budgets if b.level is not BudgetLevel.KEY]
    if not budgets:
        return b""
    names: dict[str, str] = {c.id: c.name for c in await store.list_customers()}
    names.update((t.id, t.name) for t in await store.list_teams())
    names.update((p.id, p.name) for p in await store.list_providers())
    if per_key:
        names.update((k.id, k.name) for k in await store.list_keys(include_revoked=True))
    return budget_exposition(await store.budget_states(budgets), names, per_key=per_key)


async def root(request: web.Request) -> web.StreamResponse:
    """Claude Code's `HEAD /` connectivity check: never blocked."""
    return web.Response(text="ccgate gateway\n")


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"service": "ccgate-gateway", "ok": True, "version": __version__})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready while the database answers; a load balancer takes the instance out otherwise."""
    try:
        await request.app[keys.STORE].ping()
    except CcgateError as error:
        return web.json_response({"ready": False, "why": error.message}, status=503)
    ledger = request.app[LEDGER]
    return web.json_response({"ready": True, "unsaved_rows": ledger.unsaved, "dropped_rows": ledger.dropped})


# ---- resources --------------------------------------------------------------------------------------------------


async def _store(app: web.Application) -> AsyncIterator[None]:
    from ccgate.storage.gateway.crypto import KeyCipher

    settings = app[SETTINGS]
    cipher = KeyCipher.from_env(dict(settings.environ))
    store = await open_checked_store(settings, cipher)
    app[keys.STORE] = store
    app[KEYS] = KeyCache(
        store,
        ttl=settings.key_cache_seconds,
        unknown_per_second=settings.unknown_keys_per_second,
        unknown_total_per_second=settings.unknown_keys_total_per_second,
    )
    try:
        yield
    finally:
        await store.close()


async def open_checked_store(settings: GatewaySettings, cipher: Any) -> GatewayStore:
    """Open the database; refuse one with pending or failed migrations (unless told to migrate) and stored
    provider keys without the secret key to read them."""
    from ccgate.storage.gateway.crypto import MAKE_KEY_HINT, SECRET_KEY_ENV, SecretKeyError

    store = await GatewayStore.open(
        settings.db_url, cipher=cipher, migrate_now=settings.migrate, max_connections=settings.db_connections
    )
    try:
        if not settings.migrate:
            status = await store.check_migrations()
            problem = migration_problem(status)
            if problem is not None:
                raise CcgateError(problem, hint="run `ccgate gateway migrate` first, or serve with --migrate")
            await store.fill_folded_names()  # rows the previous release wrote since (with --migrate, open did it)
        if cipher is None and await store.has_stored_provider_keys():
            raise SecretKeyError(
                f"provider keys are stored in this database but {SECRET_KEY_ENV} is not set", hint=MAKE_KEY_HINT
            )
    except BaseException:
        await store.close()
        raise
    return store


def migration_problem(status: MigrationStatus) -> str | None:
    """Why a database cannot be served as it is, or None."""
    if status.failed:
        name, _ = status.failed[0]
        return f"the gateway database has a failed migration: {name}"
    if status.pending:
        return f"the gateway database has {len(status.pending)} pending migration(s): {', '.join(status.pending)}"
    return None


async def load_upstreams(store: GatewayStore, environ: Mapping[str, str], pricer: Any) -> Upstreams:
    """Built-in providers, the org's provider configs, then CCGATE_<P>_BASE_URL/_API_KEY (which win, as in
    the sidecar)."""
    from dataclasses import replace

    from ccgate.core.providers import ProviderSpec, base_url_env_var, key_env_var, resolve_providers, validate_base_url
    from ccgate.core.settings import Config

    providers = dict(resolve_providers(Config(), environ))
    stored_keys: dict[str, str] = {}
    ids: dict[str, str] = {}
    for config in await store.list_providers():
        ids[config.name] = config.id
        kind: Any = "anthropic" if config.kind == "anthropic" else "openai"
        spec = providers.get(config.name)
        if spec is None:
            spec = ProviderSpec(
                name=config.name,
                kind=kind,
                base_url=config.base_url or "",
                key_env=key_env_var(config.name),
                supports_stream_usage=True,
                genai_provider_id=None,
                builtin=False,
                auth="x-api-key" if kind == "anthropic" else "bearer",
            )
        elif spec.kind != kind:
            spec = replace(spec, kind=kind, auth="x-api-key" if kind == "anthropic" else "bearer")
        if config.base_url and not environ.get(base_url_env_var(config.name)):
            spec = replace(spec, base_url=validate_base_url(config.base_url, f"provider {config.name}"))
        if spec.base_url:
            providers[config.name] = spec
        if config.has_api_key:
            key = await store.provider_api_key(config.id)
            if key:
                stored_keys[config.name] = key
    provider_keys = {name: environ.get(key_env_var(name)) or stored_keys.get(name, "") for name in providers}
    rate_limited = frozenset(limit.target_id for limit in await store.list_rate_limits())
    generation = store.budget_generation  # read first: a budget created meanwhile makes this snapshot stale
    budgeted = frozenset(budget.target_id for budget in await store.list_budgets())
    return Upstreams(
        providers, {k: v for k, v in provider_keys.items() if v}, ids, pricer, rate_limited, budgeted, generation
    )


def _budgeted(app: web.Application) -> frozenset[str] | None:
    """Who has a budget, if the snapshot is current for this process (another instance's new budget applies
    here within `refresh_seconds`, like a rate limit)."""
    upstreams = app[UPSTREAMS].upstreams
    return upstreams.budgeted if upstreams.budget_generation == app[keys.STORE].budget_generation else None


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    """Providers and prices, re-read every `refresh_seconds` so an admin's provider change reaches every instance."""
    from ccgate.core.pricing import PriceCatalog

    settings = app[SETTINGS]
    store = app[keys.STORE]
    pricer = PriceCatalog()
    await asyncio.to_thread(pricer.warm)  # the catalog's first load takes most of a second: not on a request
    live = app[UPSTREAMS] = Live(await load_upstreams(store, settings.environ, pricer))

    async def refresh() -> None:
        while True:
            await asyncio.sleep(settings.refresh_seconds)
            try:
                live.upstreams = await load_upstreams(store, settings.environ, pricer)
            except CcgateError as error:
                log.error("provider configs not reloaded, keeping the previous ones: %s", error.message)

    async with background(refresh()):
        yield


async def _ledger(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    observe = app[METRICS].observe

    def finished(record: RequestRecord, owner: Owner) -> None:
        observe(record, team=owner.team_name, key=owner.key_name)
        if access.isEnabledFor(logging.INFO):
            access.info(
                "request=%s key=%s team=%s model=%s provider=%s status=%s http=%s cost_nanos=%s ms=%.0f",
                record.id,
                _quoted(owner.key_name),
                _quoted(owner.team_name),
                _quoted(record.requested_model),
                record.provider,
                record.status.value,
                record.http_status,
                record.cost.nanos,
                record.latency_ms or 0,
            )

    ledger = GatewayLedger(
        app[keys.STORE],
        settings.instance_id,
        on_final=finished,
        rate_limited=lambda: app[UPSTREAMS].upstreams.rate_limited,
    )
    ledger.start()
    app[LEDGER] = ledger
    try:
        yield
    finally:
        await ledger.close()


@functools.lru_cache(maxsize=4096)
def _quoted(name: str | None) -> str:
    """A name as the access line shows it (JSON-quoted: a name can hold spaces and quotes); names repeat."""
    return json.dumps(name)


async def _admission(app: web.Application) -> AsyncIterator[None]:
    """Budget holds, this instance's heartbeat (taken before the first request) and the dead instances' rows."""
    from ccgate.core.records import utcnow
    from ccgate.storage.gateway import instances

    settings = app[SETTINGS]
    store = app[keys.STORE]
    ttl = timedelta(seconds=settings.reservation_ttl_seconds)
    admission = GatewayAdmission(
        store,
        settings.instance_id,
        ttl=ttl,
        wait_timeout=settings.budget_wait_seconds,
        provider_ids=lambda name: app[UPSTREAMS].upstreams.provider_ids.get(name),
        rate_limited=lambda: app[UPSTREAMS].upstreams.rate_limited,
        budgeted=lambda: _budgeted(app),
        webhook=app[WEBHOOKS].post,
        carrier=app[LEDGER],
    )
    await instances.beat(store.db, settings.instance_id, ttl, utcnow())
    recovered = await instances.recover_dead(store.db, utcnow())
    if recovered:
        log.warning("marked %d request(s) left pending by a stopped instance as interrupted", recovered)
    app[ADMISSION] = admission
    try:
        async with background(admission.run_heartbeat()):
            yield
    finally:
        await admission.close()


async def _retention(app: web.Application) -> AsyncIterator[None]:
    """Once an hour (and soon after start), roll up and delete raw rows past `keep_days`; any instance may."""
    from datetime import UTC, datetime

    settings = app[SETTINGS]
    store = app[keys.STORE]

    async def prune() -> None:
        await asyncio.sleep(min(60.0, settings.retention_interval_seconds))
        while True:
            before = datetime.now(UTC).date() - timedelta(days=settings.keep_days)
            try:
                gone = await store.prune_requests(before=before)
            except CcgateError as error:
                log.error("raw rows not pruned: %s", error.message)
            else:
                if gone:
                    log.info("rolled up and deleted %d raw request row(s) from before %s", gone, before)
            await asyncio.sleep(settings.retention_interval_seconds)

    async with background(prune() if settings.keep_days > 0 else None):
        yield


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    """The guarded session budget alerts are posted with; closed after the alert checks still running."""
    webhooks = app[WEBHOOKS] = Webhooks(allow_private=app[SETTINGS].allow_private_webhooks)
    try:
        yield
    finally:
        await webhooks.close()


def create_runner(app: web.Application) -> web.AppRunner:
    """Handler cancellation on: a client that goes away mid-stream closes the upstream request at once."""
    return web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0, handler_cancellation=True)


def create_app(settings: GatewaySettings) -> web.Application:
    from ccgate.gateway.admin import create_admin_app
    from ccgate.gateway.ui.app import create_ui_app, to_overview

    app = web.Application(
        client_max_size=settings.max_body_mb * 1024 * 1024,
        middlewares=[error_middleware],
        handler_args={"max_field_size": 65536, "max_line_size": 65536},
    )
    app[SETTINGS] = settings
    app[ENTRIES] = {}
    app[keys.TRUSTED_PROXIES] = parse_trusted_proxies(settings.trusted_proxies)
    app[keys.ADMIN_MISSES] = admin_token_limiter(
        settings.unknown_keys_per_second, settings.unknown_keys_total_per_second
    )
    app[keys.ALLOW_PRIVATE_WEBHOOKS] = settings.allow_private_webhooks
    app[METRICS] = GatewayMetrics.create(per_key=settings.metrics_per_key)
    token = settings.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        app[keys.BOOTSTRAP_ADMIN_TOKEN] = token
    # one cleanup context per resource, so a failed start undoes exactly what started; closed in reverse
    app.cleanup_ctx.extend(
        [_store, _upstreams, upstream_session_context(SESSION), _webhooks, _ledger, _admission, _retention]
    )
    app.router.add_route("HEAD", "/", root)
    app.router.add_get("/", root, allow_head=False)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/me", me)
    app.router.add_post("/v1/usage", usage)
    app.router.add_get("/metrics", metrics)
    app.add_subapp("/admin", create_admin_app())
    app.router.add_get("/ui", to_overview)
    app.add_subapp("/ui", create_ui_app())
    return app
