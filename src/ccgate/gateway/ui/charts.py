"""Chart geometry for the dashboard, drawn server-side as inline SVG (no script, nothing fetched).

Only numbers leave this module; the templates draw them and escape every label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

# a colour-blind-safe palette (Okabe-Ito), then grey for everything past it
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")
OTHER_COLOUR = "#999999"
OTHER = "other"

WIDTH = 900
HEIGHT = 260
LEFT = 60
BOTTOM = 24
TOP = 10


@dataclass(frozen=True, slots=True)
class Segment:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str  # the hover text: day, series, amount


@dataclass(frozen=True, slots=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True, slots=True)
class XLabel:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class LegendItem:
    colour: str
    label: str
    nanos: int


@dataclass(frozen=True, slots=True)
class StackedChart:
    width: int
    height: int
    segments: tuple[Segment, ...]
    ticks: tuple[Tick, ...]
    labels: tuple[XLabel, ...]
    legend: tuple[LegendItem, ...]
    empty: bool


def _nice_top(value: int) -> int:
    """A round axis top (1, 2, 5 x 10^n nano-dollars) at or above `value`."""
    if value <= 0:
        return 1_000_000_000
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def stacked_days(
    cells: Mapping[tuple[str, str], int],
    *,
    first: date,
    days: int,
    names: Mapping[str, str],
    usd: object,
    series_limit: int = len(PALETTE),
) -> StackedChart:
    """One bar per day, stacked by series; series past the biggest `series_limit` are merged into "other".

    `cells` maps (YYYY-MM-DD, series id) to nano-dollars; `usd` formats an amount for labels.
    """
    fmt = usd if callable(usd) else str
    totals: dict[str, int] = {}
    for (_, series), nanos in cells.items():
        totals[series] = totals.get(series, 0) + nanos
    ranked = sorted(totals, key=lambda s: (-totals[s], names.get(s, s)))
    kept = [s for s in ranked[:series_limit] if totals[s] > 0]
    colour = {s: PALETTE[i] for i, s in enumerate(kept)}
    merged: dict[tuple[str, str], int] = {}
    for (day, series), nanos in cells.items():
        key = (day, series if series in colour else OTHER)
        merged[key] = merged.get(key, 0) + nanos
    day_list = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    per_day = {day: sum(n for (d, _), n in merged.items() if d == day) for day in day_list}
    top = _nice_top(max(per_day.values(), default=0))
    plot_w = WIDTH - LEFT - 10
    plot_h = HEIGHT - TOP - BOTTOM
    slot = plot_w / max(days, 1)
    order = [*kept, OTHER]
    segments: list[Segment] = []
    for index, day in enumerate(day_list):
        y = float(TOP + plot_h)
        for series in order:
            nanos = merged.get((day, series), 0)
            if nanos <= 0:
                continue
            h = plot_h * nanos / top
            y -= h
            label = OTHER if series == OTHER else names.get(series, series) or "(none)"
            segments.append(
                Segment(
                    round(LEFT + index * slot + slot * 0.1, 2),
                    round(y, 2),
                    round(slot * 0.8, 2),
                    round(h, 2),
                    colour.get(series, OTHER_COLOUR),
                    f"{day} {label}: {fmt(nanos)}",
                )
            )
    ticks = tuple(Tick(round(TOP + plot_h - plot_h * i / 4, 2), tick_label(top * i // 4, top)) for i in range(5))
    every = max(1, days // 10)
    labels = tuple(
        XLabel(round(LEFT + i * slot + slot / 2, 2), day[5:]) for i, day in enumerate(day_list) if i % every == 0
    )
    legend = [LegendItem(colour[s], names.get(s, s) or "(none)", totals[s]) for s in kept]
    rest = sum(n for s, n in totals.items() if s not in colour)
    if rest > 0:
        legend.append(LegendItem(OTHER_COLOUR, OTHER, rest))
    return StackedChart(WIDTH, HEIGHT, tuple(segments), ticks, labels, tuple(legend), not segments)


def tick_label(nanos: int, top: int) -> str:
    """An axis label with as many decimals as a quarter of the axis needs ($0.0025, $0.005, ... on a cent scale)."""
    step = max(top // 4, 1)
    places = 2
    while places < 9 and step % 10 ** (9 - places):
        places += 1
    return f"${Decimal(nanos) / 10**9:,.{places}f}"


@dataclass(frozen=True, slots=True)
class Bar:
    """A budget as a bar: used (spent), held (reserved) and left, as fractions of the bar's width."""

    spent: float
    reserved: float
    level: str  # ok | warn | over


def budget_bar(limit_nanos: int, spent_nanos: int, reserved_nanos: int, *, warn_at: float = 0.8) -> Bar:
    if limit_nanos <= 0:
        return Bar(1.0 if spent_nanos > 0 else 0.0, 0.0, "over" if spent_nanos > 0 else "ok")
    spent = min(1.0, spent_nanos / limit_nanos)
    reserved = min(1.0 - spent, reserved_nanos / limit_nanos)
    level = "over" if spent_nanos >= limit_nanos else "warn" if spent >= warn_at else "ok"
    return Bar(round(spent, 4), round(max(reserved, 0.0), 4), level)
