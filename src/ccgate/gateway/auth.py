"""Virtual-key authentication with a short-lived cache: a revoked key is refused within `KEY_CACHE_SECONDS`.

Every instance asks the database again once an answer is older than the bound, so a key revoked (or a
budget, model list or tier override changed) through any instance takes effect everywhere within it. The
cache is keyed by the key's hash, never by the key itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import datetime

from ccgate.core.records import utcnow
from ccgate.errors import AuthenticationError
from ccgate.storage.gateway.records import KeyIdentity
from ccgate.storage.gateway.store import KEY_PREFIX, GatewayStore, hash_secret

# How long an instance trusts what it read about a key: the bound on revocation taking effect everywhere.
KEY_CACHE_SECONDS = 2.0
MAX_CACHED_KEYS = 10_000
MAX_KEY_CHARS = 256


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


class KeyCache:
    """`authenticate(plaintext)` -> KeyIdentity, from the database at most every `ttl` seconds per key."""

    def __init__(self, store: GatewayStore, *, ttl: float = KEY_CACHE_SECONDS) -> None:
        self.store = store
        self.ttl = ttl
        self._entries: dict[str, tuple[float, KeyIdentity | None]] = {}
        self._loading: dict[str, asyncio.Future[KeyIdentity | None]] = {}

    async def authenticate(self, plaintext: str | None) -> KeyIdentity:
        if not plaintext:
            raise unauthenticated("no virtual key: send it as x-api-key or Authorization: Bearer")
        if not plaintext.startswith(KEY_PREFIX) or len(plaintext) > MAX_KEY_CHARS or not plaintext.isascii():
            raise unauthenticated("this is not a ccgate virtual key (they start with sk-cg-)")
        digest = hash_secret(plaintext)
        now = time.monotonic()
        entry = self._entries.get(digest)
        if entry is None or now - entry[0] >= self.ttl:
            identity = await self._load(digest, plaintext)
        else:
            identity = entry[1]
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
        if len(self._entries) >= MAX_CACHED_KEYS:
            self._entries.clear()  # random keys from a scanner must not grow the cache without bound
        self._entries[digest] = (time.monotonic(), identity)
        return identity
