"""`ccgate gateway admin ...` and `ccgate gateway report`: scripts and people over the gateway's admin API.

Thin: each command turns its options into one admin API call (`ccgate.client.admin_api`, standard library
HTTP, so no aiohttp here) and prints the answer as a table or, with `--json`, as the API's JSON.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ccgate.cli._app import ctx
from ccgate.errors import UserInputError

if TYPE_CHECKING:
    from ccgate.client.admin_api import AdminClient

URL_ENV = "CCGATE_GATEWAY_URL"
TOKEN_ENV = "CCGATE_GATEWAY_ADMIN_TOKEN"  # noqa: S105 - the name of the variable

admin_app = typer.Typer(
    help=f"Administer an org gateway over its admin API (URL from --url or {URL_ENV}; token from {TOKEN_ENV}, "
    "--token-file, or a prompt).",
    no_args_is_help=True,
)
customer_app = typer.Typer(help="Customers: the top of customer → team → key.", no_args_is_help=True)
team_app = typer.Typer(help="Teams: groups of developers' keys, under an optional customer.", no_args_is_help=True)
key_app = typer.Typer(help="Virtual keys `sk-cg-…`, one per developer (shown once).", no_args_is_help=True)
budget_app = typer.Typer(help="Budgets on customers, teams, keys and provider configs.", no_args_is_help=True)
rate_app = typer.Typer(help="Requests and tokens per minute, per team or key.", no_args_is_help=True)
provider_app = typer.Typer(help="Provider configs and their API keys (write-only).", no_args_is_help=True)
token_app = typer.Typer(help="Named admin tokens with a role: admin, viewer, team_admin.", no_args_is_help=True)
for _sub, _name in (
    (customer_app, "customer"),
    (team_app, "team"),
    (key_app, "key"),
    (budget_app, "budget"),
    (rate_app, "ratelimit"),
    (provider_app, "provider"),
    (token_app, "token"),
):
    admin_app.add_typer(_sub, name=_name)

JSON_OPTION = typer.Option(False, "--json", help="Print the admin API's JSON (for scripts).")


@dataclass
class Connection:
    """Where the gateway is and how to get the admin token; travels in the click context (`ctx.obj`)."""

    url: str | None = None
    token_file: Path | None = None


URL_OPTION = typer.Option(None, "--url", help=f"The gateway's base URL (default: ${URL_ENV}).", show_default=False)
TOKEN_FILE_OPTION = typer.Option(
    None, "--token-file", help=f"Read the admin token from this file (default: ${TOKEN_ENV}, else a prompt)."
)


@admin_app.callback()
def admin_root(tctx: typer.Context, url: str | None = URL_OPTION, token_file: Path | None = TOKEN_FILE_OPTION) -> None:
    tctx.obj = Connection(url, token_file)


def _read_token(token_file: Path | None) -> str:
    environ = ctx().environ
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise UserInputError(
                f"cannot read the admin token from {token_file}: {error.__class__.__name__}",
                hint="give --token-file a readable file holding the token alone",
            ) from None
        if not token:
            raise UserInputError(f"{token_file} is empty", hint="put the admin token in it, alone on one line")
        return token
    token = environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            return str(typer.prompt("Admin token", hide_input=True)).strip()
        except typer.Abort:
            pass
    raise UserInputError("no admin token", hint=f"set {TOKEN_ENV}, or pass --token-file FILE")


def _client_for(url: str | None, token_file: Path | None) -> AdminClient:
    from ccgate.client.admin_api import AdminClient

    base = url or ctx().environ.get(URL_ENV, "")
    if not base.strip():
        raise UserInputError("no gateway URL", hint=f"pass --url https://GATEWAY or set {URL_ENV}")
    return AdminClient(base, _read_token(token_file))


def _client(tctx: typer.Context) -> AdminClient:
    conn = tctx.find_object(Connection) or Connection()
    return _client_for(conn.url, conn.token_file)


def _q(*parts: str) -> str:
    from ccgate.client.admin_api import name_path

    return "/" + name_path(*parts)


# --- output ----------------------------------------------------------------------------------------------------


def _done(data: Any, as_json: bool, line: str) -> None:
    """A change's result: the API's JSON, or one confirmation line on stderr."""
    if as_json:
        ctx().print_json(data)
    else:
        ctx().success(line)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, Callable[[dict[str, Any]], Any]]]) -> None:
    from rich.table import Table

    app_ctx = ctx()
    if not rows:
        app_ctx.info("none")
        return
    table = Table(box=None, pad_edge=False)
    for header, _ in columns:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*("–" if (value := cell(row)) is None else str(value) for _, cell in columns))
    app_ctx.out.print(table)


def _field(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(name)


def _usd(name: str) -> Callable[[dict[str, Any]], Any]:
    def cell(row: dict[str, Any]) -> str | None:
        from decimal import Decimal

        from ccgate.models import format_usd, usd_to_nanos

        value = row.get(name)
        return None if value is None else format_usd(usd_to_nanos(Decimal(value)))

    return cell


def _day(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: None if row.get(name) is None else str(row[name])[:16].replace("T", " ")


def _list(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: "all" if row.get(name) is None else ", ".join(row[name]) or "none"


def _overrides(values: list[str] | None) -> dict[str, str] | None:
    """`--tier haiku=groq/llama` (repeatable) as the API's tier_overrides object."""
    if not values:
        return None
    out: dict[str, str] = {}
    for value in values:
        tier, eq, target = value.partition("=")
        if not eq or not tier.strip() or "/" not in target:
            raise UserInputError(f"--tier {value!r} is not TIER=PROVIDER/MODEL", hint="e.g. --tier haiku=groq/llama")
        out[tier.strip()] = target.strip()
    return out


