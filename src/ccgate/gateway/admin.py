"""The admin API: JSON under /admin/v1, mounted at /admin as a sub-application behind admin tokens.

Authentication is `Authorization: Bearer <token>`: the bootstrap token from CCGATE_GATEWAY_ADMIN_TOKEN (acts
as an admin named "env") or a named admin token. Roles: admin (everything), viewer (reads only), team_admin
(its own team's keys, budgets and rate limits). Every change goes through a store method with `actor=` the
token's name, which writes the audit entry in the same transaction. Errors use the gateway's one envelope:
`{"type": "error", "error": {"type", "message", "hint"}}`, with the HTTP status of the `CcgateError`.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ccgate.core.records import nanos_to_usd, to_iso, utcnow
from ccgate.core.webhooks import redact_webhook_url, refused_host
from ccgate.errors import (
    AuthenticationError,
    CcgateError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from ccgate.gateway import admin_input as check
from ccgate.gateway import keys
from ccgate.gateway.auth import client_address
from ccgate.storage.gateway.db import ConstraintError
from ccgate.storage.gateway.records import (
    AdminRole,
    AuditEntry,
    Budget,
    BudgetLevel,
    BudgetView,
    RateLevel,
    RateLimit,
    VirtualKey,
    public_dict,
)
from ccgate.storage.gateway.store import GatewayStore
from ccgate.storage.reports import report_to_json

log = logging.getLogger("ccgate.gateway.admin")

BOOTSTRAP_ACTOR = "env"  # the name the CCGATE_GATEWAY_ADMIN_TOKEN admin acts (and is audited) as
PROVIDER_KINDS = ("anthropic", "openai")
TOKEN_HINT = "send `Authorization: Bearer TOKEN` with CCGATE_GATEWAY_ADMIN_TOKEN or a token from `token create`"  # noqa: S105 - a hint, not a token


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name (the audit's actor), its role and, for a team_admin, its team."""

    name: str
    role: AdminRole
    team_id: str | None


_PRINCIPAL = web.RequestKey("admin_principal", Principal)


# --- errors and authentication ---------------------------------------------------------------------------------


def error_response(error: CcgateError) -> web.Response:
    """The admin API's envelope: Anthropic's shape plus `error.hint`, so scripts can show what to do."""
    from ccgate.wire.envelope import envelope, error_headers

    body = envelope(error)
    body["error"]["hint"] = error.hint
    return web.json_response(body, status=error.status, headers=error_headers(error))


