"""What the sidecar and the gateway both need to serve the proxy: the event loop and the upstream session."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import web


def run_fast(main: Coroutine[Any, Any, int]) -> int:
    """uvloop where it is installed (a dependency on Linux and macOS): less CPU per proxied request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def upstream_session_context(
    key: web.AppKey[aiohttp.ClientSession],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that opens one ClientSession for every upstream request of the app, under `key`."""

    async def upstream_session(app: web.Application) -> AsyncIterator[None]:
        from ccgate.proxy.upstream import create_client_session

        # the proxy core keeps aiohttp's User-Agent off its requests itself (`user_agent_skip`)
        session = create_client_session(add_user_agent=True)
        app[key] = session
        try:
            yield
        finally:
            await session.close()

    return upstream_session


@contextlib.asynccontextmanager
async def background(job: Coroutine[Any, Any, None] | None) -> AsyncIterator[None]:
    """Run `job` as a task while the block runs (a server's cleanup context), then cancel it and wait for it to end.

    None runs nothing, for a job a setting turned off."""
    task = asyncio.create_task(job) if job is not None else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
