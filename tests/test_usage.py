"""The three token conventions (Anthropic, OpenAI, genai-prices) normalise into one Usage."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ccgate.core.records import Usage
from ccgate.core.usage import (
    MAX_TOKENS,
    anthropic_usage_issues,
    clamped,
    invalid_anthropic_count,
    merge_anthropic_usage,
    to_anthropic_usage,
    to_genai_prices_kwargs,
    to_openai_usage,
    usage_from_anthropic,
    usage_from_genai_prices,
    usage_from_openai,
)

counts = st.integers(min_value=0, max_value=2_000_000)
usages = st.builds(
    Usage,
    input_tokens=counts,
    output_tokens=counts,
    cache_read_tokens=counts,
    cache_write_5m_tokens=counts,
    cache_write_1h_tokens=counts,
    web_searches=st.integers(min_value=0, max_value=50),
)


# ---------------------------------------------------------------- Anthropic


def test_anthropic_usage_with_cache_breakdown() -> None:
    raw = {
        "input_tokens": 12,
        "cache_creation_input_tokens": 3_000,
        "cache_read_input_tokens": 40_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1_000, "ephemeral_1h_input_tokens": 2_000},
        "output_tokens": 345,
        "server_tool_use": {"web_search_requests": 2},
        "service_tier": "standard",
    }
    assert usage_from_anthropic(raw) == Usage(
        input_tokens=12,
        output_tokens=345,
        cache_read_tokens=40_000,
        cache_write_5m_tokens=1_000,
        cache_write_1h_tokens=2_000,
        web_searches=2,
    )


def test_anthropic_creation_without_breakdown_counts_as_5m() -> None:
    usage = usage_from_anthropic({"input_tokens": 5, "cache_creation_input_tokens": 700, "output_tokens": 1})
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (700, 0)


def test_anthropic_zero_breakdown_with_nonzero_total_counts_as_5m() -> None:
    # some Anthropic-compatible servers send the breakdown keys as zeros
    raw = {
        "input_tokens": 1,
        "cache_creation_input_tokens": 700,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
    }
    usage = usage_from_anthropic(raw)
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (700, 0)


def test_anthropic_total_above_breakdown_puts_the_rest_in_5m() -> None:
    raw = {"cache_creation_input_tokens": 1_000, "cache_creation": {"ephemeral_1h_input_tokens": 400}}
    usage = usage_from_anthropic(raw)
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (600, 400)


def test_anthropic_nulls_missing_and_garbage_are_zero() -> None:
    assert usage_from_anthropic(None) == Usage()
    assert usage_from_anthropic({}) == Usage()
    raw: dict[str, Any] = {
        "input_tokens": None,
        "output_tokens": "12",
        "cache_read_input_tokens": True,
        "cache_creation_input_tokens": -5,
        "cache_creation": None,
        "server_tool_use": None,
    }
    assert usage_from_anthropic(raw) == Usage()
    assert usage_from_anthropic({"input_tokens": 7.0}) == Usage(input_tokens=7)


def test_absurd_counts_are_clamped_to_the_ceiling_and_say_so() -> None:
    """2**62 (or 1e30) tokens would overflow the ledger's 64-bit integers once priced: cut to MAX_TOKENS."""
    huge: dict[str, Any] = {
        "input_tokens": 2**62,
        "output_tokens": 1e30,
        "cache_read_input_tokens": 2**70,
        "cache_creation_input_tokens": 10**40,
        "cache_creation": {"ephemeral_5m_input_tokens": 2**64, "ephemeral_1h_input_tokens": 5},
        "server_tool_use": {"web_search_requests": 2**63},
    }
    usage = usage_from_anthropic(huge)
    assert usage == Usage(
        input_tokens=MAX_TOKENS,
        output_tokens=MAX_TOKENS,
        cache_read_tokens=MAX_TOKENS,
        cache_write_5m_tokens=MAX_TOKENS,
        cache_write_1h_tokens=5,
        web_searches=MAX_TOKENS,
    )
    assert clamped(usage)
    assert merge_anthropic_usage(Usage(input_tokens=3), {"output_tokens": 2**62}).output_tokens == MAX_TOKENS
    assert usage_from_anthropic({"input_tokens": float("inf"), "output_tokens": float("nan")}) == Usage()
    # an OpenAI prompt cut to the ceiling is split between input and cache reads: still flagged
    openai = usage_from_openai({"prompt_tokens": 2**62, "prompt_tokens_details": {"cached_tokens": 10}})
    assert (openai.input_tokens, openai.cache_read_tokens) == (MAX_TOKENS - 10, 10)
    assert clamped(openai)
    assert clamped(usage_from_openai({"completion_tokens": 1e300}))
    # counts up to the ceiling are kept as reported
    exact = usage_from_anthropic({"input_tokens": MAX_TOKENS - 1, "output_tokens": 1})
    assert exact.input_tokens == MAX_TOKENS - 1 and not clamped(exact)
    # large parts below the ceiling are what they say, even when their sum passes it
    parts = usage_from_anthropic({"cache_read_input_tokens": 600_000_000, "cache_creation_input_tokens": 500_000_000})
    assert parts.total_input_tokens > MAX_TOKENS and not clamped(parts)


