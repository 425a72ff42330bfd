"""The sidecar in org mode: proxy mode's upstream, report mode's org budgets, and the background usage sync.

Proxy mode sends every request to the gateway with the virtual key (the developer's own key or OAuth token is
dropped: the key is the `anthropic` provider's key, so the client's credentials are not forwarded). Report mode
keeps the developer's credentials and checks the key's org budgets here, against the gateway's spent (from
`/v1/me`) plus what this machine spent that the gateway has not seen yet.

The sync loop runs beside the proxy, never on its path: ledger reads and writes on a thread, batches gzip-
compressed, exponential backoff with jitter while the gateway is down, and it stops (one log line) when the
gateway refuses the key, until a reload brings another.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from ccgate import env
from ccgate.core.org import Identity, org_budget_refusal, parse_me, rotation_notice
from ccgate.errors import BudgetExceededError

if TYPE_CHECKING:
    from ccgate.core.settings import Config
    from ccgate.local.paths import Paths

log = logging.getLogger("ccgate.sidecar.org")

SYNC_INTERVAL_ENV = env.SYNC_INTERVAL_SECONDS
SYNC_BATCH_ENV = env.SYNC_BATCH_ROWS
DEFAULT_SYNC_INTERVAL_S = 10.0
MAX_BACKOFF_S = 300.0
BATCH_ROWS = 500
ME_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class OrgSettings:
    """Read off the event loop at start and on reload: the gateway, the key, its mode as last known."""

    url: str
    key: str
    mode: str | None

    def __repr__(self) -> str:  # never the key, whatever prints this
        return f"OrgSettings(url={self.url!r}, mode={self.mode!r})"


def read_settings(config: Config, paths: Paths) -> OrgSettings | None:
    """Blocking (keyring, ledger): None when not logged in."""
    if not config.gateway_url:
        return None
    from ccgate.core.providers import validate_base_url
    from ccgate.errors import ConfigError
    from ccgate.local.secrets import VIRTUAL_KEY_USERNAME, get_secret

    try:  # a hand-edited config: the key goes nowhere that is not a plain gateway URL
        url = validate_base_url(config.gateway_url, "gateway.url")
    except ConfigError as error:
        log.error("not using the org gateway: %s", error.message)
        return None

    try:
        key = get_secret(VIRTUAL_KEY_USERNAME, paths=paths)
    except Exception as error:  # a broken keyring must not keep the sidecar down
        log.error("cannot read the virtual key for %s: %s", config.gateway_url, error)
        return None
    if not key:
        log.error("logged in to %s but no virtual key is stored; run `ccgate login` again", config.gateway_url)
        return None
    mode = None
    if paths.ledger_file.exists():
        from ccgate.storage import org_sync
        from ccgate.storage.ledger import open_ledger

        db = open_ledger(paths.ledger_file)
        try:
            state = org_sync.state(db)
            mode = state.mode if state else None
        finally:
            db.close()
    return OrgSettings(url, key, mode)


@dataclass
class OrgLink:
    """One sidecar's live view of the org: budgets, spend the gateway has not seen, sync health."""

    settings: OrgSettings | None = None
    identity: Identity | None = None
    me_at: float = 0.0
    # finished requests' cost that the gateway had not counted when `identity` was read
    unseen_nanos: int = 0
    settled_nanos: int = 0
    key_refused: str | None = None
    # the org rotated the key (it works through a grace period): `launch` and `whoami` say to log in again
    notice: str | None = None
    last_error: str | None = None
    last_sync_at: float | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def proxy_mode(self) -> bool:
        return self.settings is not None and self.settings.mode == "proxy"

    @property
    def report_mode(self) -> bool:
        return self.settings is not None and self.settings.mode != "proxy"

    def has_budgets(self) -> bool:
        return self.report_mode and self.identity is not None and bool(self.identity.budgets)

    def refusal(self) -> BudgetExceededError | None:
        """The 402 for a request now, if an org budget is used up (report mode only: the gateway enforces its
        own budgets in proxy mode)."""
        if not self.has_budgets():
            return None
        assert self.identity is not None
        return org_budget_refusal(self.identity.budgets, self.unseen_nanos + self.settled_nanos)

    def settled(self, nanos: int) -> None:
        self.settled_nanos += max(0, nanos)

    def summary(self) -> dict[str, Any] | None:
        """For `launch`: where requests go, and whether the gateway still takes the key."""
        if self.settings is None:
            return None
        return {
            "gateway": self.settings.url,
            "mode": self.settings.mode,
            "key_refused": self.key_refused,
            "notice": self.notice,
        }

    def status(self) -> dict[str, Any]:
        settings, identity = self.settings, self.identity
        return {
            "gateway": settings.url if settings else None,
            "mode": settings.mode if settings else None,
            "key_refused": self.key_refused,
            "last_error": self.last_error,
            "last_sync_at": self.last_sync_at,
            "unseen_nanos": self.unseen_nanos + self.settled_nanos,
            "budgets": [
                {"name": b.name, "period": b.period, "limit_nanos": b.limit_nanos, "spent_nanos": b.spent_nanos}
                for b in (identity.budgets if identity else ())
            ],
        }


class _Refused(Exception):
    """The gateway refused the key (401/403)."""


def _interval(environ: Mapping[str, str]) -> float:
    try:
        value = float(environ.get(SYNC_INTERVAL_ENV, DEFAULT_SYNC_INTERVAL_S))
    except ValueError:
        return DEFAULT_SYNC_INTERVAL_S
    return min(3600.0, max(0.05, value))


