"""Launch tags (`ccgate launch --tag ticket=ABC-1`): parsing, validation and the one text form the ledger stores.

A row's tags are a JSON object with sorted keys (`{"team":"payments","ticket":"ABC-1"}`) so SQLite's JSON
functions can group by one key; keys and values are short and plain so they are safe in a header, a CSV cell
and a terminal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from ccgate import env
from ccgate.errors import UserInputError

MAX_TAGS = 16
MAX_KEY_CHARS = 32
MAX_VALUE_CHARS = 128
ENV_VAR = env.TAGS
_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# Letters, digits and a few separators seen in ticket ids, branch names and cost centres; no spaces, no commas
# (the CCGATE_TAGS separator), no control characters, no quotes.
_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+#-]{0,127}$")
_HINT = (
    "write tags as key=value: the key lowercase letters, digits, _ or - (starting with a letter, at most "
    f"{MAX_KEY_CHARS}), the value letters, digits and _ . : / @ + # - (at most {MAX_VALUE_CHARS}), "
    "e.g. --tag ticket=ABC-123"
)


def check_key(key: str) -> str:
    """A tag key as `cost --by tag:KEY` and `logs --tag` take it; UserInputError when it cannot be one."""
    if not _KEY.match(key):
        raise UserInputError(f"{key!r} is not a valid tag key", hint=_HINT)
    return key


def parse_tag(text: str) -> tuple[str, str]:
    """`key=value` -> (key, value), validated."""
    key, sep, value = text.partition("=")
    if not sep:
        raise UserInputError(f"tag {text!r} is not key=value", hint=_HINT)
    check_key(key)
    if not _VALUE.match(value):
        raise UserInputError(f"tag {key}={value!r}: the value is empty or holds characters a tag cannot", hint=_HINT)
    return key, value


def parse_tags(texts: Iterable[str], *, env_value: str | None = None) -> dict[str, str]:
    """`CCGATE_TAGS` ("k=v,k2=v2") first, then each `--tag` (a repeated key keeps the last value)."""
    tags: dict[str, str] = {}
    items = [part.strip() for part in (env_value or "").split(",") if part.strip()]
    for text in [*items, *texts]:
        key, value = parse_tag(text)
        tags[key] = value
    if len(tags) > MAX_TAGS:
        raise UserInputError(f"{len(tags)} tags given; at most {MAX_TAGS}", hint="keep the tags you report on")
    return tags


def encode(tags: Mapping[str, str]) -> str | None:
    """The ledger's text for a launch's tags; None (the column's NULL) without any."""
    return json.dumps(dict(sorted(tags.items())), separators=(",", ":")) if tags else None


def decode(text: object) -> dict[str, str]:
    """Inverse of `encode`, lenient: anything that is not a JSON object of strings reads as no tags."""
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if isinstance(v, str)}


def checked(value: object) -> dict[str, str]:
    """Tags from a registration payload (another process's JSON): every key and value validated again."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise UserInputError("tags must be an object of strings", hint=_HINT)
    return parse_tags(f"{key}={item}" for key, item in value.items())


def json_path(key: str) -> str:
    """The SQLite JSON path of one (validated) key."""
    return f'$."{check_key(key)}"'