def test_invalid_counts_are_named_for_callers_that_refuse_them() -> None:
    """The import refuses what the proxy reads leniently (as zero): negative, fractional, boolean or text counts."""
    assert invalid_anthropic_count({"input_tokens": -5, "output_tokens": "abc"}) == "input_tokens"
    assert invalid_anthropic_count({"input_tokens": 5, "output_tokens": "abc"}) == "output_tokens"
    assert invalid_anthropic_count({"cache_read_input_tokens": 1.5}) == "cache_read_input_tokens"
    assert invalid_anthropic_count({"cache_creation_input_tokens": True}) == "cache_creation_input_tokens"
    nested = {"cache_creation": {"ephemeral_1h_input_tokens": -1}}
    assert invalid_anthropic_count(nested) == "cache_creation.ephemeral_1h_input_tokens"
    assert (
        invalid_anthropic_count({"server_tool_use": {"web_search_requests": [1]}})
        == "server_tool_use.web_search_requests"
    )
    # absent, null, whole floats and counts beyond the ceiling (clamped) are all usable
    usable: dict[str, Any] = {
        "input_tokens": 7.0,
        "output_tokens": 2**62,
        "cache_read_input_tokens": None,
        "cache_creation": None,
        "server_tool_use": {"web_search_requests": 0},
        "service_tier": "standard",
    }
    assert invalid_anthropic_count(usable) is None
    assert invalid_anthropic_count({}) is None


def test_merge_takes_output_from_delta_and_keeps_start_counts() -> None:
    start = usage_from_anthropic(
        {
            "input_tokens": 10,
            "cache_read_input_tokens": 500,
            "cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
            "output_tokens": 1,
        }
    )
    merged = merge_anthropic_usage(start, {"output_tokens": 987})
    assert merged == Usage(
        input_tokens=10, output_tokens=987, cache_read_tokens=500, cache_write_5m_tokens=100, cache_write_1h_tokens=200
    )


def test_merge_lets_present_delta_fields_override() -> None:
    start = Usage(input_tokens=10, output_tokens=1, cache_read_tokens=500, cache_write_1h_tokens=200)
    delta = {
        "input_tokens": 11,
        "cache_read_input_tokens": 600,
        "output_tokens": 50,
        "server_tool_use": {"web_search_requests": 3},
    }
    assert merge_anthropic_usage(start, delta) == Usage(
        input_tokens=11, output_tokens=50, cache_read_tokens=600, cache_write_1h_tokens=200, web_searches=3
    )


def test_merge_updated_creation_total_without_breakdown_keeps_1h_share() -> None:
    start = Usage(cache_write_5m_tokens=100, cache_write_1h_tokens=200)
    merged = merge_anthropic_usage(start, {"cache_creation_input_tokens": 450, "output_tokens": 5})
    assert (merged.cache_write_5m_tokens, merged.cache_write_1h_tokens) == (250, 200)


def test_merge_null_fields_in_delta_do_not_erase() -> None:
    start = Usage(input_tokens=10, cache_read_tokens=5)
    merged = merge_anthropic_usage(start, {"input_tokens": None, "cache_read_input_tokens": None, "output_tokens": 9})
    assert merged == Usage(input_tokens=10, cache_read_tokens=5, output_tokens=9)


@settings(deadline=None)
@given(usages)
def test_anthropic_round_trip(usage: Usage) -> None:
    assert usage_from_anthropic(to_anthropic_usage(usage)) == usage


@settings(deadline=None)
@given(usages)
def test_merge_with_empty_delta_is_identity(usage: Usage) -> None:
    assert merge_anthropic_usage(usage, {}) == usage


@settings(deadline=None)
@given(usages, usages)
def test_merge_with_a_complete_delta_is_the_delta(start: Usage, final: Usage) -> None:
    assert merge_anthropic_usage(start, to_anthropic_usage(final)) == final


def test_speed_is_read_kept_and_only_a_short_word() -> None:
    """Fast mode is priced by the reply's `usage.speed`; a delta without it keeps what message_start said."""
    start = usage_from_anthropic({"input_tokens": 5, "output_tokens": 1, "speed": "fast"})
    assert start.speed == "fast"
    assert merge_anthropic_usage(start, {"output_tokens": 9}) == Usage(input_tokens=5, output_tokens=9, speed="fast")
    assert merge_anthropic_usage(start, {"speed": "standard"}).speed == "standard"  # fell back to standard
    for odd in (None, 3, "", "x" * 100, ["fast"]):
        assert usage_from_anthropic({"input_tokens": 5, "speed": odd}).speed is None
    assert (Usage(speed="fast") + Usage(input_tokens=1)).speed == "fast"


