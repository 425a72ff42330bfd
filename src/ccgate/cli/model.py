"""`ccgate model set|list|unset|test`: which provider/model chain serves each Claude tier."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import typer

from ccgate.cli._app import AppContext, ctx, save_and_reload
from ccgate.cli.provider import resolved_providers

if TYPE_CHECKING:
    from ccgate.core.providers import ProviderSpec

model_app = typer.Typer(help="Route a Claude tier (opus, sonnet, haiku) to other providers.", no_args_is_help=True)

# A real model name per tier, sent by `model test` so the sidecar routes it like Claude Code's own requests.
_TEST_MODEL = {"haiku": "claude-haiku-4-5", "sonnet": "claude-sonnet-4-5", "opus": "claude-opus-4-5"}


def _catalog(app_ctx: AppContext) -> Any:
    from ccgate.core.pricing import PriceCatalog

    return PriceCatalog(overrides=app_ctx.config.prices)


def _price_cmd(model: str) -> str:
    return f"`ccgate price set {model} --input USD_PER_MTOK --output USD_PER_MTOK`"


def _tier_key(app_ctx: AppContext, tier: str) -> tuple[str, bool]:
    """(key in [tiers], whether it is an exact model name rather than a tier word)."""
    from ccgate.core.settings import KNOWN_TIERS

    if tier.lower() in KNOWN_TIERS:
        return tier.lower(), False
    if tier in app_ctx.config.model_rules or tier in app_ctx.config.tiers or tier.startswith("claude-"):
        return tier, True
    app_ctx.fail(
        f"unknown tier {tier!r}; valid tiers: {', '.join(KNOWN_TIERS)}, or an exact model name like claude-haiku-4-5"
    )


def _resolve_model(app_ctx: AppContext, spec: ProviderSpec, name: str, *, force: bool) -> str:
    """A target's model must be an id the provider knows and ccgate can price — or forced, with a warning."""
    from ccgate.core.model_names import resolve_model_name

    catalog = _catalog(app_ctx)

    def priced(model: str) -> bool:
        rates = catalog.rates(model, provider=spec.name)
        return rates is not None and rates.source in ("catalog", "override")

    known = list(catalog.known_models(spec.name))
    resolution = resolve_model_name(spec.name, name, known, priced=priced)
    if resolution.model is not None:
        if not resolution.exact:
            app_ctx.info(f"{spec.name}/{name}: using {spec.name}'s model id {resolution.model}")
        return resolution.model
    price_cmd = _price_cmd(f"{spec.name}/{name}")
    estimate = catalog.rates(name, provider=spec.name)
    if not known and estimate is not None:
        # a custom provider serving a model the catalog knows elsewhere: an estimate, said out loud
        app_ctx.warn(f"{spec.name}/{name}: {estimate.note or 'priced by estimate'}")
        return name
    if force:
        app_ctx.warn(f"{spec.name}/{name} is not in the price catalog: it is unpriced until you run {price_cmd}")
        return name
    if not known:
        app_ctx.fail(
            f"ccgate has no price list for provider {spec.name!r}, so it cannot check {name!r}",
            hint=f"pass --force to store it anyway, then set its price with {price_cmd} (0 for a free local model)",
        )
    force_hint = f"pass --force to store it anyway (unpriced until {price_cmd})"
    if not resolution.candidates:
        # nothing is close enough to suggest: say so, rather than "use one of those" with none shown
        app_ctx.fail(
            f"unknown model {name!r} for {spec.name}: none of the {len(known)} models ccgate knows there is close",
            hint=f"check the id against {spec.name}'s model list, or {force_hint}",
        )
    app_ctx.fail(
        f"unknown model {name!r} for {spec.name}; closest: {', '.join(resolution.candidates)}",
        hint=f"use one of those, or {force_hint}",
    )


def _target(app_ctx: AppContext, providers: dict[str, ProviderSpec], text: str, *, force: bool) -> str:
    from ccgate.core.routing import parse_target

    target = parse_target(text)
    if target.provider not in providers:
        app_ctx.fail(
            f"unknown provider {target.provider!r} in {text!r}; valid providers: {', '.join(sorted(providers))}",
            hint="add a custom one with `ccgate provider add NAME --kind openai --base-url URL`",
        )
    spec = providers[target.provider]
    return f"{spec.name}/{_resolve_model(app_ctx, spec, target.model, force=force)}"


