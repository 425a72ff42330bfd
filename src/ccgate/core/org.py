"""What a gateway's `GET /v1/me` says about a virtual key, and the org-budget check of report mode (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from ccgate.core.records import format_usd, usd_to_nanos
from ccgate.errors import BudgetExceededError

MODES = ("proxy", "report")


@dataclass(frozen=True, slots=True)
class OrgBudget:
    level: str
    label: str | None
    period: str
    limit_nanos: int
    spent_nanos: int
    reserved_nanos: int
    left_nanos: int
    resets_at: str | None

    @property
    def name(self) -> str:
        return self.label or f"{self.level} budget"


@dataclass(frozen=True, slots=True)
class Identity:
    """What `GET /v1/me` says about the key (never the key itself)."""

    gateway: str
    key_name: str
    key_prefix: str | None
    team: str | None
    customer: str | None
    mode: str
    budgets: tuple[OrgBudget, ...]
    expires_at: str | None = None
    notice: str | None = None
    # when the gateway last took a usage batch from this key (from any machine); None: never, or not said
    last_sync_at: str | None = None
    # the gateway's word that the key presented is the one it rotated out (None: an older gateway said nothing)
    rotated: bool | None = None
    grace_until: str | None = None


def _nanos(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(value)
    try:
        return usd_to_nanos(Decimal(str(value)))
    except InvalidOperation:
        raise ValueError(value) from None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_me(gateway: str, data: Any) -> Identity:
    """`/v1/me` read strictly; ValueError for anything else (the caller says it is not a gateway we know)."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    try:
        mode = data["mode"]
        if mode not in MODES or not isinstance(data.get("key"), str):
            raise ValueError(mode)
        budgets = tuple(
            OrgBudget(
                level=str(item["level"]),
                label=_text(item.get("label")),
                period=str(item["period"]),
                limit_nanos=_nanos(item["limit_usd"]),
                spent_nanos=_nanos(item.get("spent_usd", "0")),
                reserved_nanos=_nanos(item.get("reserved_usd", "0")),
                left_nanos=_nanos(item.get("left_usd", "0")),
                resets_at=_text(item.get("resets_at")),
            )
            for item in data.get("budgets") or []
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(str(error)) from None
    return Identity(
        gateway=gateway,
        key_name=data["key"],
        key_prefix=_text(data.get("key_prefix")),
        team=_text(data.get("team")),
        customer=_text(data.get("customer")),
        mode=mode,
        budgets=budgets,
        expires_at=_text(data.get("expires_at")),
        notice=_text(data.get("notice")),
        last_sync_at=_text(data.get("last_sync_at")),
        rotated=rotated if isinstance(rotated := data.get("rotated"), bool) else None,
        grace_until=_text(data.get("grace_until")),
    )


def org_budget_refusal(budgets: tuple[OrgBudget, ...], unseen_nanos: int) -> BudgetExceededError | None:
    """Report mode: the first org budget that the gateway's spent plus this machine's spend the gateway has not
    seen yet has reached, as the 402 Claude Code shows; None while every one has room."""
    for budget in budgets:
        spent = budget.spent_nanos + max(0, unseen_nanos)
        if spent >= budget.limit_nanos:
            resets = f"; it resets {budget.resets_at}" if budget.resets_at else ""
            return BudgetExceededError(
                f"org budget {budget.name!r} ({budget.level}, {budget.period}) is used up: {format_usd(spent)} of "
                f"{format_usd(budget.limit_nanos)} spent{resets}",
                hint="this budget is set by your org on its ccgate gateway; ask your platform team to raise it",
            )
    return None


def rotation_notice(key: str, identity: Identity) -> str | None:
    """The org rotated the key: the old one works only through the rotation's grace period. The gateway says so
    (`rotated`, `grace_until`); only a gateway that does not is judged by the new key's prefix in `/v1/me`."""
    if identity.rotated is None:
        rotated = bool(identity.key_prefix) and not key.startswith(identity.key_prefix or "")
    else:
        rotated = identity.rotated
    if not rotated:
        return None
    until = f"until {identity.grace_until}" if identity.grace_until else "only until its grace period ends"
    return f"your org rotated this key: it works {until}; run `ccgate login {identity.gateway}` with the new key"
