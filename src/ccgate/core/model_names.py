"""Turn the short model names users type (`llama-3.3-70b`) into the provider's real ids, or refuse with suggestions.

Pure: the list of known ids comes from the price catalog, so a chosen name is always a priced one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# What providers append to a family name: `-versatile`, `-instruct`, `-latest`, `-20241022`, `-2024-08-06`, `-0905`.
_ALIAS_SEGMENT = re.compile(r"^(versatile|instruct|latest|chat|it|instant|\d{4}|\d{6}|\d{8}|\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True, slots=True)
class Resolution:
    """`model` is the id to store (None: refused); `exact` is False when it differs from what was typed."""

    model: str | None
    exact: bool
    candidates: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.model is not None


def _alias_suffix(remainder: str) -> bool:
    """True for `-versatile`, `-instruct-0905`, `-20241022`: the tail providers add to a family name."""
    if not remainder.startswith(("-", "@", ":")):
        return False
    segments = re.split(r"[-@:]", remainder[1:])
    return all(_ALIAS_SEGMENT.match(seg) for seg in segments) if segments != [""] else False


def _unique(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def resolve_model_name(
    provider: str,
    name: str,
    known: Sequence[str],
    *,
    priced: Callable[[str], bool] | None = None,
) -> Resolution:
    """Exact id, else a unique alias-style or prefix match, else refuse with the closest known ids.

    `priced(name)`, when given, accepts a name the price catalog prices as typed (catalogs match dated ids
    like `claude-3-5-sonnet-20241022` to their family entry), so real ids are never "corrected".
    """
    typed = name
    name = name.strip()
    if provider and name.startswith(f"{provider}/") and name not in known:
        # `groq/groq/llama...` typed by habit
        name = name[len(provider) + 1 :]
    if name in known or (priced is not None and name and priced(name)):
        return Resolution(name, name == typed, ())

    lowered = name.lower()
    by_lower = [k for k in known if k.lower() == lowered]
    if len(by_lower) == 1:
        return Resolution(by_lower[0], False, ())

    def tail(model: str) -> str:
        return model.rsplit("/", 1)[-1].lower()

    # The family name plus a conventional suffix, matched on the whole id or on its last path segment
    # (`llama-3.3-70b-instruct` -> openrouter's `meta-llama/llama-3.3-70b-instruct`).
    same_tail = [k for k in known if "/" in k and "/" not in name and tail(k) == lowered]
    if len(same_tail) == 1:
        return Resolution(same_tail[0], False, ())
    alias = _unique(
        [
            k
            for k in known
            for candidate in (k.lower(), tail(k))
            if candidate.startswith(lowered) and _alias_suffix(candidate[len(lowered) :])
        ]
    )
    if len(alias) == 1:
        return Resolution(alias[0], False, ())
    prefix = _unique([k for k in known if k.lower().startswith(lowered) or tail(k).startswith(lowered)])
    if len(prefix) == 1 and name:
        return Resolution(prefix[0], False, ())

    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.6)
    near_tails = set(difflib.get_close_matches(lowered, [tail(k) for k in known], n=5, cutoff=0.75))
    close_tail = [k for k in known if tail(k) in near_tails]
    candidates = _unique([*same_tail, *alias, *sorted(prefix)[:5], *close, *close_tail])[:8]
    return Resolution(None, False, candidates)
