"""The one place that translates between the three token-usage conventions ccgate meets.

- Anthropic: `input_tokens` excludes cache reads and writes; writes come as `cache_creation_input_tokens` with an
  optional `cache_creation.{ephemeral_5m,ephemeral_1h}_input_tokens` breakdown.
- OpenAI (and every OpenAI-compatible provider): `prompt_tokens` INCLUDES `prompt_tokens_details.cached_tokens`.
- genai-prices: `input_tokens` is the total prompt including cache reads and writes; `cache_write_tokens` is the
  total of writes and the 5m/1h split is given on top of it.

ccgate's own `Usage` (models.py) uses Anthropic's convention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ccgate.core.records import NO_USAGE, Usage

__all__ = [
    "MAX_PLAUSIBLE_INPUT_TOKENS",
    "MAX_PLAUSIBLE_OUTPUT_TOKENS",
    "MAX_TOKENS",
    "anthropic_output_tokens",
    "anthropic_sides_reported",
    "anthropic_usage_issues",
    "clamped",
    "implausible_usage",
    "invalid_anthropic_count",
    "merge_anthropic_usage",
    "to_anthropic_usage",
    "to_genai_prices_kwargs",
    "to_openai_usage",
    "usage_from_anthropic",
    "usage_from_genai_prices",
    "usage_from_openai",
]


# The most tokens (or web searches) one count of one request may hold; larger reported counts are cut to it.
# A thousand times the largest context window of any model: no real request comes near it, while a count at
# the ceiling times the dearest catalog rate ($600/MTok, 600,000 nano-dollars a token) is 6e14 nano-dollars,
# so a whole request's cost stays thousands of times below SQLite's 64-bit integers (9.2e18).
MAX_TOKENS = 10**9


def _count(value: Any) -> int | None:
    """A token count from JSON: None when absent or unusable (null, bool, negative, non-integral); counts above
    `MAX_TOKENS` are clamped to it (`clamped` tells afterwards)."""
    if type(value) is int:  # the usual case first (`type`, not isinstance: bool is an int too)
        if 0 <= value <= MAX_TOKENS:
            return value
        return MAX_TOKENS if value > 0 else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return min(value, MAX_TOKENS) if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return MAX_TOKENS if value > MAX_TOKENS else int(value)
    return None


def clamped(usage: Usage) -> bool:
    """True when a count is at `MAX_TOKENS`: the provider reported more than any request holds, and what is
    recorded is the ceiling, not what it said."""
    return MAX_TOKENS in (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_5m_tokens,
        usage.cache_write_1h_tokens,
        usage.web_searches,
        usage.total_input_tokens,  # an OpenAI prompt cut to the ceiling, split between input and cache reads
    )


_EMPTY: Mapping[str, Any] = {}


def _mapping(value: Any) -> Mapping[str, Any]:
    if type(value) is dict:  # parsed JSON: skips the slow ABC isinstance check
        return value
    if value is None:  # an absent object (`cache_creation` of most deltas): no ABC check either
        return _EMPTY
    return value if isinstance(value, Mapping) else _EMPTY


def _apply_anthropic(base: Usage, raw: Mapping[str, Any]) -> Usage:
    """Fields present in `raw` override `base`; absent ones keep base's value."""
    input_tokens = _count(raw.get("input_tokens"))
    output_tokens = _count(raw.get("output_tokens"))
    cache_read = _count(raw.get("cache_read_input_tokens"))
    creation_total = _count(raw.get("cache_creation_input_tokens"))
    breakdown = _mapping(raw.get("cache_creation"))
    split_5m = _count(breakdown.get("ephemeral_5m_input_tokens"))
    split_1h = _count(breakdown.get("ephemeral_1h_input_tokens"))
    web_searches = _count(_mapping(raw.get("server_tool_use")).get("web_search_requests"))
    speed = raw.get("speed")

    write_1h = base.cache_write_1h_tokens if split_1h is None else split_1h
    write_5m = base.cache_write_5m_tokens if split_5m is None else split_5m
    if creation_total is not None:
        if split_1h is None:
            # no (new) breakdown: what is not known to be 1h counts as 5m, the default TTL
            write_1h = min(write_1h, creation_total)
        # the total is authoritative unless the breakdown claims more than it
        write_5m = max(split_5m or 0, creation_total - write_1h)

    return Usage(
        input_tokens=base.input_tokens if input_tokens is None else input_tokens,
        output_tokens=base.output_tokens if output_tokens is None else output_tokens,
        cache_read_tokens=base.cache_read_tokens if cache_read is None else cache_read,
        cache_write_5m_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
        web_searches=base.web_searches if web_searches is None else web_searches,
        # the speed the request ran at (fast mode may fall back to standard); a short word, anything else ignored
        speed=speed if type(speed) is str and 0 < len(speed) <= _MAX_SPEED_LENGTH else base.speed,
    )


