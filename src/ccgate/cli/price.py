"""`ccgate price show|set|unset`: see what a model costs, and give models without a catalog price one."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import typer

from ccgate.cli._app import ctx, save_and_reload

if TYPE_CHECKING:
    from ccgate.core.pricing import ModelRates

price_app = typer.Typer(
    help="Show per-model prices (USD per million tokens) and override them in config.", no_args_is_help=True
)

_RATE_FIELDS = (
    ("input", "input"),
    ("output", "output"),
    ("cache_read", "cache read"),
    ("cache_write_5m", "cache write 5m"),
    ("cache_write_1h", "cache write 1h"),
)


def _usd(value: Decimal) -> str:
    """At least cents, and every digit the rate has: $3.00, $0.075."""
    exponent = value.normalize().as_tuple().exponent
    shown = value.quantize(Decimal("0.01")) if isinstance(exponent, int) and exponent > -2 else value.normalize()
    return f"${shown:f}"


def _plain(value: Decimal) -> str:
    return f"{value.normalize():f}"


def _rates_json(rates: ModelRates) -> dict[str, Any]:
    tiered = rates.tier_threshold is not None
    return {
        "model": rates.model,
        "provider": rates.provider,
        "source": rates.source,
        "priced_model": rates.priced_model,
        "note": rates.note,
        "per_mtok": {key: _plain(getattr(rates, key)) for key, _ in _RATE_FIELDS},
        "web_searches_per_k": _plain(rates.web_searches_per_k),
        "long_context": (
            {
                "above_input_tokens": rates.tier_threshold,
                "per_mtok": {key: _plain(getattr(rates, f"max_{key}")) for key, _ in _RATE_FIELDS},
            }
            if tiered
            else None
        ),
    }


@price_app.command("show")
def price_show(
    model: str = typer.Argument(..., help="Model id, e.g. claude-sonnet-4-5-20250929 or llama-3.3-70b-versatile."),
    provider: str | None = typer.Option(None, "--provider", "-p", help="Provider name, e.g. anthropic, groq."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (rates as decimal strings)."),
) -> None:
    """Show a model's rates per million tokens and where they come from (catalog, override or estimated)."""
    from ccgate.core.pricing import PriceCatalog
    from ccgate.core.records import Usage

    app_ctx = ctx()
    catalog = PriceCatalog(app_ctx.config.prices)
    rates = catalog.rates(model, provider=provider)
    if rates is None:
        note = catalog.cost(model, Usage(), provider=provider).note
        app_ctx.fail(
            f"no price known for {f'{provider}/{model}' if provider else model}",
            hint=note or f"set one with `ccgate price set {model} --input USD --output USD`",
        )
    if as_json:
        app_ctx.print_json(_rates_json(rates))
        return
    origin = {"catalog": "catalog", "override": "config override", "estimated": "ESTIMATED from"}[rates.source]
    where = f"{rates.provider}/{rates.priced_model}" if rates.provider and rates.source != "override" else ""
    app_ctx.echo(f"{model}  ({origin}{' ' + where if where else ''})")
    for key, label in _RATE_FIELDS:
        app_ctx.echo(f"  {label:<16}{_usd(getattr(rates, key)):>10} / MTok")
    if rates.web_searches_per_k:
        app_ctx.echo(f"  {'web searches':<16}{_usd(rates.web_searches_per_k):>10} / 1K")
    if rates.tier_threshold is not None:
        app_ctx.echo(f"  prompts over {rates.tier_threshold:,} input tokens (cache included) pay, on every token:")
        for key, label in _RATE_FIELDS:
            app_ctx.echo(f"  {label:<16}{_usd(getattr(rates, f'max_{key}')):>10} / MTok")
    if rates.note and rates.source != "override":
        app_ctx.warn(rates.note)


def _optional_rate(value: str | None, option: str) -> Decimal | None:
    return None if value is None else _rate(value, option)


def _rate(value: str, option: str) -> Decimal:
    from ccgate.core.money import AmountError, parse_usd
    from ccgate.errors import UserInputError

    try:
        return parse_usd(value)
    except AmountError as exc:
        raise UserInputError(
            f"{option} must be a non-negative number of USD per million tokens, got {value!r}: {exc.reason}",
            hint=exc.hint,
        ) from exc


@price_app.command("set")
def price_set(
    model: str = typer.Argument(..., help="Exact model id as requests name it (or provider/model for one provider)."),
    input_: str = typer.Option(..., "--input", help="USD per million uncached input tokens."),
    output: str = typer.Option(..., "--output", help="USD per million output tokens."),
    cache_read: str | None = typer.Option(None, "--cache-read", help="USD per million cache-read tokens."),
    cache_write_5m: str | None = typer.Option(None, "--cache-write-5m", help="USD per million 5-minute cache writes."),
    cache_write_1h: str | None = typer.Option(None, "--cache-write-1h", help="USD per million 1-hour cache writes."),
) -> None:
    """Price a model yourself (writes [prices.MODEL] to config); 0 is a valid price for a free local model.

    Cache rates you leave out come from the catalog's entry for the model, or else cost what input costs.
    """
    from dataclasses import replace

    from ccgate.core.settings import PriceOverride
    from ccgate.local.config_file import load_config

    override = PriceOverride(
        input=_rate(input_, "--input"),
        output=_rate(output, "--output"),
        cache_read=_optional_rate(cache_read, "--cache-read"),
        cache_write_5m=_optional_rate(cache_write_5m, "--cache-write-5m"),
        cache_write_1h=_optional_rate(cache_write_1h, "--cache-write-1h"),
    )
    app_ctx = ctx()
    path = app_ctx.paths.config_file
    config = load_config(path)
    save_and_reload(app_ctx, replace(config, prices={**config.prices, model: override}))
    app_ctx.success(f"{model}: {_usd(override.input)} input, {_usd(override.output)} output per MTok (in {path})")


@price_app.command("unset")
def price_unset(model: str = typer.Argument(..., help="Model id whose override to remove.")) -> None:
    """Remove a price override; the model goes back to its catalog price (or to unpriced)."""
    from dataclasses import replace

    from ccgate.local.config_file import load_config

    app_ctx = ctx()
    path = app_ctx.paths.config_file
    config = load_config(path)
    if model not in config.prices:
        known = ", ".join(sorted(config.prices)) or "none"
        app_ctx.fail(f"no price override for {model!r}", hint=f"overrides in config: {known}")
    save_and_reload(app_ctx, replace(config, prices={k: v for k, v in config.prices.items() if k != model}))
    app_ctx.success(f"removed the price override for {model}")


def register(app: typer.Typer) -> None:
    app.add_typer(price_app, name="price")
