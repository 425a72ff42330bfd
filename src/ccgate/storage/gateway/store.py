"""`GatewayStore`: the org gateway's typed async store over SQLite or PostgreSQL; callers never see SQL.

Admin changes take an optional `actor` (the acting admin token's name): when given, the change and its audit
entry (before/after, never a secret) commit in one transaction.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ccgate.core.budgets import parse_period
from ccgate.core.names import fold_name
from ccgate.core.records import RequestRecord, from_iso, new_request_id, to_iso, utcnow
from ccgate.errors import NotFoundError, UserInputError
from ccgate.storage.gateway import admission, ledger, migrate
from ccgate.storage.gateway.crypto import KeyCipher, require_cipher
from ccgate.storage.gateway.db import Connection, ConstraintError, Database, connect
from ccgate.storage.gateway.records import (
    MAX_RATE_LIMIT,
    AdminRole,
    AdminToken,
    AdmissionResult,
    AuditEntry,
    Budget,
    BudgetLevel,
    BudgetView,
    CreatedAdminToken,
    CreatedKey,
    Customer,
    GatewayRow,
    IngestResult,
    KeyIdentity,
    KeyMode,
    ProviderConfig,
    RateDecision,
    RateLevel,
    RateLimit,
    Reservation,
    Team,
    VirtualKey,
    public_dict,
)
from ccgate.storage.reports import CostReport

KEY_PREFIX = "sk-cg-"
ADMIN_TOKEN_PREFIX = "cg-admin-"  # noqa: S105 - a prefix, not a token
DISPLAY_CHARS = 12  # `sk-cg-` and six random characters
MAX_NAME = 200


def hash_secret(plaintext: str) -> str:
    """SHA-256 hex: virtual keys and admin tokens are 256-bit random, so a plain hash is enough (no KDF)."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def _opt_time(value: Any) -> datetime | None:
    return None if value is None else from_iso(str(value))


def _opt_iso(value: datetime | None) -> str | None:
    return None if value is None else to_iso(value)


def _unicode(text: str) -> bool:
    """Valid Unicode: a lone surrogate (JSON can spell one, `\\ud800`) is stored by SQLite but cannot be encoded
    again, so every later answer that holds it (the audit log, the team) would fail."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_name(kind: str, name: str) -> str:
    if not name or not name.strip() or len(name) > MAX_NAME or any(ord(c) < 32 for c in name) or not _unicode(name):
        raise UserInputError(
            f"{kind} name must be 1 to {MAX_NAME} printable characters", hint=f"give the {kind} a plain name"
        )
    return name


def _check_text(what: str, value: str | None, *, limit: int = 2_000) -> str | None:
    """Free text (URLs, kinds, model names): bounded and without control characters (PostgreSQL stores no NUL)."""
    if value is not None and (
        not isinstance(value, str)
        or len(value) > limit
        or any(ord(c) < 32 or c == "\x7f" for c in value)
        or not _unicode(value)
    ):
        raise UserInputError(f"{what} must be at most {limit} printable characters", hint=f"check the {what}")
    return value


E = TypeVar("E", bound=StrEnum)


def _choice(kind: type[E], value: object, what: str) -> E:
    try:
        return kind(str(value))
    except ValueError as error:
        allowed = ", ".join(member.value for member in kind)
        raise UserInputError(f"unknown {what} {value!r}", hint=f"use one of: {allowed}") from error


def _json_list(value: Sequence[str] | None) -> str | None:
    if value is None:
        return None
    for item in value:
        _check_text("model or provider name", item, limit=MAX_NAME)
    return json.dumps(list(value))


def _check_overrides(overrides: dict[str, str] | None) -> str:
    cleaned = dict(overrides or {})
    for tier, target in cleaned.items():
        if not isinstance(tier, str) or not isinstance(target, str) or not tier or not target:
            raise UserInputError("tier overrides map a tier name to PROVIDER/MODEL", hint="e.g. haiku=groq/llama")
        _check_text("tier override", tier, limit=MAX_NAME)
        _check_text("tier override", target, limit=MAX_NAME)
    return json.dumps(cleaned, sort_keys=True)


_CUSTOMER_COLS = "id, name, created_at"
_TEAM_COLS = "id, name, customer_id, tier_overrides, created_at"
_KEY_COLS = (
    "id, name, team_id, mode, key_prefix, allowed_models, allowed_providers, tier_overrides, expires_at, "
    "revoked_at, previous_prefix, previous_valid_until, created_at"
)
_AUTH_SQL = (
    f"SELECT {', '.join('k.' + c.strip() for c in _KEY_COLS.split(','))}, k.key_hash = ?, "
    f"{', '.join('t.' + c.strip() for c in _TEAM_COLS.split(','))}, "
    f"{', '.join('c.' + c.strip() for c in _CUSTOMER_COLS.split(','))} "
    "FROM virtual_keys k JOIN teams t ON t.id = k.team_id LEFT JOIN customers c ON c.id = t.customer_id "
    "WHERE k.key_hash = ? OR k.previous_hash = ?"
)
_ADMIN_COLS = "id, name, role, team_id, token_prefix, revoked_at, created_at"
_PROVIDER_COLS = "id, name, kind, base_url, api_key_encrypted IS NOT NULL, created_at, updated_at"
_RATE_COLS = "id, level, target_id, rpm, tpm, created_at, updated_at"


def _customer(row: Sequence[Any]) -> Customer:
    return Customer(str(row[0]), str(row[1]), from_iso(row[2]))


def _team(row: Sequence[Any]) -> Team:
    return Team(str(row[0]), str(row[1]), row[2], json.loads(row[3]), from_iso(row[4]))


def _key(row: Sequence[Any]) -> VirtualKey:
    return VirtualKey(
        id=str(row[0]),
        name=str(row[1]),
        team_id=str(row[2]),
        mode=KeyMode(row[3]),
        key_prefix=str(row[4]),
        allowed_models=None if row[5] is None else tuple(json.loads(row[5])),
        allowed_providers=None if row[6] is None else tuple(json.loads(row[6])),
        tier_overrides=json.loads(row[7]),
        expires_at=_opt_time(row[8]),
        revoked_at=_opt_time(row[9]),
        previous_prefix=row[10],
        previous_valid_until=_opt_time(row[11]),
        created_at=from_iso(row[12]),
    )


def _admin(row: Sequence[Any]) -> AdminToken:
    return AdminToken(
        str(row[0]), str(row[1]), AdminRole(row[2]), row[3], str(row[4]), _opt_time(row[5]), from_iso(row[6])
    )


def _provider(row: Sequence[Any]) -> ProviderConfig:
    return ProviderConfig(
        str(row[0]), str(row[1]), str(row[2]), row[3], bool(row[4]), from_iso(row[5]), from_iso(row[6])
    )


def _rate(row: Sequence[Any]) -> RateLimit:
    return RateLimit(
        str(row[0]),
        RateLevel(row[1]),
        str(row[2]),
        None if row[3] is None else int(row[3]),
        None if row[4] is None else int(row[4]),
        from_iso(row[5]),
        from_iso(row[6]),
    )


@asynccontextmanager
async def _one_name(kind: str, name: str) -> AsyncIterator[None]:
    """A create refused by the database (the unique folded name: another create of a name people would take for
    this one won a race with it) says so; the admin layer's own check catches the usual, sequential case first."""
    try:
        yield
    except ConstraintError as error:
        raise ConstraintError(
            f"a {kind} named {name!r} (or a name differing only in case or Unicode form) already exists",
            hint=f"list them, then pick another name or use the existing {kind}",
        ) from error