@model_app.command("set")
def model_set(
    tier: str = typer.Argument(..., help="opus, sonnet, haiku, or an exact model name Claude Code sends."),
    target: str = typer.Argument(..., help="provider/model, e.g. groq/llama-3.3-70b."),
    fallback: list[str] = typer.Option(  # noqa: B008 - typer's declaration style
        [], "--fallback", help="Another provider/model tried when the one before fails (repeatable)."
    ),
    force: bool = typer.Option(False, "--force", help="Store a model name the price catalog does not know."),
) -> None:
    """Route a tier to a provider/model chain (primary first, then each --fallback)."""
    from ccgate.core.routing import Router
    from ccgate.core.settings import TierSettings

    app_ctx = ctx()
    key, exact_model = _tier_key(app_ctx, tier)
    providers = resolved_providers(app_ctx)
    chain: list[str] = []
    for text in (target, *fallback):
        resolved = _target(app_ctx, providers, text, force=force)
        if resolved in chain:
            app_ctx.fail(f"{resolved} appears twice in the chain")
        chain.append(resolved)
    config = app_ctx.config
    tiers = dict(config.tiers)
    tiers[key] = TierSettings(tier=key, targets=tuple(chain))
    rules = dict(config.model_rules)
    if exact_model:
        rules[key] = key
    new_config = replace(config, tiers=tiers, model_rules=rules)
    Router(new_config, providers)  # the same validation the sidecar will run
    save_and_reload(app_ctx, new_config)
    shown = chain[0] + "".join(f", then {t}" for t in chain[1:])
    app_ctx.success(f"{key} → {shown}")
    _warn_missing_keys(app_ctx, providers, chain)
    _proxy_mode_note(app_ctx)


def _proxy_mode_note(app_ctx: Any) -> None:
    """In org proxy mode the gateway routes every request: local tier overrides wait until `ccgate logout`."""
    config = app_ctx.config
    if not config.gateway_url:
        return
    from ccgate.client.org import local_status

    state, _ = local_status(app_ctx.paths)
    if state is not None and state.mode == "proxy":
        app_ctx.warn(
            f"logged in to {config.gateway_url} in proxy mode: the org's routing applies there, "
            "so these local tier overrides are not used (they apply again after `ccgate logout`)"
        )


def _warn_missing_keys(app_ctx: Any, providers: Any, chain: list[str]) -> None:
    """A route to a provider without a key fails at the first request: say so now, with the fix."""
    from ccgate.core.routing import parse_target
    from ccgate.local.secrets import has_provider_key

    for name in dict.fromkeys(parse_target(text).provider for text in chain):
        spec = providers[name]
        if name == "anthropic" or not spec.requires_key:
            continue
        if not has_provider_key(name, app_ctx.environ, paths=app_ctx.paths):
            app_ctx.warn(f"no API key for {name} yet: run `ccgate provider key set {name}` (or set {spec.key_env})")