_MAX_SPEED_LENGTH = 32

# Where an Anthropic usage object holds counts: (key,) or (nested object, key).
_ANTHROPIC_COUNT_PATHS = (
    ("input_tokens",),
    ("output_tokens",),
    ("cache_read_input_tokens",),
    ("cache_creation_input_tokens",),
    ("cache_creation", "ephemeral_5m_input_tokens"),
    ("cache_creation", "ephemeral_1h_input_tokens"),
    ("server_tool_use", "web_search_requests"),
)


def invalid_anthropic_count(raw: Mapping[str, Any]) -> str | None:
    """The first count of an Anthropic usage object that is present but not a whole number >= 0 (null counts as
    absent), as a dotted key; None when all are usable.

    For records that may be refused (an imported transcript line): the live proxy reads leniently instead, since
    a provider's odd usage field must never fail a request.
    """
    for path in _ANTHROPIC_COUNT_PATHS:
        holder = raw if len(path) == 1 else _mapping(raw.get(path[0]))
        value = holder.get(path[-1])
        if value is not None and (type(value) is not int or value < 0) and _count(value) is None:
            return ".".join(path)  # (a plain int >= 0 is always usable: the common case skips `_count`)
    return None


# What one reply of any model can use: input plus cache against the largest context window (2M tokens today), output
# against the largest output limit (128K today), each with room to spare. One ceiling for every model on purpose:
# the price catalog's context windows lag the betas that widen them (it lists Sonnet 4.5 at 200K, which serves 1M
# with `context-1m`), and a real request flagged as impossible would be billed an estimate instead of its usage.
# Past these a count is a provider's bug; believed, it would cost thousands of dollars and exhaust every budget.
MAX_PLAUSIBLE_INPUT_TOKENS = 2_000_000
MAX_PLAUSIBLE_OUTPUT_TOKENS = 256_000


def implausible_usage(usage: Usage) -> dict[str, str]:
    """The sides of `usage` ("input", "output") beyond what any model can use, each with why."""
    issues: dict[str, str] = {}
    if usage.total_input_tokens > MAX_PLAUSIBLE_INPUT_TOKENS:
        issues["input"] = (
            f"the provider reported {usage.total_input_tokens:,} input tokens, past any context window "
            f"({MAX_PLAUSIBLE_INPUT_TOKENS:,})"
        )
    if usage.output_tokens > MAX_PLAUSIBLE_OUTPUT_TOKENS:
        issues["output"] = (
            f"the provider reported {usage.output_tokens:,} output tokens, past any model's output limit "
            f"({MAX_PLAUSIBLE_OUTPUT_TOKENS:,})"
        )
    return issues


def anthropic_usage_issues(raw: Any, *, required: bool) -> dict[str, str]:
    """The sides ("input", "output") an Anthropic usage object reports unusably, each with why.

    A negative, fractional or non-numeric count reads as absent (the proxy reads leniently, a request must not
    fail over it), which on its own would make a billed request look free. `required`: the object must be there
    (a whole reply, `message_start`); a later `message_delta` only updates what it holds.
    """
    if type(raw) is not dict and not isinstance(raw, Mapping):
        if not required:
            return {}
        return {side: "the provider reported no usage" for side in ("input", "output")}
    if type(raw) is dict and _plain_counts(raw):
        return {}  # the usual object: every count a whole number >= 0 (or absent), nothing to say
    issues: dict[str, str] = {}
    for path in _ANTHROPIC_COUNT_PATHS:
        if path[0] == "server_tool_use":
            continue  # a bad web-search count reads as none: cents, not the whole request
        holder = raw if len(path) == 1 else _mapping(raw.get(path[0]))
        value = holder.get(path[-1])
        if value is not None and _count(value) is None:
            side = "output" if path == ("output_tokens",) else "input"
            issues.setdefault(side, f"the provider reported an unusable usage.{'.'.join(path)}: {_shown(value)}")
    return issues


_TOP_COUNTS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
_CREATION_COUNTS = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")


def _plain_counts(raw: dict[str, Any]) -> bool:
    """True when every count `anthropic_usage_issues` looks at is absent, null or an int >= 0 (a nested object
    other than a dict is left to the full check)."""
    for key in _TOP_COUNTS:
        value = raw.get(key)
        if value is not None and (type(value) is not int or value < 0):
            return False
    creation = raw.get("cache_creation")
    if creation is None:
        return True
    if type(creation) is not dict:
        return False
    for key in _CREATION_COUNTS:
        value = creation.get(key)
        if value is not None and (type(value) is not int or value < 0):
            return False
    return True


