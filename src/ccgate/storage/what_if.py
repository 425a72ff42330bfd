"""`cost --what-if TIER=PROVIDER/MODEL`: the same tokens re-priced as if a tier had been routed elsewhere.

Only rows of the named tiers are re-priced; every other row keeps its recorded cost. The re-pricing sums each
group's tokens per tier in SQL and prices the sums with the target's rates (exact Decimal, rounded once per
group), so it never prices a million rows one by one. A target without a price leaves its rows unpriced —
counted and named, never $0. Another model would have produced other outputs: this is the bill for the same
tokens, not a prediction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, tzinfo
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccgate.core.records import to_iso, usd_to_nanos
from ccgate.errors import UserInputError
from ccgate.storage.reports import (
    _KEYS,
    CALENDAR,
    NONE_KEY,
    TAG_PREFIX,
    CostReport,
    GroupKey,
    Totals,
    _calendar_spans,
    grouping_parts,
    one_snapshot,
    usd_string,
)

if TYPE_CHECKING:
    from sqlite_utils import Database

    from ccgate.core.pricing import ModelRates, PriceCatalog
    from ccgate.core.settings import PriceOverride

_MTOK = Decimal(1_000_000)
_TIER = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_HINT = "write it as TIER=PROVIDER/MODEL (e.g. haiku=groq/llama-3.3-70b-versatile) or TIER=sonnet for a Claude tier"
# The row's tier: as recorded, else the tier word in its model name (routing.tier_of without config rules).
TIER_SQL = (
    "coalesce(tier, CASE WHEN instr(lower(requested_model), 'opus') THEN 'opus' "
    "WHEN instr(lower(requested_model), 'sonnet') THEN 'sonnet' "
    "WHEN instr(lower(requested_model), 'haiku') THEN 'haiku' END)"
)
PROMPT_SQL = "(input_tokens + cache_read_tokens + cache_write_5m_tokens + cache_write_1h_tokens)"
STATEMENT = (
    "What-if re-prices the same tokens at the target's current list prices; another model would have "
    "produced different replies and token counts."
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One `--what-if`: rows of `tier` priced as `provider/model` (`rates` None: the target has no price)."""

    tier: str
    provider: str | None
    model: str
    rates: ModelRates | None

    @property
    def target(self) -> str:
        return f"{self.provider}/{self.model}" if self.provider else self.model


@dataclass(slots=True)
class WhatIfTotals:
    """A group's what-if: its cost with the scenarios applied, and the requests that stay without a price."""

    cost_nanos: int = 0
    unpriced_requests: int = 0


@dataclass(slots=True)
class WhatIfReport:
    scenarios: tuple[Scenario, ...]
    total: WhatIfTotals
    groups: dict[GroupKey, WhatIfTotals]
    # requests per scenario tier that were re-priced (or left unpriced because the target has none)
    repriced: dict[str, int] = field(default_factory=dict)


def parse_scenario(text: str, catalog: PriceCatalog, *, info: Any = None) -> Scenario:
    """`haiku=groq/llama-3.3-70b` or `opus=sonnet` (the newest Claude Sonnet) or `opus=claude-sonnet-4-5`."""
    from ccgate.core.model_names import resolve_model_name
    from ccgate.core.pricing import family_model

    tier, sep, target = text.partition("=")
    tier, target = tier.strip().lower(), target.strip()
    if not sep or not _TIER.match(tier) or not target:
        raise UserInputError(f"--what-if {text!r} is not TIER=PROVIDER/MODEL", hint=_HINT)
    provider: str | None
    provider, slash, model = target.partition("/")
    if not slash:
        provider, model = "anthropic", target
        family = family_model(target.lower())
        if family is not None:
            model = family
    if not provider or not model:
        raise UserInputError(f"--what-if {text!r} is not TIER=PROVIDER/MODEL", hint=_HINT)
    known = catalog.known_models(provider)

    def priced(name: str) -> bool:
        rates = catalog.rates(name, provider=provider)
        return rates is not None and rates.source in ("catalog", "override")

    resolution = resolve_model_name(provider, model, known, priced=priced) if known else None
    if resolution is not None and resolution.model is not None:
        if not resolution.exact and info is not None:
            info(f"--what-if {tier}: using {provider}'s model id {resolution.model}")
        model = resolution.model
    return Scenario(tier=tier, provider=provider, model=model, rates=catalog.rates(model, provider=provider))


