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
def stop(
    force: bool = typer.Option(
        False, "--force", help="Stop even when requests the ledger refused cannot be saved anywhere (they are lost)."
    ),
) -> None:
    """Stop the sidecar; in-flight requests finish first, and requests the ledger refused are saved for the next
    start."""

    from ccgate.sidecar.process import control_request, home_id, ledger_write_problem, running_sidecar, stop_sidecar
    from ccgate.storage import spill

    app_ctx = ctx()
    paths = app_ctx.paths
    # rows only in the sidecar's memory survive a stop only in a spill file: refuse to stop when none can be written
    # now (freeing disk space gets them written, stopping would lose them) — `--force` accepts the loss
    running = running_sidecar(paths)
    details = control_request(paths, "GET", "/_ccgate/status?spill_check=1", timeout=20.0) if running else None
    problem = ledger_write_problem(details)
    unsaved = problem.unsaved if problem else 0
    spill_ok = (details or {}).get("ledger_writes", {}).get("spill_ok") is not False
    if unsaved and not spill_ok and not force:
        app_ctx.fail(
            f"{unsaved} request(s) wait in the sidecar's memory because the ledger cannot be written "
            f"({problem.last_error if problem else 'unknown error'}), and no spill location can take them now: "
            "stopping would lose them",
            hint="free disk space (they are written within a second), or `ccgate sidecar stop --force` to lose them",
        )
    pid = stop_sidecar(paths)
    if pid is None:
        app_ctx.info("sidecar is not running")
        return
    dirs = spill.spill_dirs(paths.runtime_dir, home_id(paths), app_ctx.environ)
    report = spill.read_report(dirs, pid) or {}
    lost = report.get("lost") if isinstance(report.get("lost"), int) else (unsaved if unsaved else 0)
    spilled = report.get("spilled") if isinstance(report.get("spilled"), int) else 0
    if lost:
        message = f"sidecar stopped (pid {pid}), but {lost} request(s) it could not write to the ledger are lost"
        app_ctx.fail(message, hint="they are missing from `ccgate cost` and budgets; `ccgate sidecar logs` says why")
    app_ctx.success(f"sidecar stopped (pid {pid})")
    if spilled:
        where = report.get("spill_file") or "a spill file"
        app_ctx.warn(
            f"{spilled} request(s) the ledger refused are saved in {where}; the next sidecar start writes them"
        )


@sidecar_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Is the sidecar running, on which port, and what is it doing."""
    from ccgate.sidecar.process import control_request, ledger_write_problem, running_sidecar

    app_ctx = ctx()
    info = running_sidecar(app_ctx.paths)
    details = control_request(app_ctx.paths, "GET", "/_ccgate/status") if info else None
    providers = details.get("providers") if details else None
    if isinstance(providers, dict):  # key fingerprints are for comparing (`doctor`, `launch`), not for showing
        for view in providers.values():
            if isinstance(view, dict):
                view.pop("key_fingerprint", None)
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
        app_ctx.warn(problem.message)
        if problem.hint:
            app_ctx.info(f"  hint: {problem.hint}")


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