async def _authenticate(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("an admin token is required", hint=TOKEN_HINT)
    principal = await principal_for(request, token)
    if principal is None:
        raise AuthenticationError("the admin token is wrong or revoked", hint=TOKEN_HINT)
    return principal


async def principal_for(request: web.Request, token: str) -> Principal | None:
    """Whose admin token this is (the environment's bootstrap one, or a named one), or None: also for /metrics."""
    if not token.isascii():  # tokens are ASCII; other bytes arrive as surrogates that cannot be encoded (a 500)
        return None
    bootstrap = request.config_dict.get(keys.BOOTSTRAP_ADMIN_TOKEN)
    if bootstrap and hmac.compare_digest(token.encode("utf-8"), bootstrap.encode("utf-8")):
        return Principal(BOOTSTRAP_ACTOR, AdminRole.ADMIN, None)
    # named tokens are looked up by SHA-256 hash: the comparison never runs over the secret itself; guesses are
    # capped per client and for the instance, as unknown virtual keys are (a 429 before any read)
    limiter = request.config_dict.get(keys.ADMIN_MISSES)
    client = client_address(request)
    now = time.monotonic()
    if limiter is not None:
        limiter.check(client, now)
    found = await _store(request).authenticate_admin(token)
    if found is None:
        if limiter is not None:
            limiter.missed(client, now)
        return None
    return Principal(found.name, found.role, found.team_id)


@web.middleware
async def _middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The admin API's one error boundary: every CcgateError becomes the envelope, never a traceback."""
    try:
        request[_PRINCIPAL] = await _authenticate(request)
        for value in request.match_info.values():
            if not check.clean(value):
                raise NotFoundError(f"no such name: {value!r}", hint="names never hold control characters")
        response = await handler(request)
    except CcgateError as error:
        error.message = " ".join(error.message.split())  # one line (PostgreSQL's errors carry a DETAIL line)
        if not error.hint:
            error.hint = _FALLBACK_HINTS.get(error.status, "see the admin API section of the README")
        response = error_response(error)
    _log_change(request, response.status)
    return response


def _log_change(request: web.Request, status: int) -> None:
    """One line per attempted change: the route's pattern (never a body or a token), who, and the outcome."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    who = request.get(_PRINCIPAL)
    route = request.match_info.route.resource
    pattern = route.canonical if route is not None else "?"
    log.info("admin %s %s by %s: %d", request.method, pattern, who.name if who else "(unauthenticated)", status)


_FALLBACK_HINTS = {
    404: "list what exists with the matching `ccgate gateway admin ... list` command",
    409: "the name is taken, or the thing is still in use (a customer with teams, a team with keys): "
    "pick another name, or remove what uses it first",
    503: "check that the gateway's database is up, then try again",
}


def _store(request: web.Request) -> GatewayStore:
    return request.config_dict[keys.STORE]


def _who(request: web.Request, *, write: bool, team_scoped: bool = False) -> Principal:
    """Role check: admin does anything, viewer reads, team_admin only where the handler checks its team."""
    who = request[_PRINCIPAL]
    if who.role is AdminRole.ADMIN or (who.role is AdminRole.VIEWER and not write):
        return who
    if who.role is AdminRole.TEAM_ADMIN and team_scoped:
        return who
    doing = "change" if write else "read"
    raise PermissionDeniedError(
        f"the admin token {who.name!r} ({who.role.value}) may not {doing} this",
        hint="use a token with the admin role" if write else "use an admin or viewer token",
    )


def _check_team(who: Principal, team_id: str | None) -> None:
    if who.role is AdminRole.TEAM_ADMIN and team_id != who.team_id:
        raise PermissionDeniedError(
            f"the admin token {who.name!r} may only manage its own team",
            hint="ask an admin, or use the token of that team's admin",
        )


TIGHTEN_HINT = "a team admin may only add or tighten limits; ask an admin to raise or remove one"


def _tighten_only(who: Principal, loosens: bool, what: str) -> None:
    """The team_admin rule: within its team it may add limits and tighten them, never raise or remove one."""
    if who.role is AdminRole.TEAM_ADMIN and loosens:
        raise PermissionDeniedError(f"the admin token {who.name!r} (team_admin) may not {what}", hint=TIGHTEN_HINT)


def _widens(before: tuple[str, ...] | None, after: Any) -> bool:
    """A new allowed list lets through something the old one did not (None: everything)."""
    if after is False or before is None:
        return False
    return after is None or not set(after) <= set(before)


def _loosens_key(key: VirtualKey, changes: Mapping[str, Any], mode: str | None) -> str | None:
    """What a key change would lift, or None: more models or providers, a later (or no) expiry, report mode (whose
    budgets only the developer's sidecar enforces)."""
    if _widens(key.allowed_models, changes.get("allowed_models", False)):
        return "allow a key more models"
    if _widens(key.allowed_providers, changes.get("allowed_providers", False)):
        return "allow a key more providers"
    expiry = changes.get("expires_at", False)
    if expiry is not False and key.expires_at is not None and (expiry is None or expiry > key.expires_at):
        return "extend or remove a key's expiry"
    if mode == "report" and key.mode.value != "report":
        return "switch a key to report mode"
    return None


def _loosens_rate(before: RateLimit | None, rpm: int | None, tpm: int | None) -> bool:
    """A limit that was set becomes higher or none (None is no limit)."""
    if before is None:
        return False
    return any(old is not None and (new is None or new > old) for old, new in ((before.rpm, rpm), (before.tpm, tpm)))


def _fresh_name(kind: str, name: str, existing: Iterable[str]) -> None:
    """Refuse a name people would take for an existing one (`Core` beside `core`, `ｃｏｒｅ`, a decomposed `é`):
    reports, the audit log and `--team NAME` would otherwise show two things as one."""
    wanted = check.folded(name)
    for other in existing:
        if other != name and check.folded(other) == wanted:
            raise ConstraintError(
                f"the {kind} name {name!r} is too like the existing {other!r}",
                hint=f"names differing only in case or Unicode form are one name: pick another, or use {other!r}",
            )


# --- rendering -------------------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda v: json.dumps(v, ensure_ascii=False))


def _usd(nanos: int | None) -> str | None:
    return None if nanos is None else f"{nanos_to_usd(nanos):f}"


async def _team_names(store: GatewayStore) -> dict[str, str]:
    return {team.id: team.name for team in await store.list_teams()}


def _key_json(
    key: VirtualKey, team_names: Mapping[str, str], synced: Mapping[str, datetime] | None = None
) -> dict[str, Any]:
    """`synced` (key id -> last usage batch) given: the key's `last_sync_at` too (None: never synced)."""
    data = {**public_dict(key), "team": team_names.get(key.team_id)}
    if synced is not None:
        data["last_sync_at"] = _iso(synced.get(key.id))
    return data


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else to_iso(moment)


async def _target_names(store: GatewayStore) -> dict[str, str]:
    names = {c.id: c.name for c in await store.list_customers()}
    names.update(await _team_names(store))
    names.update({k.id: k.name for k in await store.list_keys(include_revoked=True)})
    names.update({p.id: p.name for p in await store.list_providers()})
    return names


def _budget_json(view: BudgetView, names: Mapping[str, str]) -> dict[str, Any]:
    budget, state = view.budget, view.state
    return {
        "id": budget.id,
        "level": budget.level.value,
        "target": names.get(budget.target_id),
        "target_id": budget.target_id,
        "amount_usd": _usd(budget.limit_nanos),
        "period": budget.period.text,
        "rolling": not budget.calendar,
        "timezone": budget.timezone,
        "thresholds": [str(t) for t in budget.thresholds],
        "webhook_url": redact_webhook_url(budget.webhook_url),
        "override_amount_usd": _usd(budget.override_limit_nanos),
        "override_until": None if budget.override_until is None else to_iso(budget.override_until),
        "limit_usd": _usd(state.limit_nanos),
        "spent_usd": _usd(state.spent_nanos),
        "reserved_usd": _usd(state.reserved_nanos),
        "left_usd": _usd(state.left_nanos),
        "window_start": to_iso(view.window_start),
        "resets_at": to_iso(state.resets_at),
    }


def _rate_json(limit: RateLimit, names: Mapping[str, str]) -> dict[str, Any]:
    return {**public_dict(limit), "target": names.get(limit.target_id)}


def _audit_json(entry: AuditEntry) -> dict[str, Any]:
    return public_dict(entry)


# --- whoami, customers, teams ----------------------------------------------------------------------------------


async def whoami(request: web.Request) -> web.Response:
    who = _who(request, write=False, team_scoped=True)
    team = None if who.team_id is None else (await _store(request).get_team(who.team_id)).name
    return _json({"name": who.name, "role": who.role.value, "team": team})


async def list_customers(request: web.Request) -> web.Response:
    _who(request, write=False)
    return _json({"customers": [public_dict(c) for c in await _store(request).list_customers()]})


async def create_customer(request: web.Request) -> web.Response:
    who = _who(request, write=True)
    data = await check.read_body(request, {"name": check.name}, ("name",))
    _fresh_name("customer", data["name"], [c.name for c in await _store(request).list_customers()])
    return _json(public_dict(await _store(request).create_customer(data["name"], actor=who.name)), 201)


async def get_customer(request: web.Request) -> web.Response:
    _who(request, write=False)
    return _json(public_dict(await _store(request).get_customer(request.match_info["name"])))


async def delete_customer(request: web.Request) -> web.Response:
    who = _who(request, write=True)
    await _store(request).delete_customer(request.match_info["name"], actor=who.name)
    return _json({"deleted": request.match_info["name"]})


def _team_json(team: Any, customers: Mapping[str, str]) -> dict[str, Any]:
    return {**public_dict(team), "customer": customers.get(team.customer_id or "")}


async def list_teams(request: web.Request) -> web.Response:
    who = _who(request, write=False, team_scoped=True)
    query = check.read_query(request, {"customer": check.text})
    store = _store(request)
    customers = {c.id: c.name for c in await store.list_customers()}
    teams = await store.list_teams(customer=query.get("customer"))
    if who.role is AdminRole.TEAM_ADMIN:
        teams = [team for team in teams if team.id == who.team_id]
    return _json({"teams": [_team_json(team, customers) for team in teams]})


async def create_team(request: web.Request) -> web.Response:
    who = _who(request, write=True)
    data = await check.read_body(
        request, {"name": check.name, "customer": check.opt_text, "tier_overrides": check.overrides}, ("name",)
    )
    store = _store(request)
    _fresh_name("team", data["name"], [team.name for team in await store.list_teams()])
    team = await store.create_team(
        data["name"], customer=data.get("customer"), tier_overrides=data.get("tier_overrides"), actor=who.name
    )
    return _json(_team_json(team, {c.id: c.name for c in await store.list_customers()}), 201)


async def get_team(request: web.Request) -> web.Response:
    who = _who(request, write=False, team_scoped=True)
    store = _store(request)
    team = await store.get_team(request.match_info["name"])
    _check_team(who, team.id)
    return _json(_team_json(team, {c.id: c.name for c in await store.list_customers()}))


async def update_team(request: web.Request) -> web.Response:
    who = _who(request, write=True)
    data = await check.read_body(request, {"customer": check.text, "tier_overrides": check.overrides})
    store = _store(request)
    team = await store.update_team(
        request.match_info["name"],
        customer=data.get("customer"),
        tier_overrides=data.get("tier_overrides"),
        actor=who.name,
    )
    return _json(_team_json(team, {c.id: c.name for c in await store.list_customers()}))


async def delete_team(request: web.Request) -> web.Response:
    who = _who(request, write=True)
    await _store(request).delete_team(request.match_info["name"], actor=who.name)
    return _json({"deleted": request.match_info["name"]})


# --- virtual keys ----------------------------------------------------------------------------------------------

_KEY_FIELDS: dict[str, check.Field] = {
    "mode": check.choice("proxy", "report"),
    "allowed_models": check.names,
    "allowed_providers": check.names,
    "tier_overrides": check.overrides,
    "expires_at": check.moment,
}


async def list_keys(request: web.Request) -> web.Response:
    who = _who(request, write=False, team_scoped=True)
    query = check.read_query(request, {"team": check.text, "include_revoked": check.flag})
    store = _store(request)
    team = query.get("team")
    if who.role is AdminRole.TEAM_ADMIN:
        own = await store.get_team(who.team_id or "")
        if team is not None:
            _check_team(who, (await store.get_team(team)).id)
        team = own.id
    found = await store.list_keys(team=team, include_revoked=query.get("include_revoked", False))
    names = await _team_names(store)
    synced = await store.last_syncs()
    return _json({"keys": [_key_json(key, names, synced) for key in found]})


async def create_key(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    data = await check.read_body(request, {"team": check.text, "name": check.name, **_KEY_FIELDS}, ("team", "name"))
    check.not_past(data.get("expires_at"))
    store = _store(request)
    _fresh_name("key", data["name"], [key.name for key in await store.list_keys()])
    team = await store.get_team(data.pop("team"))
    _check_team(who, team.id)
    _tighten_only(who, data.get("mode") == "report", "create a report-mode key")
    created = await store.create_key(team=team.id, actor=who.name, **data)
    return _json({**_key_json(created.key, {team.id: team.name}), "key": created.plaintext}, 201)


async def _own_key(request: web.Request, who: Principal) -> VirtualKey:
    key = await _store(request).get_key(request.match_info["name"])
    _check_team(who, key.team_id)
    return key


async def get_key(request: web.Request) -> web.Response:
    who = _who(request, write=False, team_scoped=True)
    key = await _own_key(request, who)
    store = _store(request)
    return _json(_key_json(key, await _team_names(store), await store.last_syncs(key.id)))


async def update_key(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    data = await check.read_body(request, _KEY_FIELDS)
    check.not_past(data.get("expires_at"))
    key = await _own_key(request, who)
    store = _store(request)
    # absent fields stay as they are; null clears a list (= every model/provider) or the expiry
    changes: dict[str, Any] = {name: value for name, value in data.items() if name != "mode"}
    lifted = _loosens_key(key, changes, data.get("mode"))
    _tighten_only(who, lifted is not None, lifted or "")
    after = await store.update_key(key.id, mode=data.get("mode"), actor=who.name, **changes)
    return _json(_key_json(after, await _team_names(store)))


async def revoke_key(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    await check.read_body(request, {})
    key = await _own_key(request, who)
    store = _store(request)
    after = await store.revoke_key(key.id, actor=who.name)
    return _json(_key_json(after, await _team_names(store)))


async def rotate_key(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    data = await check.read_body(request, {"grace": check.grace})
    key = await _own_key(request, who)
    grace = data.get("grace", check.DEFAULT_GRACE)
    _tighten_only(who, grace > check.TEAM_ADMIN_MAX_GRACE, check.LONG_GRACE)
    store = _store(request)
    created = await store.rotate_key(key.id, grace=grace, actor=who.name)
    return _json({**_key_json(created.key, await _team_names(store)), "key": created.plaintext})


# --- budgets ---------------------------------------------------------------------------------------------------


async def _check_target(request: web.Request, who: Principal, level: str, target: str) -> None:
    """A team_admin may only touch budgets and rate limits of its team and that team's keys."""
    if who.role is not AdminRole.TEAM_ADMIN:
        return
    store = _store(request)
    if level == "team":
        _check_team(who, (await store.get_team(target)).id)
    elif level == "key":
        _check_team(who, (await store.get_key(target)).team_id)
    else:
        _check_team(who, None)


def _check_webhook(request: web.Request, url: str | bool | None) -> None:
    """A private or loopback host written into the URL is refused now; names are checked again at each send."""
    if not isinstance(url, str) or request.config_dict.get(keys.ALLOW_PRIVATE_WEBHOOKS, False):
        return
    try:
        why = refused_host(urlsplit(url).hostname or "")
    except ValueError:
        why = "the URL cannot be parsed"
    if why is not None:
        raise InvalidRequestError(
            f"the webhook URL is refused: {why}",
            hint="give a public https:// URL, or serve the gateway with --allow-private-webhooks",
        )


async def _budget_in_reach(request: web.Request, who: Principal) -> Budget:
    store = _store(request)
    budget = await store.get_budget(request.match_info["id"])
    if who.role is AdminRole.TEAM_ADMIN:
        await _check_target(request, who, budget.level.value, budget.target_id)
    return budget


async def _budget_response(request: web.Request, budgets: list[Budget], status: int = 200) -> web.Response:
    store = _store(request)
    views = await store.budget_states(budgets)
    names = await _target_names(store)
    return _json({"budgets": [_budget_json(view, names) for view in views]}, status)


async def list_budgets(request: web.Request) -> web.Response:
    who = _who(request, write=False, team_scoped=True)
    query = check.read_query(request, {"level": check.choice(*BudgetLevel), "target": check.text})
    if "target" in query and "level" not in query:
        raise InvalidRequestError("`target` needs `level`", hint="e.g. ?level=team&target=platform")
    store = _store(request)
    budgets = await store.list_budgets(level=query.get("level"), target=query.get("target"))
    if who.role is AdminRole.TEAM_ADMIN:
        team_keys = {k.id for k in await store.list_keys(team=who.team_id, include_revoked=True)}
        budgets = [b for b in budgets if b.target_id == who.team_id or b.target_id in team_keys]
    return await _budget_response(request, budgets)


async def create_budget(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    spec: dict[str, check.Field] = {
        "level": check.choice(*BudgetLevel),
        "target": check.text,
        "amount_usd": check.usd_nanos,
        "period": check.text,
        "rolling": check.boolean,
        "timezone": check.zone_name,
        "thresholds": check.thresholds,
        "webhook_url": check.url,
    }
    data = await check.read_body(request, spec, ("level", "target", "amount_usd", "period"))
    _check_webhook(request, data.get("webhook_url"))
    await _check_target(request, who, data["level"], data["target"])
    budget = await _store(request).create_budget(
        level=data["level"],
        target=data["target"],
        limit_nanos=data["amount_usd"],
        period=data["period"],
        calendar=not data.get("rolling", False),
        timezone=data.get("timezone", "UTC"),
        thresholds=data.get("thresholds", ()),
        webhook_url=data.get("webhook_url"),
        actor=who.name,
    )
    return await _budget_response(request, [budget], 201)


async def get_budget(request: web.Request) -> web.Response:
    who = _who(request, write=False, team_scoped=True)
    return await _budget_response(request, [await _budget_in_reach(request, who)])


async def update_budget(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    data = await check.read_body(
        request, {"amount_usd": check.usd_nanos, "thresholds": check.thresholds, "webhook_url": check.url}
    )
    _check_webhook(request, data.get("webhook_url"))
    budget = await _budget_in_reach(request, who)
    _tighten_only(who, data.get("amount_usd", 0) > budget.limit_nanos, "raise a budget's amount")
    _tighten_only(who, "thresholds" in data or "webhook_url" in data, "change a budget's alerts")
    after = await _store(request).update_budget(
        budget.id,
        limit_nanos=data.get("amount_usd"),
        thresholds=data.get("thresholds"),
        webhook_url=data.get("webhook_url", False),
        actor=who.name,
    )
    return await _budget_response(request, [after])


async def override_budget(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    data = await check.read_body(request, {"amount_usd": check.opt_usd}, ("amount_usd",))
    budget = await _budget_in_reach(request, who)
    if who.role is AdminRole.TEAM_ADMIN:
        in_force = budget.effective_limit(utcnow())
        amount = data["amount_usd"]
        # clearing an override tightens only when it had raised the limit
        lifted = budget.limit_nanos > in_force if amount is None else amount > in_force
        _tighten_only(who, lifted, "raise a budget's limit in force, or clear an override that lowered it")
    after = await _store(request).override_budget(budget.id, limit_nanos=data["amount_usd"], actor=who.name)
    return await _budget_response(request, [after])


async def reset_budget(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    await check.read_body(request, {})
    budget = await _budget_in_reach(request, who)
    _tighten_only(who, True, "reset a budget (it forgets the window's spend)")
    await _store(request).reset_budget(budget.id, actor=who.name)
    return await _budget_response(request, [budget])


async def delete_budget(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    budget = await _budget_in_reach(request, who)
    _tighten_only(who, True, "delete a budget")
    await _store(request).delete_budget(budget.id, actor=who.name)
    return _json({"deleted": budget.id})


# --- rate limits -----------------------------------------------------------------------------------------------


def _rate_level(request: web.Request) -> str:
    level = request.match_info["level"]
    if level not in tuple(RateLevel):
        raise NotFoundError(f"no rate limit level {level!r}", hint="use team or key")
    return level


async def _rate_limit_of(store: GatewayStore, level: str, target: str) -> RateLimit | None:
    target_id = (await store.get_team(target)).id if level == "team" else (await store.get_key(target)).id
    return next((r for r in await store.list_rate_limits() if r.level == level and r.target_id == target_id), None)


async def list_rate_limits(request: web.Request) -> web.Response:
    who = _who(request, write=False, team_scoped=True)
    store = _store(request)
    limits = await store.list_rate_limits()
    if who.role is AdminRole.TEAM_ADMIN:
        team_keys = {k.id for k in await store.list_keys(team=who.team_id, include_revoked=True)}
        limits = [r for r in limits if r.target_id == who.team_id or r.target_id in team_keys]
    names = await _target_names(store)
    return _json({"rate_limits": [_rate_json(limit, names) for limit in limits]})


async def set_rate_limit(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    level = _rate_level(request)
    data = await check.read_body(request, {"rpm": check.count, "tpm": check.count}, ("rpm", "tpm"))
    target = request.match_info["target"]
    await _check_target(request, who, level, target)
    store = _store(request)
    if who.role is AdminRole.TEAM_ADMIN:
        before = await _rate_limit_of(store, level, target)
        _tighten_only(who, _loosens_rate(before, data["rpm"], data["tpm"]), "raise or remove a rate limit")
    limit = await store.set_rate_limit(level=level, target=target, rpm=data["rpm"], tpm=data["tpm"], actor=who.name)
    return _json(_rate_json(limit, await _target_names(store)))


async def delete_rate_limit(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    level = _rate_level(request)
    target = request.match_info["target"]
    await _check_target(request, who, level, target)
    if who.role is AdminRole.TEAM_ADMIN:
        before = await _rate_limit_of(_store(request), level, target)
        _tighten_only(who, _loosens_rate(before, None, None), "remove a rate limit")
    await _store(request).delete_rate_limit(level=level, target=target, actor=who.name)
    return _json({"deleted": f"{level}:{target}"})


# --- provider configs ------------------------------------------------------------------------------------------


async def list_providers(request: web.Request) -> web.Response:
    _who(request, write=False)
    return _json({"providers": [public_dict(p) for p in await _store(request).list_providers()]})


async def get_provider(request: web.Request) -> web.Response:
    _who(request, write=False)
    return _json(public_dict(await _store(request).get_provider(request.match_info["name"])))


async def put_provider(request: web.Request) -> web.Response:
    """Create or replace; `api_key` is write-only (stored encrypted, never returned; absent keeps the old one)."""
    who = _who(request, write=True)
    spec: dict[str, check.Field] = {
        "kind": check.choice(*PROVIDER_KINDS),
        "base_url": check.url,
        "api_key": check.api_key,
    }
    data = await check.read_body(request, spec, ("kind",))
    name = check.name("name", request.match_info["name"])
    store = _store(request)
    _fresh_name("provider", name, [provider.name for provider in await store.list_providers()])
    provider = await store.put_provider(name, actor=who.name, **data)
    return _json(public_dict(provider))


async def delete_provider(request: web.Request) -> web.Response:
    who = _who(request, write=True)
    await _store(request).delete_provider(request.match_info["name"], actor=who.name)
    return _json({"deleted": request.match_info["name"]})


# --- admin tokens ----------------------------------------------------------------------------------------------


def _token_json(token: Any, teams: Mapping[str, str]) -> dict[str, Any]:
    return {**public_dict(token), "team": teams.get(token.team_id or "")}


async def list_tokens(request: web.Request) -> web.Response:
    _who(request, write=True)  # who may act is the admins' business only
    store = _store(request)
    teams = await _team_names(store)
    return _json({"tokens": [_token_json(t, teams) for t in await store.list_admin_tokens()]})


async def create_token(request: web.Request) -> web.Response:
    who = _who(request, write=True)
    data = await check.read_body(
        request, {"name": check.name, "role": check.role, "team": check.opt_text}, ("name", "role")
    )
    if check.folded(data["name"]) == BOOTSTRAP_ACTOR:
        raise InvalidRequestError(
            f"the name {BOOTSTRAP_ACTOR!r} is reserved for the CCGATE_GATEWAY_ADMIN_TOKEN admin",
            hint="give the token another name (the audit log tells actors apart by name)",
        )
    store = _store(request)
    _fresh_name("admin token", data["name"], [token.name for token in await store.list_admin_tokens()])
    created = await store.create_admin_token(data["name"], role=data["role"], team=data.get("team"), actor=who.name)
    teams = await _team_names(store)
    return _json({**_token_json(created.token, teams), "token": created.plaintext}, 201)


async def revoke_token(request: web.Request) -> web.Response:
    who = _who(request, write=True)
    await check.read_body(request, {})
    name = request.match_info["name"]
    await _store(request).revoke_admin_token(name, actor=who.name)
    return _json({"revoked": name})


# --- audit and report ------------------------------------------------------------------------------------------


async def list_audit(request: web.Request) -> web.Response:
    _who(request, write=False)
    spec: dict[str, check.Field] = {
        "since": check.moment,
        "actor": check.text,
        "action": check.text,
        "limit": check.limit,
        "before": check.text,
    }
    query = check.read_query(request, spec)
    limit = query.get("limit", 100)
    entries = await _store(request).list_audit(
        since=query.get("since"),
        actor=query.get("actor"),
        action=query.get("action"),
        before_id=query.get("before"),
        limit=limit,
    )
    after = entries[-1].id if len(entries) == limit else None
    return _json({"entries": [_audit_json(e) for e in entries], "next": after})


REPORT_START = datetime(1970, 1, 1, tzinfo=UTC)
REPORT_END = datetime(9000, 1, 1, tzinfo=UTC)


async def report(request: web.Request) -> web.Response:
    """Spend as `cost --json` prints it; all time by default; a team_admin sees only its team's rows."""
    who = _who(request, write=False, team_scoped=True)
    query = check.read_query(
        request, {"by": check.text, "since": check.moment, "until": check.moment, "tz": check.zone}
    )
    # clamped to years that hold rows: at the edges of `datetime`, a day in the report's zone cannot be spelled (a 500)
    since = max(query.get("since") or REPORT_START, REPORT_START)
    until = min(query.get("until") or utcnow(), REPORT_END)
    if since >= until:
        raise InvalidRequestError("the range is empty: since is not before until", hint="swap or widen them")
    result = await _store(request).report(
        since=since,
        until=until,
        by=query.get("by"),
        tz=query.get("tz", UTC),
        team_id=who.team_id if who.role is AdminRole.TEAM_ADMIN else None,
    )
    data = report_to_json(result)
    if result.by == "key":  # when each key last synced, beside what it spent
        await _add_last_syncs(_store(request), data["groups"])
    return _json(data)


async def _add_last_syncs(store: GatewayStore, groups: list[dict[str, Any]]) -> None:
    """Groups are key names (a key id where the key is gone); a name reused after a revoke: its latest sync."""
    synced = await store.last_syncs()
    by_name: dict[str, datetime] = {}
    for key in await store.list_keys(include_revoked=True):
        moment = synced.get(key.id)
        if moment is not None and (key.name not in by_name or moment > by_name[key.name]):
            by_name[key.name] = moment
    for group in groups:
        name = group["key"]
        group["last_sync_at"] = _iso(by_name.get(name) or synced.get(name)) if isinstance(name, str) else None


async def no_route(request: web.Request) -> web.Response:
    raise NotFoundError(
        f"no admin route {request.method} {request.path}", hint="see the admin API routes in the README"
    )


def create_admin_app() -> web.Application:
    """The admin sub-application; its handlers reach the store via `request.config_dict[keys.STORE]`."""
    app = web.Application(middlewares=[_middleware])
    r = app.router
    r.add_get("/v1/whoami", whoami)
    r.add_get("/v1/customers", list_customers)
    r.add_post("/v1/customers", create_customer)
    r.add_get("/v1/customers/{name}", get_customer)
    r.add_delete("/v1/customers/{name}", delete_customer)
    r.add_get("/v1/teams", list_teams)
    r.add_post("/v1/teams", create_team)
    r.add_get("/v1/teams/{name}", get_team)
    r.add_patch("/v1/teams/{name}", update_team)
    r.add_delete("/v1/teams/{name}", delete_team)
    r.add_get("/v1/keys", list_keys)
    r.add_post("/v1/keys", create_key)
    r.add_get("/v1/keys/{name}", get_key)
    r.add_patch("/v1/keys/{name}", update_key)
    r.add_post("/v1/keys/{name}/revoke", revoke_key)
    r.add_post("/v1/keys/{name}/rotate", rotate_key)
    r.add_get("/v1/budgets", list_budgets)
    r.add_post("/v1/budgets", create_budget)
    r.add_get("/v1/budgets/{id}", get_budget)
    r.add_patch("/v1/budgets/{id}", update_budget)
    r.add_delete("/v1/budgets/{id}", delete_budget)
    r.add_post("/v1/budgets/{id}/override", override_budget)
    r.add_post("/v1/budgets/{id}/reset", reset_budget)
    r.add_get("/v1/ratelimits", list_rate_limits)
    r.add_put("/v1/ratelimits/{level}/{target}", set_rate_limit)
    r.add_delete("/v1/ratelimits/{level}/{target}", delete_rate_limit)
    r.add_get("/v1/providers", list_providers)
    r.add_get("/v1/providers/{name}", get_provider)
    r.add_put("/v1/providers/{name}", put_provider)
    r.add_delete("/v1/providers/{name}", delete_provider)
    r.add_get("/v1/tokens", list_tokens)
    r.add_post("/v1/tokens", create_token)
    r.add_post("/v1/tokens/{name}/revoke", revoke_token)
    r.add_get("/v1/audit", list_audit)
    r.add_get("/v1/report", report)
    r.add_route("*", "/{tail:.*}", no_route)
    return app
