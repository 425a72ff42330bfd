"""Exact prices for token usage: the genai-prices catalog, config overrides, and same-family estimates.

Money is exact: Decimal rates from genai-prices' bundled data, Decimal arithmetic, then integer nano-dollars.
Models whose prices are plain token rates (nearly all) are priced from those rates directly, with exactly
genai-prices' rules (tests check the two agree on every catalog model); anything else goes through genai-prices'
own calculation. A model with no known price is never $0: it is priced from a same-family stand-in (flagged
`estimated`) or left `unpriced` with a hint.

Tiered (long-context) prices follow genai-prices' rule, which matches Anthropic's: the tier is chosen by the
prompt's TOTAL input tokens including cache reads and cache writes, and a prompt of MORE than the threshold
(e.g. 200,001 tokens for Sonnet 4.5) pays the higher rate on every token of the request, output included.

genai-prices is slow to import (~0.3 s), so it is imported on first use only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from ccgate.core.money import MAX_USD
from ccgate.core.records import NANOS_PER_USD, Cost, PriceQuality, Usage, usd_to_nanos, utcnow
from ccgate.core.usage import MAX_TOKENS, clamped, to_genai_prices_kwargs

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, ModelPrice, Provider

    from ccgate.core.settings import PriceOverride

    _Entry = tuple[Provider, ModelInfo]

__all__ = ["MAX_COST_NANOS", "CountPricer", "ModelRates", "PriceCatalog", "RateSource", "genai_provider_id"]

RateSource = Literal["catalog", "override", "estimated"]

_MTOK = Decimal(1_000_000)
_ZERO = Decimal(0)
# No request costs more than the largest amount ccgate accepts anywhere (a budget, a price): only a price
# override near that ceiling times usage near the token ceiling gets here, and the ledger must still hold it.
MAX_COST_NANOS = usd_to_nanos(MAX_USD)

# ccgate provider name -> genai-prices provider id; None: a local provider with no catalog (priced only by override)
_PROVIDER_IDS: dict[str, str | None] = {
    "anthropic": "anthropic",
    "openai": "openai",
    "groq": "groq",
    "openrouter": "openrouter",
    "deepseek": "deepseek",
    "together": "together",
    "fireworks": "fireworks",
    "mistral": "mistral",
    "cerebras": "cerebras",
    "xai": "x-ai",
    "ollama": None,
}

_CLAUDE_FAMILY = re.compile(r"(?<![a-z])(opus|sonnet|haiku)(?![a-z])")
# trailing parts of a model id that name a snapshot rather than a different model
_SNAPSHOT_SUFFIX = re.compile(r"[-@](\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest|preview|exp|beta)$")


def _price_hint(model: str) -> str:
    return f"set one with `ccgate price set {model} --input USD_PER_MTOK --output USD_PER_MTOK`"


@dataclass(frozen=True, slots=True)
class ModelRates:
    """USD per million tokens (web searches: per thousand) for one model: base tier and highest tier.

    `tier_threshold`: prompts with MORE total input tokens than this (cache included) pay the `max_*` rates;
    None when the price is flat (then `max_*` equal the base rates).
    """

    model: str
    provider: str | None
    source: RateSource
    priced_model: str
    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    max_input: Decimal
    max_output: Decimal
    max_cache_read: Decimal
    max_cache_write_5m: Decimal
    max_cache_write_1h: Decimal
    web_searches_per_k: Decimal = _ZERO
    tier_threshold: int | None = None
    note: str | None = None

    def worst_input_rate(self, prompt_tokens: int) -> Decimal:
        """The highest per-MTok rate any single prompt token can cost (a 1h cache write, usually)."""
        tiered = self.tier_threshold is not None and prompt_tokens > self.tier_threshold
        if tiered:
            return max(self.max_input, self.max_cache_read, self.max_cache_write_5m, self.max_cache_write_1h)
        return max(self.input, self.cache_read, self.cache_write_5m, self.cache_write_1h)

    def output_rate(self, prompt_tokens: int) -> Decimal:
        tiered = self.tier_threshold is not None and prompt_tokens > self.tier_threshold
        return self.max_output if tiered else self.output


@dataclass(frozen=True, slots=True)
class CountPricer:
    """One model's rates as integers, so that pricing tens of thousands of requests (`import`) is integer arithmetic:
    `nanos` equals what `PriceCatalog.cost` gives for the same counts, to the nano-dollar (tests hold the two equal),
    and is None where `cost` must decide (a count at the token ceiling, a cost past the cost ceiling)."""

    quality: PriceQuality
    priced_model: str | None
    note: str | None
    # (input, output, cache read, 5m write, 1h write) per MTok, times `scale`; `top` above `threshold`
    base: tuple[int, int, int, int, int]
    top: tuple[int, int, int, int, int]
    threshold: int | None
    web_per_k: int
    scale: int

    def nanos(self, inp: int, out: int, read: int, write_5m: int, write_1h: int, searches: int) -> int | None:
        prompt = inp + read + write_5m + write_1h
        if MAX_TOKENS in (inp, out, read, write_5m, write_1h, searches, prompt):
            return None
        rates = self.top if self.threshold is not None and prompt > self.threshold else self.base
        scaled = (
            1000 * (inp * rates[0] + out * rates[1] + read * rates[2] + write_5m * rates[3] + write_1h * rates[4])
            + 1_000_000 * searches * self.web_per_k
        )
        whole, rest = divmod(scaled, self.scale)
        if 2 * rest > self.scale or (2 * rest == self.scale and whole & 1):
            whole += 1  # half to even, as `usd_to_nanos`
        return whole if whole <= MAX_COST_NANOS else None


# Rates with more decimal places than this, or larger, stay with Decimal arithmetic (its 28 digits stay exact)
_PRICER_PLACES = 12
_PRICER_MAX_SCALED = 10**14


def _count_pricer(rates: ModelRates, quality: PriceQuality, note: str | None) -> CountPricer | None:
    values = (
        rates.input, rates.output, rates.cache_read, rates.cache_write_5m, rates.cache_write_1h,
        rates.max_input, rates.max_output, rates.max_cache_read, rates.max_cache_write_5m, rates.max_cache_write_1h,
        rates.web_searches_per_k,
    )  # fmt: skip
    if not all(value.is_finite() for value in values):
        return None
    places = max(0, *(-int(value.as_tuple().exponent) for value in values))
    if places > _PRICER_PLACES:
        return None
    scale = 10**places
    scaled = [int(value * scale) for value in values]
    if any(value != Decimal(number) / scale for value, number in zip(values, scaled, strict=True)):
        return None
    if any(abs(number) >= _PRICER_MAX_SCALED for number in scaled):
        return None
    return CountPricer(
        quality=quality,
        priced_model=rates.priced_model,
        note=note,
        base=(scaled[0], scaled[1], scaled[2], scaled[3], scaled[4]),
        top=(scaled[5], scaled[6], scaled[7], scaled[8], scaled[9]),
        threshold=rates.tier_threshold,
        web_per_k=scaled[10],
        scale=scale,
    )


@dataclass(frozen=True, slots=True)
class _Resolution:
    """How a (model, provider) pair is priced; computed once and cached."""

    quality: PriceQuality
    source: RateSource | None
    # the catalog entry used (exact or stand-in): genai-prices (Provider, ModelInfo)
    entry: _Entry | None = None
    override: PriceOverride | None = None
    override_key: str | None = None
    note: str | None = None
    # the entry's prices fit ModelRates exactly, so cost() can skip genai-prices' generic (slow) calculation
    simple: bool = False


def genai_provider_id(provider: str | None) -> str | None:
    """genai-prices' id for a ccgate provider name; unknown names are tried as genai-prices ids themselves."""
    if provider is None:
        return None
    if provider in _PROVIDER_IDS:
        return _PROVIDER_IDS[provider]
    gp_provider = _find_gp_provider(provider)
    return None if gp_provider is None else str(gp_provider.id)


