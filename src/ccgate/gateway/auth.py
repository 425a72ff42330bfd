"""Virtual-key authentication with a short-lived cache: a revoked key is refused within `KEY_CACHE_SECONDS`.

Every instance asks the database again once an answer is older than the bound, so a key revoked (or a
budget, model list or tier override changed) through any instance takes effect everywhere within it. The
cache is keyed by the key's hash, never by the key itself.

Database reads for keys that turn out unknown are capped per client and for the whole instance. The client is
the peer address, or, when the peer is a proxy the gateway was told to trust (`--trusted-proxy CIDR`), the
nearest address in X-Forwarded-For (or, on a request without one, RFC 7239 `Forwarded`) that is not such a proxy;
IPv6 clients count per /64 (one host holds a whole /64). The instance-wide cap holds whatever the clients claim to
be.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from aiohttp import web

from ccgate.core.records import utcnow
from ccgate.errors import AuthenticationError, RateLimitedError, UserInputError
from ccgate.storage.gateway.records import KeyIdentity
from ccgate.storage.gateway.store import KEY_PREFIX, GatewayStore, hash_secret

# How long an instance trusts what it read about a key: the bound on revocation taking effect everywhere.
KEY_CACHE_SECONDS = 2.0
MAX_CACHED_KEYS = 10_000
MAX_KEY_CHARS = 256
# Database look-ups that found no key, allowed per client address and second (a bucket of this size refilled at
# this rate): a scanner trying keys costs a read each, so past it the address gets 429 before any read.
UNKNOWN_LOOKUPS_PER_SECOND = 10
# The same for all clients together: random keys from many addresses (or forged ones) cannot flood the database.
UNKNOWN_LOOKUPS_PER_SECOND_TOTAL = 100
MAX_TRACKED_ADDRESSES = 10_000
MAX_FORWARDED_HOPS = 32

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_TOTAL = "*"  # the instance-wide bucket's name among the clients' (no address is spelled so)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The virtual key from `x-api-key` or `Authorization: Bearer` (what Claude Code sends with
    ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN)."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def parse_trusted_proxies(given: Iterable[str]) -> tuple[Network, ...]:
    """`--trusted-proxy` values as networks; UserInputError names the one that is not a CIDR (or address)."""
    networks = []
    for text in given:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise UserInputError(
                f"--trusted-proxy {text!r} is not an address or CIDR",
                hint="give the load balancer's network, such as 10.0.0.0/8 or 127.0.0.1/32",
            ) from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An X-Forwarded-For entry (`1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`) as an address, or None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _bucket(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else address)


def _split_unquoted(text: str, separator: str) -> tuple[list[str], bool]:
    """`text` split at `separator` outside RFC 7230 quoted strings; whether every quote was closed."""
    if '"' not in text:  # the usual `for=192.0.2.1;proto=https`: no character-by-character walk
        return text.split(separator), True
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == separator:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts, not quoted


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _forwarded_for(element: str) -> str | None:
    """One `Forwarded` element's `for` value (quotes and escapes removed), or None: no `for`, twice, or the element
    is malformed (then nothing in it is believed, not even a `for` that parsed)."""
    found: str | None = None
    seen = False
    pairs, _ = _split_unquoted(element, ";")
    for pair in pairs:
        if not pair.strip():
            continue  # `for=x;` (RFC 7239 allows empty pairs)
        name, equals, value = pair.strip().partition("=")
        name, value = name.strip().lower(), value.strip()
        if not equals or not name or not set(name) <= _TOKEN_CHARS or not value:
            return None
        if value.startswith('"'):
            quoted = _QUOTED.fullmatch(value)
            if quoted is None:
                return None
            value = re.sub(r"\\(.)", r"\1", quoted.group(1))
        elif not set(value) <= _TOKEN_CHARS | {":", "[", "]"}:
            return None
        if name == "for":
            if seen:
                return None
            found, seen = value, True
    return found


def forwarded_hops(headers: Sequence[str]) -> list[str | None]:
    """The `for` of each RFC 7239 `Forwarded` element, oldest first, each field line on its own (an open quote in a
    client's line cannot swallow the line a proxy added after it); None where an element names no usable `for`.
    A quote left open makes the line's last element unusable: a proxy's element appended to the same line after a
    client's open quote is never read as the client would like."""
    hops: list[str | None] = []
    for line in headers[-MAX_FORWARDED_HOPS:]:
        elements, closed = _split_unquoted(line, ",")
        for index, element in enumerate(elements):
            if not closed and index == len(elements) - 1:
                hops.append(None)
            elif element.strip():  # an empty list element is none (RFC 7230 lists)
                hops.append(_forwarded_for(element))
    return hops[-MAX_FORWARDED_HOPS:]


def client_of(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network], forwarded: Sequence[str] = ()
) -> str | None:
    """Whom to count unknown-key look-ups against: the peer, or behind trusted proxies the client they name.

    `forwarded_for` are the X-Forwarded-For lines, `forwarded` the RFC 7239 `Forwarded` ones; X-Forwarded-For wins
    when a request has both (what the gateway always read: a `Forwarded` a client adds cannot move it). Walking from
    the peer towards the client, each trusted proxy's entry names the next hop; the first hop that is not a trusted
    proxy is the client. An entry that names no address (`for=unknown`, an obfuscated `_id`, garbage) stops the walk:
    the count goes to the last proxy."""
    address = None if peer is None else _address(peer)
    if address is None:
        return peer
    if not trusted:
        return _bucket(address)
    hops: list[str | None] = []
    if forwarded_for:
        hops.extend([hop for header in forwarded_for for hop in header.split(",")][-MAX_FORWARDED_HOPS:])
    else:
        hops = forwarded_hops(forwarded)
    while any(address in network for network in trusted if network.version == address.version) and hops:
        hop = hops.pop()
        named = None if hop is None else _address(hop)
        if named is None:
            break  # a proxy that writes something else: count against the last proxy
        address = named
    return _bucket(address)


