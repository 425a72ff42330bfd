"""Short model names resolve to the provider's real id, or are refused with the closest known ids."""

from __future__ import annotations

import pytest

from ccgate.core.model_names import Resolution, resolve_model_name

GROQ = [
    "llama-3.1-8b-instant",
    "llama-3.3-70b-specdec",
    "llama-3.3-70b-versatile",
    "llama3-70b-8192",
    "moonshotai/kimi-k2-instruct",
    "openai/gpt-oss-120b",
]
OPENROUTER = ["meta-llama/llama-3.3-70b-instruct", "meta-llama/llama-3.1-8b-instruct", "openai/gpt-4o"]
ANTHROPIC = ["claude-3-5-haiku-latest", "claude-haiku-4-5", "claude-sonnet-4-5", "claude-sonnet-4-0"]


def test_exact_match_wins() -> None:
    assert resolve_model_name("groq", "llama-3.3-70b-versatile", GROQ) == Resolution(
        "llama-3.3-70b-versatile", True, ()
    )


@pytest.mark.parametrize(
    ("provider", "known", "typed", "chosen"),
    [
        ("groq", GROQ, "llama-3.3-70b", "llama-3.3-70b-versatile"),  # -versatile beats -specdec
        ("groq", GROQ, "LLAMA-3.3-70B-VERSATILE", "llama-3.3-70b-versatile"),
        ("groq", GROQ, "kimi-k2", "moonshotai/kimi-k2-instruct"),
        ("groq", GROQ, "gpt-oss-120b", "openai/gpt-oss-120b"),
        ("groq", GROQ, "groq/llama-3.3-70b-versatile", "llama-3.3-70b-versatile"),
        ("openrouter", OPENROUTER, "llama-3.3-70b-instruct", "meta-llama/llama-3.3-70b-instruct"),
        ("openrouter", OPENROUTER, "meta-llama/llama-3.3-70b", "meta-llama/llama-3.3-70b-instruct"),
        ("anthropic", ANTHROPIC, "claude-3-5-haiku", "claude-3-5-haiku-latest"),
        ("anthropic", ANTHROPIC, "claude-haiku-4", "claude-haiku-4-5"),  # unique prefix
    ],
)
def test_short_names_resolve(provider: str, known: list[str], typed: str, chosen: str) -> None:
    result = resolve_model_name(provider, typed, known)
    assert result.model == chosen
    assert not result.exact


def test_typo_is_refused_with_close_matches() -> None:
    result = resolve_model_name("groq", "lama-3.3-70b-versatil", GROQ)
    assert result.model is None and not result.ok
    assert "llama-3.3-70b-versatile" in result.candidates


def test_ambiguous_prefix_is_refused_listing_both() -> None:
    result = resolve_model_name("anthropic", "claude-sonnet-4", ANTHROPIC)
    assert result.model is None
    assert {"claude-sonnet-4-5", "claude-sonnet-4-0"} <= set(result.candidates)


def test_no_catalog_means_no_resolution() -> None:
    assert resolve_model_name("ollama", "llama3", []) == Resolution(None, False, ())


def test_priced_as_typed_is_kept_verbatim() -> None:
    """A dated id the catalog prices through its family entry is a real id: never 'corrected'."""
    result = resolve_model_name(
        "anthropic", "claude-sonnet-4-5-20250929", ANTHROPIC, priced=lambda m: m.startswith("claude-sonnet-4-5")
    )
    assert result == Resolution("claude-sonnet-4-5-20250929", True, ())


def test_with_the_real_price_catalog() -> None:
    from ccgate.core.pricing import PriceCatalog

    known = PriceCatalog().known_models("groq")
    assert "llama-3.3-70b-versatile" in known
    assert resolve_model_name("groq", "llama-3.3-70b", known).model == "llama-3.3-70b-versatile"
    refused = resolve_model_name("groq", "llama-3.3-70b-versatle", known)
    assert refused.model is None and "llama-3.3-70b-versatile" in refused.candidates