def _moment(text: str | None, *, end: bool = False) -> str | None:
    """A date or ISO time for the API (UTC when no offset); a bare date as an end includes that whole day."""
    if text is None:
        return None
    value = text.strip()
    try:
        day = date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        raise UserInputError(f"cannot read {text!r} as a date", hint="use YYYY-MM-DD or an ISO-8601 time") from None
    if day is not None and end:
        return (day + timedelta(days=1)).isoformat()
    return value


# --- customers -------------------------------------------------------------------------------------------------


@customer_app.command("create")
def customer_create(tctx: typer.Context, name: str, as_json: bool = JSON_OPTION) -> None:
    """Create a customer."""
    data = _client(tctx).post("/customers", {"name": name})
    _done(data, as_json, f"customer {name!r} created")


@customer_app.command("list")
def customer_list(tctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List customers."""
    data = _client(tctx).get("/customers")
    if as_json:
        ctx().print_json(data)
        return
    _table(data["customers"], [("customer", _field("name")), ("created", _day("created_at"))])


@customer_app.command("delete")
def customer_delete(tctx: typer.Context, name: str, as_json: bool = JSON_OPTION) -> None:
    """Delete a customer (and its budgets); its teams must be moved or deleted first."""
    data = _client(tctx).delete(_q("customers", name))
    _done(data, as_json, f"customer {name!r} deleted")


# --- teams -----------------------------------------------------------------------------------------------------

_ALLOW_MODEL_OPTION = typer.Option(None, "--allow-model", help="Allowed model (repeatable; default: all).")
_ALLOW_PROVIDER_OPTION = typer.Option(None, "--allow-provider", help="Allowed provider (repeatable).")
_REPLACE_MODELS_OPTION = typer.Option(None, "--allow-model", help="Allowed model (repeatable); replaces the list.")
_ALERT_AT_OPTION = typer.Option(None, "--alert-at", help="Webhook threshold as a fraction, e.g. 0.8 (repeat).")
TIER_OPTION = typer.Option(None, "--tier", help="Tier override TIER=PROVIDER/MODEL (repeatable), as `model set`.")


@team_app.command("create")
def team_create(
    tctx: typer.Context,
    name: str,
    customer: str | None = typer.Option(None, "--customer", help="The customer it belongs to."),
    tier: list[str] | None = TIER_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a team."""
    body: dict[str, Any] = {"name": name, "customer": customer}
    if tier:
        body["tier_overrides"] = _overrides(tier)
    data = _client(tctx).post("/teams", body)
    _done(data, as_json, f"team {name!r} created" + (f" for customer {customer!r}" if customer else ""))


@team_app.command("list")
def team_list(
    tctx: typer.Context,
    customer: str | None = typer.Option(None, "--customer", help="Only this customer's teams."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List teams."""
    data = _client(tctx).get("/teams", {"customer": customer})
    if as_json:
        ctx().print_json(data)
        return
    _table(
        data["teams"],
        [
            ("team", _field("name")),
            ("customer", _field("customer")),
            ("tier overrides", lambda r: ", ".join(f"{k}={v}" for k, v in r["tier_overrides"].items()) or None),
        ],
    )


@team_app.command("update")
def team_update(
    tctx: typer.Context,
    name: str,
    customer: str | None = typer.Option(None, "--customer", help="Move it to this customer."),
    tier: list[str] | None = TIER_OPTION,
    clear_tiers: bool = typer.Option(False, "--clear-tiers", help="Remove every tier override."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Change a team's customer or tier overrides."""
    body: dict[str, Any] = {}
    if customer is not None:
        body["customer"] = customer
    if tier or clear_tiers:
        body["tier_overrides"] = _overrides(tier) or {}
    data = _client(tctx).patch(_q("teams", name), body)
    _done(data, as_json, f"team {name!r} updated")


@team_app.command("delete")
def team_delete(tctx: typer.Context, name: str, as_json: bool = JSON_OPTION) -> None:
    """Delete a team (and its budgets and rate limits)."""
    data = _client(tctx).delete(_q("teams", name))
    _done(data, as_json, f"team {name!r} deleted")


# --- keys ------------------------------------------------------------------------------------------------------


@key_app.command("create")
def key_create(
    tctx: typer.Context,
    team: str = typer.Option(..., "--team", help="The developer's team."),
    name: str = typer.Option(..., "--name", help="The developer (the key's name)."),
    mode: str = typer.Option("proxy", "--mode", help="proxy (through the gateway) or report (sync usage only)."),
    expires: str | None = typer.Option(None, "--expires", help="Last day (UTC) or ISO time the key works."),
    allow_model: list[str] | None = _ALLOW_MODEL_OPTION,
    allow_provider: list[str] | None = _ALLOW_PROVIDER_OPTION,
    tier: list[str] | None = TIER_OPTION,
    as_json: bool = typer.Option(False, "--json", help='Print {"id", "name", "team", "mode", "key"}.'),
) -> None:
    """Create a developer's virtual key and print it once: it cannot be shown again."""
    body: dict[str, Any] = {"team": team, "name": name, "mode": mode, "expires_at": _moment(expires, end=True)}
    if allow_model:
        body["allowed_models"] = allow_model
    if allow_provider:
        body["allowed_providers"] = allow_provider
    if tier:
        body["tier_overrides"] = _overrides(tier)
    data = _client(tctx).post("/keys", body)
    if as_json:
        ctx().print_json({field: data[field] for field in ("id", "name", "team", "mode", "key")})
        return
    ctx().echo(data["key"])  # alone on stdout: KEY=$(ccgate gateway admin key create ...)
    ctx().success(f"key {name!r} created for team {team!r} ({data['mode']} mode); it is shown only this once")


@key_app.command("list")
def key_list(
    tctx: typer.Context,
    team: str | None = typer.Option(None, "--team", help="Only this team's keys."),
    include_revoked: bool = typer.Option(False, "--all", help="Include revoked keys."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List virtual keys (their display prefix only, never the key)."""
    data = _client(tctx).get("/keys", {"team": team, "include_revoked": "true" if include_revoked else None})
    if as_json:
        ctx().print_json(data)
        return
    _table(
        data["keys"],
        [
            ("key", _field("name")),
            ("team", _field("team")),
            ("mode", _field("mode")),
            ("prefix", lambda r: r["key_prefix"] + "…"),
            ("models", _list("allowed_models")),
            ("expires", _day("expires_at")),
            ("revoked", _day("revoked_at")),
        ],
    )


@key_app.command("update")
def key_update(
    tctx: typer.Context,
    name: str,
    mode: str | None = typer.Option(None, "--mode", help="proxy or report."),
    expires: str | None = typer.Option(None, "--expires", help="Last day (UTC) or ISO time; `never` clears it."),
    allow_model: list[str] | None = _REPLACE_MODELS_OPTION,
    all_models: bool = typer.Option(False, "--all-models", help="Allow every model again."),
    tier: list[str] | None = TIER_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Change a key's mode, expiry, allowed models or tier overrides."""
    body: dict[str, Any] = {}
    if mode is not None:
        body["mode"] = mode
    if expires is not None:
        body["expires_at"] = None if expires.strip().lower() == "never" else _moment(expires, end=True)
    if allow_model and all_models:
        raise UserInputError("--allow-model and --all-models contradict each other", hint="give one of them")
    if allow_model or all_models:
        body["allowed_models"] = allow_model or None
    if tier:
        body["tier_overrides"] = _overrides(tier)
    data = _client(tctx).patch(_q("keys", name), body)
    _done(data, as_json, f"key {name!r} updated")


@key_app.command("revoke")
def key_revoke(tctx: typer.Context, name: str, as_json: bool = JSON_OPTION) -> None:
    """Revoke a key at once (and its rotated-out predecessor)."""
    data = _client(tctx).post(_q("keys", name, "revoke"))
    _done(data, as_json, f"key {name!r} revoked")


@key_app.command("rotate")
def key_rotate(
    tctx: typer.Context,
    name: str,
    grace: str = typer.Option("1d", "--grace", help="How long the old key keeps working: 1h, 1d, 1w, or 0."),
    as_json: bool = typer.Option(False, "--json", help='Print {"id", "name", "team", "mode", "key"}.'),
) -> None:
    """Give a key a new secret (printed once); the old one works for the grace period."""
    data = _client(tctx).post(_q("keys", name, "rotate"), {"grace": grace})
    if as_json:
        ctx().print_json({field: data[field] for field in ("id", "name", "team", "mode", "key")})
        return
    ctx().echo(data["key"])  # alone on stdout: KEY=$(ccgate gateway admin key create ...)
    ctx().success(f"key {name!r} rotated; the old key works until {data['previous_valid_until']}")


# --- budgets ---------------------------------------------------------------------------------------------------


def _level(customer: str | None, team: str | None, key: str | None, provider: str | None) -> tuple[str, str] | None:
    given = [(level, name) for level, name in zip(_LEVELS, (customer, team, key, provider), strict=True) if name]
    if len(given) > 1:
        raise UserInputError("give one of --customer, --team, --key, --provider", hint="a budget has one target")
    return given[0] if given else None


_LEVELS = ("customer", "team", "key", "provider")


_C = typer.Option(None, "--customer", help="The customer the budget is on.")
_T = typer.Option(None, "--team", help="The team the budget is on.")
_K = typer.Option(None, "--key", help="The key (developer) the budget is on.")
_P = typer.Option(None, "--provider", help="The provider config the budget is on.")
_BUDGET_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("id", _field("id")),
    ("on", lambda r: f"{r['level']} {r['target']}"),
    ("period", lambda r: ("rolling " if r["rolling"] else "") + r["period"]),
    ("limit", _usd("limit_usd")),
    ("spent", _usd("spent_usd")),
    ("reserved", _usd("reserved_usd")),
    ("left", _usd("left_usd")),
    ("resets", _day("resets_at")),
]


@budget_app.command("set")
def budget_set(
    tctx: typer.Context,
    amount: str = typer.Argument(..., help="US dollars, e.g. 20 or 12.50."),
    customer: str | None = _C,
    team: str | None = _T,
    key: str | None = _K,
    provider: str | None = _P,
    period: str = typer.Option(..., "--period", help="1min … 1y (1h, 1d, 1w, 1mo, 1y) or daily, weekly, monthly."),
    rolling: bool = typer.Option(False, "--rolling", help="A rolling window instead of calendar-aligned."),
    timezone: str = typer.Option("UTC", "--timezone", help="IANA zone calendar windows align to."),
    alert_at: list[str] | None = _ALERT_AT_OPTION,
    webhook: str | None = typer.Option(None, "--webhook", help="URL that gets a POST at each threshold."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Add a budget: AMOUNT dollars per period on one customer, team, key or provider."""
    target = _level(customer, team, key, provider)
    if target is None:
        raise UserInputError("say what the budget is on", hint="give --customer, --team, --key or --provider NAME")
    body: dict[str, Any] = {
        "level": target[0],
        "target": target[1],
        "amount_usd": amount.strip().removeprefix("$"),
        "period": period,
        "rolling": rolling,
        "timezone": timezone,
        "thresholds": alert_at or [],
        "webhook_url": webhook,
    }
    data = _client(tctx).post("/budgets", body)
    if as_json:
        ctx().print_json(data)
        return
    budget = data["budgets"][0]
    ctx().success(f"budget {budget['id']} set: ${budget['amount_usd']} per {period} on {target[0]} {target[1]!r}")


@budget_app.command("list")
def budget_list(
    tctx: typer.Context,
    customer: str | None = typer.Option(None, "--customer", help="Only this customer's budgets."),
    team: str | None = typer.Option(None, "--team", help="Only this team's budgets."),
    key: str | None = typer.Option(None, "--key", help="Only this key's budgets."),
    provider: str | None = typer.Option(None, "--provider", help="Only this provider's budgets."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List budgets with what is spent and reserved in the current window."""
    target = _level(customer, team, key, provider)
    query = {} if target is None else {"level": target[0], "target": target[1]}
    data = _client(tctx).get("/budgets", query)
    if as_json:
        ctx().print_json(data)
        return
    _table(data["budgets"], _BUDGET_COLUMNS)


@budget_app.command("override")
def budget_override(
    tctx: typer.Context,
    budget_id: str = typer.Argument(..., metavar="ID"),
    amount: str | None = typer.Argument(None, help="The limit for the current window only."),
    clear: bool = typer.Option(False, "--clear", help="Remove the override."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Raise (or lower) a budget's limit for its current window only."""
    if (amount is None) == (not clear):
        raise UserInputError("give an AMOUNT or --clear", hint="e.g. `budget override ID 50`")
    value = None if clear or amount is None else amount.strip().removeprefix("$")
    data = _client(tctx).post(_q("budgets", budget_id, "override"), {"amount_usd": value})
    _done(data, as_json, f"budget {budget_id} " + ("override removed" if clear else f"limit ${value} until it resets"))


@budget_app.command("reset")
def budget_reset(
    tctx: typer.Context, budget_id: str = typer.Argument(..., metavar="ID"), as_json: bool = JSON_OPTION
) -> None:
    """Forget the current window's spend (the ledger keeps every request)."""
    data = _client(tctx).post(_q("budgets", budget_id, "reset"))
    _done(data, as_json, f"budget {budget_id} reset for its current window")


@budget_app.command("delete")
def budget_delete(
    tctx: typer.Context, budget_id: str = typer.Argument(..., metavar="ID"), as_json: bool = JSON_OPTION
) -> None:
    """Delete a budget."""
    data = _client(tctx).delete(_q("budgets", budget_id))
    _done(data, as_json, f"budget {budget_id} deleted")


# --- rate limits -----------------------------------------------------------------------------------------------


def _rate_target(team: str | None, key: str | None) -> tuple[str, str]:
    if (team is None) == (key is None):
        raise UserInputError("give one of --team or --key", hint="e.g. `ratelimit set --team core --rpm 60`")
    return ("team", team) if team is not None else ("key", key or "")


@rate_app.command("set")
def ratelimit_set(
    tctx: typer.Context,
    team: str | None = typer.Option(None, "--team", help="The team."),
    key: str | None = typer.Option(None, "--key", help="The key (developer)."),
    rpm: int | None = typer.Option(None, "--rpm", help="Requests per minute (leave out: no limit)."),
    tpm: int | None = typer.Option(None, "--tpm", help="Tokens per minute (leave out: no limit)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Set (replace) a team's or key's rate limits."""
    level, name = _rate_target(team, key)
    data = _client(tctx).put(_q("ratelimits", level, name), {"rpm": rpm, "tpm": tpm})
    _done(data, as_json, f"{level} {name!r}: {rpm or 'unlimited'} requests/min, {tpm or 'unlimited'} tokens/min")


@rate_app.command("list")
def ratelimit_list(tctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List rate limits."""
    data = _client(tctx).get("/ratelimits")
    if as_json:
        ctx().print_json(data)
        return
    columns = [("on", lambda r: f"{r['level']} {r['target']}"), ("rpm", _field("rpm")), ("tpm", _field("tpm"))]
    _table(data["rate_limits"], columns)


@rate_app.command("delete")
def ratelimit_delete(
    tctx: typer.Context,
    team: str | None = typer.Option(None, "--team", help="The team."),
    key: str | None = typer.Option(None, "--key", help="The key (developer)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Remove a team's or key's rate limits."""
    level, name = _rate_target(team, key)
    data = _client(tctx).delete(_q("ratelimits", level, name))
    _done(data, as_json, f"rate limits of {level} {name!r} removed")


# --- providers -------------------------------------------------------------------------------------------------


@provider_app.command("set")
def provider_set(
    tctx: typer.Context,
    name: str,
    kind: str = typer.Option(..., "--kind", help="anthropic or openai (OpenAI-compatible)."),
    base_url: str | None = typer.Option(None, "--base-url", help="The provider's API base URL."),
    key_stdin: bool = typer.Option(False, "--key-stdin", help="Read its API key from stdin (stored encrypted)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create or replace a provider config; its API key is write-only (never shown again)."""
    body: dict[str, Any] = {"kind": kind, "base_url": base_url}
    if key_stdin:
        api_key = sys.stdin.readline().strip() if sys.stdin is not None else ""
        if not api_key:
            raise UserInputError("no API key on stdin", hint=f'pipe it: `echo "$KEY" | ... provider set {name} ...`')
        body["api_key"] = api_key
    data = _client(tctx).put(_q("providers", name), body)
    _done(data, as_json, f"provider {name!r} saved" + (" with its API key (encrypted)" if key_stdin else ""))


@provider_app.command("list")
def provider_list(tctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List provider configs (whether a key is stored, never the key)."""
    data = _client(tctx).get("/providers")
    if as_json:
        ctx().print_json(data)
        return
    columns = [
        ("provider", _field("name")),
        ("kind", _field("kind")),
        ("base URL", _field("base_url")),
        ("key", lambda r: "stored" if r["has_api_key"] else "none"),
    ]
    _table(data["providers"], columns)


@provider_app.command("delete")
def provider_delete(tctx: typer.Context, name: str, as_json: bool = JSON_OPTION) -> None:
    """Delete a provider config (and its budgets)."""
    data = _client(tctx).delete(_q("providers", name))
    _done(data, as_json, f"provider {name!r} deleted")


# --- admin tokens ----------------------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    tctx: typer.Context,
    name: str,
    role: str = typer.Option(..., "--role", help="admin, viewer (read only) or team_admin (one team)."),
    team: str | None = typer.Option(None, "--team", help="The team of a team_admin."),
    as_json: bool = typer.Option(False, "--json", help='Print the token record with "token" (shown once).'),
) -> None:
    """Create a named admin token and print it once."""
    data = _client(tctx).post("/tokens", {"name": name, "role": role, "team": team})
    if as_json:
        ctx().print_json(data)
        return
    ctx().echo(data["token"])
    ctx().success(f"admin token {name!r} ({role}) created; it is shown only this once")


@token_app.command("list")
def token_list(tctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List admin tokens (their prefix only)."""
    data = _client(tctx).get("/tokens")
    if as_json:
        ctx().print_json(data)
        return
    columns = [
        ("token", _field("name")),
        ("role", _field("role")),
        ("team", _field("team")),
        ("prefix", lambda r: r["token_prefix"] + "…"),
        ("revoked", _day("revoked_at")),
    ]
    _table(data["tokens"], columns)


@token_app.command("revoke")
def token_revoke(tctx: typer.Context, name: str, as_json: bool = JSON_OPTION) -> None:
    """Revoke an admin token at once."""
    data = _client(tctx).post(_q("tokens", name, "revoke"))
    _done(data, as_json, f"admin token {name!r} revoked")


# --- whoami and audit ------------------------------------------------------------------------------------------


@admin_app.command("whoami")
def whoami(tctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Check the admin token: its name, role and team."""
    data = _client(tctx).get("/whoami")
    if as_json:
        ctx().print_json(data)
        return
    ctx().echo(f"{data['name']} ({data['role']}" + (f", team {data['team']})" if data["team"] else ")"))


@admin_app.command("audit")
def audit(
    tctx: typer.Context,
    since: str | None = typer.Option(None, "--since", help="Only entries from this date or ISO time (UTC)."),
    actor: str | None = typer.Option(None, "--actor", help="Only this admin token's changes."),
    action: str | None = typer.Option(None, "--action", help='Only this action, or a prefix like "key.".'),
    limit: int = typer.Option(100, "--limit", help="At most this many entries (1-1000)."),
    before: str | None = typer.Option(None, "--before", help="Entries older than this entry id (next page)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show the audit log, newest first: who changed what, when, before and after."""
    query = {"since": _moment(since), "actor": actor, "action": action, "limit": str(limit), "before": before}
    data = _client(tctx).get("/audit", query)
    if as_json:
        ctx().print_json(data)
        return
    columns = [
        ("when", _day("at")),
        ("actor", _field("actor")),
        ("action", _field("action")),
        ("target", _field("target")),
    ]
    _table(data["entries"], columns)
    if data.get("next"):
        ctx().info(f"more: --before {data['next']}")


# --- gateway report --------------------------------------------------------------------------------------------


def report(
    url: str | None = URL_OPTION,
    token_file: Path | None = TOKEN_FILE_OPTION,
    by: str | None = typer.Option(
        None, "--by", help="key, team, customer, project, model, provider, day, session or tag:NAME."
    ),
    since: str | None = typer.Option(None, "--since", help="Start: date or ISO time (UTC; default: all time)."),
    until: str | None = typer.Option(None, "--until", help="End: ISO time, or a date (that day included)."),
    tz: str | None = typer.Option(None, "--tz", help="IANA zone for --by day (default UTC)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the shape of `cost --json`)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV: one row per group and a (total) row."),
) -> None:
    """Org spend from the gateway: tokens and dollars per key, team, customer, project, model, provider or day."""
    if as_json and as_csv:
        raise UserInputError("--json and --csv cannot be combined", hint="pick one output format")
    query = {"by": by, "since": _moment(since), "until": _moment(until, end=True), "tz": tz}
    data = _client_for(url, token_file).get("/report", query)
    if as_json:
        ctx().print_json(data)
    elif as_csv:
        _report_csv(data)
    else:
        _report_table(data)


def _report_csv(data: dict[str, Any]) -> None:
    import csv
    import io

    from ccgate.cli.cost import csv_text

    fields = ["key", *data["total"]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for group in data["groups"]:
        writer.writerow({**group, "key": csv_text(str(group["key"]))})
    writer.writerow({**data["total"], "key": "(total)"})
    sys.stdout.write(buffer.getvalue())
    sys.stdout.flush()


def _report_table(data: dict[str, Any]) -> None:
    from ccgate.cli.cost import compact

    by = data["by"] or "total"
    rows = data["groups"] or []
    columns: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        (by, _field("key")),
        ("reqs", lambda r: f"{r['requests']:,}"),
        ("input", lambda r: compact(r["input_tokens"])),
        ("output", lambda r: compact(r["output_tokens"])),
        ("cache read", lambda r: compact(r["cache_read_tokens"])),
        ("cache write", lambda r: compact(r["cache_write_tokens"])),
        ("cost", _usd("cost_usd")),
        ("unpriced", _field("unpriced_requests")),
    ]
    ctx().info(f"gateway spend from {data['since'][:16]} to {data['until'][:16]}")
    _table([*rows, {**data["total"], "key": "Total"}], columns)


def register(gateway_app: typer.Typer) -> None:
    gateway_app.add_typer(admin_app, name="admin")
    gateway_app.command("report")(report)