# (table, the rows whose names must be unique): `fill_folded_names` folds these
_NAMED_TABLES = (
    ("customers", ""),
    ("teams", ""),
    ("virtual_keys", " AND revoked_at IS NULL"),
    ("admin_tokens", ""),
    ("provider_configs", ""),
)


async def _audit(conn: Connection, actor: str | None, action: str, target: str | None, before: Any, after: Any) -> None:
    if actor is None:
        return
    await conn.execute(
        "INSERT INTO audit_log (id, at, actor, action, target, before_json, after_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            new_request_id(),
            to_iso(utcnow()),
            actor,
            action,
            target,
            _audit_json(before),
            _audit_json(after),
        ),
    )


_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Any]])


def _changes_limits(method: _Method) -> _Method:
    """Bump `limits_changed` before and after a change to budgets or rate limits: a lease taken while it was being
    made is seen as taken before it (`gateway.leases`). Then tell `limits_listeners`."""

    @functools.wraps(method)
    async def changing(self: GatewayStore, *args: Any, **kwargs: Any) -> Any:
        self.limits_changed += 1
        try:
            return await method(self, *args, **kwargs)
        finally:
            self.limits_changed += 1
            for listener in list(self.limits_listeners):
                listener()

    return changing  # type: ignore[return-value]