@lru_cache(maxsize=256)
def _find_gp_provider(provider_id: str) -> Provider | None:
    from genai_prices.data_snapshot import find_provider_by_id, get_snapshot

    return find_provider_by_id(get_snapshot().providers, provider_id)


@lru_cache(maxsize=4096)
def _catalog_lookup(model: str, gp_provider: str | None) -> _Entry | None:
    """genai-prices' (Provider, ModelInfo) for a model, or None where it raises 'Unable to find ...'."""
    from genai_prices.data_snapshot import get_snapshot

    try:
        return get_snapshot().find_provider_model(model, None, gp_provider, None)
    except LookupError:
        return None


def _version(model_id: str) -> tuple[int, ...]:
    """`claude-opus-4-5` -> (4, 5), `claude-3-5-haiku-latest` -> (3, 5); date stamps are not versions."""
    return tuple(int(part) for part in re.split(r"[-._@]", model_id) if part.isdigit() and len(part) <= 2)


@lru_cache(maxsize=256)
def _claude_stand_in(model: str) -> _Entry | None:
    """The catalog Claude model of the same family (opus/sonnet/haiku) that best stands in for an unknown one.

    The newest version not above the requested one (`claude-opus-4-9` -> Opus 4.8), else the newest overall
    (`claude-opus-9-9` -> the latest Opus); current models are preferred over deprecated ones.
    """
    name = model.lower().rsplit("/", 1)[-1]
    if "claude" not in name:
        return None
    family = _CLAUDE_FAMILY.search(name)
    if family is None:
        return None
    provider = _find_gp_provider("anthropic")
    if provider is None:
        return None
    candidates = [
        m for m in provider.models if (match := _CLAUDE_FAMILY.search(m.id)) and match.group(1) == family.group(1)
    ]
    current = [m for m in candidates if not m.deprecated] or candidates
    if not current:
        return None
    wanted = _version(name)
    not_above = [m for m in current if _version(m.id) <= wanted] if wanted else []
    best = max(not_above or current, key=lambda m: _version(m.id))
    return provider, best


