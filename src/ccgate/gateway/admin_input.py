"""The admin API's input checks: each field's value checked and converted, or a 400 naming the field and the fix.

Bodies are JSON objects with only the fields a route lists (unknown ones are refused by name); numbers are
read as Decimal (never float), text holds no control characters and is valid Unicode (NUL or a lone surrogate
would break the database driver).
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
import zoneinfo
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from ccgate.core.budgets import parse_period
from ccgate.core.names import fold_name
from ccgate.core.records import to_iso, usd_to_nanos, utcnow
from ccgate.core.routing import TIER_WORDS
from ccgate.core.webhooks import looks_redacted
from ccgate.errors import InvalidRequestError, RequestTooLargeError
from ccgate.storage.gateway.records import MAX_RATE_LIMIT, AdminRole

MAX_BODY_BYTES = 64 * 1024
MAX_USD = Decimal(1_000_000_000)  # a billion dollars: beyond it an amount is a typo, and nanos stay in BIGINT
MAX_LIST = 1000

Field = Callable[[str, Any], Any]


def bad(field: str, what: str) -> InvalidRequestError:
    return InvalidRequestError(f"field {field!r} must be {what}", hint="fix the value and send the request again")


def clean(value: str) -> bool:
    """No control characters and valid Unicode: NUL or a lone surrogate would break the database driver."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 2000:
        raise bad(field, "a non-empty string")
    if not clean(value):
        raise bad(field, "text without control characters")
    return value


# Unicode categories a name must not hold: controls, format characters (bidi overrides, zero-width joiners: a name
# that renders as another), line and paragraph separators, surrogates, private use and unassigned code points.
_NAME_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
MAX_NAME = 200


def name(field: str, value: Any) -> str:
    """A name people read (customer, team, key, token, provider): visible characters, no spaces at either end,
    stored in Unicode's composed form (NFC), so `café` typed on two systems is one name."""
    given = text(field, value)
    if len(given) > MAX_NAME or any(unicodedata.category(c) in _NAME_CATEGORIES for c in given):
        raise bad(field, f"a name of at most {MAX_NAME} visible characters (no control or invisible characters)")
    if given != given.strip():
        raise bad(field, "a name without spaces at its start or end")
    return unicodedata.normalize("NFC", given)


def folded(value: str) -> str:
    """What two names that people would take for one have in common: compatibility form, case folded."""
    return fold_name(value)


def opt_text(field: str, value: Any) -> str | None:
    return None if value is None else text(field, value)


def url(field: str, value: Any) -> str | None:
    if value is None:
        return None
    given = text(field, value)
    if not re.match(r"^https?://[^\s/?#]+", given) or any(ord(c) < 33 for c in given):
        raise bad(field, "an http:// or https:// URL")
    if looks_redacted(given):
        raise bad(field, "the whole URL (what the API shows is redacted: `…` stands for what it leaves out)")
    try:
        urlsplit(given).port  # noqa: B018 - raises for a port that is not a number in range
    except ValueError:
        raise bad(field, "an http:// or https:// URL with a valid port") from None
    return given


def names(field: str, value: Any) -> list[str] | None:
    """A list of names, or null (= no restriction)."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_LIST:
        raise bad(field, f"a list of at most {MAX_LIST} names, or null")
    return [text(field, item) for item in value]


def boolean(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise bad(field, "true or false")
    return value


def count(field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RATE_LIMIT:
        raise bad(field, f"a whole number from 0 to {MAX_RATE_LIMIT}, or null")
    return value


def usd_nanos(field: str, value: Any) -> int:
    """A dollar amount as a decimal string (or integer): exact, 0 to a billion, at most nine decimals."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise bad(field, 'a dollar amount as a decimal string, e.g. "20.00"')
    try:
        amount = Decimal(value.strip().removeprefix("$") if isinstance(value, str) else value)
    except InvalidOperation:
        raise bad(field, 'a dollar amount as a decimal string, e.g. "20.00"') from None
    if not amount.is_finite() or not 0 <= amount <= MAX_USD:
        raise bad(field, f"a dollar amount from 0 to {MAX_USD:,}")
    if amount != amount.quantize(Decimal("1e-9")):
        raise bad(field, "a dollar amount with at most nine decimal places")
    return usd_to_nanos(amount)


def opt_usd(field: str, value: Any) -> int | None:
    return None if value is None else usd_nanos(field, value)


def thresholds(field: str, value: Any) -> list[Decimal]:
    if not isinstance(value, list) or len(value) > 20:
        raise bad(field, 'a list of fractions of the limit, e.g. ["0.8", "1"]')
    out = []
    for item in value:
        try:
            number = Decimal(item) if isinstance(item, str | int | Decimal) and not isinstance(item, bool) else None
        except InvalidOperation:
            number = None
        if number is None or not number.is_finite() or not 0 < number <= 10 or number != round(number, 6):
            raise bad(field, 'a list of fractions of the limit above 0 and at most 10, e.g. ["0.8", "1"]')
        out.append(number)
    return out