_CACHE_FORMAT = 1


def resolve_scenarios(
    texts: Sequence[str],
    overrides: Mapping[str, PriceOverride],
    *,
    cache_file: Path | None = None,
    info: Callable[[str], None] | None = None,
) -> list[Scenario]:
    """`parse_scenario` for each `--what-if`, answered from `cache_file` when the same target was resolved before
    with the same price catalog and `[prices]`: genai-prices then need not be imported (~0.2 s of a ~0.5 s
    command). Only rates that hold at every moment are kept; a dated or time-of-day price is looked up each time."""
    from ccgate import __version__
    from ccgate.local import price_cache

    stamp = price_cache.catalog_stamp() if cache_file is not None else None
    fingerprint = repr(sorted(overrides.items()))
    catalog: PriceCatalog | None = None
    scenarios: list[Scenario] = []
    for text in texts:
        key = None if stamp is None else json.dumps([_CACHE_FORMAT, __version__, stamp, fingerprint, text])
        if key is not None and cache_file is not None:
            hit = _scenario_from_json(price_cache.load(cache_file, key))
            if hit is not None:
                scenario, notes = hit
                for note in notes:
                    if info is not None:
                        info(note)
                scenarios.append(scenario)
                continue
        if catalog is None:
            from ccgate.core.pricing import PriceCatalog

            catalog = PriceCatalog(overrides)
        said: list[str] = []
        scenario = parse_scenario(text, catalog, info=said.append)
        for note in said:
            if info is not None:
                info(note)
        if key is not None and cache_file is not None and catalog.timeless(scenario.model, provider=scenario.provider):
            price_cache.store(cache_file, key, _scenario_to_json(scenario, said))
        scenarios.append(scenario)
    check_scenarios(scenarios)
    return scenarios


def _scenario_to_json(scenario: Scenario, notes: Sequence[str]) -> dict[str, Any]:
    rates = scenario.rates
    return {
        "tier": scenario.tier,
        "provider": scenario.provider,
        "model": scenario.model,
        "rates": None
        if rates is None
        else {
            f.name: str(value) if isinstance(value := getattr(rates, f.name), Decimal) else value for f in fields(rates)
        },
        "notes": list(notes),
    }


def _scenario_from_json(value: Any) -> tuple[Scenario, list[str]] | None:
    """The cached scenario, or None for anything that is not exactly what `_scenario_to_json` wrote."""
    from ccgate.core.pricing import ModelRates

    try:
        raw = value["rates"]
        rates = None
        if raw is not None:
            decimals = {f.name for f in fields(ModelRates) if f.type in ("Decimal", Decimal)}
            if set(raw) != {f.name for f in fields(ModelRates)}:
                return None
            values: dict[str, Any] = {name: Decimal(item) if name in decimals else item for name, item in raw.items()}
            rates = ModelRates(**values)
            finite = all(values[name].is_finite() for name in decimals)
            texts = isinstance(rates.model, str) and isinstance(rates.priced_model, str)
            optional = all(isinstance(item, str | None) for item in (rates.provider, rates.note))
            threshold = rates.tier_threshold
            whole = threshold is None or type(threshold) is int
            if not (finite and texts and optional and whole and rates.source in ("catalog", "override", "estimated")):
                return None
        tier, provider, model, notes = value["tier"], value["provider"], value["model"], value["notes"]
        if not (isinstance(tier, str) and isinstance(model, str) and isinstance(provider, str | None)):
            return None
        if not (isinstance(notes, list) and all(isinstance(note, str) for note in notes)):
            return None
    except (KeyError, TypeError, ValueError, ArithmeticError):
        return None
    return Scenario(tier=tier, provider=provider, model=model, rates=rates), notes


def check_scenarios(scenarios: Sequence[Scenario]) -> None:
    tiers = [scenario.tier for scenario in scenarios]
    if len(set(tiers)) != len(tiers):
        raise UserInputError("--what-if names a tier twice", hint="give each tier one target")


