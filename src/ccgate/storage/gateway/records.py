"""Values the gateway store hands out: frozen dataclasses without secrets (hashes and ciphertext stay inside)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from ccgate.core.budgets import BudgetState, Period
from ccgate.core.records import RequestRecord, to_iso
from ccgate.core.webhooks import redact_webhook_url


class KeyMode(StrEnum):
    PROXY = "proxy"
    REPORT = "report"


class AdminRole(StrEnum):
    ADMIN = "admin"
    VIEWER = "viewer"
    TEAM_ADMIN = "team_admin"


class BudgetLevel(StrEnum):
    """Admission locks budget rows in this order (customer, team, key, provider), then by id."""

    CUSTOMER = "customer"
    TEAM = "team"
    KEY = "key"
    PROVIDER = "provider"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {BudgetLevel.CUSTOMER: 0, BudgetLevel.TEAM: 1, BudgetLevel.KEY: 2, BudgetLevel.PROVIDER: 3}


class RateLevel(StrEnum):
    TEAM = "team"
    KEY = "key"


class RowSource(StrEnum):
    PROXIED = "proxied"
    INGESTED = "ingested"


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Team:
    id: str
    name: str
    customer_id: str | None
    tier_overrides: dict[str, str]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """A developer's key as stored: a display prefix only; `previous_*` is the rotated-out key in its grace."""

    id: str
    name: str
    team_id: str
    mode: KeyMode
    key_prefix: str
    allowed_models: tuple[str, ...] | None  # None: every model
    allowed_providers: tuple[str, ...] | None  # None: every provider
    tier_overrides: dict[str, str]
    expires_at: datetime | None
    revoked_at: datetime | None
    previous_prefix: str | None
    previous_valid_until: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """What `create_key`/`rotate_key` return: the plaintext `sk-cg-...` exists only here, shown once."""

    key: VirtualKey
    plaintext: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    """A virtual key that authenticates now, with its team and customer (`via_previous`: the rotated-out key)."""

    key: VirtualKey
    team: Team
    customer: Customer | None
    via_previous: bool = False

    @property
    def tier_overrides(self) -> dict[str, str]:
        """The team's overrides, overridden per tier by the key's."""
        return {**self.team.tier_overrides, **self.key.tier_overrides}


@dataclass(frozen=True, slots=True)
class AdminToken:
    id: str
    name: str
    role: AdminRole
    team_id: str | None
    token_prefix: str
    revoked_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CreatedAdminToken:
    token: AdminToken
    plaintext: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """A provider the gateway forwards to; the API key itself is only returned by `provider_api_key`."""

    id: str
    name: str
    kind: str
    base_url: str | None
    has_api_key: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Budget:
    id: str
    level: BudgetLevel
    target_id: str
    limit_nanos: int
    period: Period
    calendar: bool  # calendar-aligned in `timezone`; False: rolling
    timezone: str
    thresholds: tuple[Decimal, ...]  # fractions of the limit at which the webhook fires, e.g. (0.8, 1)
    webhook_url: str | None
    override_limit_nanos: int | None  # replaces limit_nanos until override_until (the window it was set in)
    override_until: datetime | None
    created_at: datetime
    updated_at: datetime

    def effective_limit(self, now: datetime) -> int:
        if self.override_limit_nanos is not None and self.override_until is not None and now < self.override_until:
            return self.override_limit_nanos
        return self.limit_nanos

    @property
    def label(self) -> str:
        kind = "rolling " if not self.calendar else ""
        return f"{kind}{self.period.name} {self.level.value} budget"


@dataclass(frozen=True, slots=True)
class BudgetView:
    """A budget and its state now (limit in force, spent this window, reserved by live reservations)."""

    budget: Budget
    state: BudgetState
    window_start: datetime


# rpm and tpm are INTEGER columns (32-bit on PostgreSQL): a limit above this is refused before any SQL runs
MAX_RATE_LIMIT = 2**31 - 1


@dataclass(frozen=True, slots=True)
class RateLimit:
    id: str
    level: RateLevel
    target_id: str
    rpm: int | None
    tpm: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    budget_ids: tuple[str, ...]
    amount_nanos: int
    instance_id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Admitted:
    reservation: Reservation
    budgets: tuple[BudgetView, ...]


@dataclass(frozen=True, slots=True)
class Waiting:
    """Spent is below the limit but live reservations fill it: wait for them to settle, then try again."""

    blocking: BudgetView


@dataclass(frozen=True, slots=True)
class Refused:
    """`blocking` has spent its limit (state.limit_nanos, state.spent_nanos, state.resets_at say how and until when)."""

    blocking: BudgetView


AdmissionResult = Admitted | Waiting | Refused


@dataclass(frozen=True, slots=True)
class RateAllowed:
    pass


@dataclass(frozen=True, slots=True)
class RateLimited:
    limit: RateLimit
    kind: str  # "requests" or "tokens"
    used: int
    allowed: int
    retry_after_s: int


RateDecision = RateAllowed | RateLimited


@dataclass(frozen=True, slots=True)
class Charge:
    """A proxied request's settle, written with its final row in one transaction: the reservation goes, the real
    cost goes into its budgets, and the row is marked charged (so a sync or a recovery never charges it again)."""

    reservation: Reservation
    nanos: int
    # a request admitted from its instance's lease (`gateway.leases`): the lease's reservation stays, its
    # instance ends it
    keep_reservation: bool = False


@dataclass(slots=True)
class GatewayRow:
    """One gateway ledger row: the sidecar's `RequestRecord` plus who it belongs to and how it arrived."""

    record: RequestRecord
    key_id: str
    team_id: str | None
    customer_id: str | None
    source: RowSource = RowSource.PROXIED
    tags: dict[str, str] = field(default_factory=dict)
    instance_id: str | None = None  # the gateway instance writing it (to recover its pending rows after a crash)
    charge: Charge | None = None  # a final row's settle, done in the transaction that writes the row


@dataclass(frozen=True, slots=True)
class IngestResult:
    sent: int  # newly stored
    known: int  # already there (replayed, or proxied by the gateway before)
    rejected: int
    rejected_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    at: datetime
    actor: str
    action: str
    target: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def public_dict(value: Any) -> dict[str, Any]:
    """A record as JSON-ready data for the audit log and the admin API: no secret is ever in a record."""
    out: dict[str, Any] = {}
    for name in value.__dataclass_fields__:
        item = getattr(value, name)
        if isinstance(item, datetime):
            item = to_iso(item)
        elif isinstance(item, Period):
            item = item.text
        elif isinstance(item, Decimal):
            item = str(item)
        elif isinstance(item, tuple):
            item = [str(x) if isinstance(x, Decimal) else x for x in item]
        elif isinstance(item, StrEnum):
            item = item.value
        if name == "webhook_url":  # it may carry a token: shown and audited redacted, stored as given
            item = redact_webhook_url(item)
        out[name] = item
    return json.loads(json.dumps(out))  # type: ignore[no-any-return]
