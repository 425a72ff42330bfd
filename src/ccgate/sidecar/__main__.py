"""`python -m ccgate.sidecar`: run the sidecar in the foreground (`ccgate sidecar start` detaches it)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys

from ccgate import env
from ccgate.errors import CcgateError
from ccgate.proxy.serving import run_fast as _run

# Allocations (net of frees) between young-generation collections; Python's default is 700.
YOUNG_GC_THRESHOLD = 10_000


async def serve(port: int | None) -> int:
    from aiohttp import web

    from ccgate.local.config_file import load_config
    from ccgate.local.paths import resolve_paths
    from ccgate.sidecar.app import create_app, create_runner
    from ccgate.sidecar.connections import raise_open_file_limit
    from ccgate.sidecar.process import (
        configured_port,
        ensure_token,
        hold_instance_lock,
        remove_run_files,
        write_run_files,
    )

    paths = resolve_paths().ensure()
    raised = raise_open_file_limit()
    if raised is not None:
        logging.getLogger("ccgate.sidecar").info("open-file limit raised from %d to %d", *raised)
    instance = hold_instance_lock(paths)  # before the ledger: one sidecar per home at a time
    config = load_config(paths.config_file)
    if port is None:
        port = configured_port(config.sidecar.port, os.environ)
    token = ensure_token(paths)
    app = create_app(paths, config, token=token)
    runner = create_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, config.sidecar.host, port, reuse_address=True, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise CcgateError(
            f"cannot listen on {config.sidecar.host}:{port}: {exc.strerror}",
            hint="another program uses that port: set `sidecar.port` in config.toml or CCGATE_SIDECAR_PORT",
        ) from exc
    # What exists now (the price catalog, aiohttp, ccgate itself) lives as long as the process: moving it out of
    # the collector's reach spares every full collection ~25 ms of scanning, a latency spike under load.
    gc.collect()
    gc.freeze()
    # Requests in flight hold thousands of container objects; at the default 700 the young generation was
    # collected every few requests, ~13 µs of collector time per request at c=32. Reference counting frees
    # almost everything a request makes, so collecting less often mostly finds it already gone.
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
    addresses = runner.addresses
    actual_port = int(addresses[0][1]) if addresses else port
    pid = os.getpid()
    write_run_files(paths, pid, actual_port)
    logging.getLogger("ccgate.sidecar").info(
        "listening on http://%s:%d (pid %d)", config.sidecar.host, actual_port, pid
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        # the run files go last: while requests drain, `status` still shows this sidecar, and a `launch` waits
        # for it to exit (the instance lock) instead of starting a second one
        await runner.cleanup()
        remove_run_files(paths, pid)
        instance.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ccgate.sidecar")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    from ccgate.local.paths import resolve_paths
    from ccgate.sidecar import logs

    logs.configure(os.environ.get(env.LOG_LEVEL, "INFO").upper(), resolve_paths().log_file)
    try:
        return int(_run(serve(args.port)))
    except CcgateError as error:
        sys.stderr.write(f"ccgate sidecar: error: {error.full_message()}\n")
        return 1
    except OSError as exc:  # its run files on a full disk or a read-only folder: one line that `start` can show
        from pathlib import Path

        from ccgate.local.paths import resolve_paths
        from ccgate.sidecar.process import file_error

        failure = file_error(exc, "write", Path(exc.filename) if exc.filename else resolve_paths().runtime_dir)
        sys.stderr.write(f"ccgate sidecar: error: {failure.full_message()}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