def _group_key(parts: tuple[str, ...], label: str, value: Any) -> GroupKey:
    """The report's key for a row group: the calendar label, the other key, or both in the report's order."""
    other = str(value) if value not in (None, "") else NONE_KEY
    if len(parts) == 2:
        return (label, other) if parts[0] in CALENDAR else (other, label)
    return label if parts and parts[0] in CALENDAR else other


def what_if(
    db: Database, report: CostReport, scenarios: Sequence[Scenario], *, tz: tzinfo | None = None
) -> WhatIfReport:
    """The what-if for every group of `report` (same period, same grouping) and its total."""
    check_scenarios(scenarios)
    parts = grouping_parts(report.by)
    calendar = next((part for part in parts if part in CALENDAR), None)
    other = next((part for part in parts if part not in CALENDAR), None)
    if other is None:
        raw_key = "''"
    elif other.startswith(TAG_PREFIX):
        from ccgate.core.tags import json_path

        raw_key = f"json_extract(tags, '{json_path(other.removeprefix(TAG_PREFIX))}')"
    else:
        raw_key = f"coalesce({_KEYS[other][0]}, '')"
    groups: dict[GroupKey, WhatIfTotals] = {
        key: WhatIfTotals(totals.cost_nanos, totals.unpriced_requests) for key, totals in report.groups
    }
    if not parts:
        groups = {}
    by_tier = {scenario.tier: scenario for scenario in scenarios}
    repriced = dict.fromkeys(by_tier, 0)
    with one_snapshot(db):
        spans = (
            _calendar_spans(db, report.since, report.until, tz, calendar, report.week_start)
            if calendar is not None
            else [("", report.since, report.until)]
        )
        rows = _tier_sums(db, spans, raw_key, by_tier) if scenarios else []
    exact: dict[GroupKey, Decimal] = {}
    base = WhatIfTotals(report.total.cost_nanos, report.total.unpriced_requests)
    for label, key_value, tier, over, *sums in rows:
        key = _group_key(parts, str(label), key_value)
        if parts and key not in groups:
            continue  # a group the report left out (`--last N`)
        scenario = by_tier[str(tier)]
        count, input_, output, read, write_5m, write_1h, searches, cost_nanos, unpriced = (int(v) for v in sums)
        target = groups[key] if parts else base
        repriced[scenario.tier] += count
        target.cost_nanos -= cost_nanos  # the recorded cost of these rows is replaced ...
        target.unpriced_requests -= unpriced
        if scenario.rates is None:  # ... by nothing: the target has no price
            target.unpriced_requests += count
            continue
        rates = scenario.rates
        tiered = bool(over)
        per_mtok = (
            input_ * (rates.max_input if tiered else rates.input)
            + output * (rates.max_output if tiered else rates.output)
            + read * (rates.max_cache_read if tiered else rates.cache_read)
            + write_5m * (rates.max_cache_write_5m if tiered else rates.cache_write_5m)
            + write_1h * (rates.max_cache_write_1h if tiered else rates.cache_write_1h)
        )
        exact[key] = exact.get(key, Decimal(0)) + per_mtok / _MTOK + searches * rates.web_searches_per_k / 1000
    for key, amount in exact.items():
        (groups[key] if parts else base).cost_nanos += usd_to_nanos(amount)
    if not parts:
        return WhatIfReport(scenarios=tuple(scenarios), total=base, groups={}, repriced=repriced)
    total = WhatIfTotals(
        sum(item.cost_nanos for item in groups.values()), sum(item.unpriced_requests for item in groups.values())
    )
    return WhatIfReport(scenarios=tuple(scenarios), total=total, groups=groups, repriced=repriced)


