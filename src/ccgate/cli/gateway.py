"""`ccgate gateway serve|migrate|admin|report`: the org side."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import typer

from ccgate.cli._app import AppContext, ctx

if TYPE_CHECKING:
    from ccgate.storage.gateway.migrate import MigrationStatus

gateway_app = typer.Typer(
    help="The org gateway: serve it, upgrade its database, administer it, report on it.", no_args_is_help=True
)

_TRUSTED_PROXY_OPTION = typer.Option(
    None,
    "--trusted-proxy",
    help="CIDR of a load balancer in front of the gateway (repeat): X-Forwarded-For (or Forwarded) from it names "
    "the client.",
)
DB_HELP = "sqlite:///FILE (default: gateway.db in ccgate's data dir) or postgresql://USER[:PASSWORD]@HOST/DB"


def _db_url(app_ctx: AppContext, db: str | None) -> str:
    from urllib.parse import urlsplit

    if db is None:
        return f"sqlite://{app_ctx.paths.data_dir / 'gateway.db'}"
    scheme = urlsplit(db).scheme
    if scheme in ("postgresql", "postgres"):
        import importlib.util

        if importlib.util.find_spec("asyncpg") is None:
            app_ctx.fail("the gateway needs the asyncpg driver for PostgreSQL", hint="pip install 'ccgate[postgres]'")
    elif scheme != "sqlite":
        app_ctx.fail(f"--db must be a sqlite:/// or postgresql:// URL, not {scheme or db!r}", hint=DB_HELP)
    return db


@gateway_app.command("serve")
def serve(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8788, "--port", min=0, max=65535, help="Port to listen on."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Processes sharing the port (PostgreSQL only)."),
    migrate: bool = typer.Option(False, "--migrate", help="Apply pending database migrations before serving."),
    metrics_per_key: bool = typer.Option(
        False, "--metrics-per-key", help="Also series per virtual key on /metrics (one per developer)."
    ),
    keep_days: int = typer.Option(
        90, "--keep-days", min=0, help="Days raw request rows are kept (then rolled up); 0 keeps them all."
    ),
    max_body_mb: int = typer.Option(64, "--max-body-mb", min=1, max=1024, help="Largest request body accepted."),
    max_reply_mb: int = typer.Option(
        64, "--max-reply-mb", min=1, max=4096, help="Largest provider reply, or single stream event, read into memory."
    ),
    allow_private_webhooks: bool = typer.Option(
        False,
        "--allow-private-webhooks",
        help="Let budget-alert webhooks post to loopback, private and link-local addresses (refused by default).",
    ),
    trusted_proxy: list[str] | None = _TRUSTED_PROXY_OPTION,
) -> None:
    """Serve the org gateway: Claude Code and developers' sidecars connect with virtual keys.

    Environment: CCGATE_GATEWAY_ADMIN_TOKEN is the first admin token (for /admin and `gateway admin`).
    CCGATE_GATEWAY_SECRET_KEY encrypts the provider keys stored in the database; the gateway refuses to start
    without it once any is stored. Make one with
    `python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'` and keep it safe:
    stored provider keys cannot be read without it. CCGATE_<PROVIDER>_API_KEY and _BASE_URL override a
    provider's stored key and address, as for the sidecar.
    """
    app_ctx = ctx()
    url = _db_url(app_ctx, db)
    proxies = _trusted_proxies(trusted_proxy or [])
    if url.startswith("sqlite:") and workers > 1:
        app_ctx.fail(
            "--workers above 1 needs PostgreSQL: SQLite has one writer, and each worker keeps its own connection",
            hint="use --db postgresql://... for several workers or instances, or drop --workers",
        )
    if workers > 1 and port == 0:
        app_ctx.fail("--workers needs a fixed --port (the workers share it)", hint="give e.g. --port 8788")
    if migrate or workers > 1:
        _check_or_migrate(url, migrate=migrate)
    from ccgate.gateway.__main__ import configure_logging
    from ccgate.gateway.__main__ import serve as serve_gateway
    from ccgate.proxy.serving import run_fast as run

    configure_logging()
    if workers == 1:
        from ccgate.gateway.app import GatewaySettings

        settings = GatewaySettings(
            db_url=url,
            environ=app_ctx.environ,
            migrate=migrate,
            metrics_per_key=metrics_per_key,
            keep_days=keep_days,
            max_body_mb=max_body_mb,
            max_reply_mb=max_reply_mb,
            allow_private_webhooks=allow_private_webhooks,
            trusted_proxies=proxies,
        )
        raise typer.Exit(run(serve_gateway(settings, host, port)))
    extra = [*(["--metrics-per-key"] if metrics_per_key else []), "--keep-days", str(keep_days)]
    extra += ["--max-body-mb", str(max_body_mb), "--max-reply-mb", str(max_reply_mb)]
    extra += ["--allow-private-webhooks"] if allow_private_webhooks else []
    extra += [arg for cidr in proxies for arg in ("--trusted-proxy", cidr)]
    raise typer.Exit(_run_workers(url, host, port, workers, extra))


def _trusted_proxies(given: list[str]) -> tuple[str, ...]:
    from ccgate.gateway.auth import parse_trusted_proxies

    return tuple(str(network) for network in parse_trusted_proxies(given))


def _run_workers(url: str, host: str, port: int, workers: int, extra: list[str]) -> int:
    """N processes on one port (SO_REUSEPORT); the kernel spreads connections. A signal stops them all.

    Their metrics go to one shared folder, so any worker's /metrics reports all of them.
    """
    import os
    import signal
    import subprocess
    import tempfile

    from ccgate.gateway.metrics import MULTIPROC_ENV

    metrics_dir = tempfile.TemporaryDirectory(prefix="ccgate-gateway-metrics-")
    env = {**os.environ, MULTIPROC_ENV: metrics_dir.name}
    command = [sys.executable, "-m", "ccgate.gateway", "--db", url, "--host", host, "--port", str(port), *extra]
    children = [subprocess.Popen([*command, "--reuse-port"], env=env) for _ in range(workers)]

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    metrics_dir.cleanup()
    return max(codes)


def _check_or_migrate(url: str, *, migrate: bool) -> MigrationStatus:
    """Apply pending migrations (`migrate`), or refuse a database that needs them."""
    from ccgate.errors import CcgateError
    from ccgate.gateway.app import migration_problem
    from ccgate.storage.gateway.store import GatewayStore

    async def check() -> MigrationStatus:
        store = await GatewayStore.open(url, migrate_now=False, max_connections=1)
        try:
            if migrate:
                await store.apply_migrations()
            return await store.check_migrations()
        finally:
            await store.close()

    import asyncio  # here, not at the top: every command (and --help) loads this module

    status = asyncio.run(check())
    problem = migration_problem(status)
    if problem is not None:
        raise CcgateError(problem, hint="run `ccgate gateway migrate`, or serve with --migrate")
    return status


@gateway_app.command("migrate")
def migrate_cmd(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    check: bool = typer.Option(False, "--check", help="Only report; exit 1 if migrations are pending or failed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Upgrade the gateway's database (safe while the previous release still serves from it)."""
    from ccgate.gateway.app import migration_problem
    from ccgate.storage.gateway.store import GatewayStore

    app_ctx = ctx()
    url = _db_url(app_ctx, db)

    async def work() -> tuple[list[str], MigrationStatus]:
        store = await GatewayStore.open(url, migrate_now=False, max_connections=1)
        try:
            applied = [] if check else await store.apply_migrations()
            return applied, await store.check_migrations()
        finally:
            await store.close()

    import asyncio

    applied, status = asyncio.run(work())
    problem = migration_problem(status)
    if as_json:
        app_ctx.print_json(
            {
                "applied_now": applied,
                "applied": list(status.applied),
                "pending": list(status.pending),
                "failed": [name for name, _ in status.failed],
                "newer": list(status.unknown),
            }
        )
    elif problem is not None:
        app_ctx.warn(problem)
    elif applied:
        app_ctx.success(f"applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        app_ctx.success(f"the gateway database is up to date ({len(status.applied)} migration(s))")
    if status.unknown and not as_json:
        app_ctx.warn(f"the database has migrations from a newer release: {', '.join(status.unknown)}")
    if problem is not None:
        raise typer.Exit(1)


rollups_app = typer.Typer(help="The gateway's hourly roll-ups that reports read.", no_args_is_help=True)
gateway_app.add_typer(rollups_app, name="rollups")


@rollups_app.command("rebuild")
def rollups_rebuild(
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    since: str | None = typer.Option(
        None, "--since", help="First UTC day or time to recompute (YYYY-MM-DD or ISO-8601; default: all)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Recompute the hourly roll-ups from the raw request rows (e.g. after an older release wrote rows beside
    this one). Needs the database itself (whoever can run it administers the gateway); audited."""
    import asyncio
    import getpass
    from datetime import UTC, datetime

    from ccgate.core.records import to_iso
    from ccgate.storage.gateway.store import GatewayStore

    app_ctx = ctx()
    url = _db_url(app_ctx, db)
    start: datetime | None = None
    if since is not None:
        try:
            start = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            app_ctx.fail(f"--since {since!r} is not a date or time", hint="use YYYY-MM-DD or 2026-12-01T10:00Z")
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
    _check_or_migrate(url, migrate=False)

    async def work() -> tuple[datetime | None, int]:
        store = await GatewayStore.open(url, migrate_now=False, max_connections=1)
        try:
            return await store.rebuild_rollups(since=start, actor=f"cli:{getpass.getuser()}")
        finally:
            await store.close()

    first, count = asyncio.run(work())
    if as_json:
        app_ctx.print_json({"since": None if first is None else to_iso(first), "hourly_rows": count})
    else:
        where = "all hours" if first is None else f"hours from {to_iso(first)}"
        app_ctx.success(f"rebuilt the hourly roll-ups for {where}: {count} row(s)")


def register(app: typer.Typer) -> None:
    from ccgate.cli import gateway_admin

    gateway_admin.register(gateway_app)
    app.add_typer(gateway_app, name="gateway")
