"""The yardstick: a minimal aiohttp passthrough proxy (no auth, no metering, no ledger), for the benchmark.

python benchmarks/passthrough.py --upstream http://127.0.0.1:PORT --port-file F
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

DROP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"})
DROP_BACK = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"})
SESSION = web.AppKey("session", aiohttp.ClientSession)


def create_app(upstream: str) -> web.Application:
    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=600)
        app[SESSION] = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP}
        url = upstream + request.rel_url.path_qs
        async with request.app[SESSION].request(request.method, url, data=body, headers=headers) as up:
            back = {k: v for k, v in up.headers.items() if k.lower() not in DROP_BACK}
            response = web.StreamResponse(status=up.status, headers=back)
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(upstream: str, port_file: Path) -> None:
    runner = web.AppRunner(create_app(upstream.rstrip("/")), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
    port_file.with_suffix(".tmp").write_text(str(runner.addresses[0][1]))
    os.replace(port_file.with_suffix(".tmp"), port_file)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    try:  # the sidecar's own event loop, so the comparison is between the two proxies, not two loops
        import uvloop
    except ImportError:
        asyncio.run(serve(args.upstream, args.port_file))
    else:
        uvloop.run(serve(args.upstream, args.port_file))
