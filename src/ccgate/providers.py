"""The provider catalog: built-in providers, overridden or extended by config and `CCGATE_<NAME>_BASE_URL`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from ccgate.errors import ConfigError

if TYPE_CHECKING:
    from ccgate.config import Config

ProviderKind = Literal["anthropic", "openai"]
AuthStyle = Literal["x-api-key", "bearer"]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """Everything the proxy needs to reach a provider (the key itself lives in `secrets`).

    For `openai` providers `base_url` is the prefix before `/chat/completions`; for `anthropic` providers it is
    the prefix before `/v1/messages`.
    """

    name: str
    kind: ProviderKind
    base_url: str
    key_env: str
    supports_stream_usage: bool
    genai_provider_id: str | None
    builtin: bool
    auth: AuthStyle
    requires_key: bool = True


def key_env_var(name: str) -> str:
    """`groq` -> `CCGATE_GROQ_API_KEY`; the env var that overrides the stored key."""
    return f"CCGATE_{_env_part(name)}_API_KEY"


def base_url_env_var(name: str) -> str:
    """`anthropic` -> `CCGATE_ANTHROPIC_BASE_URL`; the seam tests and users use to repoint a provider."""
    return f"CCGATE_{_env_part(name)}_BASE_URL"


def _env_part(name: str) -> str:
    return name.upper().replace("-", "_")


def validate_provider_name(name: str) -> str:
    """Provider names end up in env var names and in `provider/model` targets, so keep them plain."""
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"invalid provider name {name!r}",
            hint="use lower-case letters, digits, '-' or '_' (no '/'), e.g. 'my-proxy'",
        )
    return name


def validate_base_url(url: str, where: str) -> str:
    url = url.strip()
    if not url.startswith(("http://", "https://")) or len(url) <= len("https://"):
        raise ConfigError(f"{where} must be an http(s) URL, got {url!r}", hint="e.g. https://api.example.com/v1")
    return url.rstrip("/")


def _builtin(
    name: str,
    kind: ProviderKind,
    base_url: str,
    *,
    genai: str | None,
    stream_usage: bool = True,
    requires_key: bool = True,
) -> ProviderSpec:
    return ProviderSpec(
        name=name,
        kind=kind,
        base_url=base_url,
        key_env=key_env_var(name),
        supports_stream_usage=stream_usage,
        genai_provider_id=genai,
        builtin=True,
        auth="x-api-key" if kind == "anthropic" else "bearer",
        requires_key=requires_key,
    )


BUILTIN: Mapping[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        _builtin("anthropic", "anthropic", "https://api.anthropic.com", genai="anthropic"),
        _builtin("openai", "openai", "https://api.openai.com/v1", genai="openai"),
        _builtin("groq", "openai", "https://api.groq.com/openai/v1", genai="groq"),
        _builtin("openrouter", "openai", "https://openrouter.ai/api/v1", genai="openrouter"),
        _builtin("deepseek", "openai", "https://api.deepseek.com/v1", genai="deepseek"),
        _builtin("together", "openai", "https://api.together.xyz/v1", genai="together"),
        _builtin("fireworks", "openai", "https://api.fireworks.ai/inference/v1", genai="fireworks"),
        # Mistral reports usage in its last chunk on its own and has rejected unknown request fields.
        _builtin("mistral", "openai", "https://api.mistral.ai/v1", genai="mistral", stream_usage=False),
        _builtin("cerebras", "openai", "https://api.cerebras.ai/v1", genai="cerebras"),
        _builtin("xai", "openai", "https://api.x.ai/v1", genai="x-ai"),
        _builtin("ollama", "openai", "http://127.0.0.1:11434/v1", genai=None, requires_key=False),
    )
}


def resolve_providers(config: Config, environ: Mapping[str, str]) -> dict[str, ProviderSpec]:
    """Built-ins, then `[providers.NAME]` from config, then `CCGATE_<NAME>_BASE_URL` (which wins)."""
    providers = dict(BUILTIN)
    for name, settings in config.providers.items():
        where = f"providers.{name}"
        base = providers.get(name)
        if base is None:
            validate_provider_name(name)
            if settings.kind is None or settings.base_url is None:
                raise ConfigError(
                    f"custom provider [{where}] needs `kind` and `base_url`",
                    hint=f"ccgate provider add {name} --kind openai --base-url URL",
                )
            kind: ProviderKind = "anthropic" if settings.kind == "anthropic" else "openai"
            base = ProviderSpec(
                name=name,
                kind=kind,
                base_url=validate_base_url(settings.base_url, f"{where}.base_url"),
                key_env=key_env_var(name),
                supports_stream_usage=True,
                genai_provider_id=None,
                builtin=False,
                auth="x-api-key" if kind == "anthropic" else "bearer",
            )
        else:
            if settings.kind is not None and settings.kind != base.kind:
                kind = "anthropic" if settings.kind == "anthropic" else "openai"
                base = replace(base, kind=kind, auth="x-api-key" if kind == "anthropic" else "bearer")
            if settings.base_url is not None:
                base = replace(base, base_url=validate_base_url(settings.base_url, f"{where}.base_url"))
        if settings.supports_stream_usage is not None:
            base = replace(base, supports_stream_usage=settings.supports_stream_usage)
        providers[name] = base
    for name, spec in list(providers.items()):
        env_name = base_url_env_var(name)
        override = environ.get(env_name)
        if override:
            providers[name] = replace(spec, base_url=validate_base_url(override, env_name))
    return providers


def redact_url(url: str) -> str:
    """Scheme, host and path only: credentials in userinfo or the query string never reach a message."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
