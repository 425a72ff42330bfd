"""`python -m ccgate.gateway --db URL --host H --port P`: run one gateway process in the foreground.

`ccgate gateway serve` runs the same `serve` (and starts several of these with `--workers`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from typing import Any

from ccgate import env
from ccgate.errors import CcgateError
from ccgate.proxy.serving import run_fast as run

YOUNG_GC_THRESHOLD = 10_000
DEFAULT_PORT = 8788


async def serve(settings: Any, host: str, port: int, *, port_file: str | None = None, reuse_port: bool = False) -> int:
    from aiohttp import web

    from ccgate.gateway.app import create_app, create_runner

    app = create_app(settings)
    runner = create_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        import errno

        in_use = exc.errno == errno.EADDRINUSE
        raise CcgateError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="another program uses that port: pick another --port"
            if in_use
            else "check --host: an address of this machine, 127.0.0.1, or 0.0.0.0 for every interface",
        ) from exc
    # what exists now (the price catalog, aiohttp, ccgate) lives as long as the process: keep it out of the
    # collector's scans, which otherwise pause a request ~25 ms now and then
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
    addresses = runner.addresses
    actual = int(addresses[0][1]) if addresses else port
    logging.getLogger("ccgate.gateway").info(
        "listening on http://%s:%d (pid %d, instance %s)", host, actual, os.getpid(), settings.instance_id
    )
    if port_file:
        from pathlib import Path

        def write_port(path: Path) -> None:
            partial = path.with_name(path.name + ".tmp")
            partial.write_text(str(actual))
            partial.replace(path)

        await asyncio.to_thread(write_port, Path(port_file))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get(env.LOG_LEVEL, "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    from ccgate.gateway.app import GatewaySettings

    parser = argparse.ArgumentParser(prog="python -m ccgate.gateway")
    parser.add_argument("--db", required=True, help="sqlite:///FILE or postgresql://USER@HOST/DB")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--migrate", action="store_true", help="apply pending migrations first")
    parser.add_argument("--reservation-ttl", type=float, default=30.0, help="seconds a dead instance's holds last")
    parser.add_argument("--key-cache", type=float, default=2.0, help="seconds a key's state is trusted")
    parser.add_argument("--max-body-mb", type=int, default=64, help="largest request body accepted")
    parser.add_argument("--max-reply-mb", type=int, default=64, help="largest provider reply or stream event read")
    parser.add_argument("--keep-days", type=int, default=90, help="days raw rows are kept; 0 keeps them all")
    parser.add_argument("--metrics-per-key", action="store_true", help="per-key series on /metrics")
    parser.add_argument("--allow-private-webhooks", action="store_true", help="webhooks may post to private hosts")
    parser.add_argument(
        "--trusted-proxy", action="append", default=[], help="CIDR whose X-Forwarded-For (or Forwarded) is trusted"
    )
    parser.add_argument("--reuse-port", action="store_true", help="share the port with other workers")
    parser.add_argument("--port-file", default=None, help="write the bound port here once listening (tests)")
    args = parser.parse_args(argv)
    configure_logging()
    settings = GatewaySettings(
        db_url=args.db,
        migrate=args.migrate,
        reservation_ttl_seconds=args.reservation_ttl,
        key_cache_seconds=args.key_cache,
        metrics_per_key=args.metrics_per_key,
        keep_days=args.keep_days,
        max_body_mb=args.max_body_mb,
        max_reply_mb=args.max_reply_mb,
        allow_private_webhooks=args.allow_private_webhooks,
        trusted_proxies=tuple(args.trusted_proxy),
    )
    try:
        return int(run(serve(settings, args.host, args.port, port_file=args.port_file, reuse_port=args.reuse_port)))
    except CcgateError as error:
        sys.stderr.write(f"ccgate gateway: error: {error.full_message()}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