def unauthenticated(reason: str) -> AuthenticationError:
    return AuthenticationError(
        reason, hint="ask your gateway admin for a valid key (`ccgate gateway admin key create`) and set it"
    )


def still_valid(identity: KeyIdentity, now: datetime) -> bool:
    """A cached identity may have expired (or left its rotation grace) since it was read."""
    key = identity.key
    if key.expires_at is not None and now >= key.expires_at:
        return False
    return not (identity.via_previous and (key.previous_valid_until is None or now >= key.previous_valid_until))


KEY_HINT = "check the key you set (ANTHROPIC_API_KEY), then retry in a second"


def client_address(request: web.Request) -> str | None:
    """`client_of` for a request, with the app's `--trusted-proxy` networks (none: the peer)."""
    from ccgate.gateway import keys

    trusted = request.config_dict.get(keys.TRUSTED_PROXIES, ())
    if not trusted:
        return client_of(request.remote, (), trusted)
    headers = request.headers
    return client_of(request.remote, headers.getall("X-Forwarded-For", []), trusted, headers.getall("Forwarded", []))


def admin_token_limiter(per_client: float, total: float) -> MissLimiter:
    """Named admin tokens are looked up in the database by hash: guesses are capped like unknown virtual keys."""
    return MissLimiter(per_client, total, "admin tokens", "check the admin token you send, then retry in a second")