def family_model(family: str) -> str | None:
    """The catalog id of the newest current Claude model of a family ("sonnet" -> claude-sonnet-4-5, say)."""
    if family not in ("opus", "sonnet", "haiku"):
        return None
    entry = _claude_stand_in(f"claude-{family}")
    return None if entry is None else str(entry[1].id)


def _strip_snapshot(model: str) -> str | None:
    stripped = _SNAPSHOT_SUFFIX.sub("", model)
    return stripped if stripped != model else None


def _rate_pair(value: Any) -> tuple[Decimal, Decimal, int | None]:
    """(base, highest, lowest tier start) of a genai-prices price: a Decimal or TieredPrices."""
    if value is None:
        return _ZERO, _ZERO, None
    if isinstance(value, Decimal):
        return value, value, None
    base: Decimal = value.base
    tiers = list(value.tiers)
    if not tiers:
        return base, base, None
    return base, max([base, *(t.price for t in tiers)]), min(t.start for t in tiers)


class PriceCatalog:
    """Prices every request: config overrides first, then the genai-prices catalog, then a same-family estimate.

    Lookups are cached per (model, provider), so `cost()` on the proxy path costs one genai-prices calculation.
    """

    def __init__(self, overrides: Mapping[str, PriceOverride] | None = None) -> None:
        self._overrides: dict[str, PriceOverride] = dict(overrides or {})
        self._resolved: dict[tuple[str, str | None], _Resolution] = {}
        # (the catalog price variant in effect, the rates built from it): most requests reuse the last one
        self._rates: dict[tuple[str, str | None, str | None], tuple[object, ModelRates]] = {}
        self._pricers: dict[tuple[str, str | None], tuple[ModelRates, CountPricer | None]] = {}

    # ----------------------------------------------------------------- resolution

    def _override_for(self, model: str, provider: str | None) -> tuple[str, PriceOverride] | None:
        """An exact model name in [prices]; `provider/model` is checked first so one provider can differ."""
        if provider is not None:
            key = f"{provider}/{model}"
            if key in self._overrides:
                return key, self._overrides[key]
        if model in self._overrides:
            return model, self._overrides[model]
        return None

    def _resolve(self, model: str, provider: str | None) -> _Resolution:
        key = (model, provider)
        cached = self._resolved.get(key)
        if cached is None:
            cached = self._resolved[key] = self._resolve_uncached(model, provider)
        return cached

    def _resolve_uncached(self, model: str, provider: str | None) -> _Resolution:
        found = self._override_for(model, provider)
        catalog = self._resolve_catalog(model, provider)
        if found is not None:
            override_key, override = found
            return _Resolution(
                quality=PriceQuality.PRICED,
                source="override",
                # cache rates the override leaves out follow the exact catalog entry's ratios, never a stand-in's
                entry=catalog.entry if catalog.quality is PriceQuality.PRICED else None,
                override=override,
                override_key=override_key,
                note=f"price from config [prices.{override_key}]",
            )
        return catalog

    def _resolve_catalog(self, model: str, provider: str | None) -> _Resolution:
        where = f"{provider}/{model}" if provider else model
        local = provider is not None and provider in _PROVIDER_IDS and _PROVIDER_IDS[provider] is None
        if local:
            return _Resolution(
                quality=PriceQuality.UNPRICED,
                source=None,
                note=f"{where} has no catalog price (local provider); for a free model "
                f"`ccgate price set {model} --input 0 --output 0`",
            )
        gp_provider = genai_provider_id(provider)
        in_catalog = provider is None or gp_provider is not None

        if in_catalog:
            entry = _catalog_lookup(model, gp_provider)
            if entry is not None:
                return _Resolution(
                    quality=PriceQuality.PRICED, source="catalog", entry=entry, simple=_is_simple(entry[1])
                )
        else:
            # a custom provider: the model's price at whichever catalog provider knows the name
            entry = _catalog_lookup(model, None)
            if entry is not None:
                return self._estimate(
                    entry, f"{provider} is not in the price catalog; priced as {entry[0].id}/{entry[1].id}", model
                )

        stand_in = _claude_stand_in(model)
        if stand_in is not None:
            return self._estimate(
                stand_in, f"{where} is not in the price catalog; estimated with {stand_in[1].id} rates", model
            )
        candidate = model
        while (stripped := _strip_snapshot(candidate)) is not None:
            candidate = stripped
            entry = _catalog_lookup(candidate, gp_provider if in_catalog else None)
            if entry is not None:
                return self._estimate(
                    entry, f"{where} is not in the price catalog; estimated with {entry[1].id} rates", model
                )
        return _Resolution(
            quality=PriceQuality.UNPRICED, source=None, note=f"no price known for {where}; " + _price_hint(model)
        )

    @staticmethod
    def _estimate(entry: _Entry, why: str, model: str) -> _Resolution:
        return _Resolution(
            quality=PriceQuality.ESTIMATED,
            source="estimated",
            entry=entry,
            note=f"{why} ({_price_hint(model)})",
            simple=_is_simple(entry[1]),
        )

    # ----------------------------------------------------------------- public API

    def cost(self, model: str, usage: Usage, *, provider: str | None = None, at: datetime | None = None) -> Cost:
        """The exact cost of one request in nano-dollars; never $0 for a model without a price.

        Usage that reached the token ceiling (a provider reporting the impossible) is priced as recorded but
        flagged `estimated`, and no cost exceeds `MAX_COST_NANOS`: the ledger's integers must hold it.
        """
        cost = self._exact_cost(model, usage, provider, at)
        if clamped(usage) or (cost.nanos is not None and cost.nanos > MAX_COST_NANOS):
            return _beyond_belief(cost, usage)
        return cost

    def _exact_cost(self, model: str, usage: Usage, provider: str | None, at: datetime | None) -> Cost:
        resolution = self._resolve(model, provider)
        if resolution.override is None and resolution.entry is None:
            return Cost(nanos=None, quality=PriceQuality.UNPRICED, note=resolution.note)
        speed = usage.speed if usage.speed != STANDARD_SPEED else None
        if speed is not None:
            resolution = self._at_speed(resolution, model, speed)
        if resolution.override is not None or (resolution.simple and speed is None):
            # an override's rates, or a catalog price ModelRates holds exactly: the same arithmetic as genai-prices
            # for input/output/cache/web-search prices with at most one tier (tests check the two agree on every
            # such catalog model), ~10x faster on the proxy path. Fast mode is rare: genai-prices prices it.
            rates = self._rates_from(resolution, model, provider, at)
            return Cost(
                nanos=usd_to_nanos(_cost_usd(rates, usage)),
                quality=resolution.quality,
                priced_model=rates.priced_model,
                note=resolution.note,
            )
        return self._genai_cost(resolution, model, usage, at, speed)

    @staticmethod
    def _at_speed(resolution: _Resolution, model: str, speed: str) -> _Resolution:
        """A resolution for a request that ran at `speed` ("fast"): the catalog's price variant for it, or, when
        there is none (or the price is the user's own), the same rates flagged as an estimate, never silently
        exact."""
        if resolution.override is None and resolution.entry is not None and _has_variant(resolution.entry, speed):
            return resolution
        why = (
            f"your price for {model} is for standard speed"
            if resolution.override is not None
            else f"the price catalog has no {speed}-mode price for {model}"
        )
        note = f"ran in {speed} mode; {why}, so standard rates were used and the cost may be too low"
        return replace(resolution, quality=PriceQuality.ESTIMATED, note=note)

    def _genai_cost(
        self, resolution: _Resolution, model: str, usage: Usage, at: datetime | None, speed: str | None
    ) -> Cost:
        """genai-prices' own calculation, for prices ModelRates cannot express (several tiers, other units)."""
        assert resolution.entry is not None
        from genai_prices import Usage as GPUsage

        gp_provider, gp_model = resolution.entry
        try:
            calculation = gp_model.calc_price(
                GPUsage(**to_genai_prices_kwargs(usage)),
                gp_provider,
                genai_request_timestamp=at,
                price_context=_price_context(speed),
            )
        except ValueError as exc:  # the catalog entry cannot price this usage shape
            return Cost(
                nanos=None,
                quality=PriceQuality.UNPRICED,
                priced_model=gp_model.id,
                note=f"the price catalog cannot price {model}: {exc}; " + _price_hint(model),
            )
        return Cost(
            nanos=usd_to_nanos(calculation.total_price),
            quality=resolution.quality,
            priced_model=str(gp_model.id),
            note=resolution.note,
        )

    def count_pricer(self, model: str, *, provider: str | None, at: datetime) -> CountPricer | None:
        """Integer rates for standard-speed requests at `at`, when `cost` prices them from plain rates; None when
        it does not (unpriced, several tiers, ...): then ask `cost` for each request."""
        resolution = self._resolve(model, provider)
        if resolution.override is None and (resolution.entry is None or not resolution.simple):
            return None
        rates = self._rates_from(resolution, model, provider, at)
        key = (model, provider)
        cached = self._pricers.get(key)
        if cached is not None and cached[0] is rates:
            return cached[1]
        pricer = _count_pricer(rates, resolution.quality, resolution.note)
        self._pricers[key] = (rates, pricer)
        return pricer

    def rates(
        self, model: str, *, provider: str | None = None, at: datetime | None = None, speed: str | None = None
    ) -> ModelRates | None:
        """Per-MTok rates (base and highest tier) as they apply at `at` (default now) and `speed` (None or
        "standard": standard speed); None when unpriced."""
        resolution = self._resolve(model, provider)
        if resolution.override is None and resolution.entry is None:
            return None
        return self._rates_from(resolution, model, provider, at, None if speed == STANDARD_SPEED else speed)

    def timeless(self, model: str, *, provider: str | None = None) -> bool:
        """Whether `rates(model)` is the same at every moment (no dated or time-of-day price in the catalog entry
        it comes from), so a caller may keep them across runs."""
        resolution = self._resolve(model, provider)
        if resolution.entry is None:
            return True
        from genai_prices.types import ModelPrice

        return isinstance(resolution.entry[1].prices, ModelPrice)

    def max_cost_nanos(
        self,
        model: str,
        *,
        provider: str | None,
        input_tokens: int,
        max_output_tokens: int,
        speed: str | None = None,
        web_searches: int = 0,
    ) -> int | None:
        """An upper bound of a request's cost, for budget reservations; None when unpriced and not estimable.

        `input_tokens` must itself be an upper bound of the prompt (see `budgets.input_tokens_bound`); every
        prompt token is charged at the dearest input rate of the tier it selects (usually the 1h cache write),
        the output at the output rate of that tier, and `web_searches` (a bound on their number) at the model's
        per-search fee.
        """
        rates = self.rates(model, provider=provider, speed=speed)
        if rates is None:
            return None
        total = (
            Decimal(max(input_tokens, 0)) * rates.worst_input_rate(input_tokens)
            + Decimal(max(max_output_tokens, 0)) * rates.output_rate(input_tokens)
            + Decimal(max(web_searches, 0)) * rates.web_searches_per_k * _MTOK / 1000
        )
        return int((total * NANOS_PER_USD / _MTOK).to_integral_value(rounding=ROUND_CEILING))

    def context_window(self, model: str, *, provider: str | None = None) -> int | None:
        """The model's context window in tokens as the catalog knows it (also for an overridden price); None when
        the catalog does not know the model."""
        resolution = self._resolve(model, provider)
        window = resolution.entry[1].context_window if resolution.entry is not None else None
        return window if isinstance(window, int) and window > 0 else None

    def warm(self) -> None:
        """Import genai-prices and load its data now (a few hundred ms) so the first request does not pay it.

        Servers call this at start-up, off the event loop.
        """
        _find_gp_provider("anthropic")

    def known_models(self, provider: str) -> list[str]:
        """Model ids the catalog knows for a provider (for resolving names); empty for local/unknown ones."""
        gp_id = genai_provider_id(provider)
        if gp_id is None:
            return []
        gp_provider = _find_gp_provider(gp_id)
        return [] if gp_provider is None else sorted(str(m.id) for m in gp_provider.models)

    # ----------------------------------------------------------------- helpers

    def _rates_from(
        self, resolution: _Resolution, model: str, provider: str | None, at: datetime | None, speed: str | None = None
    ) -> ModelRates:
        """Rates at `at` and `speed`, rebuilt only when the catalog's price variant in effect changes (a dated
        price change, an off-peak window), so the proxy path does not rebuild them on every request."""
        entry = resolution.entry
        variant = entry[1].get_prices(at or utcnow(), _price_context(speed)) if entry is not None else None
        key = (model, provider, speed)
        cached = self._rates.get(key)
        # genai-prices returns the same object for standard prices and a fresh copy for a request variant
        if cached is not None and (cached[0] is variant or cached[0] == variant):
            return cached[1]
        rates = self._build_rates(resolution, model, provider, variant)
        self._rates[key] = (variant, rates)
        return rates

    def _build_rates(
        self, resolution: _Resolution, model: str, provider: str | None, variant: ModelPrice | None
    ) -> ModelRates:
        catalog = _catalog_rates(resolution.entry, variant) if resolution.entry is not None else None
        if resolution.override is None:
            assert catalog is not None
            return replace(catalog, model=model, source=resolution.source or "catalog", note=resolution.note)
        override = resolution.override
        cache_read, write_5m, write_1h = _override_cache_rates(override, catalog)
        return ModelRates(
            model=model,
            provider=provider,
            source="override",
            priced_model=resolution.override_key or model,
            input=override.input,
            output=override.output,
            cache_read=cache_read,
            cache_write_5m=write_5m,
            cache_write_1h=write_1h,
            max_input=override.input,
            max_output=override.output,
            max_cache_read=cache_read,
            max_cache_write_5m=write_5m,
            max_cache_write_1h=write_1h,
            web_searches_per_k=catalog.web_searches_per_k if catalog else _ZERO,
            tier_threshold=None,
            note=resolution.note,
        )


