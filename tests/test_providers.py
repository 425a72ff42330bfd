"""The provider catalog: built-ins, config overrides and custom providers, and the env seam that wins."""

from __future__ import annotations

import pytest

from ccgate.core.providers import (
    BUILTIN,
    base_url_env_var,
    key_env_var,
    resolve_providers,
    validate_base_url,
    validate_provider_name,
)
from ccgate.core.settings import Config, ProviderSettings, config_from_dict
from ccgate.errors import ConfigError

EXPECTED_BASE_URLS = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com/v1",
    "groq": "https://api.groq.com/openai/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "together": "https://api.together.xyz/v1",
    "fireworks": "https://api.fireworks.ai/inference/v1",
    "mistral": "https://api.mistral.ai/v1",
    "cerebras": "https://api.cerebras.ai/v1",
    "xai": "https://api.x.ai/v1",
    "ollama": "http://127.0.0.1:11434/v1",
}


def test_builtin_catalog() -> None:
    providers = resolve_providers(Config(), {})
    assert {name: spec.base_url for name, spec in providers.items()} == EXPECTED_BASE_URLS
    assert all(spec.builtin for spec in providers.values())
    anthropic = providers["anthropic"]
    assert (anthropic.kind, anthropic.auth, anthropic.genai_provider_id) == ("anthropic", "x-api-key", "anthropic")
    assert {spec.kind for name, spec in providers.items() if name != "anthropic"} == {"openai"}
    assert {spec.auth for name, spec in providers.items() if name != "anthropic"} == {"bearer"}
    assert providers["xai"].genai_provider_id == "x-ai"
    assert not providers["ollama"].requires_key
    assert providers["ollama"].genai_provider_id is None
    assert all(spec.requires_key for name, spec in providers.items() if name != "ollama")
    assert providers["groq"].key_env == "CCGATE_GROQ_API_KEY"


def test_env_var_names() -> None:
    assert key_env_var("groq") == "CCGATE_GROQ_API_KEY"
    assert key_env_var("my-proxy") == "CCGATE_MY_PROXY_API_KEY"
    assert base_url_env_var("anthropic") == "CCGATE_ANTHROPIC_BASE_URL"


def test_config_overrides_builtin_and_adds_custom() -> None:
    config = config_from_dict(
        {
            "providers": {
                "groq": {"base_url": "https://groq.example/v1/", "supports_stream_usage": False},
                "my-proxy": {"kind": "anthropic", "base_url": "http://127.0.0.1:9000"},
                "local-llm": {"kind": "openai", "base_url": "http://127.0.0.1:8080/v1"},
            }
        }
    )
    providers = resolve_providers(config, {})
    groq = providers["groq"]
    assert groq.base_url == "https://groq.example/v1"  # trailing slash dropped
    assert groq.supports_stream_usage is False
    assert groq.builtin and groq.genai_provider_id == "groq"
    proxy = providers["my-proxy"]
    assert (proxy.kind, proxy.auth, proxy.builtin, proxy.genai_provider_id) == ("anthropic", "x-api-key", False, None)
    assert proxy.key_env == "CCGATE_MY_PROXY_API_KEY"
    local = providers["local-llm"]
    assert (local.kind, local.auth, local.supports_stream_usage) == ("openai", "bearer", True)
    # the other built-ins are untouched
    assert providers["openai"] == BUILTIN["openai"]