class MissLimiter:
    """Database look-ups of secrets that turned out unknown, per client and for the whole instance: a bucket of
    `per_client` (and one of `total`) look-ups, refilled at that rate a second. Past it: 429 before any read."""

    def __init__(self, per_client: float, total: float, what: str, hint: str) -> None:
        self.per_client = per_client
        self.total = total
        self.what = what
        self.hint = hint
        # client -> (look-ups it has left, when that was counted); `_TOTAL` is everyone's
        self._left: dict[str, tuple[float, float]] = {}

    def _allowance(self, client: str, now: float) -> float:
        rate = self.total if client == _TOTAL else self.per_client
        size = max(1.0, rate)
        tokens, at = self._left.get(client, (size, now))
        return min(size, tokens + (now - at) * rate)

    def check(self, client: str | None, now: float) -> None:
        """Raise RateLimitedError if the client, or all clients together, used up their look-ups."""
        for who in (_TOTAL, client):
            if who is None:
                continue
            tokens = self._allowance(who, now)
            if tokens < 1:
                rate = self.total if who == _TOTAL else self.per_client
                raise RateLimitedError(
                    f"too many unknown {self.what} " + ("at this gateway" if who == _TOTAL else "from this address"),
                    retry_after=max(1, math.ceil((1 - tokens) / rate)),
                    hint=self.hint,
                )

    def missed(self, client: str | None, now: float) -> None:
        """Count a look-up that found nothing."""
        if client is not None:
            tokens = self._allowance(client, now)
            if client not in self._left and len(self._left) >= MAX_TRACKED_ADDRESSES:
                total = self._left.get(_TOTAL)
                self._left.clear()  # the instance-wide bucket survives: clearing must not refill it
                if total is not None:
                    self._left[_TOTAL] = total
            self._left[client] = (tokens - 1, now)
        self._left[_TOTAL] = (self._allowance(_TOTAL, now) - 1, now)


class KeyCache:
    """`authenticate(plaintext)` -> KeyIdentity, from the database at most every `ttl` seconds per key."""

    def __init__(
        self,
        store: GatewayStore,
        *,
        ttl: float = KEY_CACHE_SECONDS,
        unknown_per_second: float = UNKNOWN_LOOKUPS_PER_SECOND,
        unknown_total_per_second: float = UNKNOWN_LOOKUPS_PER_SECOND_TOTAL,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self._entries: dict[str, tuple[float, KeyIdentity | None]] = {}
        # negative answers apart, so a scanner's random keys never push real keys out of the cache
        self._unknown: dict[str, float] = {}
        self._loading: dict[str, asyncio.Future[KeyIdentity | None]] = {}
        self.misses = MissLimiter(unknown_per_second, unknown_total_per_second, "virtual keys", KEY_HINT)

    async def authenticate(self, plaintext: str | None, client: str | None = None) -> KeyIdentity:
        """The key's identity; `client` (see `client_of`) caps the database reads its unknown keys cost."""
        if not plaintext:
            raise unauthenticated("no virtual key: send it as x-api-key or Authorization: Bearer")
        if not plaintext.startswith(KEY_PREFIX) or len(plaintext) > MAX_KEY_CHARS or not plaintext.isascii():
            raise unauthenticated("this is not a ccgate virtual key (they start with sk-cg-)")
        digest = hash_secret(plaintext)
        now = time.monotonic()
        entry = self._entries.get(digest)
        if entry is not None and now - entry[0] < self.ttl:
            identity = entry[1]
        elif now - self._unknown.get(digest, -self.ttl) < self.ttl:
            identity = None  # a negative answer cached: no database read, nothing counted
        else:
            if entry is None:  # a key this instance knew is re-read whatever its address did (a shared proxy's)
                self.misses.check(client, now)
            identity = await self._load(digest, plaintext)
            if identity is None:
                self.misses.missed(client, now)
        if identity is None or not still_valid(identity, utcnow()):
            raise unauthenticated("unknown, revoked or expired virtual key")
        return identity

    async def _load(self, digest: str, plaintext: str) -> KeyIdentity | None:
        """One database read per key at a time: concurrent requests with the same key share it."""
        loading = self._loading.get(digest)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[KeyIdentity | None] = asyncio.get_running_loop().create_future()
        self._loading[digest] = future
        try:
            identity = await self.store.authenticate_key(plaintext)
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            future.set_result(identity)
        finally:
            del self._loading[digest]
        cache: dict[str, Any] = self._entries if identity is not None else self._unknown
        if len(cache) >= MAX_CACHED_KEYS:
            cache.clear()  # random keys from a scanner must not grow the cache without bound
        if identity is None:
            self._entries.pop(digest, None)  # a key revoked since: forget its identity
            self._unknown[digest] = time.monotonic()
        else:
            self._unknown.pop(digest, None)
            self._entries[digest] = (time.monotonic(), identity)
        return identity
