"""`cost --chart`: spend per group as horizontal bars in the terminal; calendar groups as a time series."""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

from ccgate.storage.reports import Totals

if TYPE_CHECKING:
    from rich.console import Console

    from ccgate.storage.reports import CostReport, GroupKey

EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar(value: int, largest: int, width: int) -> str:
    """A bar of `width` cells for `largest`, in eighths of a cell; a non-zero value shows at least a sliver."""
    if largest <= 0 or value <= 0:
        return ""
    eighths = max(1, value * width * 8 // largest)
    full, part = divmod(eighths, 8)
    return "█" * full + (EIGHTHS[part] if part else "")


def _label(key: GroupKey) -> str:
    return " · ".join(key) if isinstance(key, tuple) else key


def series(report: CostReport) -> list[tuple[str, Totals]]:
    """The groups to draw: with `--by day` every day from the first to the last (empty days as zero)."""
    groups = [(_label(key), totals) for key, totals in report.groups]
    if report.by != "day" or not groups:
        return groups
    known = dict(groups)
    first, last = date.fromisoformat(groups[0][0]), date.fromisoformat(groups[-1][0])
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    return [(day.isoformat(), known.get(day.isoformat(), Totals())) for day in days]


def print_chart(out: Console, report: CostReport, heading: str) -> None:
    from rich.table import Table
    from rich.text import Text

    from ccgate.cli.cost import cost_cell

    rows = series(report)
    labels = [label if report.by != "day" else f"{date.fromisoformat(label):%a} {label}" for label, _ in rows]
    costs = [cost_cell(totals) if totals.requests else "–" for _, totals in rows]
    width = max(10, out.width - max(map(len, labels)) - max(map(len, costs)) - 4)
    largest = max(totals.cost_nanos for _, totals in rows)
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True, overflow="ellipsis", max_width=max(10, out.width // 3))
    table.add_column(no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    for label, cost, (_, totals) in zip(labels, costs, rows, strict=True):
        table.add_row(label, Text(bar(totals.cost_nanos, largest, width), style="cyan"), cost)
    out.print(f"ccgate spend {heading}, by {report.by or 'model'}", markup=False)
    out.print(table)
    out.print(f"Total {cost_cell(report.total)} (API list prices)", markup=False)