class GatewayStore:
    """Everything the gateway server keeps: one instance per process (its own pool or SQLite thread)."""

    def __init__(self, db: Database, *, cipher: KeyCipher | None = None) -> None:
        # bumped when this process creates a budget: a cached "who has budgets" set is stale from then on
        self.budget_generation = 0
        # bumped by every change to a budget or rate limit made through this store: this process's leases end
        # at once (another instance's within `leases.LEASE_LIFE_S`)
        self.limits_changed = 0
        # called after each such change: this process's leases end then, not on their next request
        self.limits_listeners: list[Callable[[], None]] = []
        self.db = db
        self.cipher = cipher
        self._holds_changed = asyncio.Event()
        # budget definitions by whom they apply to: checked against the database on every use (see the class)
        self.budget_definitions = admission.BudgetDefinitions()
        self.reserve_batcher = admission.ReserveBatcher()

    @classmethod
    async def open(
        cls, url: str, *, cipher: KeyCipher | None = None, migrate_now: bool = True, max_connections: int = 10
    ) -> GatewayStore:
        """Connect; with `migrate_now` apply pending migrations under the lock (else `check_migrations` first)."""
        db = await connect(url, max_size=max_connections)
        store = cls(db, cipher=cipher)
        if migrate_now:
            try:
                await migrate.apply(db)
                await store.fill_folded_names()
            except BaseException:
                await db.close()
                raise
        return store

    async def close(self) -> None:
        await self.db.close()

    async def check_migrations(self) -> migrate.MigrationStatus:
        return await migrate.check(self.db)

    async def apply_migrations(self) -> list[str]:
        applied = await migrate.apply(self.db)
        await self.fill_folded_names()
        return applied

    async def fill_folded_names(self) -> int:
        """Fold the names that have no `name_folded` yet (rows from before migration 0008, or written by the
        previous release running beside this one); a row whose folded name another row already holds stays NULL.
        Returns how many rows were folded. The gateway runs it at start. One statement per row, each on its own:
        a name taken meanwhile (by a create racing this) refuses just that row."""
        filled = 0
        for table, live in _NAMED_TABLES:
            todo = await self.db.fetch(
                f"SELECT id, name FROM {table} WHERE name_folded IS NULL{live} ORDER BY created_at, id"
            )
            for row_id, name in todo:
                try:
                    filled += await self.db.execute(
                        f"UPDATE {table} SET name_folded = ? WHERE id = ? AND name_folded IS NULL",
                        (fold_name(str(name)), row_id),
                    )
                except ConstraintError:
                    continue  # two old names that fold to one: the older keeps it, the admin check sees both
        return filled

    async def ping(self) -> None:
        """For /readyz: raises DatabaseUnavailableError when the database cannot answer."""
        await self.db.fetch("SELECT 1")

    # --- customers and teams -----------------------------------------------------------------------------------

    async def create_customer(self, name: str, *, actor: str | None = None) -> Customer:
        customer = Customer(new_request_id(), _check_name("customer", name), utcnow())
        async with _one_name("customer", customer.name), self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO customers (id, name, name_folded, created_at) VALUES (?, ?, ?, ?)",
                (customer.id, customer.name, fold_name(customer.name), to_iso(customer.created_at)),
            )
            await _audit(conn, actor, "customer.create", customer.name, None, customer)
        return customer

    async def list_customers(self) -> list[Customer]:
        return [_customer(r) for r in await self.db.fetch(f"SELECT {_CUSTOMER_COLS} FROM customers ORDER BY name")]

    async def get_customer(self, name_or_id: str) -> Customer:
        row = await self.db.fetchone(
            f"SELECT {_CUSTOMER_COLS} FROM customers WHERE name = ? OR id = ? ORDER BY name = ? DESC LIMIT 1",
            (name_or_id, name_or_id, name_or_id),
        )
        if row is None:
            raise NotFoundError(
                f"no customer {name_or_id!r}", hint="list them with `ccgate gateway admin customer list`"
            )
        return _customer(row)

    async def delete_customer(self, name_or_id: str, *, actor: str | None = None) -> None:
        customer = await self.get_customer(name_or_id)
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM customers WHERE id = ?", (customer.id,))
            await conn.execute("DELETE FROM budgets WHERE level = 'customer' AND target_id = ?", (customer.id,))
            await _audit(conn, actor, "customer.delete", customer.name, customer, None)

    async def create_team(
        self,
        name: str,
        *,
        customer: str | None = None,
        tier_overrides: dict[str, str] | None = None,
        actor: str | None = None,
    ) -> Team:
        customer_id = None if customer is None else (await self.get_customer(customer)).id
        team = Team(new_request_id(), _check_name("team", name), customer_id, {}, utcnow())
        overrides = _check_overrides(tier_overrides)
        team = Team(team.id, team.name, customer_id, json.loads(overrides), team.created_at)
        async with _one_name("team", team.name), self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO teams (id, name, name_folded, customer_id, tier_overrides, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (team.id, team.name, fold_name(team.name), customer_id, overrides, to_iso(team.created_at)),
            )
            await _audit(conn, actor, "team.create", team.name, None, team)
        return team

    async def list_teams(self, *, customer: str | None = None) -> list[Team]:
        if customer is None:
            rows = await self.db.fetch(f"SELECT {_TEAM_COLS} FROM teams ORDER BY name")
        else:
            customer_id = (await self.get_customer(customer)).id
            rows = await self.db.fetch(
                f"SELECT {_TEAM_COLS} FROM teams WHERE customer_id = ? ORDER BY name", (customer_id,)
            )
        return [_team(r) for r in rows]

    async def get_team(self, name_or_id: str) -> Team:
        row = await self.db.fetchone(
            f"SELECT {_TEAM_COLS} FROM teams WHERE name = ? OR id = ? ORDER BY name = ? DESC LIMIT 1",
            (name_or_id, name_or_id, name_or_id),
        )
        if row is None:
            raise NotFoundError(f"no team {name_or_id!r}", hint="list them with `ccgate gateway admin team list`")
        return _team(row)

    async def update_team(
        self,
        name_or_id: str,
        *,
        customer: str | None = None,
        tier_overrides: dict[str, str] | None = None,
        actor: str | None = None,
    ) -> Team:
        before = await self.get_team(name_or_id)
        customer_id = before.customer_id if customer is None else (await self.get_customer(customer)).id
        overrides = before.tier_overrides if tier_overrides is None else json.loads(_check_overrides(tier_overrides))
        after = Team(before.id, before.name, customer_id, overrides, before.created_at)
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE teams SET customer_id = ?, tier_overrides = ? WHERE id = ?",
                (customer_id, json.dumps(overrides, sort_keys=True), before.id),
            )
            await _audit(conn, actor, "team.update", before.name, before, after)
        return after

    async def delete_team(self, name_or_id: str, *, actor: str | None = None) -> None:
        team = await self.get_team(name_or_id)
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM teams WHERE id = ?", (team.id,))
            await conn.execute("DELETE FROM budgets WHERE level = 'team' AND target_id = ?", (team.id,))
            await conn.execute("DELETE FROM rate_limits WHERE level = 'team' AND target_id = ?", (team.id,))
            await _audit(conn, actor, "team.delete", team.name, team, None)

    # --- virtual keys ------------------------------------------------------------------------------------------

    @staticmethod
    def _new_secret() -> tuple[str, str, str]:
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        return plaintext, hash_secret(plaintext), plaintext[:DISPLAY_CHARS]

    async def create_key(
        self,
        *,
        team: str,
        name: str,
        mode: KeyMode | str = KeyMode.PROXY,
        allowed_models: Sequence[str] | None = None,
        allowed_providers: Sequence[str] | None = None,
        tier_overrides: dict[str, str] | None = None,
        expires_at: datetime | None = None,
        actor: str | None = None,
    ) -> CreatedKey:
        """A new `sk-cg-...` key for developer `name` in `team`; the plaintext is in the result only."""
        team_row = await self.get_team(team)
        key_mode = _choice(KeyMode, mode, "key mode")
        plaintext, digest, prefix = self._new_secret()
        overrides = _check_overrides(tier_overrides)
        key = VirtualKey(
            id=new_request_id(),
            name=_check_name("key", name),
            team_id=team_row.id,
            mode=key_mode,
            key_prefix=prefix,
            allowed_models=None if allowed_models is None else tuple(allowed_models),
            allowed_providers=None if allowed_providers is None else tuple(allowed_providers),
            tier_overrides=json.loads(overrides),
            expires_at=expires_at,
            revoked_at=None,
            previous_prefix=None,
            previous_valid_until=None,
            created_at=utcnow(),
        )
        async with _one_name("key", key.name), self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO virtual_keys (id, name, name_folded, team_id, mode, key_hash, key_prefix, "
                "allowed_models, allowed_providers, tier_overrides, expires_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.name,
                    fold_name(key.name),
                    key.team_id,
                    key.mode.value,
                    digest,
                    prefix,
                    _json_list(key.allowed_models),
                    _json_list(key.allowed_providers),
                    overrides,
                    _opt_iso(expires_at),
                    to_iso(key.created_at),
                ),
            )
            await _audit(conn, actor, "key.create", key.name, None, key)
        return CreatedKey(key, plaintext)

    async def get_key(self, name_or_id: str) -> VirtualKey:
        """Any key by id, else a live key by name: an id wins, so a key named like another key's id (a team_admin
        names its keys) cannot stand in for that key."""
        row = await self.db.fetchone(
            f"SELECT {_KEY_COLS} FROM virtual_keys WHERE id = ? OR (name = ? AND revoked_at IS NULL) "
            "ORDER BY id = ? DESC LIMIT 1",
            (name_or_id, name_or_id, name_or_id),
        )
        if row is None:
            raise NotFoundError(f"no live key {name_or_id!r}", hint="list them with `ccgate gateway admin key list`")
        return _key(row)

    async def list_keys(self, *, team: str | None = None, include_revoked: bool = False) -> list[VirtualKey]:
        where = [] if include_revoked else ["revoked_at IS NULL"]
        params: list[Any] = []
        if team is not None:
            where.append("team_id = ?")
            params.append((await self.get_team(team)).id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self.db.fetch(f"SELECT {_KEY_COLS} FROM virtual_keys{clause} ORDER BY name, created_at", params)
        return [_key(r) for r in rows]

    async def update_key(
        self,
        name_or_id: str,
        *,
        mode: KeyMode | str | None = None,
        allowed_models: Sequence[str] | bool | None = False,
        allowed_providers: Sequence[str] | bool | None = False,
        tier_overrides: dict[str, str] | None = None,
        expires_at: datetime | bool | None = False,
        actor: str | None = None,
    ) -> VirtualKey:
        """Change what is given; `False` (the default) leaves a field alone, None clears it (= every model)."""
        before = await self.get_key(name_or_id)
        models = before.allowed_models if allowed_models is False else _tuple_or_none(allowed_models)
        providers = before.allowed_providers if allowed_providers is False else _tuple_or_none(allowed_providers)
        expiry = before.expires_at if expires_at is False else expires_at
        if expiry is not None and not isinstance(expiry, datetime):
            raise UserInputError("expires_at must be a time", hint="give an ISO-8601 time")
        after = VirtualKey(
            **{
                **{name: getattr(before, name) for name in before.__dataclass_fields__},
                "mode": before.mode if mode is None else _choice(KeyMode, mode, "key mode"),
                "allowed_models": models,
                "allowed_providers": providers,
                "tier_overrides": before.tier_overrides
                if tier_overrides is None
                else json.loads(_check_overrides(tier_overrides)),
                "expires_at": expiry,
            }
        )
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE virtual_keys SET mode = ?, allowed_models = ?, allowed_providers = ?, tier_overrides = ?, "
                "expires_at = ? WHERE id = ?",
                (
                    after.mode.value,
                    _json_list(models),
                    _json_list(providers),
                    json.dumps(after.tier_overrides, sort_keys=True),
                    _opt_iso(expiry),
                    before.id,
                ),
            )
            await _audit(conn, actor, "key.update", before.name, before, after)
        return after

    async def revoke_key(self, name_or_id: str, *, actor: str | None = None) -> VirtualKey:
        """Revoked at once, its rotated-out predecessor too."""
        before = await self.get_key(name_or_id)
        now = utcnow()
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE virtual_keys SET revoked_at = ?, previous_valid_until = NULL "
                "WHERE id = ? AND revoked_at IS NULL",
                (to_iso(now), before.id),
            )
            row = await conn.fetchone(f"SELECT {_KEY_COLS} FROM virtual_keys WHERE id = ?", (before.id,))
            assert row is not None
            after = _key(row)
            await _audit(conn, actor, "key.revoke", before.name, before, after)
        return after

    async def rotate_key(self, name_or_id: str, *, grace: timedelta, actor: str | None = None) -> CreatedKey:
        """A new secret for the same key (same id, budgets and history); the old one works for `grace` more."""
        if grace < timedelta(0):
            raise UserInputError("the grace period cannot be negative", hint="give 0 to end the old key at once")
        before = await self.get_key(name_or_id)
        plaintext, digest, prefix = self._new_secret()
        now = utcnow()
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE virtual_keys SET previous_hash = key_hash, previous_prefix = key_prefix, "
                "previous_valid_until = ?, key_hash = ?, key_prefix = ?, rotated_at = ? WHERE id = ?",
                (to_iso(now + grace), digest, prefix, to_iso(now), before.id),
            )
            row = await conn.fetchone(f"SELECT {_KEY_COLS} FROM virtual_keys WHERE id = ?", (before.id,))
            assert row is not None
            after = _key(row)
            await _audit(conn, actor, "key.rotate", before.name, before, after)
        return CreatedKey(after, plaintext)

    async def authenticate_key(self, plaintext: str, *, now: datetime | None = None) -> KeyIdentity | None:
        """The key behind `plaintext` if it works now: not revoked, not expired, the old one only in its grace."""
        if not plaintext.startswith(KEY_PREFIX) or len(plaintext) > 200:
            return None
        return await self.authenticate_key_hash(hash_secret(plaintext), now=now)

    async def authenticate_key_hash(self, digest: str, *, now: datetime | None = None) -> KeyIdentity | None:
        """`authenticate_key` for a `hash_secret` digest (lets a server cache by hash, never by plaintext)."""
        now = now or utcnow()
        row = await self.db.fetchone(_AUTH_SQL, (digest, digest, digest))
        if row is None:
            return None
        key = _key(row[:13])
        current = bool(row[13])
        team = _team(row[14:19])
        customer = None if row[19] is None else _customer(row[19:22])
        if key.revoked_at is not None or (key.expires_at is not None and now >= key.expires_at):
            return None
        if not current and (key.previous_valid_until is None or now >= key.previous_valid_until):
            return None
        return KeyIdentity(key, team, customer, via_previous=not current)

    # --- admin tokens ------------------------------------------------------------------------------------------

    async def create_admin_token(
        self, name: str, *, role: AdminRole | str, team: str | None = None, actor: str | None = None
    ) -> CreatedAdminToken:
        admin_role = _choice(AdminRole, role, "role")
        if (admin_role is AdminRole.TEAM_ADMIN) != (team is not None):
            raise UserInputError("a team_admin token needs --team, and only it", hint="give --team with team_admin")
        team_id = None if team is None else (await self.get_team(team)).id
        plaintext = ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = AdminToken(
            new_request_id(),
            _check_name("admin token", name),
            admin_role,
            team_id,
            plaintext[: len(ADMIN_TOKEN_PREFIX) + 6],
            None,
            utcnow(),
        )
        async with _one_name("admin token", token.name), self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO admin_tokens (id, name, name_folded, role, team_id, token_hash, token_prefix, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token.id,
                    token.name,
                    fold_name(token.name),
                    token.role.value,
                    team_id,
                    hash_secret(plaintext),
                    token.token_prefix,
                    to_iso(token.created_at),
                ),
            )
            await _audit(conn, actor, "admin_token.create", token.name, None, token)
        return CreatedAdminToken(token, plaintext)

    async def authenticate_admin(self, plaintext: str) -> AdminToken | None:
        row = await self.db.fetchone(
            f"SELECT {_ADMIN_COLS} FROM admin_tokens WHERE token_hash = ? AND revoked_at IS NULL",
            (hash_secret(plaintext),),
        )
        return None if row is None else _admin(row)

    async def list_admin_tokens(self) -> list[AdminToken]:
        return [_admin(r) for r in await self.db.fetch(f"SELECT {_ADMIN_COLS} FROM admin_tokens ORDER BY name")]

    async def revoke_admin_token(self, name: str, *, actor: str | None = None) -> None:
        row = await self.db.fetchone(f"SELECT {_ADMIN_COLS} FROM admin_tokens WHERE name = ?", (name,))
        if row is None:
            raise NotFoundError(f"no admin token {name!r}")
        before = _admin(row)
        async with self.db.transaction() as conn:
            await conn.execute("UPDATE admin_tokens SET revoked_at = ? WHERE id = ?", (to_iso(utcnow()), before.id))
            await _audit(conn, actor, "admin_token.revoke", name, before, None)

    # --- provider configs --------------------------------------------------------------------------------------

    async def put_provider(
        self,
        name: str,
        *,
        kind: str,
        base_url: str | None = None,
        api_key: str | None = None,
        actor: str | None = None,
    ) -> ProviderConfig:
        """Create or replace a provider config; `api_key` is encrypted (refused without the secret key)."""
        _check_name("provider", name)
        _check_text("provider kind", kind, limit=MAX_NAME)
        _check_text("base URL", base_url)
        encrypted = None if api_key is None else require_cipher(self.cipher).encrypt(api_key)
        now = to_iso(utcnow())
        async with _one_name("provider", name), self.db.transaction() as conn:
            old = await conn.fetchone(f"SELECT {_PROVIDER_COLS} FROM provider_configs WHERE name = ?", (name,))
            before = None if old is None else _provider(old)
            if before is None:
                await conn.execute(
                    "INSERT INTO provider_configs (id, name, name_folded, kind, base_url, api_key_encrypted, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (new_request_id(), name, fold_name(name), kind, base_url, encrypted, now, now),
                )
            else:
                await conn.execute(
                    "UPDATE provider_configs SET kind = ?, base_url = ?, "
                    "api_key_encrypted = coalesce(?, api_key_encrypted), updated_at = ? WHERE id = ?",
                    (kind, base_url, encrypted, now, before.id),
                )
            row = await conn.fetchone(f"SELECT {_PROVIDER_COLS} FROM provider_configs WHERE name = ?", (name,))
            assert row is not None
            after = _provider(row)
            await _audit(conn, actor, "provider.put", name, before, after)
        return after

    async def get_provider(self, name_or_id: str) -> ProviderConfig:
        row = await self.db.fetchone(
            f"SELECT {_PROVIDER_COLS} FROM provider_configs WHERE name = ? OR id = ? LIMIT 1", (name_or_id, name_or_id)
        )
        if row is None:
            raise NotFoundError(f"no provider {name_or_id!r}", hint="add it with `ccgate gateway admin provider add`")
        return _provider(row)

    async def list_providers(self) -> list[ProviderConfig]:
        return [
            _provider(r) for r in await self.db.fetch(f"SELECT {_PROVIDER_COLS} FROM provider_configs ORDER BY name")
        ]

    async def provider_api_key(self, name_or_id: str) -> str | None:
        """The decrypted API key for forwarding (never for display); refused without the secret key."""
        row = await self.db.fetchone(
            "SELECT api_key_encrypted FROM provider_configs WHERE name = ? OR id = ? LIMIT 1", (name_or_id, name_or_id)
        )
        if row is None:
            raise NotFoundError(f"no provider {name_or_id!r}")
        if row[0] is None:
            return None
        return require_cipher(self.cipher).decrypt(str(row[0]))

    async def has_stored_provider_keys(self) -> bool:
        """Whether `serve` must refuse to start without CCGATE_GATEWAY_SECRET_KEY."""
        row = await self.db.fetchone("SELECT count(*) FROM provider_configs WHERE api_key_encrypted IS NOT NULL")
        return bool(row and int(row[0]))

    @_changes_limits  # its budgets go with it
    async def delete_provider(self, name: str, *, actor: str | None = None) -> None:
        before = await self.get_provider(name)
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM provider_configs WHERE id = ?", (before.id,))
            await conn.execute("DELETE FROM budgets WHERE level = 'provider' AND target_id = ?", (before.id,))
            await _audit(conn, actor, "provider.delete", name, before, None)

    # --- budgets -----------------------------------------------------------------------------------------------

    async def _target_id(self, level: BudgetLevel | RateLevel, target: str) -> str:
        if level == "customer":
            return (await self.get_customer(target)).id
        if level == "team":
            return (await self.get_team(target)).id
        if level == "key":
            return (await self.get_key(target)).id
        return (await self.get_provider(target)).id

    @_changes_limits
    async def create_budget(
        self,
        *,
        level: BudgetLevel | str,
        target: str,
        limit_nanos: int,
        period: str,
        calendar: bool = True,
        timezone: str = "UTC",
        thresholds: Sequence[Decimal] = (),
        webhook_url: str | None = None,
        actor: str | None = None,
    ) -> Budget:
        """A budget on a customer, team, key or provider (by name or id); any number per target.

        It starts from what the ledger already holds for its target in the current window: a monthly team
        budget set on the 20th counts the month so far.
        """
        self.budget_generation += 1
        try:
            return await self._create_budget(
                level=level,
                target=target,
                limit_nanos=limit_nanos,
                period=period,
                calendar=calendar,
                timezone=timezone,
                thresholds=thresholds,
                webhook_url=webhook_url,
                actor=actor,
            )
        finally:
            self.budget_generation += 1  # a snapshot read while it was being created is stale too

    async def _create_budget(
        self,
        *,
        level: BudgetLevel | str,
        target: str,
        limit_nanos: int,
        period: str,
        calendar: bool,
        timezone: str,
        thresholds: Sequence[Decimal],
        webhook_url: str | None,
        actor: str | None,
    ) -> Budget:
        budget_level = _choice(BudgetLevel, level, "budget level")
        target_id = await self._target_id(budget_level, target)
        if not 0 <= limit_nanos <= admission.MAX_NANOS:
            raise UserInputError("a budget limit is 0 or more dollars, up to $1e9", hint="give a plain amount")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise UserInputError(
                f"unknown timezone {timezone!r}", hint="use an IANA name such as Europe/Berlin"
            ) from error
        _check_text("webhook URL", webhook_url)
        levels = tuple(sorted(Decimal(t) for t in thresholds))
        if any(not 0 < t <= 10 for t in levels):
            raise UserInputError(
                "alert thresholds are fractions of the limit", hint="e.g. 0.8 and 1 for 80 % and 100 %"
            )
        now = utcnow()
        budget = Budget(
            id=new_request_id(),
            level=budget_level,
            target_id=target_id,
            limit_nanos=limit_nanos,
            period=parse_period(period),
            calendar=calendar,
            timezone=timezone,
            thresholds=levels,
            webhook_url=webhook_url,
            override_limit_nanos=None,
            override_until=None,
            created_at=now,
            updated_at=now,
        )
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO budgets (id, level, lock_rank, target_id, limit_nanos, period, calendar, timezone, "
                "thresholds, webhook_url, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    budget.id,
                    budget.level.value,
                    budget.level.rank,
                    target_id,
                    limit_nanos,
                    budget.period.text,
                    int(calendar),
                    timezone,
                    json.dumps([str(t) for t in levels]),
                    webhook_url,
                    to_iso(now),
                    to_iso(now),
                ),
            )
            await admission.seed_spend(conn, budget, now)
            await _audit(conn, actor, "budget.create", f"{budget.level.value}:{target}", None, budget)
        return budget

    async def get_budget(self, budget_id: str) -> Budget:
        budgets = await admission.load_budgets(self.db, "id = ?", (budget_id,))
        if not budgets:
            raise NotFoundError(f"no budget {budget_id!r}", hint="list them with `ccgate gateway admin budget list`")
        return budgets[0]

    async def list_budgets(self, *, level: BudgetLevel | str | None = None, target: str | None = None) -> list[Budget]:
        if level is None:
            return await admission.load_budgets(self.db, "1 = 1", ())
        budget_level = _choice(BudgetLevel, level, "budget level")
        if target is None:
            return await admission.load_budgets(self.db, "level = ?", (budget_level.value,))
        target_id = await self._target_id(budget_level, target)
        return await admission.load_budgets(self.db, "level = ? AND target_id = ?", (budget_level.value, target_id))

    @_changes_limits
    async def update_budget(
        self,
        budget_id: str,
        *,
        limit_nanos: int | None = None,
        thresholds: Sequence[Decimal] | None = None,
        webhook_url: str | bool | None = False,
        actor: str | None = None,
    ) -> Budget:
        before = await self.get_budget(budget_id)
        limit = before.limit_nanos if limit_nanos is None else limit_nanos
        if not 0 <= limit <= admission.MAX_NANOS:
            raise UserInputError("a budget limit is 0 or more dollars, up to $1e9", hint="give a plain amount")
        levels = before.thresholds if thresholds is None else tuple(sorted(Decimal(t) for t in thresholds))
        hook = before.webhook_url if webhook_url is False else webhook_url
        if hook is not None and not isinstance(hook, str):
            raise UserInputError("webhook_url must be a URL", hint="give an https:// URL")
        _check_text("webhook URL", hook)
        async with self.db.transaction() as conn:
            await conn.execute(
                "UPDATE budgets SET limit_nanos = ?, thresholds = ?, webhook_url = ?, updated_at = ? WHERE id = ?",
                (limit, json.dumps([str(t) for t in levels]), hook, to_iso(utcnow()), before.id),
            )
            after = (await admission.load_budgets(conn, "id = ?", (before.id,)))[0]
            await _audit(conn, actor, "budget.update", before.id, before, after)
        return after

    @_changes_limits
    async def override_budget(
        self, budget_id: str, *, limit_nanos: int | None, now: datetime | None = None, actor: str | None = None
    ) -> Budget:
        """Replace the limit for the current window only (None removes an override)."""
        return await admission.override_budget(self.db, budget_id, limit_nanos, now or utcnow(), actor, _audit)

    @_changes_limits
    async def reset_budget(self, budget_id: str, *, now: datetime | None = None, actor: str | None = None) -> None:
        """Forget the current window's spend (the ledger keeps every row)."""
        await admission.reset_budget(self.db, budget_id, now or utcnow(), actor, _audit)

    @_changes_limits
    async def delete_budget(self, budget_id: str, *, actor: str | None = None) -> None:
        before = await self.get_budget(budget_id)
        async with self.db.transaction() as conn:
            # the order a ledger batch's settles take them in (its reservations' links, the budget row for a new
            # bucket, then the spend rows), so the two never wait on each other in a cycle
            await conn.execute("DELETE FROM reservation_budgets WHERE budget_id = ?", (before.id,))
            await conn.fetch(f"SELECT id FROM budgets WHERE id = ?{self.db.for_update}", (before.id,))
            await conn.execute("DELETE FROM budget_spend WHERE budget_id = ?", (before.id,))
            await conn.execute("DELETE FROM budget_alerts WHERE budget_id = ?", (before.id,))
            await conn.execute("DELETE FROM budgets WHERE id = ?", (before.id,))
            await _audit(conn, actor, "budget.delete", before.id, before, None)

    async def budget_views(
        self,
        *,
        key_id: str,
        team_id: str | None,
        customer_id: str | None,
        provider_id: str | None = None,
        now: datetime | None = None,
    ) -> list[BudgetView]:
        """Every budget applying to a key (and provider), with limit, spent, reserved and resets_at (`/v1/me`)."""
        return await admission.views(self.db, key_id, team_id, customer_id, provider_id, now or utcnow())

    async def budget_states(self, budgets: Sequence[Budget], *, now: datetime | None = None) -> list[BudgetView]:
        """Limit in force, spent this window and reserved now for any budgets (the admin API's budget list)."""
        async with self.db.transaction() as conn:
            return await admission._views(conn, budgets, now or utcnow())

    async def budget_views_at(
        self,
        moments: Sequence[datetime],
        *,
        key_id: str,
        team_id: str | None,
        customer_id: str | None,
        provider_id: str | None = None,
        now: datetime | None = None,
    ) -> list[BudgetView]:
        """Every budget applying to a key now and in each window one of `moments` falls in (see
        `admission.views_at`)."""
        return await admission.views_at(self.db, key_id, team_id, customer_id, provider_id, moments, now or utcnow())

    async def claim_alert(self, budget_id: str, window_start: datetime, threshold: Decimal) -> bool:
        """True exactly once per (budget, window, threshold), across instances: the caller then fires the webhook."""
        return await admission.claim_alert(self.db, budget_id, window_start, threshold)

    # --- admission ---------------------------------------------------------------------------------------------

    async def reserve(
        self,
        *,
        key_id: str,
        team_id: str | None,
        customer_id: str | None,
        provider_id: str | None,
        bound_nanos: int,
        instance_id: str,
        ttl: timedelta,
        now: datetime | None = None,
    ) -> AdmissionResult:
        """Admit and hold `bound_nanos` on every applying budget, or say why not (see `admission.reserve`)."""
        return await admission.reserve(
            self.db,
            key_id,
            team_id,
            customer_id,
            provider_id,
            bound_nanos,
            instance_id,
            ttl,
            now or utcnow(),
            self.budget_definitions,
            self.reserve_batcher,
        )

    async def admit(
        self,
        *,
        key_id: str,
        team_id: str | None,
        customer_id: str | None,
        provider_id: str | None,
        bound_nanos: int,
        instance_id: str,
        ttl: timedelta,
        take_rate: bool = True,
        now: datetime | None = None,
    ) -> tuple[RateDecision, AdmissionResult | None]:
        """`take_request` and then `reserve` in one round trip (one transaction); rate limited: nothing reserved
        and (RateLimited, None). Without `take_rate` the rate limits are not looked at."""
        ask = admission.Ask(key_id, team_id, customer_id, provider_id, bound_nanos, instance_id, ttl, now or utcnow())
        return await admission.admit(
            self.db, ask, take_rate=take_rate, definitions=self.budget_definitions, batcher=self.reserve_batcher
        )

    async def shrink(self, reservation: Reservation, new_bound_nanos: int) -> bool:
        """Lower the hold (never raises it); False if it was already that low or is gone."""
        changed = await admission.shrink(self.db, reservation.id, new_bound_nanos)
        self._wake_waiters()
        return changed

    async def settle(
        self,
        reservation: Reservation,
        actual_nanos: int,
        *,
        now: datetime | None = None,
        row: tuple[str, str] | None = None,
        keep_reservation: bool = False,
    ) -> bool:
        """Delete the hold and add the real cost to every budget it held, atomically; False if it had lapsed.
        With `row` (key id, row id) a row's cost goes into the budgets once (see `admission.claim_charge`).
        `keep_reservation`: the hold is a lease's, which its instance ends (only the spend is added)."""
        try:
            return await admission.settle(
                self.db,
                reservation,
                actual_nanos,
                now or utcnow(),
                row,
                self.budget_definitions,
                keep_reservation=keep_reservation,
            )
        finally:
            self._wake_waiters()

    async def release(self, reservation: Reservation) -> bool:
        """Drop the hold without spend (the request never reached a provider)."""
        try:
            return await admission.release(self.db, reservation.id)
        finally:
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        event, self._holds_changed = self._holds_changed, asyncio.Event()
        event.set()

    async def wait_for_holds(self, within: float) -> bool:
        """Wait until a hold of this instance shrinks, settles or is released, or `within` seconds pass.

        For a `Waiting` admission: try `reserve` again after this. Holds of other instances do not wake it, so
        a waiter should use a short timeout (e.g. 0.25 s) as its poll interval. Returns whether it was woken.
        """
        event = self._holds_changed
        try:
            await asyncio.wait_for(event.wait(), within)
        except TimeoutError:
            return False
        return True

    async def take_slots(
        self, *, key_id: str, team_id: str | None, want: int, now: datetime | None = None
    ) -> tuple[int, tuple[str, ...], int | None]:
        """Up to `want` of this minute's requests counted at once, for a lease (see `admission.take_slots`)."""
        return await admission.take_slots(self.db, key_id, team_id, want, now or utcnow())

    async def give_back_slots(self, rate_limit_ids: Sequence[str], taken_at: datetime, unused: int) -> None:
        await admission.give_back_slots(self.db, rate_limit_ids, taken_at, unused)

    async def renew(self, instance_id: str, *, ttl: timedelta, now: datetime | None = None) -> int:
        return await admission.renew(self.db, instance_id, ttl, now or utcnow())

    async def expire(self, *, now: datetime | None = None) -> int:
        return await admission.expire(self.db, now or utcnow())

    # --- rate limits -------------------------------------------------------------------------------------------

    @_changes_limits
    async def set_rate_limit(
        self, *, level: RateLevel | str, target: str, rpm: int | None, tpm: int | None, actor: str | None = None
    ) -> RateLimit:
        """Create or replace the rate limit of a team or key (None: no limit of that kind)."""
        rate_level = _choice(RateLevel, level, "rate limit level")
        if any(v is not None and (type(v) is not int or not 0 <= v <= MAX_RATE_LIMIT) for v in (rpm, tpm)):
            raise UserInputError(
                f"rate limits are whole numbers from 0 to {MAX_RATE_LIMIT}", hint="e.g. --rpm 60 --tpm 200000"
            )
        target_id = await self._target_id(rate_level, target)
        now = to_iso(utcnow())
        async with self.db.transaction() as conn:
            old = await conn.fetchone(
                f"SELECT {_RATE_COLS} FROM rate_limits WHERE level = ? AND target_id = ?", (rate_level.value, target_id)
            )
            before = None if old is None else _rate(old)
            if before is None:
                await conn.execute(
                    "INSERT INTO rate_limits (id, level, target_id, rpm, tpm, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (new_request_id(), rate_level.value, target_id, rpm, tpm, now, now),
                )
            else:
                await conn.execute(
                    "UPDATE rate_limits SET rpm = ?, tpm = ?, updated_at = ? WHERE id = ?", (rpm, tpm, now, before.id)
                )
            row = await conn.fetchone(
                f"SELECT {_RATE_COLS} FROM rate_limits WHERE level = ? AND target_id = ?", (rate_level.value, target_id)
            )
            assert row is not None
            after = _rate(row)
            await _audit(conn, actor, "ratelimit.set", f"{rate_level.value}:{target}", before, after)
        return after

    async def list_rate_limits(self) -> list[RateLimit]:
        return [
            _rate(r) for r in await self.db.fetch(f"SELECT {_RATE_COLS} FROM rate_limits ORDER BY level, target_id")
        ]

    @_changes_limits
    async def delete_rate_limit(self, *, level: RateLevel | str, target: str, actor: str | None = None) -> None:
        rate_level = _choice(RateLevel, level, "rate limit level")
        target_id = await self._target_id(rate_level, target)
        async with self.db.transaction() as conn:
            old = await conn.fetchone(
                f"SELECT {_RATE_COLS} FROM rate_limits WHERE level = ? AND target_id = ?", (rate_level.value, target_id)
            )
            if old is None:
                raise NotFoundError(f"no rate limit on {rate_level.value} {target!r}")
            await conn.execute("DELETE FROM rate_counters WHERE rate_limit_id = ?", (old[0],))
            await conn.execute("DELETE FROM rate_limits WHERE id = ?", (old[0],))
            await _audit(conn, actor, "ratelimit.delete", f"{rate_level.value}:{target}", _rate(old), None)

    async def take_request(self, *, key_id: str, team_id: str | None, now: datetime | None = None) -> RateDecision:
        """Count one request against the key's and team's per-minute limits, or refuse without counting it."""
        return await admission.take_request(self.db, key_id, team_id, now or utcnow())

    async def add_tokens(self, *, key_id: str, team_id: str | None, tokens: int, now: datetime | None = None) -> None:
        """Count a finished request's tokens toward the tokens-per-minute limits."""
        await admission.add_tokens(self.db, key_id, team_id, tokens, now or utcnow())

    # --- audit -------------------------------------------------------------------------------------------------

    async def audit(
        self, *, actor: str, action: str, target: str | None, before: Any = None, after: Any = None
    ) -> None:
        """Append an entry for a change made outside the store's own methods (before/after: records or dicts)."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO audit_log (id, at, actor, action, target, before_json, after_json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (new_request_id(), to_iso(utcnow()), actor, action, target, _audit_json(before), _audit_json(after)),
            )

    async def list_audit(
        self,
        *,
        since: datetime | None = None,
        actor: str | None = None,
        limit: int = 100,
        action: str | None = None,
        before_id: str | None = None,
    ) -> list[AuditEntry]:
        """Newest first; `action` matches exactly or as a prefix ending in "." ("key."); `before_id` pages on."""
        where = ["at >= ?"]
        params: list[Any] = [to_iso(since) if since else ""]
        if actor is not None:
            where.append("actor = ?")
            params.append(actor)
        if action is not None:
            where.append("(action = ? OR substr(action, 1, ?) = ?)" if action.endswith(".") else "action = ?")
            params.extend([action, len(action), action] if action.endswith(".") else [action])
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        rows = await self.db.fetch(
            "SELECT id, at, actor, action, target, before_json, after_json FROM audit_log "
            f"WHERE {' AND '.join(where)} ORDER BY at DESC, id DESC LIMIT ?",
            [*params, max(1, min(limit, 10_000))],
        )
        return [
            AuditEntry(
                str(r[0]),
                from_iso(r[1]),
                str(r[2]),
                str(r[3]),
                r[4],
                None if r[5] is None else json.loads(r[5]),
                None if r[6] is None else json.loads(r[6]),
            )
            for r in rows
        ]

    # --- the ledger --------------------------------------------------------------------------------------------

    async def write_requests(
        self, rows: Sequence[GatewayRow], tokens: Mapping[tuple[str, str | None], int] | None = None
    ) -> list[GatewayRow]:
        """Insert, or update while pending, by (key id, row id), and count `tokens` toward tokens-per-minute
        limits; returns the rows whose id a finished row of another request already has (see
        `ledger.write_requests`). A row's `charge` (its request's settle) is done in the same transaction."""
        try:
            return await ledger.write_requests(self.db, rows, tokens, self.budget_definitions)
        finally:
            if any(row.charge is not None for row in rows):
                self._wake_waiters()

    async def ingest(
        self,
        *,
        key_id: str,
        team_id: str | None,
        customer_id: str | None,
        records: Sequence[tuple[RequestRecord, dict[str, str]]],
    ) -> IngestResult:
        """Idempotent per (key id, row id); see `ledger.ingest`."""
        return await ledger.ingest(self.db, key_id=key_id, team_id=team_id, customer_id=customer_id, records=records)

    async def last_syncs(self, key_id: str | None = None) -> dict[str, datetime]:
        """Key id -> when the gateway last took a usage batch from it; one key's, or every key's."""
        return await ledger.last_syncs(self.db, key_id)

    async def get_request(self, key_id: str, row_id: str) -> GatewayRow | None:
        return await ledger.get_request(self.db, key_id, row_id)

    async def recover_pending(self, *, instance_id: str | None = None, started_before: datetime | None = None) -> int:
        return await ledger.recover_pending(self.db, instance_id=instance_id, started_before=started_before)

    async def report(
        self, *, since: datetime, until: datetime, by: str | None, tz: tzinfo = UTC, team_id: str | None = None
    ) -> CostReport:
        """Spend grouped by key|team|customer|project|model|provider|day|session|tag:K; `report_to_json` it."""
        return await ledger.report(self.db, since=since, until=until, by=by, tz=tz, team_id=team_id)

    async def refresh_rollups(self, *, since: date, until: date) -> None:
        await ledger.refresh_rollups(self.db, since=since, until=until)

    async def prune_requests(self, *, before: date) -> int:
        """Delete raw rows before `before` (UTC day); roll-ups are kept for ever."""
        return await ledger.prune_requests(self.db, before=before)

    async def rebuild_rollups(self, *, since: datetime | None = None, actor: str) -> tuple[datetime | None, int]:
        """Recompute the hourly roll-ups from the raw rows (from `since` on), and the daily ones from the hours,
        audited: the repair after a previous release wrote rows beside this one. Returns the first hour rebuilt and
        its hourly rows."""
        first, count = await ledger.rebuild_hourly(self.db, since=since)
        after = {"since": None if first is None else to_iso(first), "hourly_rows": count}
        async with self.db.transaction() as conn:
            await _audit(conn, actor, "rollups.rebuild", "request_hourly", None, after)
        return first, count


def _tuple_or_none(value: Sequence[str] | bool | None) -> tuple[str, ...] | None:
    if value is None or isinstance(value, bool):
        return None
    return tuple(value)


def _audit_json(value: Any) -> str | None:
    if value is None:
        return None
    data = value if isinstance(value, dict) else public_dict(value)
    return json.dumps(data, sort_keys=True, default=str)