def test_env_base_url_wins_over_config_and_default() -> None:
    config = Config(
        providers={
            "anthropic": ProviderSettings(name="anthropic", base_url="https://config.example"),
            "my-proxy": ProviderSettings(name="my-proxy", kind="openai", base_url="https://proxy.example/v1"),
        }
    )
    environ = {
        "CCGATE_ANTHROPIC_BASE_URL": "http://127.0.0.1:4321",
        "CCGATE_MY_PROXY_BASE_URL": "http://127.0.0.1:5555/v1/",
        "CCGATE_GROQ_BASE_URL": "",  # empty means unset
    }
    providers = resolve_providers(config, environ)
    assert providers["anthropic"].base_url == "http://127.0.0.1:4321"
    assert providers["my-proxy"].base_url == "http://127.0.0.1:5555/v1"
    assert providers["groq"].base_url == EXPECTED_BASE_URLS["groq"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"providers": {"custom": {"base_url": "http://x.example"}}}, "needs `kind` and `base_url`"),
        ({"providers": {"custom": {"kind": "openai"}}}, "needs `kind` and `base_url`"),
        ({"providers": {"custom": {"kind": "openai", "base_url": "ftp://x"}}}, "http(s) URL"),
        ({"providers": {"Bad/Name": {"kind": "openai", "base_url": "http://x.example"}}}, "invalid provider name"),
        ({"providers": {"virtual-key": {"kind": "openai", "base_url": "http://x.example"}}}, "is reserved"),
        ({"providers": {"custom": {"kind": "openai", "base_url": "https://h.example/v1?k=1"}}}, "query strings"),
        ({"providers": {"custom": {"kind": "openai", "base_url": "https://h.example:99999"}}}, "not a valid URL"),
        ({"providers": {"groq": {"base_url": "https://bob:hunter2@h.example"}}}, "must not contain credentials"),
    ],
)
def test_bad_provider_config(raw: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_providers(config_from_dict(raw), {})
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "url", ["https://bob:hunter2@api.example/v1", "https://:hunter2@api.example/v1", "ftp://bob:hunter2@x"]
)
def test_base_url_with_credentials_is_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_base_url(url, "--base-url", provider="lab")
    message = info.value.full_message()
    assert "hunter2" not in message and "bob" not in message
    assert "must not contain credentials" in message
    assert "ccgate provider key set lab" in (info.value.hint or "")


def test_base_url_query_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        validate_base_url("https://api.example/v1?api_key=sk-abc", "--base-url")
    assert "sk-abc" not in info.value.full_message()
    assert "(https://api.example)" in info.value.message  # origin only: a path may carry a token too
    assert validate_base_url(" https://api.example/v1/ ", "x") == "https://api.example/v1"


def test_urls_in_messages_keep_only_scheme_host_and_port() -> None:
    from ccgate.core.providers import redact_url

    assert redact_url("https://user:pw@gw.example:8443/t/SECRET-TOKEN/v1?key=k#f") == "https://gw.example:8443"
    assert redact_url("http://[::1]:80/x") == "http://[::1]:80"
    assert redact_url("https://gw.example:99999999/") == "(unparseable URL)"


def test_reserved_provider_names() -> None:
    for name in ("virtual-key", "virtual_key"):
        with pytest.raises(ConfigError, match="reserved"):
            validate_provider_name(name)
    assert validate_provider_name("virtual-keys") == "virtual-keys"


def test_bad_env_base_url_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_providers(Config(), {"CCGATE_GROQ_BASE_URL": "not a url"})
    assert "CCGATE_GROQ_BASE_URL" in info.value.message


def test_the_sidecars_own_address_is_recognised_however_it_is_spelt() -> None:
    from ccgate.core.providers import is_loopback_url
    from ccgate.features.launching import users_upstream

    for spelling in ("http://127.0.0.1:8787", "http://localhost:8787/", "http://LOCALHOST:8787", "http://[::1]:8787"):
        assert is_loopback_url(spelling, [8787]), spelling
        # launch would otherwise make the sidecar forward this launch's requests to itself
        assert users_upstream(spelling, "http://127.0.0.1:8787") is None, spelling
    assert not is_loopback_url("http://127.0.0.1:9999", [8787])
    assert not is_loopback_url("https://corp-gw.example:8787", [8787])
    assert users_upstream("https://corp-gw.example/v1", "http://127.0.0.1:8787") == "https://corp-gw.example/v1"
