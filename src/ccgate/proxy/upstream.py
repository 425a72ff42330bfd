"""The one home of aiohttp's client side: a ClientSession tuned for long streams and verbatim passthrough, and
the one place that turns its exceptions into ccgate's upstream errors (`upstream_errors`)."""

from __future__ import annotations

import asyncio
import enum
import functools
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING

import aiohttp

from ccgate import env
from ccgate.core.providers import redact_url
from ccgate.errors import UpstreamError, UpstreamTimeoutError

if TYPE_CHECKING:
    from ccgate.core.providers import ProviderSpec

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
        # an upstream's redirect is relayed as its answer, not as a place to go: the client would follow it with
        # its credentials and, under `launch`, the local token in its custom headers
        "location",
    }
)


# aiohttp adds its own User-Agent to a request that has none; a proxy sends the client's, or none. Passed per
# request, and only to a request without one: a session-wide skip list costs every request ~5 µs of header copies.
NO_USER_AGENT = ("User-Agent",)


def user_agent_skip(headers: Mapping[str, str]) -> tuple[str, ...] | None:
    """`skip_auto_headers` for a request with these headers: none when they carry a User-Agent."""
    for name in headers:
        if name.lower() == "user-agent":
            return None
    return NO_USER_AGENT


def create_client_session(
    *, connect_timeout: float = 15.0, read_timeout: float = 600.0, add_user_agent: bool = False
) -> aiohttp.ClientSession:
    """No total timeout (streams run for minutes), no connection cap, no compression to undo, no cookie jar.

    No User-Agent of aiohttp's unless `add_user_agent`: the proxy's session says so request by request
    (`user_agent_skip`), so requests that carry the client's own skip no header lists.

    Every request through it passes `allow_redirects=False` (aiohttp has no session-wide switch): a redirect
    followed would carry the provider key or the client's credentials (`x-api-key`) to whatever host the
    upstream names, and a proxy relays a 3xx rather than acting on it.

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
        skip_auto_headers=None if add_user_agent else NO_USER_AGENT,
        read_bufsize=2**17,
    )


@functools.lru_cache(maxsize=16)
def with_read_timeout(timeout: aiohttp.ClientTimeout, sock_read: float) -> aiohttp.ClientTimeout:
    """The session's timeouts with another limit on silence between reads (one request's stream idle limit).

    Kept per (timeouts, limit): every stream asks, and the values are frozen."""
    return aiohttp.ClientTimeout(
        total=timeout.total,
        connect=timeout.connect,
        sock_connect=timeout.sock_connect,
        sock_read=sock_read,
        ceil_threshold=timeout.ceil_threshold,
    )


# What aiohttp's client raises when a provider fails: refused or reset connections, broken replies, its own
# timeouts (a ServerTimeoutError is a TimeoutError too), and asyncio's timeouts around its calls.
FAILURES: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError)


class Stage(enum.Enum):
    """Where in an exchange with the provider a failure happened: it decides what the failure means."""

    CONNECT = "connect"  # sending the request and waiting for the response headers
    FIRST_EVENT = "first_event"  # a stream's first bytes, before the client has seen anything
    BODY = "body"  # reading a whole (non-streamed or error) reply
    STREAM = "stream"  # a stream the client is already receiving


class UpstreamBroke(UpstreamError):
    """The upstream failed before any byte reached the client: the next target may still be tried."""


class UpstreamSilent(UpstreamBroke, UpstreamTimeoutError):
    """A stream's upstream sent headers but no first event in time: as failover-able as a broken one."""


class StreamCut(UpstreamError):
    """A stream the client already receives ended early: the provider went silent or dropped the connection.
    Too late to fail over or to change the status; the core ends the stream with an error event."""


