"""USD amounts as people type them and as config.toml holds them: one strict parser, exact Decimals out.

Accepted: `20`, `20.5`, `.5`, `$20`, `1,000.50` (commas only between groups of three digits). Refused: decimal
commas (`1,5`), signs, exponents, NaN/infinity, more than 9 decimal places (ccgate counts nano-dollars) and
anything above `MAX_USD`. Refusals are `AmountError`s carrying a reason; callers put them in their own words
(`UserInputError` on the command line, `ConfigError` with file and key for config.toml).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MAX_USD = Decimal(1_000_000_000)
MAX_PLACES = 9
# A budget is either 0 (refuse every priced request) or at least one cent: smaller limits are typos.
MIN_BUDGET_USD = Decimal("0.01")
_SMALLEST = Decimal(1).scaleb(-MAX_PLACES)

_PLAIN = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$")
_GROUPED = re.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
HINT = "give a plain number of dollars such as 20, 7.50, $1,000 or 0.59"


class AmountError(ValueError):
    """A value that is not an acceptable USD amount; `reason` says why, `hint` what to type instead."""

    def __init__(self, reason: str, hint: str = HINT) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


def parse_usd(text: str) -> Decimal:
    """A typed amount -> exact Decimal, checked by `check_usd`; never float, never scientific notation."""
    return check_usd(_parse_plain(text))


def parse_budget_limit(text: str) -> Decimal:
    """A typed budget limit: an amount that is 0 or at least `MIN_BUDGET_USD`."""
    return check_usd(check_budget_limit(_parse_plain(text)))


def _parse_plain(text: str) -> Decimal:
    cleaned = text.strip()
    if cleaned.startswith("$"):
        cleaned = cleaned[1:].strip()
    if cleaned.startswith("-"):
        raise AmountError("amounts cannot be negative")
    if "," in cleaned:
        if not _GROUPED.match(cleaned):
            raise AmountError(
                "commas may only separate thousands (1,000.50)", hint="use a dot for decimals, e.g. 1.5 not 1,5"
            )
        cleaned = cleaned.replace(",", "")
    if not _PLAIN.match(cleaned):
        raise AmountError("not a plain decimal number")
    return Decimal(cleaned)


def check_usd(amount: Decimal) -> Decimal:
    """The bounds every stored amount obeys: finite, 0 <= amount <= MAX_USD, at most MAX_PLACES decimals."""
    if not amount.is_finite():
        raise AmountError("not a finite number")
    if amount < 0:
        raise AmountError("amounts cannot be negative")
    if amount > MAX_USD:
        raise AmountError(f"above the ${MAX_USD:,} ceiling")
    if amount != amount.quantize(_SMALLEST):
        raise AmountError(f"more than {MAX_PLACES} decimal places (ccgate counts in billionths of a dollar)")
    return amount


def usd_from_toml(value: object) -> Decimal:
    """A config value: a string as `parse_usd` reads it, or a TOML integer/float (read via its shortest repr)."""
    if isinstance(value, str):
        return parse_usd(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AmountError(f'expected a number or a string like "20.50", got {type(value).__name__}')
    try:
        # float -> repr first, so 0.1 stays 0.1 rather than its binary neighbour
        amount = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
    except InvalidOperation as exc:  # pragma: no cover - every int and float repr is a valid Decimal
        raise AmountError("not a number") from exc
    return check_usd(amount)


def check_budget_limit(amount: Decimal) -> Decimal:
    """Budgets are 0 (nothing priced may run) or at least `MIN_BUDGET_USD`."""
    if 0 < amount < MIN_BUDGET_USD:
        raise AmountError(
            f"budgets below ${MIN_BUDGET_USD} make no sense", hint="use at least 0.01 (or 0 to refuse every request)"
        )
    return amount


def usd_text(amount: Decimal) -> str:
    """How amounts are written to config.toml: plain positional notation, never `1E-10`."""
    return format(amount, "f")