STANDARD_SPEED = "standard"


def _price_context(speed: str | None) -> dict[str, str] | None:
    """genai-prices' request context selecting a price variant (fast mode); None for standard speed."""
    return None if speed is None or speed == STANDARD_SPEED else {"speed": speed}


def _has_variant(entry: _Entry, speed: str) -> bool:
    return any(variant.when.get("speed") == speed for variant in entry[1].price_variants or ())


_DEFAULT_CACHE_READ_SHARE = Decimal("0.1")


def _override_cache_rates(override: PriceOverride, catalog: ModelRates | None) -> tuple[Decimal, Decimal, Decimal]:
    """(cache read, 5m write, 1h write) for an override; rates it sets win, the rest follow its input rate.

    An override's input rate scales the catalog's cache prices by the same factor (catalog ratio cache/input:
    Claude's 0.1x reads, 1.25x 5m and 2x 1h writes), so `--input 1` on a $2.50 model never leaves a $1.25
    cache read behind. Without a catalog entry (or one with a zero input price): reads cost 10% of the input
    rate, writes the input rate. A derived read rate is never above the override's input rate.
    """
    base = override.input
    if catalog is not None and catalog.input > 0:
        derived = (
            base * catalog.cache_read / catalog.input,
            base * catalog.cache_write_5m / catalog.input,
            base * catalog.cache_write_1h / catalog.input,
        )
    else:
        derived = (base * _DEFAULT_CACHE_READ_SHARE, base, base)
    read = override.cache_read if override.cache_read is not None else min(derived[0], base)
    write_5m = override.cache_write_5m if override.cache_write_5m is not None else derived[1]
    write_1h = override.cache_write_1h if override.cache_write_1h is not None else derived[2]
    return read, write_5m, write_1h


