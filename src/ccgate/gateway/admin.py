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
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from ccgate.budgets import parse_period
from ccgate.errors import (
    AuthenticationError,
    CcgateError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
)
from ccgate.gateway import keys
from ccgate.models import nanos_to_usd, to_iso, usd_to_nanos, utcnow
from ccgate.routing import TIER_WORDS
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
MAX_BODY_BYTES = 64 * 1024
MAX_USD = Decimal(1_000_000_000)  # a billion dollars: beyond it an amount is a typo, and nanos stay in BIGINT
MAX_LIST = 1000
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
    body = error.envelope()
    body["error"]["hint"] = error.hint
    return web.json_response(body, status=error.status, headers=error.headers())


async def _authenticate(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("an admin token is required", hint=TOKEN_HINT)
    bootstrap = request.config_dict.get(keys.BOOTSTRAP_ADMIN_TOKEN)
    if bootstrap and hmac.compare_digest(token.encode("utf-8"), bootstrap.encode("utf-8")):
        return Principal(BOOTSTRAP_ACTOR, AdminRole.ADMIN, None)
    # named tokens are looked up by SHA-256 hash: the comparison never runs over the secret itself
    found = await _store(request).authenticate_admin(token)
    if found is None:
        raise AuthenticationError("the admin token is wrong or revoked", hint=TOKEN_HINT)
    return Principal(found.name, found.role, found.team_id)


@web.middleware
async def _middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The admin API's one error boundary: every CcgateError becomes the envelope, never a traceback."""
    try:
        request[_PRINCIPAL] = await _authenticate(request)
        for value in request.match_info.values():
            if not _clean(value):
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


# --- reading requests ------------------------------------------------------------------------------------------

Field = Callable[[str, Any], Any]


def _bad(field: str, what: str) -> InvalidRequestError:
    return InvalidRequestError(f"field {field!r} must be {what}", hint="fix the value and send the request again")


def _clean(value: str) -> bool:
    """No control characters and valid Unicode: NUL or a lone surrogate would break the database driver."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 2000:
        raise _bad(field, "a non-empty string")
    if not _clean(value):
        raise _bad(field, "text without control characters")
    return value


def _opt_text(field: str, value: Any) -> str | None:
    return None if value is None else _text(field, value)


def _url(field: str, value: Any) -> str | None:
    if value is None:
        return None
    text = _text(field, value)
    if not re.match(r"^https?://[^\s/?#]+", text) or any(ord(c) < 33 for c in text):
        raise _bad(field, "an http:// or https:// URL")
    return text


def _names(field: str, value: Any) -> list[str] | None:
    """A list of names, or null (= no restriction)."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise _bad(field, f"a list of at most {MAX_LIST} names, or null")
    return [_text(field, item) for item in value]


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(field, "true or false")
    return value


def _count(field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**12:
        raise _bad(field, "a whole number from 0 to 10^12, or null")
    return value


def usd_nanos(field: str, value: Any) -> int:
    """A dollar amount as a decimal string (or integer): exact, 0 to a billion, at most nine decimals."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise _bad(field, 'a dollar amount as a decimal string, e.g. "20.00"')
    try:
        amount = Decimal(value.strip().removeprefix("$") if isinstance(value, str) else value)
    except InvalidOperation:
        raise _bad(field, 'a dollar amount as a decimal string, e.g. "20.00"') from None
    if not amount.is_finite() or not 0 <= amount <= MAX_USD:
        raise _bad(field, f"a dollar amount from 0 to {MAX_USD:,}")
    if amount != amount.quantize(Decimal("1e-9")):
        raise _bad(field, "a dollar amount with at most nine decimal places")
    return usd_to_nanos(amount)


def _opt_usd(field: str, value: Any) -> int | None:
    return None if value is None else usd_nanos(field, value)


def _thresholds(field: str, value: Any) -> list[Decimal]:
    if not isinstance(value, list) or len(value) > 20:
        raise _bad(field, 'a list of fractions of the limit, e.g. ["0.8", "1"]')
    out = []
    for item in value:
        try:
            number = Decimal(item) if isinstance(item, str | int | Decimal) and not isinstance(item, bool) else None
        except InvalidOperation:
            number = None
        if number is None or not number.is_finite() or not 0 < number <= 10:
            raise _bad(field, 'a list of fractions of the limit above 0 and at most 10, e.g. ["0.8", "1"]')
        out.append(number)
    return out


def _overrides(field: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > len(TIER_WORDS):
        raise _bad(field, 'an object mapping a tier to provider/model, e.g. {"haiku": "groq/llama-3.3-70b"}')
    for tier, target in value.items():
        provider, slash, model = target.partition("/") if isinstance(target, str) else ("", "", "")
        if tier not in TIER_WORDS or not (slash and provider.strip() and model.strip()):
            raise _bad(field, f"an object mapping {', '.join(TIER_WORDS)} to provider/model")
    return dict(value)


def moment(field: str, value: Any) -> datetime | None:
    """An ISO-8601 time (no offset: UTC) or date (its midnight UTC), or null."""
    if value is None:
        return None
    text = _text(field, value).strip()
    try:
        parsed = (
            datetime.combine(date.fromisoformat(text), datetime.min.time())
            if len(text) == 10
            else datetime.fromisoformat(text.replace("Z", "+00:00"))
        )
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise _bad(field, "an ISO-8601 time such as 2027-01-31T00:00:00Z, or null") from None


def _grace(field: str, value: Any) -> timedelta:
    text = _text(field, value).strip()
    return timedelta(0) if text == "0" else parse_period(text).approx_duration()


def _role(field: str, value: Any) -> AdminRole:
    try:
        return AdminRole(value)
    except ValueError:
        raise _bad(field, "admin, viewer or team_admin") from None


def _choice(*choices: str) -> Field:
    def check(field: str, value: Any) -> str:
        if value not in choices:
            raise _bad(field, " or ".join(choices))
        return str(value)

    return check


def _fields(data: Mapping[str, Any], spec: Mapping[str, Field], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Checked and converted values of the given fields; unknown and missing fields are refused by name."""
    unknown = sorted(set(data) - set(spec))
    if unknown:
        raise InvalidRequestError(
            f"unknown field(s): {', '.join(repr(name) for name in unknown)}",
            hint=f"the fields here are: {', '.join(spec)}",
        )
    missing = [name for name in required if name not in data]
    if missing:
        raise InvalidRequestError(
            f"missing field(s): {', '.join(repr(name) for name in missing)}", hint="add them and send again"
        )
    return {name: spec[name](name, value) for name, value in data.items()}


async def _body(request: web.Request, spec: Mapping[str, Field], required: tuple[str, ...] = ()) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raw = b"x" * (MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise RequestTooLargeError(f"the request body is over {MAX_BODY_BYTES} bytes", hint="send a smaller body")
    try:
        data = json.loads(raw or b"{}", parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidRequestError("the body is not JSON", hint="send a JSON object") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the body must be a JSON object", hint="send a JSON object")
    return _fields(data, spec, required)


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _query(request: web.Request, spec: Mapping[str, Field]) -> dict[str, Any]:
    query = request.rel_url.query
    if any(len(query.getall(name)) > 1 for name in query):
        raise InvalidRequestError("a query parameter is given twice", hint="give each parameter once")
    return _fields(dict(query), spec)


def _flag(field: str, value: Any) -> bool:
    if value not in ("true", "false"):
        raise _bad(field, "true or false")
    return bool(value == "true")


def _limit(field: str, value: Any) -> int:
    if not (isinstance(value, str) and value.isdigit() and 1 <= int(value) <= 1000):
        raise _bad(field, "a number from 1 to 1000")
    return int(value)


# --- rendering -------------------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda v: json.dumps(v, ensure_ascii=False))


def _usd(nanos: int | None) -> str | None:
    return None if nanos is None else f"{nanos_to_usd(nanos):f}"


async def _team_names(store: GatewayStore) -> dict[str, str]:
    return {team.id: team.name for team in await store.list_teams()}


def _key_json(key: VirtualKey, team_names: Mapping[str, str]) -> dict[str, Any]:
    return {**public_dict(key), "team": team_names.get(key.team_id)}


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
        "webhook_url": budget.webhook_url,
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
    data = await _body(request, {"name": _text}, ("name",))
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
    query = _query(request, {"customer": _text})
    store = _store(request)
    customers = {c.id: c.name for c in await store.list_customers()}
    teams = await store.list_teams(customer=query.get("customer"))
    if who.role is AdminRole.TEAM_ADMIN:
        teams = [team for team in teams if team.id == who.team_id]
    return _json({"teams": [_team_json(team, customers) for team in teams]})


async def create_team(request: web.Request) -> web.Response:
    who = _who(request, write=True)
    data = await _body(request, {"name": _text, "customer": _opt_text, "tier_overrides": _overrides}, ("name",))
    store = _store(request)
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
    data = await _body(request, {"customer": _text, "tier_overrides": _overrides})
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

_KEY_FIELDS: dict[str, Field] = {
    "mode": _choice("proxy", "report"),
    "allowed_models": _names,
    "allowed_providers": _names,
    "tier_overrides": _overrides,
    "expires_at": moment,
}


def _not_past(expiry: datetime | None) -> None:
    if expiry is not None and expiry <= utcnow():
        raise InvalidRequestError(
            f"expires_at {to_iso(expiry)} is in the past", hint="give a future time, or revoke the key instead"
        )


async def list_keys(request: web.Request) -> web.Response:
    who = _who(request, write=False, team_scoped=True)
    query = _query(request, {"team": _text, "include_revoked": _flag})
    store = _store(request)
    team = query.get("team")
    if who.role is AdminRole.TEAM_ADMIN:
        own = await store.get_team(who.team_id or "")
        if team is not None:
            _check_team(who, (await store.get_team(team)).id)
        team = own.id
    found = await store.list_keys(team=team, include_revoked=query.get("include_revoked", False))
    names = await _team_names(store)
    return _json({"keys": [_key_json(key, names) for key in found]})


async def create_key(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    data = await _body(request, {"team": _text, "name": _text, **_KEY_FIELDS}, ("team", "name"))
    _not_past(data.get("expires_at"))
    store = _store(request)
    team = await store.get_team(data.pop("team"))
    _check_team(who, team.id)
    created = await store.create_key(team=team.id, actor=who.name, **data)
    return _json({**_key_json(created.key, {team.id: team.name}), "key": created.plaintext}, 201)


async def _own_key(request: web.Request, who: Principal) -> VirtualKey:
    key = await _store(request).get_key(request.match_info["name"])
    _check_team(who, key.team_id)
    return key


async def get_key(request: web.Request) -> web.Response:
    who = _who(request, write=False, team_scoped=True)
    key = await _own_key(request, who)
    return _json(_key_json(key, await _team_names(_store(request))))


async def update_key(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    data = await _body(request, _KEY_FIELDS)
    _not_past(data.get("expires_at"))
    key = await _own_key(request, who)
    store = _store(request)
    # absent fields stay as they are; null clears a list (= every model/provider) or the expiry
    changes: dict[str, Any] = {name: value for name, value in data.items() if name != "mode"}
    after = await store.update_key(key.id, mode=data.get("mode"), actor=who.name, **changes)
    return _json(_key_json(after, await _team_names(store)))


async def revoke_key(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    await _body(request, {})
    key = await _own_key(request, who)
    store = _store(request)
    after = await store.revoke_key(key.id, actor=who.name)
    return _json(_key_json(after, await _team_names(store)))


async def rotate_key(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    data = await _body(request, {"grace": _grace})
    key = await _own_key(request, who)
    store = _store(request)
    created = await store.rotate_key(key.id, grace=data.get("grace", timedelta(days=1)), actor=who.name)
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
    query = _query(request, {"level": _choice(*BudgetLevel), "target": _text})
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
    spec: dict[str, Field] = {
        "level": _choice(*BudgetLevel),
        "target": _text,
        "amount_usd": usd_nanos,
        "period": _text,
        "rolling": _bool,
        "timezone": _text,
        "thresholds": _thresholds,
        "webhook_url": _url,
    }
    data = await _body(request, spec, ("level", "target", "amount_usd", "period"))
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
    data = await _body(request, {"amount_usd": usd_nanos, "thresholds": _thresholds, "webhook_url": _url})
    budget = await _budget_in_reach(request, who)
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
    data = await _body(request, {"amount_usd": _opt_usd}, ("amount_usd",))
    budget = await _budget_in_reach(request, who)
    after = await _store(request).override_budget(budget.id, limit_nanos=data["amount_usd"], actor=who.name)
    return await _budget_response(request, [after])


async def reset_budget(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    await _body(request, {})
    budget = await _budget_in_reach(request, who)
    await _store(request).reset_budget(budget.id, actor=who.name)
    return await _budget_response(request, [budget])


async def delete_budget(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    budget = await _budget_in_reach(request, who)
    await _store(request).delete_budget(budget.id, actor=who.name)
    return _json({"deleted": budget.id})


# --- rate limits -----------------------------------------------------------------------------------------------


def _rate_level(request: web.Request) -> str:
    level = request.match_info["level"]
    if level not in tuple(RateLevel):
        raise NotFoundError(f"no rate limit level {level!r}", hint="use team or key")
    return level


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
    data = await _body(request, {"rpm": _count, "tpm": _count}, ("rpm", "tpm"))
    target = request.match_info["target"]
    await _check_target(request, who, level, target)
    store = _store(request)
    limit = await store.set_rate_limit(level=level, target=target, rpm=data["rpm"], tpm=data["tpm"], actor=who.name)
    return _json(_rate_json(limit, await _target_names(store)))


async def delete_rate_limit(request: web.Request) -> web.Response:
    who = _who(request, write=True, team_scoped=True)
    level = _rate_level(request)
    target = request.match_info["target"]
    await _check_target(request, who, level, target)
    await _store(request).delete_rate_limit(level=level, target=target, actor=who.name)
    return _json({"deleted": f"{level}:{target}"})


# --- provider configs ------------------------------------------------------------------------------------------


async def list_providers(request: web.Request) -> web.Response:
    _who(request, write=False)
    return _json({"providers": [public_dict(p) for p in await _store(request).list_providers()]})


async def get_provider(request: web.Request) -> web.Response:
    _who(request, write=False)
    return _json(public_dict(await _store(request).get_provider(request.match_info["name"])))


def _api_key(field: str, value: Any) -> str:
    text = _text(field, value)
    if any(ord(c) < 32 or ord(c) == 127 for c in text) or len(text) > 1000:
        raise _bad(field, "an API key without spaces or control characters")
    return text


async def put_provider(request: web.Request) -> web.Response:
    """Create or replace; `api_key` is write-only (stored encrypted, never returned; absent keeps the old one)."""
    who = _who(request, write=True)
    spec: dict[str, Field] = {"kind": _choice(*PROVIDER_KINDS), "base_url": _url, "api_key": _api_key}
    data = await _body(request, spec, ("kind",))
    provider = await _store(request).put_provider(request.match_info["name"], actor=who.name, **data)
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
    data = await _body(request, {"name": _text, "role": _role, "team": _opt_text}, ("name", "role"))
    if data["name"] == BOOTSTRAP_ACTOR:
        raise InvalidRequestError(
            f"the name {BOOTSTRAP_ACTOR!r} is reserved for the CCGATE_GATEWAY_ADMIN_TOKEN admin",
            hint="give the token another name (the audit log tells actors apart by name)",
        )
    store = _store(request)
    created = await store.create_admin_token(data["name"], role=data["role"], team=data.get("team"), actor=who.name)
    teams = await _team_names(store)
    return _json({**_token_json(created.token, teams), "token": created.plaintext}, 201)


async def revoke_token(request: web.Request) -> web.Response:
    who = _who(request, write=True)
    await _body(request, {})
    name = request.match_info["name"]
    await _store(request).revoke_admin_token(name, actor=who.name)
    return _json({"revoked": name})


# --- audit and report ------------------------------------------------------------------------------------------


async def list_audit(request: web.Request) -> web.Response:
    _who(request, write=False)
    spec: dict[str, Field] = {"since": moment, "actor": _text, "action": _text, "limit": _limit, "before": _text}
    query = _query(request, spec)
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


def _zone(field: str, value: Any) -> ZoneInfo:
    try:
        return ZoneInfo(_text(field, value))
    except (ZoneInfoNotFoundError, ValueError):
        raise _bad(field, "an IANA time zone such as Europe/Berlin") from None


async def report(request: web.Request) -> web.Response:
    """Spend as `cost --json` prints it; all time by default; a team_admin sees only its team's rows."""
    who = _who(request, write=False, team_scoped=True)
    query = _query(request, {"by": _text, "since": moment, "until": moment, "tz": _zone})
    since = query.get("since") or datetime(1970, 1, 1, tzinfo=UTC)
    until = query.get("until") or utcnow()
    if since >= until:
        raise InvalidRequestError("the range is empty: since is not before until", hint="swap or widen them")
    result = await _store(request).report(
        since=since,
        until=until,
        by=query.get("by"),
        tz=query.get("tz", UTC),
        team_id=who.team_id if who.role is AdminRole.TEAM_ADMIN else None,
    )
    return _json(report_to_json(result))


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
