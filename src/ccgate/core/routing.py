"""Tier routing: which provider/model chain serves a requested model name (pure, called per request)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ccgate.errors import ConfigError

if TYPE_CHECKING:
    from ccgate.core.providers import ProviderSpec
    from ccgate.core.settings import Config

# Same words as config.KNOWN_TIERS (kept here so the pure core does not import the TOML adapter).
TIER_WORDS: tuple[str, ...] = ("opus", "sonnet", "haiku")
PASSTHROUGH_PROVIDER = "anthropic"
_CACHE_LIMIT = 4096


def tier_of(model: str, model_rules: Mapping[str, str]) -> str | None:
    """An exact-name rule wins; otherwise the tier word inside the model name (case-insensitive)."""
    rule = model_rules.get(model)
    if rule is not None:
        return rule
    lowered = model.lower()
    for word in TIER_WORDS:
        if word in lowered:
            return word
    return None


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


def parse_target(text: str) -> Target:
    """`groq/llama-3.3-70b-versatile` -> Target; only the first '/' splits, the model may contain more."""
    provider, sep, model = text.strip().partition("/")
    if not sep or not provider or not model:
        raise ConfigError(
            f"target {text!r} is not 'provider/model'",
            hint="write it as provider/model, e.g. groq/llama-3.3-70b-versatile",
        )
    return Target(provider=provider, model=model)


@dataclass(frozen=True, slots=True)
class Route:
    """`targets` is the chain tried in order; `overridden` is False for the plain Anthropic passthrough."""

    tier: str | None
    targets: tuple[Target, ...]
    overridden: bool


class Router:
    """Validates the config's chains once, then answers `route(model)` from a per-name cache."""

    def __init__(self, config: Config, providers: Mapping[str, ProviderSpec]) -> None:
        self._rules: dict[str, str] = dict(config.model_rules)
        self._chains: dict[str, tuple[Target, ...]] = {}
        for tier, settings in config.tiers.items():
            chain = tuple(parse_target(text) for text in settings.targets)
            for target in chain:
                if target.provider not in providers:
                    valid = ", ".join(sorted(providers))
                    raise ConfigError(
                        f"tiers.{tier}: unknown provider {target.provider!r} in {str(target)!r}",
                        hint=f"valid providers: {valid} (or add one with `ccgate provider add`)",
                    )
            self._chains[tier] = chain
        self._cache: dict[str, Route] = {}

    def route(self, model: str) -> Route:
        cached = self._cache.get(model)
        if cached is not None:
            return cached
        tier = tier_of(model, self._rules)
        chain = self._chains.get(tier) if tier is not None else None
        if chain:
            result = Route(tier=tier, targets=chain, overridden=True)
        else:
            result = Route(tier=tier, targets=(Target(PASSTHROUGH_PROVIDER, model),), overridden=False)
        if len(self._cache) >= _CACHE_LIMIT:
            # Model names come from clients; keep the cache bounded rather than clever.
            self._cache.clear()
        self._cache[model] = result
        return result

    @property
    def chains(self) -> Mapping[str, tuple[Target, ...]]:
        return dict(self._chains)


def route_for(requested_model: str, config: Config, providers: Mapping[str, ProviderSpec]) -> Route:
    """One-off routing; servers build a `Router` once per config and call `route` per request."""
    return Router(config, providers).route(requested_model)