def _catalog_rates(entry: _Entry, prices: ModelPrice | None) -> ModelRates:
    """Read raw per-MTok rates the way genai-prices applies them.

    genai-prices prices the most specific unit it has a price for: a cache read without `cache_read_mtok` costs
    the input rate, a 5m write without `cache_write_5m_mtok` costs `cache_write_mtok`, a 1h write without
    `cache_write_1h_mtok` costs `cache_write_mtok`, a write without either costs the input rate.
    """
    gp_provider, gp_model = entry

    def get(key: str) -> Any:
        return getattr(prices, key, None)

    inp = _rate_pair(get("input_mtok"))
    out = _rate_pair(get("output_mtok"))
    read = _rate_pair(get("cache_read_mtok")) if get("cache_read_mtok") is not None else inp
    write = _rate_pair(get("cache_write_mtok")) if get("cache_write_mtok") is not None else inp
    write_5m = _rate_pair(get("cache_write_5m_mtok")) if get("cache_write_5m_mtok") is not None else write
    write_1h = _rate_pair(get("cache_write_1h_mtok")) if get("cache_write_1h_mtok") is not None else write
    searches = get("web_searches_kcount")
    thresholds = [pair[2] for pair in (inp, out, read, write_5m, write_1h) if pair[2] is not None]
    return ModelRates(
        model=str(gp_model.id),
        provider=str(gp_provider.id),
        source="catalog",
        priced_model=str(gp_model.id),
        input=inp[0],
        output=out[0],
        cache_read=read[0],
        cache_write_5m=write_5m[0],
        cache_write_1h=write_1h[0],
        max_input=inp[1],
        max_output=out[1],
        max_cache_read=read[1],
        max_cache_write_5m=write_5m[1],
        max_cache_write_1h=write_1h[1],
        web_searches_per_k=searches if isinstance(searches, Decimal) else _ZERO,
        tier_threshold=min(thresholds) if thresholds else None,
    )


