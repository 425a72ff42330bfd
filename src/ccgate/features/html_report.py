"""`ccgate report --html`: one self-contained HTML page of a period's spend (no script, no network, no fonts).

The page is built from the same reports as `cost --json`; every amount carries its exact decimal string in a
`data-usd` attribute so it can be checked against `cost --json`. A Content-Security-Policy forbids every fetch,
so opening the file never touches the network. All ledger text is HTML-escaped (and its control characters
shown escaped, as in the terminal).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

from ccgate.core.display import printable
from ccgate.core.records import format_usd
from ccgate.storage.reports import GroupKey, SessionInfo, Totals, usd_string

if TYPE_CHECKING:
    from ccgate.storage.blocks import Block
    from ccgate.storage.reports import CostReport

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")
OTHER = "(other models)"
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; base-uri 'none'"


@dataclass(slots=True)
class PageData:
    """Everything the page shows; each report is what `cost --json --by ...` prints for the same period."""

    heading: str
    generated: datetime
    tz: tzinfo
    by_model: CostReport
    by_project: CostReport
    by_day_model: CostReport
    blocks: Sequence[Block]
    by_day_project: CostReport | None = None
    tags: dict[str, CostReport] = field(default_factory=dict)
    sessions: CostReport | None = None
    session_details: dict[str, SessionInfo] = field(default_factory=dict)


def esc(text: str) -> str:
    return html.escape(printable(text, newlines=True), quote=True)


def money(totals: Totals) -> str:
    """A cell with the exact amount in `data-usd`; `unpriced` (never $0) when no request has a price."""
    if totals.all_unpriced:
        return '<td class="num" data-usd="" data-unpriced="1">unpriced</td>'
    mark = ("~" if totals.estimated_requests else "") + format_usd(totals.cost_nanos)
    mark += "*" if totals.unpriced_requests else ""
    return f'<td class="num" data-usd="{usd_string(totals.cost_nanos)}">{esc(mark)}</td>'


def tokens(totals: Totals) -> int:
    return totals.input_tokens + totals.output_tokens + totals.cache_read_tokens + totals.cache_write_tokens


def _key_text(key: GroupKey) -> str:
    return " · ".join(key) if isinstance(key, tuple) else key


def group_table(report: CostReport, title: str, table_id: str, *, limit: int | None = None) -> str:
    rows = report.groups[:limit] if limit else report.groups
    body = "".join(
        f'<tr data-key="{esc(_key_text(key))}"><td class="key">{esc(_key_text(key))}</td>'
        f'<td class="num" data-requests="{totals.requests}">{totals.requests:,}</td>'
        f'<td class="num">{tokens(totals):,}</td>{money(totals)}</tr>'
        for key, totals in rows
    )
    total = report.total
    return (
        f'<table id="{table_id}"><caption>{esc(title)}</caption>'
        "<thead><tr><th>Group</th><th>Requests</th><th>Tokens</th><th>Cost</th></tr></thead>"
        f"<tbody>{body}</tbody><tfoot><tr><td>Total</td><td class='num' data-requests='{total.requests}'>"
        f"{total.requests:,}</td><td class='num'>{tokens(total):,}</td>{money(total)}</tr></tfoot></table>"
    )


def _colours(report: CostReport) -> dict[str, str]:
    """A colour per model, the costliest first; beyond the palette they share one 'other' colour."""
    spend: dict[str, int] = {}
    for key, totals in report.groups:
        if isinstance(key, tuple):
            spend[key[1]] = spend.get(key[1], 0) + totals.cost_nanos
    ranked = sorted(spend, key=lambda model: -spend[model])
    return {model: PALETTE[index] if index < len(PALETTE) - 1 else PALETTE[-1] for index, model in enumerate(ranked)}


def day_chart(report: CostReport, chart_id: str = "spend-chart") -> str:
    """Stacked bars of spend per local day and second key (model, project), as inline SVG (every empty day
    drawn as a gap)."""
    per_day: dict[str, list[tuple[str, int]]] = {}
    for key, totals in report.groups:
        if isinstance(key, tuple):
            per_day.setdefault(key[0], []).append((key[1], totals.cost_nanos))
    if not per_day:
        return '<p class="empty">No requests in this period.</p>'
    first, last = date.fromisoformat(min(per_day)), date.fromisoformat(max(per_day))
    days = [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
    colours = _colours(report)
    tallest = max(sum(cost for _, cost in parts) for parts in per_day.values()) or 1
    width, height, gap = max(12, 640 // len(days)), 200, 2
    shapes: list[str] = []
    for index, day in enumerate(days):
        y = float(height)
        for model, cost in per_day.get(day, []):
            size = cost * height / tallest
            if size <= 0:
                continue
            y -= size
            shapes.append(
                f'<rect x="{index * width + gap}" y="{y:.2f}" width="{width - 2 * gap}" height="{size:.2f}" '
                f'fill="{colours.get(model, PALETTE[-1])}"><title>{esc(day)} {esc(model)}: '
                f"{esc(format_usd(cost))}</title></rect>"
            )
    total_width = width * len(days)
    legend = "".join(
        f'<span class="swatch" style="background:{colour}"></span>{esc(model)} ' for model, colour in colours.items()
    )
    return (
        f'<svg id="{chart_id}" role="img" viewBox="0 0 {total_width} {height}" width="100%" height="{height}" '
        f'preserveAspectRatio="none" xmlns="http://www.w3.org/2000/svg">{"".join(shapes)}</svg>'
        f'<p class="axis"><span>{esc(days[0])}</span><span>{esc(days[-1])}</span></p><p class="legend">{legend}</p>'
    )


def blocks_table(blocks: Sequence[Block], tz: tzinfo, now: datetime) -> str:
    if not blocks:
        return '<p class="empty">No 5-hour windows in this period.</p>'
    rows = "".join(
        f"<tr><td>{esc(f'{b.start.astimezone(tz):%a %Y-%m-%d %H:%M} – {b.end.astimezone(tz):%H:%M}')}</td>"
        f'<td class="num">{b.totals.requests:,}</td><td class="num">{b.tokens:,}</td>{money(b.totals)}'
        f"<td>{'active' if b.active(now) else ''}</td></tr>"
        for b in blocks
    )
    return (
        '<table id="blocks"><caption>5-hour windows</caption><thead><tr><th>Window (local)</th><th>Requests</th>'
        f"<th>Tokens</th><th>Cost</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
    )


def sessions_table(report: CostReport, details: dict[str, SessionInfo], tz: tzinfo) -> str:
    rows = []
    for key, totals in report.groups:
        info = details.get(key) if isinstance(key, str) else None
        when = f"{info.first.astimezone(tz):%Y-%m-%d %H:%M} – {info.last.astimezone(tz):%Y-%m-%d %H:%M}" if info else ""
        rows.append(
            f'<tr data-key="{esc(_key_text(key))}"><td class="key">{esc(_key_text(key))}</td>'
            f"<td>{esc(info.project or '') if info else ''}</td><td>{esc(when)}</td>"
            f"<td>{esc(', '.join(info.models)) if info else ''}</td>"
            f'<td class="num">{totals.requests:,}</td>{money(totals)}</tr>'
        )
    return (
        '<table id="sessions"><caption>Top sessions</caption><thead><tr><th>Session</th><th>Project</th>'
        "<th>First – last (local)</th><th>Models</th><th>Requests</th><th>Cost</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}.sub{color:#666;margin-top:0}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
.card b{display:block;font-size:1.4em}table{border-collapse:collapse;margin:1.5em 0;width:100%}
caption{text-align:left;font-weight:bold;font-size:1.1em;margin-bottom:.3em}
th,td{border-bottom:1px solid #eee;padding:.25em .5em;text-align:left;vertical-align:top}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.key{word-break:break-all}
tfoot td{font-weight:bold;border-top:2px solid #ccc}.axis{display:flex;justify-content:space-between;color:#666}
.swatch{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 .8em;vertical-align:middle}
.empty,.note{color:#666}svg{background:#fafafa;border:1px solid #eee}
"""