def _batch_rows(environ: Mapping[str, str]) -> int:
    """Rows per `POST /v1/usage` (the gateway takes up to 1000)."""
    try:
        return min(1000, max(1, int(environ.get(SYNC_BATCH_ENV, BATCH_ROWS))))
    except ValueError:
        return BATCH_ROWS


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, key: str, body: bytes | None = None
) -> dict[str, Any]:
    headers = {"x-api-key": key, "Accept": "application/json", "User-Agent": "ccgate-sidecar"}
    if body is not None:
        headers.update({"Content-Type": "application/json", "Content-Encoding": "gzip"})
    timeout = aiohttp.ClientTimeout(total=60.0)
    async with session.request(method, url, data=body, headers=headers, timeout=timeout) as response:
        raw = await response.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if response.status in (401, 403):
            error = data.get("error") if isinstance(data, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            raise _Refused(str(message or f"HTTP {response.status}").replace(key, "***"))
        if response.status != 200 or not isinstance(data, dict):
            raise RuntimeError(f"{url} answered HTTP {response.status}")
        return data


class SyncLoop:
    """Background: send finished rows, refresh `/v1/me`, keep `OrgLink` current; survives anything."""

    def __init__(
        self,
        link: OrgLink,
        session: aiohttp.ClientSession,
        ledger_path: Path,
        environ: Mapping[str, str],
        flush: Callable[[], Any],
    ) -> None:
        self.link = link
        self.session = session
        self.ledger_path = ledger_path
        self.interval = _interval(environ)
        self.batch_rows = _batch_rows(environ)
        self.flush = flush
        self.failures = 0

    async def run(self) -> None:
        while True:
            delay = self.interval
            settings = self.link.settings
            if settings is not None and self.link.key_refused is None:
                try:
                    await self.once(settings)
                    self.failures = 0
                    self.link.last_error = None
                except asyncio.CancelledError:
                    raise
                except _Refused as refused:
                    self.link.key_refused = str(refused)
                    log.error("the gateway refused the virtual key: %s; run `ccgate login` again", refused)
                    await self._note(f"the gateway refused the key: {refused}")
                except Exception as error:  # the loop must survive anything; the next round retries
                    self.failures += 1
                    self.link.last_error = f"{type(error).__name__}: {error}"
                    await self._note(self.link.last_error)
                    delay = min(MAX_BACKOFF_S, self.interval * 2 ** min(self.failures, 12))
                    delay *= random.uniform(0.5, 1.5)
                    if self.failures in (1, 5) or self.failures % 50 == 0:
                        log.warning("usage sync to %s failed (%s); retrying in %.0f s", settings.url, error, delay)
            self.link.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.link.wake.wait(), delay)

    async def once(self, settings: OrgSettings) -> None:
        """One round: every finished unsynced row in batches, then `/v1/me` and the spend it has not seen."""
        from ccgate.storage import org_sync

        # spend settled before this mark is in the ledger after the flush: synced below (so in the gateway's
        # spent) or still unsynced (so in `unseen`); spend settled after it stays in `settled_nanos`
        settled_before = self.link.settled_nanos
        await asyncio.to_thread(self.flush)
        while batch := await asyncio.to_thread(self._with_db, lambda db: org_sync.next_batch(db, self.batch_rows)):
            body = await asyncio.to_thread(_compress, batch)
            answer = await _call(self.session, "POST", settings.url + "/v1/usage", settings.key, body)
            sent_ids = {row["id"] for row in batch}  # a row the gateway names but was not sent is not ours to mark
            refused = [
                (str(item["id"]), str(item.get("why") or "refused by the gateway"))
                for item in answer.get("rejected") or []
                if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"] in sent_ids
            ]
            refused_ids = {row_id for row_id, _ in refused}
            ids = [row["id"] for row in batch if row["id"] not in refused_ids]
            await asyncio.to_thread(self._with_db, partial(org_sync.mark, done=ids, rejected=refused))
            self.link.last_sync_at = time.time()
            if len(batch) < self.batch_rows:
                break
        data = await _call(self.session, "GET", settings.url + "/v1/me", settings.key)
        identity = parse_me(settings.url, data)
        notice = rotation_notice(settings.key, identity)
        if notice and notice != self.link.notice:
            log.warning("%s", notice)
        self.link.notice = notice
        unseen = await asyncio.to_thread(self._with_db, lambda db: org_sync.backlog(db).cost_nanos)
        # what settled while we looked may be in `unseen` too: counting it twice only makes the check stricter
        self.link.identity, self.link.me_at = identity, time.time()
        self.link.unseen_nanos = unseen
        self.link.settled_nanos -= settled_before
        shown = [(b.name, b.limit_nanos, b.spent_nanos) for b in identity.budgets]
        await asyncio.to_thread(self._with_db, partial(org_sync.save_budgets, budgets=shown))
        if identity.mode != settings.mode:
            await asyncio.to_thread(self._with_db, lambda db: org_sync.set_mode(db, identity.mode))
            log.warning("the org changed this key's mode to %s; it applies from the next sidecar start", identity.mode)

    async def _note(self, why: str) -> None:
        """The last failure, in the ledger for `whoami` and `doctor` (best effort: the ledger may be the problem)."""
        from ccgate.storage import org_sync

        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._with_db, partial(org_sync.failed, why=why))

    def _with_db(self, action: Callable[[Any], Any]) -> Any:
        from ccgate.storage.ledger import open_ledger

        db = open_ledger(self.ledger_path)
        try:
            return action(db)
        finally:
            db.close()


def _compress(rows: list[dict[str, Any]]) -> bytes:
    return gzip.compress(json.dumps({"rows": rows}, separators=(",", ":")).encode("utf-8"), compresslevel=6)