# prices of the units ccgate reports; every other unit (audio, images, reasoning, ...) is never reported, so its
# count is 0 and its price cannot change a cost -- except a per-request fee, which applies to every request
_REPORTED_PRICE_KEYS = frozenset(
    {
        "input_mtok",
        "output_mtok",
        "cache_read_mtok",
        "cache_write_mtok",
        "cache_write_5m_mtok",
        "cache_write_1h_mtok",
        "web_searches_kcount",
    }
)


def _is_simple(model_info: ModelInfo) -> bool:
    """True when ModelRates holds every price that can apply to ccgate's usage: flat rates, or one shared tier."""
    from genai_prices.types import ModelPrice, TieredPrices

    if isinstance(model_info.prices, ModelPrice):
        variants = [model_info.prices]
    else:
        variants = [conditional.prices for conditional in model_info.prices]
    for prices in variants:
        items = {k: v for k, v in vars(prices).items() if v is not None and not k.startswith("_")}
        if "requests_kcount" in items or not {"input_mtok", "output_mtok"} <= items.keys():
            return False
        items = {k: v for k, v in items.items() if k in _REPORTED_PRICE_KEYS}
        if ("cache_write_1h_mtok" in items or "cache_write_5m_mtok" in items) and "cache_write_mtok" not in items:
            return False
        if not isinstance(items.get("web_searches_kcount", _ZERO), Decimal):
            return False
        starts = set()
        for value in items.values():
            if isinstance(value, TieredPrices):
                if len(value.tiers) != 1:
                    return False
                starts.add(value.tiers[0].start)
            elif not isinstance(value, Decimal):
                return False
        if len(starts) > 1:
            return False
    return True


