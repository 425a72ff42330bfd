"""Org mode for a developer: log in to a gateway, see who you are there, and sync this machine's usage.

Use cases only (no typer or rich): the CLI prints what these return. The virtual key goes to the keyring
(`ccgate.local.secrets`) and nowhere else; the gateway URL goes to the config's `[gateway] url`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ccgate.client.gateway_api import (
    GatewayClient,
    GatewayUrl,
    NotAGatewayError,
    check_key_text,
    parse_gateway_url,
)
from ccgate.core.org import Identity, parse_me
from ccgate.errors import CcgateError, UserInputError

if TYPE_CHECKING:
    from ccgate.core.settings import Config
    from ccgate.local.paths import Paths

# rows per `POST /v1/usage` (the gateway takes up to 1000)
BATCH_ROWS = 500


class NotLoggedInError(CcgateError):
    """An org command needs `ccgate login` first."""

    status = 401
    error_type = "authentication_error"
    should_retry = False


@dataclass(frozen=True, slots=True)
class SyncResult:
    sent: int
    known: int
    rejected: tuple[tuple[str, str], ...]


def identity_from_me(url: GatewayUrl, data: dict[str, Any]) -> Identity:
    """`/v1/me` read strictly: a server that answers something else is not a gateway we can work with."""
    try:
        return parse_me(url.url, data)
    except ValueError:
        raise NotAGatewayError(
            f"{url.url} answered /v1/me with something ccgate cannot read",
            hint="check the URL, or update ccgate to the gateway's version",
        ) from None


def check_url(text: str, *, allow_http: bool) -> GatewayUrl:
    """The URL, refused when the key would cross a network in clear text (unless the user says it may)."""
    url = parse_gateway_url(text)
    if url.in_clear and not allow_http:
        raise UserInputError(
            f"{url.url} is plain http:// to another host: your virtual key would travel in clear text",
            hint="use the gateway's https:// URL (or, on a network you trust, pass --allow-http)",
        )
    return url


def login(paths: Paths, config: Config, url_text: str, key: str, *, allow_http: bool = False) -> Identity:
    """Check the key against the gateway, and only then store it (keyring) and the URL (config).

    Nothing is stored when any check fails; a store that fails half-way is undone.
    """
    from ccgate.local.config_file import save_config
    from ccgate.local.secrets import VIRTUAL_KEY_USERNAME, delete_secret, get_secret, set_secret

    url = check_url(url_text, allow_http=allow_http)
    key = check_key_text(key)
    client = GatewayClient(url, key)
    client.health()
    identity = identity_from_me(url, client.me())
    previous = get_secret(VIRTUAL_KEY_USERNAME, paths=paths)
    set_secret(VIRTUAL_KEY_USERNAME, key, paths=paths)
    try:
        # the ledger first: a sidecar that sees the new config reads the key's mode from there
        _with_ledger(paths, lambda db: _start_sync(db, url.url, identity.key_prefix, identity.mode))
        save_config(paths.config_file, replace(config, gateway_url=url.url))
    except BaseException:
        if previous:
            set_secret(VIRTUAL_KEY_USERNAME, previous, paths=paths)
        else:
            delete_secret(VIRTUAL_KEY_USERNAME, paths=paths)
        save_config(paths.config_file, config)
        raise
    return identity


def _start_sync(db: Any, gateway: str, prefix: str | None, mode: str) -> None:
    from ccgate.storage import org_sync

    org_sync.start(db, gateway, prefix, mode)


def logout(paths: Paths, config: Config) -> tuple[str | None, int]:
    """Forget the key and the URL; returns (the gateway it was, rows that never reached it)."""
    from ccgate.local.config_file import save_config
    from ccgate.local.secrets import VIRTUAL_KEY_USERNAME, delete_secret
    from ccgate.storage import org_sync

    waiting = _with_ledger(paths, lambda db: org_sync.backlog(db).rows) if paths.ledger_file.exists() else 0
    delete_secret(VIRTUAL_KEY_USERNAME, paths=paths)
    if config.gateway_url:
        save_config(paths.config_file, replace(config, gateway_url=None))
    if paths.ledger_file.exists():
        _with_ledger(paths, org_sync.stop)
    return config.gateway_url, waiting


def credentials(paths: Paths, config: Config) -> tuple[GatewayUrl, str]:
    """The gateway URL and virtual key, or NotLoggedInError."""
    from ccgate.local.secrets import VIRTUAL_KEY_USERNAME, get_secret

    if not config.gateway_url:
        raise NotLoggedInError("not logged in to an org gateway", hint="run `ccgate login URL`")
    key = get_secret(VIRTUAL_KEY_USERNAME, paths=paths)
    if not key:
        raise NotLoggedInError(
            f"no virtual key stored for {config.gateway_url}", hint=f"run `ccgate login {config.gateway_url}`"
        )
    return parse_gateway_url(config.gateway_url), key


def whoami(paths: Paths, config: Config) -> Identity:
    from ccgate.core.org import rotation_notice

    url, key = credentials(paths, config)
    identity = identity_from_me(url, GatewayClient(url, key).me())
    notice = rotation_notice(key, identity)
    return replace(identity, notice=notice) if notice else identity


def _with_ledger(paths: Paths, action: Callable[[Any], Any]) -> Any:
    from ccgate.storage.ledger import open_ledger

    db = open_ledger(paths.ledger_file)
    try:
        return action(db)
    finally:
        db.close()


def local_status(paths: Paths) -> tuple[Any, Any]:
    """(sync state or None, backlog) from the ledger."""
    from ccgate.storage import org_sync

    if not paths.ledger_file.exists():
        return None, org_sync.Backlog(0, 0, 0)
    found: tuple[Any, Any] = _with_ledger(paths, lambda db: (org_sync.state(db), org_sync.backlog(db)))
    return found


def sync(
    paths: Paths,
    config: Config,
    *,
    since: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> SyncResult:
    """Send every finished, unsynced row (after login, or from `since`) in batches; `progress(done, total)`.

    A batch is marked synced only after the gateway answered for it, so a failure mid-way loses nothing: the
    next sync sends the rest (and what the gateway stored already comes back `known`)."""
    from ccgate.storage import org_sync
    from ccgate.storage.ledger import open_ledger

    url, key = credentials(paths, config)
    client = GatewayClient(url, key, timeout=60.0)
    db = open_ledger(paths.ledger_file)
    sent = known = 0
    rejected: list[tuple[str, str]] = []
    try:
        if org_sync.state(db) is None:
            org_sync.start(db, url.url, None)
        total = org_sync.backlog(db, since).rows
        done = 0
        if progress:
            progress(0, total)
        while batch := org_sync.next_batch(db, batch_rows, since):
            try:
                answer = client.post_usage(batch)
            except CcgateError as error:
                org_sync.failed(db, error.message)
                raise
            sent_ids = {row["id"] for row in batch}
            refused = [(row_id, why) for row_id, why in _refused(answer) if row_id in sent_ids]  # ours only
            rejected += refused
            refused_ids = {row_id for row_id, _ in refused}
            ids = [row["id"] for row in batch if row["id"] not in refused_ids]
            org_sync.mark(db, ids, refused)
            sent += _count(answer.get("sent"))
            known += _count(answer.get("known"))
            done += len(batch)
            if progress:
                progress(done, max(total, done))
    finally:
        db.close()
    return SyncResult(sent, known, tuple(rejected))


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _refused(answer: dict[str, Any]) -> list[tuple[str, str]]:
    items = answer.get("rejected") or []
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
            out.append((item["id"], str(item.get("why") or "refused by the gateway")))
    return out


@dataclass(frozen=True, slots=True)
class OrgCheck:
    """One `doctor` line about the org gateway: ok True, False (failed) or None (a warning)."""

    name: str
    ok: bool | None
    detail: str
    fix: str | None = None


MAX_SKEW_S = 120.0


def doctor_checks(paths: Paths, config: Config) -> list[OrgCheck]:
    """Reachable, a ccgate gateway, the key valid (and its mode), the clock, the sync backlog; [] when not
    logged in."""
    from email.utils import parsedate_to_datetime

    from ccgate.core.records import utcnow
    from ccgate.local.secrets import VIRTUAL_KEY_USERNAME, get_secret

    if not config.gateway_url:
        return []
    login_fix = f"run `ccgate login {config.gateway_url}`"
    try:
        url = parse_gateway_url(config.gateway_url)
        key = get_secret(VIRTUAL_KEY_USERNAME, paths=paths)
    except CcgateError as error:
        return [OrgCheck("org gateway", False, error.message, error.hint or login_fix)]
    if not key:
        return [OrgCheck("org gateway", False, f"logged in to {url.url} but no virtual key is stored", login_fix)]
    client = GatewayClient(url, key, timeout=10.0)
    checks = []
    try:
        health = client.health()
    except CcgateError as error:
        return [OrgCheck("org gateway", False, error.message, error.hint)]
    checks.append(OrgCheck("org gateway", True, f"{url.url} answers (ccgate {health.get('version', '?')})"))
    if url.in_clear:
        checks.append(OrgCheck("org gateway", None, "plain http:// to another host: the key travels in clear", None))
    if client.last_date:
        try:
            skew = (parsedate_to_datetime(client.last_date) - utcnow()).total_seconds()
        except (TypeError, ValueError):
            skew = 0.0
        if abs(skew) > MAX_SKEW_S:
            checks.append(
                OrgCheck(
                    "clock",
                    None,
                    f"this machine's clock is {abs(skew):.0f} s {'behind' if skew > 0 else 'ahead of'} the gateway's",
                    "sync the clock (e.g. `timedatectl set-ntp true`): rows with bad times are refused",
                )
            )
    gateway_last = None
    try:
        identity = identity_from_me(url, client.me())
        gateway_last = identity.last_sync_at
        checks.append(OrgCheck("org key", True, f"{identity.key_name}, team {identity.team}, {identity.mode} mode"))
    except CcgateError as error:
        checks.append(OrgCheck("org key", False, error.message, error.hint or login_fix))
    state, backlog = local_status(paths)
    last = state.last_sync_at if state and state.last_sync_at else "never"
    detail = f"{backlog.rows} request(s) waiting, last synced {last}"
    if gateway_last:
        detail += f" (the gateway last took a batch from this key {gateway_last})"
    if backlog.rejected:
        detail += f", {backlog.rejected} refused by the gateway"
    sync_error = state.last_error if state else None
    if sync_error:
        checks.append(
            OrgCheck("usage sync", None, f"{detail}; last error: {sync_error}", "run `ccgate sync` to see why")
        )
    else:
        checks.append(OrgCheck("usage sync", True if backlog.rows < 1000 else None, detail, "run `ccgate sync`"))
    return checks