def anthropic_sides_reported(raw: Mapping[str, Any]) -> set[str]:
    """The sides ("input", "output") for which a usage object holds a usable count: a `message_delta` that
    reports them settles what `message_start` left out (some Anthropic-compatible providers count there)."""
    sides = set()
    if _count(raw.get("input_tokens")) is not None:
        sides.add("input")
    if _count(raw.get("output_tokens")) is not None:
        sides.add("output")
    return sides


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def anthropic_output_tokens(raw: Mapping[str, Any]) -> int:
    """`usage_from_anthropic(raw).output_tokens` without building the rest (the importer compares copies)."""
    output = _count(raw.get("output_tokens"))
    return 0 if output is None else output


def usage_from_anthropic(raw: Mapping[str, Any] | None) -> Usage:
    """Read an Anthropic `usage` object (non-streaming response or `message_start.message.usage`).

    Cache creation without the `cache_creation` breakdown counts entirely as 5-minute writes (the default TTL).
    """
    return _apply_anthropic(NO_USAGE, _mapping(raw))


def merge_anthropic_usage(start: Usage, final_delta: Mapping[str, Any]) -> Usage:
    """Fold the final `message_delta.usage` into what `message_start` reported.

    The delta is authoritative for `output_tokens` (it is cumulative, not an increment) and may carry updated
    input and cache counts; only the fields it actually holds override the start.
    """
    return _apply_anthropic(start, _mapping(final_delta))


def to_anthropic_usage(usage: Usage) -> dict[str, Any]:
    """Anthropic's `usage` object for a response ccgate builds itself (e.g. translated from OpenAI)."""
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_5m_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
        },
        "server_tool_use": {"web_search_requests": usage.web_searches},
    }


def usage_from_openai(raw: Mapping[str, Any] | None) -> Usage:
    """Read an OpenAI chat-completions `usage` object.

    `prompt_tokens` includes the cached part, so the uncached input is `prompt_tokens - cached_tokens`. Cached
    tokens come from `prompt_tokens_details.cached_tokens`, or DeepSeek's `prompt_cache_hit_tokens`.
    """
    usage = _mapping(raw)
    prompt = _count(usage.get("prompt_tokens")) or 0
    completion = _count(usage.get("completion_tokens")) or 0
    cached = _count(_mapping(usage.get("prompt_tokens_details")).get("cached_tokens"))
    if cached is None:
        cached = _count(usage.get("prompt_cache_hit_tokens"))
    # prompt_tokens is the total; a cached count above it is a provider bug and is clipped to it
    cache_read = min(cached or 0, prompt)
    return Usage(input_tokens=prompt - cache_read, output_tokens=completion, cache_read_tokens=cache_read)


def to_openai_usage(usage: Usage) -> dict[str, Any]:
    """OpenAI's `usage` object; cache writes count as ordinary prompt tokens there."""
    prompt = usage.total_input_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
    }


def to_genai_prices_kwargs(usage: Usage) -> dict[str, int]:
    """Keyword arguments for `genai_prices.Usage`: input is the total prompt, cache writes total plus split.

    genai-prices insists on an explicit `cache_write_tokens` whenever the 5m/1h split is given, so every key is
    always present (zeros included).
    """
    return {
        "input_tokens": usage.total_input_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "cache_write_5m_tokens": usage.cache_write_5m_tokens,
        "cache_write_1h_tokens": usage.cache_write_1h_tokens,
        "output_tokens": usage.output_tokens,
        "web_searches": usage.web_searches,
    }


def usage_from_genai_prices(kwargs: Mapping[str, int]) -> Usage:
    """The inverse of `to_genai_prices_kwargs`; unsplit cache writes count as 5m."""
    total = kwargs.get("input_tokens", 0)
    read = kwargs.get("cache_read_tokens", 0)
    write_1h = kwargs.get("cache_write_1h_tokens", 0)
    writes = kwargs.get("cache_write_tokens", kwargs.get("cache_write_5m_tokens", 0) + write_1h)
    return Usage(
        input_tokens=total - read - writes,
        output_tokens=kwargs.get("output_tokens", 0),
        cache_read_tokens=read,
        cache_write_5m_tokens=writes - write_1h,
        cache_write_1h_tokens=write_1h,
        web_searches=kwargs.get("web_searches", 0),
    )
