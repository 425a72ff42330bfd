"""`ccgate gateway admin ...` and `ccgate gateway report`: scripts and people over the gateway's admin API.

Thin: each command turns its options into one admin API call (`ccgate.client.admin_api`, standard library
HTTP, so no aiohttp here) and prints the answer as a table or, with `--json`, as the API's JSON. Budgets, rate
limits, providers and tokens are in `gateway_admin_policy`, `gateway report` in `gateway_report`; both use the
connection and output helpers here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ccgate import env
from ccgate.cli._app import ctx
from ccgate.errors import UserInputError

if TYPE_CHECKING:
    from ccgate.client.admin_api import AdminClient

URL_ENV = env.GATEWAY_URL
TOKEN_ENV = env.GATEWAY_ADMIN_TOKEN

admin_app = typer.Typer(
    help=f"Administer an org gateway over its admin API (URL from --url or {URL_ENV}; token from {TOKEN_ENV}, "
    "--token-file, or a prompt).",
    no_args_is_help=True,
)
customer_app = typer.Typer(help="Customers: the top of customer → team → key.", no_args_is_help=True)
team_app = typer.Typer(help="Teams: groups of developers' keys, under an optional customer.", no_args_is_help=True)
key_app = typer.Typer(help="Virtual keys `sk-cg-…`, one per developer (shown once).", no_args_is_help=True)
admin_app.add_typer(customer_app, name="customer")
admin_app.add_typer(team_app, name="team")
admin_app.add_typer(key_app, name="key")

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
    """The admin token, which must be printable ASCII: an HTTP header cannot carry anything else."""
    token = _find_token(token_file)
    if not token.isascii():
        where = str(token_file) if token_file is not None else TOKEN_ENV
        raise UserInputError(
            f"the admin token from {where} has characters other than ASCII letters, digits and punctuation",
            hint="copy the token exactly as `token create` printed it",
        )
    return token


def _find_token(token_file: Path | None) -> str:
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


def client_for(url: str | None, token_file: Path | None) -> AdminClient:
    from ccgate.client.admin_api import AdminClient

    base = url or ctx().environ.get(URL_ENV, "")
    if not base.strip():
        raise UserInputError("no gateway URL", hint=f"pass --url https://GATEWAY or set {URL_ENV}")
    return AdminClient(base, _read_token(token_file))


def client(tctx: typer.Context) -> AdminClient:
    conn = tctx.find_object(Connection) or Connection()
    return client_for(conn.url, conn.token_file)


def api_path(*parts: str) -> str:
    from ccgate.client.admin_api import name_path

    return "/" + name_path(*parts)


# --- output ----------------------------------------------------------------------------------------------------


def done(data: Any, as_json: bool, line: str) -> None:
    """A change's result: the API's JSON, or one confirmation line on stderr."""
    if as_json:
        ctx().print_json(data)
    else:
        ctx().success(line)


def show_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, Callable[[dict[str, Any]], Any]]]) -> None:
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


def field(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(name)


def usd_cell(name: str) -> Callable[[dict[str, Any]], Any]:
    def cell(row: dict[str, Any]) -> str | None:
        from decimal import Decimal

        from ccgate.core.records import format_usd, usd_to_nanos

        value = row.get(name)
        return None if value is None else format_usd(usd_to_nanos(Decimal(value)))

    return cell


def day_cell(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: None if row.get(name) is None else str(row[name])[:16].replace("T", " ")


def list_cell(name: str) -> Callable[[dict[str, Any]], Any]:
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


def moment_arg(text: str | None, *, end: bool = False) -> str | None:
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
    data = client(tctx).post("/customers", {"name": name})
    done(data, as_json, f"customer {name!r} created")


@customer_app.command("list")
def customer_list(tctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List customers."""
    data = client(tctx).get("/customers")
    if as_json:
        ctx().print_json(data)
        return
    show_table(data["customers"], [("customer", field("name")), ("created", day_cell("created_at"))])


@customer_app.command("delete")
def customer_delete(tctx: typer.Context, name: str, as_json: bool = JSON_OPTION) -> None:
    """Delete a customer (and its budgets); its teams must be moved or deleted first."""
    data = client(tctx).delete(api_path("customers", name))
    done(data, as_json, f"customer {name!r} deleted")


# --- teams -----------------------------------------------------------------------------------------------------

