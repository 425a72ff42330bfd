"""The one home of aiohttp's client side: a ClientSession tuned for long streams and verbatim passthrough."""

from __future__ import annotations

import aiohttp

# Headers that belong to one hop, or that ccgate itself sets, and must not be forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        # aiohttp's server has already decompressed a compressed request body: what is sent on is plain
        "content-encoding",
    }
)
RESPONSE_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)


def create_client_session(*, connect_timeout: float = 15.0, read_timeout: float = 600.0) -> aiohttp.ClientSession:
    """No total timeout (streams run for minutes), no connection cap, no compression to undo, no cookie jar.

    We ask upstream for `identity` so bytes pass through as sent; if a provider compresses anyway, aiohttp
    decompresses and the response headers drop `content-encoding`, so the meter always sees plain SSE.
    """
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
    return aiohttp.ClientSession(
        connector=connector,
        # a proxy keeps no cookies: one client's upstream cookie (a load balancer's, say) must never ride along
        # on another's request, and matching a jar on every request is wasted work
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=timeout,
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        read_bufsize=2**17,
    )


def with_read_timeout(timeout: aiohttp.ClientTimeout, sock_read: float) -> aiohttp.ClientTimeout:
    """The session's timeouts with another limit on silence between reads (one request's stream idle limit)."""
    return aiohttp.ClientTimeout(
        total=timeout.total,
        connect=timeout.connect,
        sock_connect=timeout.sock_connect,
        sock_read=sock_read,
        ceil_threshold=timeout.ceil_threshold,
    )
