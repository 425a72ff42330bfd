"""The provider catalog: built-in providers, overridden or extended by config and `CCGATE_<NAME>_BASE_URL`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from ccgate import env
from ccgate.core.loopback import LOOPBACK_NAMES as LOOPBACK_NAMES  # its former home: importable from here too
from ccgate.core.loopback import is_loopback_name
from ccgate.errors import ConfigError

if TYPE_CHECKING:
    from ccgate.core.settings import Config

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
    # how errors name it ("the org gateway" in the sidecar's proxy mode) and what to do when it is unreachable
    label: str | None = None
    unreachable_hint: str | None = None
    # the org's ccgate gateway (the sidecar's proxy mode): each request carries its row's project, session and
    # launch in `x-ccgate-*` headers (core/attribution.py); never set for a provider
    ccgate_gateway: bool = False


def key_env_var(name: str) -> str:
    """`groq` -> `CCGATE_GROQ_API_KEY`; the env var that overrides the stored key."""
    return env.provider_api_key(name)


def base_url_env_var(name: str) -> str:
    """`anthropic` -> `CCGATE_ANTHROPIC_BASE_URL`; the seam tests and users use to repoint a provider."""
    return env.provider_base_url(name)


def _env_part(name: str) -> str:
    return env.provider_part(name)


def env_clash(name: str, others: Iterable[str]) -> str | None:
    """Another provider whose env vars `name` would share (`my-llm` and `my_llm`): one key would serve both."""
    mine = _env_part(name)
    return next((other for other in others if other != name and _env_part(other) == mine), None)


# Names that read as something else ccgate stores (the org's virtual key lives in the same keyring service).
RESERVED_NAMES = frozenset({"virtual-key", "virtual_key"})


def validate_provider_name(name: str) -> str:
    """Provider names end up in env var names and in `provider/model` targets, so keep them plain."""
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"invalid provider name {name!r}",
            hint="use lower-case letters, digits, '-' or '_' (no '/'), e.g. 'my-proxy'",
        )
    if name in RESERVED_NAMES:
        raise ConfigError(f"provider name {name!r} is reserved", hint="pick another name, e.g. 'my-proxy'")
    return name


def validate_base_url(url: str, where: str, *, provider: str | None = None) -> str:
    """An http(s) base URL without credentials, query or fragment; error messages never repeat userinfo."""
    from urllib.parse import urlsplit

    url = url.strip()
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(
            f"{where} is not a valid URL (bad host or port)", hint="e.g. https://api.example.com/v1"
        ) from exc
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        key_command = f"ccgate provider key set {provider or 'NAME'}"
        raise ConfigError(
            f"{where} must not contain credentials ({redact_url(url)} with a user name or password)",
            hint=f"drop the user:password@ part and store the key with `{key_command}`",
        )
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"{where} must be an http(s) URL, got {url!r}", hint="e.g. https://api.example.com/v1")
    if "?" in url or "#" in url:
        raise ConfigError(
            f"{where} must end at its path ({redact_url(url)}): query strings and fragments are not allowed",
            hint="give the prefix before /chat/completions (or /v1/messages) only; keys go in the keyring",
        )
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
                base_url=validate_base_url(settings.base_url, f"{where}.base_url", provider=name),
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
                base = replace(base, base_url=validate_base_url(settings.base_url, f"{where}.base_url", provider=name))
        if settings.supports_stream_usage is not None:
            base = replace(base, supports_stream_usage=settings.supports_stream_usage)
        providers[name] = base
    for name, spec in list(providers.items()):
        env_name = base_url_env_var(name)
        override = environ.get(env_name)
        if override:
            providers[name] = replace(spec, base_url=validate_base_url(override, env_name, provider=name))
    return providers


def is_loopback_url(url: str, ports: Iterable[int]) -> bool:
    """Whether `url` points at this machine on one of `ports` (a sidecar's own address, however it is spelt:
    `localhost`, `LOCALHOST`, `127.0.0.1`, `[::1]`)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        return is_loopback_name(parts.hostname or "") and parts.port in set(ports)
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """Scheme, host and port only: credentials in userinfo, the query string, or a token in the path (some
    gateways put one there) never reach a message, a log line or the ledger."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host  # IPv6
        return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"
    except ValueError:
        return "(unparseable URL)"