def _cost_usd(rates: ModelRates, usage: Usage) -> Decimal:
    """Exact USD for usage: the tier is chosen by total input incl. cache and then applies to every token."""
    tiered = rates.tier_threshold is not None and usage.total_input_tokens > rates.tier_threshold
    if tiered:
        per_mtok = (
            usage.input_tokens * rates.max_input
            + usage.output_tokens * rates.max_output
            + usage.cache_read_tokens * rates.max_cache_read
            + usage.cache_write_5m_tokens * rates.max_cache_write_5m
            + usage.cache_write_1h_tokens * rates.max_cache_write_1h
        )
    else:
        per_mtok = (
            usage.input_tokens * rates.input
            + usage.output_tokens * rates.output
            + usage.cache_read_tokens * rates.cache_read
            + usage.cache_write_5m_tokens * rates.cache_write_5m
            + usage.cache_write_1h_tokens * rates.cache_write_1h
        )
    return per_mtok / _MTOK + usage.web_searches * rates.web_searches_per_k / 1000


def _beyond_belief(cost: Cost, usage: Usage) -> Cost:
    """A cost whose usage was clamped to the token ceiling, or which exceeds the cost ceiling: capped, and
    marked so that reports do not present it as exact."""
    reasons = []
    if clamped(usage):
        reasons.append(f"the provider reported more than {MAX_TOKENS:,} tokens; counted as {MAX_TOKENS:,}")
    nanos = cost.nanos
    if nanos is not None and nanos > MAX_COST_NANOS:
        reasons.append(f"cost capped at ${MAX_USD:,}")
        nanos = MAX_COST_NANOS
    note = "; ".join(reasons) + (f" ({cost.note})" if cost.note else "")
    quality = PriceQuality.ESTIMATED if cost.quality is PriceQuality.PRICED else cost.quality
    return Cost(nanos=nanos, quality=quality, priced_model=cost.priced_model, note=note)
