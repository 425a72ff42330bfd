"""Comparing a running sidecar's providers with the caller's environment: by base URL and key fingerprint only."""

from __future__ import annotations

from ccgate.core.provider_env import differences, key_fingerprint, sidecar_view
from ccgate.core.providers import resolve_providers
from ccgate.core.settings import Config

TOKEN = "cgt-local-token"


def view(environ: dict[str, str], keys: dict[str, str] | None = None) -> dict[str, dict[str, object]]:
    return sidecar_view(resolve_providers(Config(), environ), environ, keys or {}, TOKEN, {"openai": "file"})


def messages(sidecar_env: dict[str, str], caller_env: dict[str, str], keys: dict[str, str] | None = None) -> list[str]:
    found = differences(resolve_providers(Config(), caller_env), caller_env, TOKEN, view(sidecar_env, keys))
    return [item.message for item in found]


def test_the_fingerprint_is_keyed_and_tells_nothing_of_the_key() -> None:
    assert key_fingerprint(TOKEN, "sk-a") == key_fingerprint(TOKEN, "sk-a") != key_fingerprint(TOKEN, "sk-b")
    assert key_fingerprint("cgt-other", "sk-a") != key_fingerprint(TOKEN, "sk-a")
    assert len(key_fingerprint(TOKEN, "sk-a")) == 16 and "sk-a" not in key_fingerprint(TOKEN, "sk-a")


def test_the_sidecar_view_names_key_sources_never_keys() -> None:
    environ = {"CCGATE_GROQ_API_KEY": "gsk-env"}
    shown = view(environ, {"groq": "gsk-env", "openai": "sk-stored"})
    assert shown["groq"] == {
        "base_url": "https://api.groq.com/openai/v1",
        "key_source": "env",
        "key_fingerprint": key_fingerprint(TOKEN, "gsk-env"),
    }
    assert shown["openai"]["key_source"] == "file" and shown["anthropic"]["key_source"] is None
    assert "gsk-env" not in repr(shown) and "sk-stored" not in repr(shown)


def test_only_what_differs_is_reported() -> None:
    same = {"CCGATE_GROQ_API_KEY": "gsk-1", "CCGATE_OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    assert messages(same, same, {"groq": "gsk-1"}) == []
    assert messages({}, {"CCGATE_OPENAI_API_KEY": "sk-new"}, {"openai": "sk-stored"}) == [
        "openai: CCGATE_OPENAI_API_KEY is set here, but the sidecar uses its key from the file"
    ]
    assert messages({}, {"CCGATE_GROQ_API_KEY": "gsk-new"}) == [
        "groq: CCGATE_GROQ_API_KEY is set here, but the sidecar uses no key"
    ]
    assert messages({}, {"CCGATE_OPENAI_BASE_URL": "http://10.0.0.1:8000/v1"}) == [
        "openai: the sidecar sends requests to https://api.openai.com, your environment says http://10.0.0.1:8000 "
        "(CCGATE_OPENAI_BASE_URL)"
    ]


def test_a_sidecar_that_does_not_report_its_providers_is_not_compared() -> None:
    providers = resolve_providers(Config(), {})
    assert differences(providers, {}, TOKEN, None) == []
    assert differences(providers, {}, TOKEN, {"groq": "garbage"}) == []
