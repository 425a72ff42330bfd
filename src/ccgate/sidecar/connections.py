"""Connection hygiene: sockets that never send a request, or never show the local token, do not pile up.

aiohttp (3.14) closes a connection whose request head is incomplete when its keep-alive timer runs out, and
starts that timer when the connection opens; but that one timer is also the idle keep-alive limit, which wants
to be long, and older releases did not start it at connect. So the sidecar adds a shorter deadline for a
connection's first request head, and a cap on connections that have not yet sent a request carrying the local
token: past the cap the oldest of them is closed, so a flood of idle sockets cannot keep a real client (whose
request follows its connect within milliseconds) out.

aiohttp has no public per-connection hook: its low-level `web.Server` is told of every connection through
`connection_made` / `connection_lost`, and `GuardedRunner` wraps those two on the server it makes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("ccgate.sidecar")


class ConnectionGuard:
    """Tracks connections that have sent no request head yet, and those without a token-bearing request."""

    def __init__(self, *, header_timeout: float, max_unauthenticated: int) -> None:
        self.header_timeout = header_timeout
        self.max_unauthenticated = max_unauthenticated
        self.closed_slow = 0  # no complete request head in time
        self.closed_crowded = 0  # the oldest without the token, when over the cap
        self._open: set[RequestHandler] = set()
        self._waiting: dict[RequestHandler, asyncio.TimerHandle] = {}
        # insertion order is age: the first key is the oldest
        self._unauthenticated: dict[RequestHandler, None] = {}

    def stats(self) -> dict[str, int]:
        return {
            "open": len(self._open),
            "unauthenticated": len(self._unauthenticated),
            "closed_slow": self.closed_slow,
            "closed_crowded": self.closed_crowded,
        }

    def opened(self, handler: RequestHandler) -> None:
        self._open.add(handler)
        loop = asyncio.get_running_loop()
        self._waiting[handler] = loop.call_later(self.header_timeout, self._expire, handler)
        self._unauthenticated[handler] = None
        while len(self._unauthenticated) > self.max_unauthenticated:
            self.closed_crowded += 1
            log.warning(
                "more than %d connections without the local token: closing the oldest", self.max_unauthenticated
            )
            self._close(next(iter(self._unauthenticated)))

    def lost(self, handler: RequestHandler) -> None:
        self._forget(handler)

    def request_seen(self, handler: RequestHandler | None, *, authenticated: bool) -> None:
        """A request head arrived on this connection (and carried the local token, or not)."""
        if handler is None:
            return
        timer = self._waiting.pop(handler, None)
        if timer is not None:
            timer.cancel()
        if authenticated:
            self._unauthenticated.pop(handler, None)

    def _expire(self, handler: RequestHandler) -> None:
        if self._waiting.pop(handler, None) is not None:
            self.closed_slow += 1
            log.info("closed a connection that sent no complete request within %g s", self.header_timeout)
            self._close(handler)

    def _close(self, handler: RequestHandler) -> None:
        self._forget(handler)
        handler.force_close()

    def _forget(self, handler: RequestHandler) -> None:
        self._open.discard(handler)
        timer = self._waiting.pop(handler, None)
        if timer is not None:
            timer.cancel()
        self._unauthenticated.pop(handler, None)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server tells a ConnectionGuard about every connection opening and closing."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    async def setup(self) -> None:
        """A start that fails part-way (a config naming an unknown provider) stops what had started: the cleanup
        contexts that completed run their exits, so no ledger-writer thread or session outlives the failure."""
        try:
            await super().setup()
        except BaseException:
            await self.cleanup()
            raise

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        made, lost, guard = server.connection_made, server.connection_lost, self.guard

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            guard.opened(handler)

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            guard.lost(handler)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        return server


def raise_open_file_limit() -> tuple[int, int] | None:
    """The soft RLIMIT_NOFILE up to the hard one: every connection is a descriptor, and 1,024 is a common
    default. Returns (old, new) when it changed."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # an unlimited hard limit (macOS) is not a value setrlimit takes for the soft one; 64K is plenty
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft >= target:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        return None
    return soft, target