class ReplyTooLarge(UpstreamError):
    """A whole (non-streamed or error) reply larger than the limit: read no further, the connection dropped.
    A broken or hostile upstream must not make the sidecar (or the gateway) buffer gigabytes."""

    def __init__(self, message: str, *, seen: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.seen = seen  # bytes of the reply read (or announced) before it was dropped


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


async def read_reply(
    upstream: aiohttp.ClientResponse, spec: ProviderSpec, limit: int, *, setting: str = "sidecar.max_reply_mb"
) -> bytes:
    """A whole reply of at most `limit` bytes (after decompression, should a provider compress anyway); a broken
    one is `UpstreamBroke` (failover-able), a larger one `ReplyTooLarge`: told by its content-length when that
    already says so, else once the bytes read pass the limit."""
    label = spec.label or f"upstream {spec.name}"
    where = redact_url(spec.base_url)

    def too_large(seen: int) -> ReplyTooLarge:
        return ReplyTooLarge(
            f"{label} ({where}) sent a reply larger than {_mib(limit)} (HTTP {upstream.status}); ccgate dropped it",
            seen=seen,
            hint=f"check the provider's status; if such replies are real, raise `{setting}`",
        )

    declared = upstream.content_length
    if declared is not None and declared > limit:
        raise too_large(declared)
    parts: list[bytes] = []
    size = 0
    with upstream_errors(spec, Stage.BODY):
        async for chunk in upstream.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise too_large(size)
            parts.append(chunk)
    return b"".join(parts)


def upstream_error(
    exc: BaseException, stage: Stage, spec: ProviderSpec, *, limit: float | None = None
) -> UpstreamError:
    """What a failure of the HTTP client at `stage` means for ccgate. `limit`: the time limit of ours that ended
    the wait, if one did (the first-byte limit while connecting or at the first event, the idle limit mid-stream).
    """
    timed_out = isinstance(exc, TimeoutError)
    name, where = spec.name, redact_url(spec.base_url)
    label = spec.label or f"upstream {name}"  # the org gateway names itself
    if stage is Stage.CONNECT:
        if timed_out and limit is not None:
            return UpstreamTimeoutError(
                f"{label} ({where}) sent no response headers within {limit:g} s",
                hint=spec.unreachable_hint
                or "check the provider's status, or raise `sidecar.first_byte_timeout_seconds`",
            )
        if timed_out:
            return UpstreamTimeoutError(
                f"{label} ({where}) did not answer in time",
                hint=spec.unreachable_hint or "check the provider's status or your network",
            )
        return UpstreamError(
            f"cannot reach {label} at {where}: {type(exc).__name__}",
            hint=spec.unreachable_hint or f"check the network, or the base URL ({env.provider_base_url(name)})",
        )
    if stage is Stage.FIRST_EVENT:
        if timed_out:
            return UpstreamSilent(
                f"{label} ({where}) sent no stream event within {limit or 0:g} s",
                hint=spec.unreachable_hint
                or "check the provider's status, or raise `sidecar.first_byte_timeout_seconds`",
            )
        return UpstreamBroke(f"{label} ({where}) broke off its reply: {type(exc).__name__}")
    if stage is Stage.BODY:
        return UpstreamBroke(
            f"{label} ({where}) broke off its reply: {type(exc).__name__}", hint="check the provider's status"
        )
    if timed_out:
        return StreamCut(f"{label} sent nothing for {limit or 0:g} s; the stream was ended")
    return StreamCut(f"{label} broke off the stream: {type(exc).__name__}")


class upstream_errors:  # lower case: used like the function it was, `with upstream_errors(spec, stage): ...`
    """Raise `upstream_error(...)` for the HTTP client's failures inside the block (as httpx maps httpcore's).
    `timer`: the asyncio timeout that enforces `limit`; the limit counts only when that timer fired.

    Not for a block that also writes to the client: a client gone away is not the provider's failure.
    A class rather than a generator-based context manager: every proxied request enters it twice.
    """

    __slots__ = ("limit", "spec", "stage", "timer")

    def __init__(
        self, spec: ProviderSpec, stage: Stage, *, limit: float | None = None, timer: asyncio.Timeout | None = None
    ) -> None:
        self.spec, self.stage, self.limit, self.timer = spec, stage, limit, timer

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and isinstance(exc, FAILURES):
            timer = self.timer
            fired = self.limit if timer is None or timer.expired() else None
            raise upstream_error(exc, self.stage, self.spec, limit=fired) from exc