def overrides(field: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > len(TIER_WORDS):
        raise bad(field, 'an object mapping a tier to provider/model, e.g. {"haiku": "groq/llama-3.3-70b"}')
    for tier, target in value.items():
        provider, slash, model = target.partition("/") if isinstance(target, str) else ("", "", "")
        if tier not in TIER_WORDS or not (slash and provider.strip() and model.strip()):
            raise bad(field, f"an object mapping {', '.join(TIER_WORDS)} to provider/model")
    return dict(value)


def moment(field: str, value: Any) -> datetime | None:
    """An ISO-8601 time (no offset: UTC) or date (its midnight UTC), or null."""
    if value is None:
        return None
    given = text(field, value).strip()
    try:
        parsed = (
            datetime.combine(date.fromisoformat(given), datetime.min.time())
            if len(given) == 10
            else datetime.fromisoformat(given.replace("Z", "+00:00"))
        )
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise bad(field, "an ISO-8601 time such as 2027-01-31T00:00:00Z, or null") from None


DEFAULT_GRACE = timedelta(days=1)  # how long a rotated-out key keeps working unless the rotation says otherwise
# A team admin's longest grace: a key it rotates (say, a leaked one) stops within a day; longer is an admin's call.
TEAM_ADMIN_MAX_GRACE = timedelta(hours=24)
LONG_GRACE = "keep a rotated-out key working for more than 24 hours"


def grace(field: str, value: Any) -> timedelta:
    given = text(field, value).strip()
    return timedelta(0) if given == "0" else parse_period(given).approx_duration()


def role(field: str, value: Any) -> AdminRole:
    try:
        return AdminRole(value)
    except ValueError:
        raise bad(field, "admin, viewer or team_admin") from None


def choice(*choices: str) -> Field:
    def check(field: str, value: Any) -> str:
        if value not in choices:
            raise bad(field, " or ".join(choices))
        return str(value)

    return check


def fields(data: Mapping[str, Any], spec: Mapping[str, Field], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Checked and converted values of the given fields; unknown and missing fields are refused by name."""
    unknown = sorted(set(data) - set(spec))
    if unknown:
        raise InvalidRequestError(
            f"unknown field(s): {', '.join(repr(name) for name in unknown)}",
            hint=f"the fields here are: {', '.join(spec)}",
        )
    missing = [name for name in required if name not in data]
    if missing:
        raise InvalidRequestError(
            f"missing field(s): {', '.join(repr(name) for name in missing)}", hint="add them and send again"
        )
    return {name: spec[name](name, value) for name, value in data.items()}


async def read_body(request: web.Request, spec: Mapping[str, Field], required: tuple[str, ...] = ()) -> dict[str, Any]:
    raw = await read_capped(request, MAX_BODY_BYTES)
    if raw is None:
        raise RequestTooLargeError(f"the request body is over {MAX_BODY_BYTES} bytes", hint="send a smaller body")
    try:
        data = json.loads(raw or b"{}", parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidRequestError("the body is not JSON", hint="send a JSON object") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the body must be a JSON object", hint="send a JSON object")
    return fields(data, spec, required)


async def read_capped(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None past `limit` bytes (never more than that in memory: the gateway's own body limit,
    for Claude Code's requests, is 64 MB). One `read(n)` returns only what has arrived, so read until the end."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def read_query(request: web.Request, spec: Mapping[str, Field]) -> dict[str, Any]:
    query = request.rel_url.query
    if any(len(query.getall(name)) > 1 for name in query):
        raise InvalidRequestError("a query parameter is given twice", hint="give each parameter once")
    return fields(dict(query), spec)


def flag(field: str, value: Any) -> bool:
    if value not in ("true", "false"):
        raise bad(field, "true or false")
    return bool(value == "true")


def limit(field: str, value: Any) -> int:
    # ASCII digits only: "²" is a digit to `isdigit` but not to `int`, and "١٠" would be read as 10
    if not (isinstance(value, str) and value.isascii() and value.isdigit() and 1 <= int(value) <= 1000):
        raise bad(field, "a number from 1 to 1000")
    return int(value)


@functools.cache
def _zone_names() -> frozenset[str]:
    """The IANA names this machine knows, without `localtime` (the host's own zone: gateway instances on different
    hosts would cut one budget's windows differently) and the `right/` and `posix/` copies."""
    return frozenset(zoneinfo.available_timezones()) - {"localtime"}


def zone(field: str, value: Any) -> ZoneInfo:
    given = text(field, value)
    try:
        if given not in _zone_names():  # also keeps directories ("America") and file-system paths out
            raise ValueError(given)
        return ZoneInfo(given)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise bad(field, "an IANA time zone such as Europe/Berlin") from None


def zone_name(field: str, value: Any) -> str:
    """`zone`, kept as its name (a budget stores the name)."""
    return zone(field, value).key


def not_past(expiry: datetime | None) -> None:
    if expiry is not None and expiry <= utcnow():
        raise InvalidRequestError(
            f"expires_at {to_iso(expiry)} is in the past", hint="give a future time, or revoke the key instead"
        )


def api_key(field: str, value: Any) -> str:
    given = text(field, value)
    if " " in given or len(given) > 1000:
        raise bad(field, "an API key without spaces, at most 1000 characters")
    return given
