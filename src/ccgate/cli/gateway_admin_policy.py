"""`ccgate gateway admin budget|ratelimit|provider|token ...`: the limits, provider configs and admin tokens."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer

from ccgate.cli._app import ctx
from ccgate.cli.gateway_admin import (
    JSON_OPTION,
    api_path,
    client,
    day_cell,
    done,
    field,
    show_table,
    usd_cell,
)
from ccgate.errors import UserInputError

_ALERT_AT_OPTION = typer.Option(None, "--alert-at", help="Webhook threshold as a fraction, e.g. 0.8 (repeat).")
token_app = typer.Typer(help="Named admin tokens with a role: admin, viewer, team_admin.", no_args_is_help=True)
provider_app = typer.Typer(help="Provider configs and their API keys (write-only).", no_args_is_help=True)
rate_app = typer.Typer(help="Requests and tokens per minute, per team or key.", no_args_is_help=True)
budget_app = typer.Typer(help="Budgets on customers, teams, keys and provider configs.", no_args_is_help=True)
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
    ("id", field("id")),
    ("on", lambda r: f"{r['level']} {r['target']}"),
    ("period", lambda r: ("rolling " if r["rolling"] else "") + r["period"]),
    ("limit", usd_cell("limit_usd")),
    ("spent", usd_cell("spent_usd")),
    ("reserved", usd_cell("reserved_usd")),
    ("left", usd_cell("left_usd")),
    ("resets", day_cell("resets_at")),
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
    data = client(tctx).post("/budgets", body)
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
    data = client(tctx).get("/budgets", query)
    if as_json:
        ctx().print_json(data)
        return
    show_table(data["budgets"], _BUDGET_COLUMNS)


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
    data = client(tctx).post(api_path("budgets", budget_id, "override"), {"amount_usd": value})
    done(data, as_json, f"budget {budget_id} " + ("override removed" if clear else f"limit ${value} until it resets"))


@budget_app.command("reset")
def budget_reset(
    tctx: typer.Context, budget_id: str = typer.Argument(..., metavar="ID"), as_json: bool = JSON_OPTION
) -> None:
    """Forget the current window's spend (the ledger keeps every request)."""
    data = client(tctx).post(api_path("budgets", budget_id, "reset"))
    done(data, as_json, f"budget {budget_id} reset for its current window")


@budget_app.command("delete")
def budget_delete(
    tctx: typer.Context, budget_id: str = typer.Argument(..., metavar="ID"), as_json: bool = JSON_OPTION
) -> None:
    """Delete a budget."""
    data = client(tctx).delete(api_path("budgets", budget_id))
    done(data, as_json, f"budget {budget_id} deleted")


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
    data = client(tctx).put(api_path("ratelimits", level, name), {"rpm": rpm, "tpm": tpm})
    done(data, as_json, f"{level} {name!r}: {rpm or 'unlimited'} requests/min, {tpm or 'unlimited'} tokens/min")


@rate_app.command("list")
def ratelimit_list(tctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List rate limits."""
    data = client(tctx).get("/ratelimits")
    if as_json:
        ctx().print_json(data)
        return
    columns = [("on", lambda r: f"{r['level']} {r['target']}"), ("rpm", field("rpm")), ("tpm", field("tpm"))]
    show_table(data["rate_limits"], columns)


@rate_app.command("delete")
def ratelimit_delete(
    tctx: typer.Context,
    team: str | None = typer.Option(None, "--team", help="The team."),
    key: str | None = typer.Option(None, "--key", help="The key (developer)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Remove a team's or key's rate limits."""
    level, name = _rate_target(team, key)
    data = client(tctx).delete(api_path("ratelimits", level, name))
    done(data, as_json, f"rate limits of {level} {name!r} removed")


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
    data = client(tctx).put(api_path("providers", name), body)
    done(data, as_json, f"provider {name!r} saved" + (" with its API key (encrypted)" if key_stdin else ""))


@provider_app.command("list")
def provider_list(tctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List provider configs (whether a key is stored, never the key)."""
    data = client(tctx).get("/providers")
    if as_json:
        ctx().print_json(data)
        return
    columns = [
        ("provider", field("name")),
        ("kind", field("kind")),
        ("base URL", field("base_url")),
        ("key", lambda r: "stored" if r["has_api_key"] else "none"),
    ]
    show_table(data["providers"], columns)


@provider_app.command("delete")
def provider_delete(tctx: typer.Context, name: str, as_json: bool = JSON_OPTION) -> None:
    """Delete a provider config (and its budgets)."""
    data = client(tctx).delete(api_path("providers", name))
    done(data, as_json, f"provider {name!r} deleted")


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
    data = client(tctx).post("/tokens", {"name": name, "role": role, "team": team})
    if as_json:
        ctx().print_json(data)
        return
    ctx().echo(data["token"])
    ctx().success(f"admin token {name!r} ({role}) created; it is shown only this once")


@token_app.command("list")
def token_list(tctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List admin tokens (their prefix only)."""
    data = client(tctx).get("/tokens")
    if as_json:
        ctx().print_json(data)
        return
    columns = [
        ("token", field("name")),
        ("role", field("role")),
        ("team", field("team")),
        ("prefix", lambda r: r["token_prefix"] + "…"),
        ("revoked", day_cell("revoked_at")),
    ]
    show_table(data["tokens"], columns)


@token_app.command("revoke")
def token_revoke(tctx: typer.Context, name: str, as_json: bool = JSON_OPTION) -> None:
    """Revoke an admin token at once."""
    data = client(tctx).post(api_path("tokens", name, "revoke"))
    done(data, as_json, f"admin token {name!r} revoked")


def register(admin_app: typer.Typer) -> None:
    for sub, name in (
        (budget_app, "budget"),
        (rate_app, "ratelimit"),
        (provider_app, "provider"),
        (token_app, "token"),
    ):
        admin_app.add_typer(sub, name=name)
