"""`ccgate login URL`, `logout`, `whoami`, `sync`: the developer's side of an org gateway."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer

from ccgate.cli._app import AppContext, ctx, notify_reload

if TYPE_CHECKING:
    from ccgate.core.org import Identity


def login(
    url: str = typer.Argument(..., help="The gateway's base URL, e.g. https://gateway.example.com"),
    key: str | None = typer.Option(
        None, "--key", help="The virtual key (sk-cg-...); `-` reads it from stdin. Without it: a hidden prompt."
    ),
    allow_http: bool = typer.Option(
        False, "--allow-http", help="Allow plain http:// to a host other than this machine (the key travels in clear)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print who you are as one JSON object (as `whoami --json`)."),
) -> None:
    """Log in to your org's ccgate gateway: the key is checked there, then kept in the OS keyring."""
    from ccgate.client.org import check_url
    from ccgate.client.org import login as do_login

    app_ctx = ctx()
    check_url(url, allow_http=allow_http)  # before asking for the key: nothing to type for a URL we refuse
    if key is not None and key != "-" and sys.stdin is not None and sys.stdin.isatty():
        app_ctx.warn("a key on the command line is visible to other users in `ps`; leave out --key to be asked")
    value = _read_key(key)
    identity = do_login(app_ctx.paths, app_ctx.config, url, value, allow_http=allow_http)
    notify_reload(app_ctx)
    if as_json:
        app_ctx.print_json(_identity_json(app_ctx, identity))
        return
    app_ctx.success(f"logged in to {identity.gateway}")
    _print_identity(app_ctx, identity)


def _read_key(option: str | None) -> str:
    """`--key KEY`, `--key -` (first line of stdin), or a hidden prompt (stdin when it is not a terminal)."""
    stdin = sys.stdin
    if option is not None and option != "-":
        return option
    if stdin is None:
        return ""
    if option == "-" or not stdin.isatty():
        try:
            return stdin.readline().strip()
        except (OSError, UnicodeDecodeError):
            return ""
    try:
        return str(typer.prompt("Virtual key", hide_input=True)).strip()
    except typer.Abort:
        return ""


def logout() -> None:
    """Forget the org gateway: its URL (config) and the virtual key (keyring)."""
    from ccgate.client.org import logout as do_logout

    app_ctx = ctx()
    gateway, waiting = do_logout(app_ctx.paths, app_ctx.config)
    notify_reload(app_ctx)
    if gateway is None:
        app_ctx.info("not logged in to an org gateway; removed any stored virtual key")
        return
    app_ctx.success(f"logged out of {gateway}")
    if waiting:
        app_ctx.warn(
            f"{waiting} request(s) had not been synced to it; log in again and run `ccgate sync` to deliver them"
        )


