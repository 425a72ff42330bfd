"""`ccgate sidecar start|stop|status|logs`."""

from __future__ import annotations

import typer

from ccgate.cli._app import AppContext, ctx
from ccgate.cli.logs import MAX_LINES

sidecar_app = typer.Typer(help="Control the local sidecar process.", no_args_is_help=True)


@sidecar_app.command("start")
def start() -> None:
    """Start the sidecar in the background (or report the running one)."""
    from ccgate.sidecar.process import configured_port, ensure_sidecar

    app_ctx = ctx()
    port = configured_port(app_ctx.config.sidecar.port, app_ctx.environ)
    info, started = ensure_sidecar(app_ctx.paths, port=port, environ=app_ctx.environ)
    verb = "started" if started else "already running"
    app_ctx.success(f"sidecar {verb} on {info.url} (pid {info.pid})")


@sidecar_app.command("stop")
def stop() -> None:
    """Stop the sidecar; in-flight requests finish first."""
    from ccgate.sidecar.process import stop_sidecar

    app_ctx = ctx()
    pid = stop_sidecar(app_ctx.paths)
    if pid is None:
        app_ctx.info("sidecar is not running")
    else:
        app_ctx.success(f"sidecar stopped (pid {pid})")


@sidecar_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Is the sidecar running, on which port, and what is it doing."""
    from ccgate.sidecar.process import control_request, ledger_write_problem, running_sidecar

    app_ctx = ctx()
    info = running_sidecar(app_ctx.paths)
    details = control_request(app_ctx.paths, "GET", "/_ccgate/status") if info else None
    if as_json:
        app_ctx.print_json(
            {
                "running": info is not None,
                "url": info.url if info else None,
                "pid": info.pid if info else None,
                **({"status": details} if details else {}),
            }
        )
    elif info is None:
        app_ctx.info("sidecar is not running (`ccgate sidecar start` or `ccgate launch claude` starts it)")
        _warn_about_its_port(app_ctx)
        raise typer.Exit(3)
    else:
        extra = ""
        if details:
            extra = f", up {details.get('uptime_s')} s, {details.get('inflight')} in flight"
        app_ctx.out.print(f"sidecar running on {info.url} (pid {info.pid}{extra})")
        problem = ledger_write_problem(details)
        if problem is not None:
            app_ctx.warn(problem.message)
            app_ctx.info(f"  hint: {problem.hint}")
    if info is None and as_json:
        raise typer.Exit(3)


def _warn_about_its_port(app_ctx: AppContext) -> None:
    """What holds the port a sidecar would start on, when that stops it (another user's program, say)."""
    from rich.markup import escape

    from ccgate.errors import CcgateError
    from ccgate.sidecar.process import configured_port, instance_running, probe_port, read_token

    if instance_running(app_ctx.paths):
        return  # ours runs, just busy: the port is not the problem
    try:
        port = configured_port(app_ctx.config.sidecar.port, app_ctx.environ)
    except CcgateError:
        return
    problem = probe_port(port, read_token(app_ctx.paths)).problem(app_ctx.paths) if port else None
    if problem is not None:
        app_ctx.warn(escape(problem.message))
        if problem.hint:
            app_ctx.info(f"  hint: {escape(problem.hint)}")


@sidecar_app.command("logs")
def logs(
    lines: int = typer.Option(50, "-n", "--lines", min=0, max=MAX_LINES, help="How many lines from the end."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines."),
) -> None:
    """Show the sidecar's own log (start-up, errors, reloads)."""
    import time
    from collections import deque

    app_ctx = ctx()
    path = app_ctx.paths.log_file
    if not path.exists():
        app_ctx.info(f"no sidecar log yet ({path})")
        return
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in deque(handle, maxlen=lines):
            app_ctx.echo(line.rstrip("\n"))
        while follow:
            line = handle.readline()
            if line:
                app_ctx.echo(line.rstrip("\n"))
            else:
                time.sleep(0.3)


def register(app: typer.Typer) -> None:
    app.add_typer(sidecar_app, name="sidecar")
