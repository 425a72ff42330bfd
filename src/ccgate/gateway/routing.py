"""The per-key router: the org's tier overrides (team, then key) and the key's allowed models and providers.

Overrides use `ccgate model set`'s words: a tier (`opus`, `sonnet`, `haiku`) or an exact model name maps to
`provider/model`, with fallbacks after commas (`groq/llama-3.3-70b-versatile, openrouter/meta-llama/...`).
Allowed models and providers are names or shell-style patterns (`claude-*-4-5`, `anthropic/claude-*`). The
requested name must be allowed; so must the routed target -- targets that are not are dropped from the chain,
and a request left without any is refused (403).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from ccgate.core.routing import PASSTHROUGH_PROVIDER, TIER_WORDS, Route, Target, parse_target, tier_of
from ccgate.errors import ConfigError, PermissionDeniedError
from ccgate.storage.gateway.records import KeyIdentity

_CACHE_LIMIT = 1024


def parse_chain(text: str) -> tuple[Target, ...]:
    """`provider/model[, provider/model...]` -> targets; raises ConfigError naming what is wrong."""
    return tuple(parse_target(part) for part in text.split(",") if part.strip())


def _allowed(patterns: tuple[str, ...] | None, *names: str) -> bool:
    if patterns is None:
        return True
    return any(fnmatchcase(name, pattern) for pattern in patterns for name in names)


class KeyRouter:
    """`route(model)` for one key: its overrides, checked against what it may use. Cheap to build per key."""

    def __init__(self, identity: KeyIdentity) -> None:
        self.identity = identity
        overrides = identity.tier_overrides
        # exact model names route by their own entry; tier words by the tier found in the model name
        self._rules = {name: name for name in overrides if name.lower() not in TIER_WORDS}
        self._overrides = {name.lower() if name.lower() in TIER_WORDS else name: v for name, v in overrides.items()}
        self._cache: dict[str, Route] = {}

    def route(self, model: str) -> Route:
        cached = self._cache.get(model)
        if cached is not None:
            return cached
        route = self._route(model)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[model] = route
        return route

    def _route(self, model: str) -> Route:
        key = self.identity.key
        if not _allowed(key.allowed_models, model):
            raise self._denied(f"model {model!r} is not allowed for key {key.name!r}")
        tier = tier_of(model, self._rules)
        chain_text = self._overrides.get(tier) if tier is not None else None
        if chain_text:
            try:
                chain = parse_chain(chain_text)
            except ConfigError as error:
                raise ConfigError(
                    f"the org's tier override for {tier} is broken: {error.message}",
                    hint="ask your gateway admin to fix the key's or team's tier overrides",
                ) from None
            overridden = True
        else:
            chain, overridden = (Target(PASSTHROUGH_PROVIDER, model),), False
        usable = tuple(target for target in chain if self._target_allowed(target))
        if not usable:
            where = ", ".join(str(target) for target in chain)
            raise self._denied(f"model {model!r} routes to {where}, which key {key.name!r} may not use")
        return Route(tier=tier, targets=usable, overridden=overridden)

    def _target_allowed(self, target: Target) -> bool:
        key = self.identity.key
        return _allowed(key.allowed_providers, target.provider) and _allowed(
            key.allowed_models, target.model, str(target)
        )

    @staticmethod
    def _denied(message: str) -> PermissionDeniedError:
        return PermissionDeniedError(
            message, hint="use a model your key allows (`ccgate whoami` lists them) or ask your gateway admin"
        )