def whoami(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Who you are at the org gateway: key, team, mode, org budgets, and requests waiting to be synced."""
    from ccgate.client.gateway_api import GatewayUnreachableError
    from ccgate.client.org import local_status
    from ccgate.client.org import whoami as do_whoami

    app_ctx = ctx()
    try:
        identity = do_whoami(app_ctx.paths, app_ctx.config)
    except GatewayUnreachableError:
        # what this machine knows still helps: nothing is lost while the gateway is away
        state, backlog = local_status(app_ctx.paths)
        last = state.last_sync_at if state and state.last_sync_at else "never"
        app_ctx.info(f"{backlog.rows} request(s) wait here to be synced (last synced {last}); none are lost")
        raise
    if as_json:
        app_ctx.print_json(_identity_json(app_ctx, identity))
        return
    _print_identity(app_ctx, identity, out=True)


def _identity_json(app_ctx: AppContext, identity: Identity) -> dict[str, Any]:
    from ccgate.client.org import local_status
    from ccgate.storage.reports import usd_string

    state, backlog = local_status(app_ctx.paths)
    return {
        "gateway": identity.gateway,
        "key": identity.key_prefix,
        "key_name": identity.key_name,
        "team": identity.team,
        "customer": identity.customer,
        "mode": identity.mode,
        "expires_at": identity.expires_at,
        "budgets": [
            {
                "level": budget.level,
                "label": budget.label,
                "period": budget.period,
                "limit_usd": usd_string(budget.limit_nanos),
                "spent_usd": usd_string(budget.spent_nanos),
                "left_usd": usd_string(budget.left_nanos),
                "resets_at": budget.resets_at,
            }
            for budget in identity.budgets
        ],
        "unsynced": backlog.rows,
        "unsynced_cost_usd": usd_string(backlog.cost_nanos),
        "rejected": backlog.rejected,
        "last_synced_at": state.last_sync_at if state else None,
        # the gateway's word: when it last took a batch from this key, from this machine or another
        "gateway_last_sync_at": identity.last_sync_at,
        "rotated": identity.rotated,
        "grace_until": identity.grace_until,
        "notice": identity.notice,
    }


def _print_identity(app_ctx: AppContext, identity: Identity, *, out: bool = False) -> None:
    from ccgate.client.org import local_status
    from ccgate.core.records import format_usd

    say = app_ctx.echo if out else app_ctx.info
    who = f"{identity.key_name} ({identity.key_prefix or 'key'}…)"
    team = identity.team or "no team"
    if identity.customer:
        team += f", {identity.customer}"
    say(f"key:     {who}")
    say(f"team:    {team}")
    what = (
        "requests go through the gateway with the org's provider keys"
        if identity.mode == "proxy"
        else "your own credentials; usage is reported to the gateway"
    )
    say(f"mode:    {identity.mode} — {what}")
    if identity.expires_at:
        say(f"expires: {identity.expires_at}")
    if not identity.budgets:
        say("budgets: none set by the org")
    for budget in identity.budgets:
        resets = f", resets {budget.resets_at}" if budget.resets_at else ""
        say(
            f"budget:  {budget.name} {budget.period}: {format_usd(budget.spent_nanos)} of "
            f"{format_usd(budget.limit_nanos)} spent, {format_usd(budget.left_nanos)} left{resets}"
        )
    state, backlog = local_status(app_ctx.paths)
    last = state.last_sync_at if state and state.last_sync_at else "never"
    say(f"sync:    {backlog.rows} request(s) waiting, last synced {last}")
    say(f"         the gateway last took a batch from this key: {identity.last_sync_at or 'never'}")
    if backlog.rejected:
        say(f"         {backlog.rejected} request(s) refused by the gateway (`ccgate sync` shows why)")
    if identity.notice:
        app_ctx.warn(identity.notice)


def sync(
    since: str | None = typer.Option(
        None, "--since", help="Also send requests from this date on (YYYY-MM-DD), including ones from before login."
    ),
    as_json: bool = typer.Option(False, "--json", help='Print {"sent", "known", "rejected"} as JSON.'),
    batch_rows: int = typer.Option(500, "--batch-rows", min=1, max=1000, hidden=True),
) -> None:
    """Send this machine's metered requests to the org gateway now (the sidecar also does it in the background)."""
    from ccgate.client.org import sync as do_sync

    app_ctx = ctx()
    start = _since(app_ctx, since)
    if as_json:
        result = do_sync(app_ctx.paths, app_ctx.config, since=start, batch_rows=batch_rows)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(
            TextColumn("syncing"), BarColumn(), MofNCompleteColumn(), console=app_ctx.err, transient=True
        ) as bar:
            task = bar.add_task("sync", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = do_sync(app_ctx.paths, app_ctx.config, since=start, progress=progress, batch_rows=batch_rows)
    if as_json:
        app_ctx.print_json(
            {
                "sent": result.sent,
                "known": result.known,
                "rejected": len(result.rejected),
                "rejections": [{"id": row_id, "why": why} for row_id, why in result.rejected],
            }
        )
        return
    app_ctx.success(f"{result.sent} sent, {result.known} already known, {len(result.rejected)} rejected")
    for row_id, why in result.rejected[:20]:
        app_ctx.warn(f"rejected {row_id}: {why}")
    if len(result.rejected) > 20:
        app_ctx.info(f"... and {len(result.rejected) - 20} more; they are kept in the ledger and not sent again")


def _since(app_ctx: AppContext, text: str | None) -> datetime | None:
    if text is None:
        return None
    from ccgate.local.timezone import resolve_timezone

    try:
        day = datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        app_ctx.fail(f"--since {text!r} is not a date", hint="give it as YYYY-MM-DD")
    return day.replace(tzinfo=resolve_timezone(app_ctx.config.timezone, app_ctx.environ))


def register(app: typer.Typer) -> None:
    app.command("login")(login)
    app.command("logout")(logout)
    app.command("whoami")(whoami)
    app.command("sync")(sync)