def _per_mtok(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _rates(catalog: Any, provider: str, model: str) -> tuple[str | None, str | None, str | None]:
    """(input, output) USD per million tokens as decimal strings and the price's source; Nones when unpriced."""
    rates = catalog.rates(model, provider=provider)
    if rates is None:
        return None, None, None
    return _per_mtok(rates.input), _per_mtok(rates.output), str(rates.source)


@model_app.command("list")
def model_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show each tier's chain with input/output prices per million tokens."""
    from ccgate.core.routing import Router, parse_target
    from ccgate.core.settings import KNOWN_TIERS

    app_ctx = ctx()
    config = app_ctx.config
    providers = resolved_providers(app_ctx)
    Router(config, providers)  # a broken chain is reported here rather than shown as if it worked
    _proxy_mode_note(app_ctx)
    catalog = _catalog(app_ctx)
    tiers: list[dict[str, Any]] = []
    for key in (*KNOWN_TIERS, *sorted(k for k in config.tiers if k not in KNOWN_TIERS)):
        settings = config.tiers.get(key)
        targets: list[dict[str, Any]] = []
        for text in settings.targets if settings else ():
            target = parse_target(text)
            input_rate, output_rate, source = _rates(catalog, target.provider, target.model)
            targets.append(
                {
                    "provider": target.provider,
                    "model": target.model,
                    "input_usd_per_mtok": input_rate,
                    "output_usd_per_mtok": output_rate,
                    "price_source": source,
                }
            )
        tiers.append({"tier": key, "overridden": settings is not None, "targets": targets})
    if as_json:
        app_ctx.print_json({"tiers": tiers, "model_rules": dict(config.model_rules)})
        return
    from rich.table import Table
    from rich.text import Text

    unpriced: list[str] = []
    table = Table(box=None, pad_edge=False)
    table.add_column("tier", no_wrap=True)
    table.add_column("route", overflow="fold")  # a long model id folds; the prices are never cut
    for column in ("input $/MTok", "output $/MTok"):
        table.add_column(column, no_wrap=True)
    for row in tiers:
        if not row["overridden"]:
            table.add_row(row["tier"], Text("anthropic (passthrough: the model Claude Code asks for)", "dim"), "", "")
            continue
        for index, target in enumerate(row["targets"]):
            label = Text.assemble(f"{target['provider']}/{target['model']}", (" (fallback)" if index else "", "dim"))
            approx = "~" if target["price_source"] == "estimated" else ""
            table.add_row(
                row["tier"] if index == 0 else "",
                label,
                f"{approx}{target['input_usd_per_mtok']}" if target["price_source"] else Text("unpriced", "yellow"),
                f"{approx}{target['output_usd_per_mtok']}" if target["price_source"] else Text("unpriced", "yellow"),
            )
            if target["price_source"] is None:
                unpriced.append(f"{target['provider']}/{target['model']}")
    app_ctx.out.print(table)
    for name in unpriced:
        app_ctx.warn(f"{name} is unpriced: set a price with {_price_cmd(name)}")
    rules = {k: v for k, v in config.model_rules.items() if k != v}
    for model, tier in sorted(rules.items()):
        app_ctx.info(f"rule: {model} → tier {tier}")


@model_app.command("unset")
def model_unset(
    tier: str = typer.Argument(..., help="The tier (or exact model name) to give back to Anthropic."),
) -> None:
    """Remove a tier's override: requests go to Anthropic unchanged again."""
    app_ctx = ctx()
    key, _ = _tier_key(app_ctx, tier)
    config = app_ctx.config
    if key not in config.tiers:
        overridden = ", ".join(sorted(config.tiers)) or "none"
        app_ctx.fail(f"{key} has no override (overridden: {overridden})")
    tiers = {k: v for k, v in config.tiers.items() if k != key}
    rules = {k: v for k, v in config.model_rules.items() if not (k == key and v == key)}
    save_and_reload(app_ctx, replace(config, tiers=tiers, model_rules=rules))
    app_ctx.success(f"{key} → anthropic (passthrough)")


@model_app.command("test")
def model_test(tier: str = typer.Argument(..., help="The tier (or exact model name) to try.")) -> None:
    """Send one small non-streaming request through the running sidecar and show who answered."""
    from ccgate.errors import CcgateError, SidecarError

    app_ctx = ctx()
    key, exact_model = _tier_key(app_ctx, tier)
    try:
        from ccgate.sidecar import process
    except ImportError:
        process = None  # type: ignore[assignment]
    sidecar_url = getattr(process, "sidecar_url", None)
    if not callable(sidecar_url):
        raise CcgateError(
            "`ccgate model test` is not available yet: this build has no sidecar to send the request through",
            hint="check the route with `ccgate model list` and the provider with `ccgate provider test NAME`",
        )
    url = sidecar_url(app_ctx.paths)
    if not url:
        raise SidecarError("the sidecar is not running", hint="start it with `ccgate sidecar start`")
    model = key if exact_model else _TEST_MODEL[key]
    token_header = str(getattr(process, "TOKEN_HEADER", "x-ccgate-token"))
    status, reply, elapsed_ms = _send_test(app_ctx, str(url), model, token_header)
    if not 200 <= status < 300:
        raise SidecarError(f"{key}: HTTP {status} from the sidecar: {reply}", hint="see `ccgate logs` for details")
    app_ctx.success(f"{key}: HTTP {status} in {elapsed_ms:.0f} ms: {reply}")


def _send_test(app_ctx: AppContext, url: str, model: str, token_header: str) -> tuple[int, str, float]:
    import asyncio
    import json
    import time

    from ccgate.local.secrets import get_provider_key

    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    token_file = app_ctx.paths.token_file
    if token_file.exists():
        headers[token_header] = token_file.read_text(encoding="utf-8").strip()
    key = get_provider_key("anthropic", app_ctx.environ, paths=app_ctx.paths) or app_ctx.environ.get(
        "ANTHROPIC_API_KEY"
    )
    if key:
        headers["x-api-key"] = key
    body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "Reply with: ok"}]}

    async def send() -> tuple[int, str, float]:
        from ccgate.proxy.upstream import create_client_session

        async with create_client_session(connect_timeout=5.0, read_timeout=120.0) as session:
            started = time.perf_counter()
            async with session.post(
                f"{url.rstrip('/')}/v1/messages", headers=headers, json=body, allow_redirects=False
            ) as response:
                text = await response.text(errors="replace")
                elapsed = (time.perf_counter() - started) * 1000
        try:
            data = json.loads(text)
        except ValueError:
            return response.status, " ".join(text.split())[:200], elapsed
        if isinstance(data, dict) and data.get("type") == "error":
            return response.status, str(data.get("error", {}).get("message", ""))[:200], elapsed
        blocks = data.get("content", []) if isinstance(data, dict) else []
        said = "".join(b.get("text", "") for b in blocks if isinstance(b, dict))
        return response.status, f"{data.get('model', model)} said {said.strip()[:80]!r}", elapsed

    result = asyncio.run(send())
    return result[0], result[1].replace(key, "***") if key else result[1], result[2]


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