_ALLOW_MODEL_OPTION = typer.Option(None, "--allow-model", help="Allowed model (repeatable; default: all).")
_ALLOW_PROVIDER_OPTION = typer.Option(None, "--allow-provider", help="Allowed provider (repeatable).")
_REPLACE_MODELS_OPTION = typer.Option(None, "--allow-model", help="Allowed model (repeatable); replaces the list.")
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
    data = client(tctx).post("/teams", body)
    done(data, as_json, f"team {name!r} created" + (f" for customer {customer!r}" if customer else ""))


@team_app.command("list")
def team_list(
    tctx: typer.Context,
    customer: str | None = typer.Option(None, "--customer", help="Only this customer's teams."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List teams."""
    data = client(tctx).get("/teams", {"customer": customer})
    if as_json:
        ctx().print_json(data)
        return
    show_table(
        data["teams"],
        [
            ("team", field("name")),
            ("customer", field("customer")),
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
    data = client(tctx).patch(api_path("teams", name), body)
    done(data, as_json, f"team {name!r} updated")


@team_app.command("delete")
def team_delete(tctx: typer.Context, name: str, as_json: bool = JSON_OPTION) -> None:
    """Delete a team (and its budgets and rate limits)."""
    data = client(tctx).delete(api_path("teams", name))
    done(data, as_json, f"team {name!r} deleted")


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
    body: dict[str, Any] = {"team": team, "name": name, "mode": mode, "expires_at": moment_arg(expires, end=True)}
    if allow_model:
        body["allowed_models"] = allow_model
    if allow_provider:
        body["allowed_providers"] = allow_provider
    if tier:
        body["tier_overrides"] = _overrides(tier)
    data = client(tctx).post("/keys", body)
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
    data = client(tctx).get("/keys", {"team": team, "include_revoked": "true" if include_revoked else None})
    if as_json:
        ctx().print_json(data)
        return
    show_table(
        data["keys"],
        [
            ("key", field("name")),
            ("team", field("team")),
            ("mode", field("mode")),
            ("prefix", lambda r: r["key_prefix"] + "…"),
            ("models", list_cell("allowed_models")),
            ("expires", day_cell("expires_at")),
            ("revoked", day_cell("revoked_at")),
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
        body["expires_at"] = None if expires.strip().lower() == "never" else moment_arg(expires, end=True)
    if allow_model and all_models:
        raise UserInputError("--allow-model and --all-models contradict each other", hint="give one of them")
    if allow_model or all_models:
        body["allowed_models"] = allow_model or None
    if tier:
        body["tier_overrides"] = _overrides(tier)
    data = client(tctx).patch(api_path("keys", name), body)
    done(data, as_json, f"key {name!r} updated")


@key_app.command("revoke")
def key_revoke(tctx: typer.Context, name: str, as_json: bool = JSON_OPTION) -> None:
    """Revoke a key at once (and its rotated-out predecessor)."""
    data = client(tctx).post(api_path("keys", name, "revoke"))
    done(data, as_json, f"key {name!r} revoked")


@key_app.command("rotate")
def key_rotate(
    tctx: typer.Context,
    name: str,
    grace: str = typer.Option("1d", "--grace", help="How long the old key keeps working: 1h, 1d, 1w, or 0."),
    as_json: bool = typer.Option(False, "--json", help='Print {"id", "name", "team", "mode", "key"}.'),
) -> None:
    """Give a key a new secret (printed once); the old one works for the grace period."""
    data = client(tctx).post(api_path("keys", name, "rotate"), {"grace": grace})
    if as_json:
        ctx().print_json({field: data[field] for field in ("id", "name", "team", "mode", "key")})
        return
    ctx().echo(data["key"])  # alone on stdout: KEY=$(ccgate gateway admin key create ...)
    ctx().success(f"key {name!r} rotated; the old key works until {data['previous_valid_until']}")


# --- whoami and audit ------------------------------------------------------------------------------------------


@admin_app.command("whoami")
def whoami(tctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Check the admin token: its name, role and team."""
    data = client(tctx).get("/whoami")
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
    query = {"since": moment_arg(since), "actor": actor, "action": action, "limit": str(limit), "before": before}
    data = client(tctx).get("/audit", query)
    if as_json:
        ctx().print_json(data)
        return
    columns = [
        ("when", day_cell("at")),
        ("actor", field("actor")),
        ("action", field("action")),
        ("target", field("target")),
    ]
    show_table(data["entries"], columns)
    if data.get("next"):
        ctx().info(f"more: --before {data['next']}")


def register(gateway_app: typer.Typer) -> None:
    from ccgate.cli import gateway_admin_policy, gateway_report

    gateway_admin_policy.register(admin_app)
    gateway_app.add_typer(admin_app, name="admin")
    gateway_report.register(gateway_app)
