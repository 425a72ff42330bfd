"""Jinja2's one home module: the dashboard's templates, rendered with autoescape on, and the display filters.

Every value from the database reaches the page through autoescape (names, models, projects and audit entries are
whatever an admin or a client typed); the templates never mark anything safe.
"""

from __future__ import annotations

import functools
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import jinja2

from ccgate.core.records import nanos_to_usd, to_iso
from ccgate.storage.reports import usd_string

_CENT = Decimal("0.01")


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ccgate.gateway.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        usd=usd, exact_usd=exact_usd, tokens=tokens, when=when, iso=iso, percent=percent, segment=segment
    )
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def usd(nanos: int | None) -> str:
    """`$1,234.57` (cents, half-even); `unpriced` for None; `<$0.01` for a tiny non-zero amount."""
    if nanos is None:
        return "unpriced"
    if 0 < abs(nanos) < 5_000_000:
        return "<$0.01"
    value = nanos_to_usd(nanos).quantize(_CENT, rounding=ROUND_HALF_EVEN)
    return f"-${-value:,}" if value < 0 else f"${value:,}"


def exact_usd(nanos: int | None) -> str:
    """The exact amount as `gateway report --json` writes it (nine places), for `data-usd` and CSV."""
    return "" if nanos is None else usd_string(nanos)


def segment(value: str) -> str:
    """One path segment: everything but unreserved characters percent-encoded, `/` too (a team may be `a/b`)."""
    from urllib.parse import quote

    return quote(str(value), safe="")


def tokens(count: int | None) -> str:
    if count is None:
        return ""
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if abs(count) >= size:
            return f"{count / size:.1f}{suffix}"
    return str(count)


def when(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def iso(moment: datetime | None) -> str:
    return "" if moment is None else to_iso(moment)


def percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}%"