# ---------------------------------------------------------------- OpenAI


def test_openai_prompt_tokens_include_cached() -> None:
    raw = {
        "prompt_tokens": 2_000,
        "completion_tokens": 300,
        "total_tokens": 2_300,
        "prompt_tokens_details": {"cached_tokens": 1_500, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 100},
    }
    assert usage_from_openai(raw) == Usage(input_tokens=500, output_tokens=300, cache_read_tokens=1_500)


def test_openai_without_details_has_no_cache() -> None:
    assert usage_from_openai({"prompt_tokens": 20, "completion_tokens": 3}) == Usage(input_tokens=20, output_tokens=3)
    assert usage_from_openai(None) == Usage()
    assert usage_from_openai({"prompt_tokens": 20, "prompt_tokens_details": None}) == Usage(input_tokens=20)


def test_openai_deepseek_cache_hit_tokens() -> None:
    raw = {"prompt_tokens": 100, "completion_tokens": 7, "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}
    assert usage_from_openai(raw) == Usage(input_tokens=36, output_tokens=7, cache_read_tokens=64)


def test_openai_cached_above_prompt_is_clipped() -> None:
    raw = {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 50}}
    assert usage_from_openai(raw) == Usage(input_tokens=0, output_tokens=1, cache_read_tokens=10)


@settings(deadline=None)
@given(counts, counts, counts)
def test_openai_round_trip(input_tokens: int, cache_read: int, output: int) -> None:
    usage = Usage(input_tokens=input_tokens, output_tokens=output, cache_read_tokens=cache_read)
    raw = to_openai_usage(usage)
    assert raw["prompt_tokens"] == input_tokens + cache_read
    assert usage_from_openai(raw) == usage


# ---------------------------------------------------------------- genai-prices


def test_genai_prices_kwargs_use_total_input() -> None:
    usage = Usage(
        input_tokens=10,
        output_tokens=20,
        cache_read_tokens=300,
        cache_write_5m_tokens=4_000,
        cache_write_1h_tokens=50_000,
        web_searches=1,
    )
    assert to_genai_prices_kwargs(usage) == {
        "input_tokens": 54_310,
        "cache_read_tokens": 300,
        "cache_write_tokens": 54_000,
        "cache_write_5m_tokens": 4_000,
        "cache_write_1h_tokens": 50_000,
        "output_tokens": 20,
        "web_searches": 1,
    }


def test_genai_prices_accepts_the_kwargs() -> None:
    from genai_prices import Usage as GPUsage

    kwargs = to_genai_prices_kwargs(Usage(input_tokens=1, cache_write_5m_tokens=2, cache_write_1h_tokens=3))
    gp = GPUsage(**kwargs)
    assert (gp.input_tokens, gp.cache_write_tokens, gp.cache_write_1h_tokens) == (6, 5, 3)


@settings(deadline=None)
@given(usages)
def test_genai_prices_round_trip(usage: Usage) -> None:
    kwargs = to_genai_prices_kwargs(usage)
    assert kwargs["input_tokens"] == usage.total_input_tokens
    assert kwargs["cache_write_tokens"] == kwargs["cache_write_5m_tokens"] + kwargs["cache_write_1h_tokens"]
    assert usage_from_genai_prices(kwargs) == usage


@settings(deadline=None)
@given(usages)
def test_all_conventions_agree_on_the_prompt_total(usage: Usage) -> None:
    assert to_openai_usage(usage)["prompt_tokens"] == usage.total_input_tokens
    assert to_genai_prices_kwargs(usage)["input_tokens"] == usage.total_input_tokens
    raw = to_anthropic_usage(usage)
    anthropic_total = raw["input_tokens"] + raw["cache_read_input_tokens"] + raw["cache_creation_input_tokens"]
    assert anthropic_total == usage.total_input_tokens


_ODD_COUNT = st.none() | st.integers(-5, 10**10) | st.floats(allow_nan=True) | st.booleans() | st.text(max_size=3)
_COUNTS = st.dictionaries(
    st.sampled_from(["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"]),
    _ODD_COUNT,
)
_CREATION = (
    st.none()
    | st.text(max_size=2)
    | st.dictionaries(st.sampled_from(["ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"]), _ODD_COUNT)
)


@settings(deadline=None, max_examples=300)
@given(counts=_COUNTS, creation=_CREATION, required=st.booleans())
def test_usage_issues_of_a_dict_take_a_shortcut_with_the_same_answer(
    counts: dict[str, Any], creation: Any, required: bool
) -> None:
    """A plain dict of whole counts skips the per-path check; any other mapping takes it: same answer."""
    raw = {**counts, "cache_creation": creation}
    assert anthropic_usage_issues(raw, required=required) == anthropic_usage_issues(
        MappingProxyType(raw), required=required
    )
