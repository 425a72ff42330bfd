"""Tier routing: tier detection, target parsing, chains, and the Anthropic passthrough default."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccgate.core.providers import resolve_providers
from ccgate.core.routing import TIER_WORDS, Route, Router, Target, parse_target, route_for, tier_of
from ccgate.core.settings import KNOWN_TIERS, Config, config_from_dict
from ccgate.errors import ConfigError

PROVIDERS = resolve_providers(Config(), {})


def test_tier_words_match_config() -> None:
    assert set(TIER_WORDS) == set(KNOWN_TIERS)


@pytest.mark.parametrize(
    ("model", "tier"),
    [
        ("claude-haiku-4-5", "haiku"),
        ("claude-3-5-haiku-20241022", "haiku"),
        ("claude-sonnet-4-5-20250929", "sonnet"),
        ("claude-opus-4-8", "opus"),
        ("CLAUDE-OPUS-4", "opus"),
        ("us.anthropic.claude-sonnet-4", "sonnet"),
        ("gpt-4o", None),
        ("", None),
    ],
)
def test_tier_of_by_name(model: str, tier: str | None) -> None:
    assert tier_of(model, {}) == tier


def test_exact_rule_wins_over_substring() -> None:
    rules = {"claude-opus-4-8": "haiku", "my-model": "sonnet"}
    assert tier_of("claude-opus-4-8", rules) == "haiku"
    assert tier_of("my-model", rules) == "sonnet"
    assert tier_of("claude-opus-4-7", rules) == "opus"


def test_parse_target() -> None:
    assert parse_target("groq/llama-3.3-70b-versatile") == Target("groq", "llama-3.3-70b-versatile")
    nested = parse_target("openrouter/meta-llama/llama-3.3-70b-instruct")
    assert nested == Target("openrouter", "meta-llama/llama-3.3-70b-instruct")
    assert str(nested) == "openrouter/meta-llama/llama-3.3-70b-instruct"


@pytest.mark.parametrize("text", ["groq", "groq/", "/llama", "", "  "])
def test_parse_target_rejects_non_targets(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_target(text)
    assert "provider/model" in info.value.message


@settings(deadline=None)
@given(
    provider=st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True),
    model=st.text(min_size=1, max_size=40).filter(lambda s: s.strip() == s and s != ""),
)
def test_parse_target_round_trips(provider: str, model: str) -> None:
    assert parse_target(str(Target(provider, model))) == Target(provider, model)


def test_no_override_is_anthropic_passthrough() -> None:
    route = route_for("claude-sonnet-4-5", Config(), PROVIDERS)
    assert route == Route(tier="sonnet", targets=(Target("anthropic", "claude-sonnet-4-5"),), overridden=False)
    unknown = route_for("some-model", Config(), PROVIDERS)
    assert unknown == Route(tier=None, targets=(Target("anthropic", "some-model"),), overridden=False)


def test_tier_chain_and_exact_model_rule() -> None:
    config = config_from_dict(
        {
            "tiers": {
                "haiku": {"targets": ["groq/llama-3.3-70b-versatile", "openrouter/meta-llama/llama-3.3-70b-instruct"]},
                "claude-special": {"targets": ["deepseek/deepseek-chat"]},
            },
            "model_rules": {"claude-special": "claude-special", "claude-opus-4-8": "haiku"},
        }
    )
    router = Router(config, PROVIDERS)
    haiku = router.route("claude-haiku-4-5-20251001")
    assert haiku.overridden and haiku.tier == "haiku"
    assert haiku.targets == (
        Target("groq", "llama-3.3-70b-versatile"),
        Target("openrouter", "meta-llama/llama-3.3-70b-instruct"),
    )
    assert router.route("claude-opus-4-8").targets == haiku.targets  # exact rule maps opus name to haiku's chain
    assert router.route("claude-special").targets == (Target("deepseek", "deepseek-chat"),)
    sonnet = router.route("claude-sonnet-4-5")
    assert not sonnet.overridden and sonnet.targets == (Target("anthropic", "claude-sonnet-4-5"),)
    # per-name cache: the same answer object comes back
    assert router.route("claude-haiku-4-5-20251001") is haiku


def test_unknown_provider_lists_valid_ones() -> None:
    config = config_from_dict({"tiers": {"haiku": {"targets": ["grok/llama"]}}})
    with pytest.raises(ConfigError) as info:
        Router(config, PROVIDERS)
    assert "'grok'" in info.value.message
    assert info.value.hint is not None
    for name in ("groq", "openrouter", "anthropic", "ollama"):
        assert name in info.value.hint


def test_custom_provider_routes() -> None:
    config = config_from_dict(
        {
            "providers": {"lab": {"kind": "openai", "base_url": "http://127.0.0.1:9999/v1"}},
            "tiers": {"opus": {"targets": ["lab/qwen/qwen3-coder"]}},
        }
    )
    route = route_for("claude-opus-4-8", config, resolve_providers(config, {}))
    assert route.targets == (Target("lab", "qwen/qwen3-coder"),)