def _tier_sums(
    db: Database, spans: Sequence[tuple[str, datetime, datetime]], raw_key: str, by_tier: dict[str, Scenario]
) -> list[Sequence[Any]]:
    """Token sums per (span, group, tier, above the target's long-context threshold) for the scenario tiers."""
    tiers = list(by_tier)
    over_params: list[Any] = []
    cases = []
    for tier in tiers:
        rates = by_tier[tier].rates
        if rates is not None and rates.tier_threshold is not None:
            cases.append(f"WHEN ? THEN {PROMPT_SQL} > ?")
            over_params.extend((tier, rates.tier_threshold))
    # the prompt-size comparison only where a target has a long-context tier; a constant otherwise
    over = f"CASE row_tier {' '.join(cases)} ELSE 0 END" if cases else "0"
    marks = ", ".join("?" for _ in tiers)
    picked = f"tier IN ({marks}) OR (tier IS NULL AND {TIER_SQL} IN ({marks}))"
    # Grouping sorts every picked row (most of the time here): no join and no constant column when one span will do
    group_by = "GROUP BY 1, 2, 3, 4" if cases else "GROUP BY 1, 2, 3"
    sums = (
        "count(*), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), sum(cache_write_5m_tokens), "
        "sum(cache_write_1h_tokens), sum(web_searches), coalesce(sum(cost_nanos), 0), sum(cost_nanos IS NULL)"
    )
    if len(spans) == 1:
        label, lo, hi = spans[0]
        sql = (
            f"SELECT label, {raw_key}, row_tier, {over}, {sums} FROM (SELECT requests.*, ? AS label, "  # noqa: S608
            f"{TIER_SQL} AS row_tier FROM requests WHERE started_at >= ? AND started_at < ? AND ({picked})) "
            f"{group_by}"
        )
        return list(db.execute(sql, [*over_params, label, to_iso(lo), to_iso(hi), *tiers, *tiers]).fetchall())
    result: list[Sequence[Any]] = []
    chunk = 300
    for offset in range(0, len(spans), chunk):
        part = spans[offset : offset + chunk]
        values = ", ".join("(?, ?, ?)" for _ in part)
        params: list[Any] = [value for label, lo, hi in part for value in (label, to_iso(lo), to_iso(hi))]
        sql = (
            f"WITH spans(label, lo, hi) AS (VALUES {values}), "  # noqa: S608 - fixed text and ? marks only
            f"picked AS (SELECT requests.*, spans.label AS label, {TIER_SQL} AS row_tier FROM spans JOIN requests "
            f"ON requests.started_at >= spans.lo AND requests.started_at < spans.hi WHERE {picked}) "
            f"SELECT label, {raw_key}, row_tier, {over}, {sums} FROM picked {group_by}"
        )
        result.extend(db.execute(sql, [*params, *tiers, *tiers, *over_params]).fetchall())
    return result


def unpriced_targets(report: WhatIfReport) -> list[tuple[Scenario, int]]:
    """The scenarios whose target has no price, with how many requests that leaves unpriced."""
    return [(s, report.repriced.get(s.tier, 0)) for s in report.scenarios if s.rates is None]


def add_to_json(document: dict[str, Any], report: WhatIfReport) -> dict[str, Any]:
    """`cost --json` plus `what_if_cost_usd` / `what_if_unpriced_requests` on the total and on every group."""
    document["total"].update(what_if_fields(report.total))
    for group in document["groups"]:
        key = group["key"] if isinstance(group["key"], str) else tuple(group["key"])
        group.update(what_if_fields(report.groups.get(key, WhatIfTotals())))
    document["what_if"] = {
        "scenarios": [
            {
                "tier": s.tier,
                "target": s.target,
                "priced": s.rates is not None,
                "requests": report.repriced.get(s.tier, 0),
            }
            for s in report.scenarios
        ],
        "note": STATEMENT,
    }
    return document


def what_if_fields(totals: WhatIfTotals) -> dict[str, Any]:
    return {
        "what_if_cost_usd": usd_string(totals.cost_nanos),
        "what_if_unpriced_requests": totals.unpriced_requests,
    }


def difference(actual: Totals, what: WhatIfTotals) -> tuple[int, Decimal | None]:
    """(what-if minus actual in nanos, percent of actual or None when actual is 0)."""
    delta = what.cost_nanos - actual.cost_nanos
    if actual.cost_nanos == 0:
        return delta, None
    return delta, (Decimal(delta) * 100 / Decimal(actual.cost_nanos)).quantize(Decimal("0.1"))