def render(data: PageData) -> str:
    """The whole page as one string."""
    total = data.by_model.total
    cards = (
        f'<div class="cards"><div class="card" id="total-cost" data-usd="{usd_string(total.cost_nanos)}">'
        f"Spend<b>{esc(format_usd(total.cost_nanos))}</b></div>"
        f'<div class="card" id="total-requests" data-requests="{total.requests}">Requests<b>{total.requests:,}</b>'
        f'</div><div class="card">Tokens<b>{tokens(total):,}</b></div></div>'
    )
    notes = []
    if total.unpriced_requests:
        notes.append(f"* {total.unpriced_requests:,} request(s) have no known price and are not in the amounts.")
    if total.estimated_requests:
        notes.append(f"~ {total.estimated_requests:,} request(s) are priced by estimate.")
    tag_tables = "".join(
        group_table(report, f"Spend by tag {key}", f"tag-{esc(key)}") for key, report in sorted(data.tags.items())
    )
    sections = [
        f"<h1>ccgate spend {esc(data.heading)}</h1>",
        f'<p class="sub">{esc(f"{data.by_model.since:%Y-%m-%d %H:%M} to {data.by_model.until:%Y-%m-%d %H:%M}")} · '
        f"generated {esc(data.generated.astimezone(data.tz).strftime('%Y-%m-%d %H:%M %Z'))} · API list prices "
        "(on a subscription: API-equivalent value)</p>",
        cards,
        *(f'<p class="note">{esc(note)}</p>' for note in notes),
        "<h2>Spend over time by model</h2>",
        day_chart(data.by_day_model),
        group_table(data.by_model, "Spend by model", "by-model"),
        *(
            ("<h2>Spend over time by project</h2>", day_chart(data.by_day_project, "project-chart"))
            if data.by_day_project is not None
            else ()
        ),
        group_table(data.by_project, "Spend by project", "by-project"),
        blocks_table(data.blocks, data.tz, data.generated),
        tag_tables or '<p class="empty">No tagged requests in this period (`ccgate launch --tag KEY=VALUE`).</p>',
        sessions_table(data.sessions, data.session_details, data.tz) if data.sessions is not None else "",
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>ccgate spend {esc(data.heading)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
