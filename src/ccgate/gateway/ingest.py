"""`POST /v1/usage`: a sidecar's finished rows, validated field by field and re-priced by the gateway.

Body: ``{"rows": [{ledger columns as in `ccgate logs --json`, "tags": {K: V}}, ...]}``. A batch that is not
such an object, or has more than `MAX_ROWS` rows, is refused whole (400, nothing stored). A row with an unknown
field or a bad value is rejected on its own, with why. What a row says about cost, key, team or customer is
never believed: it belongs to the calling key, and its cost comes from its tokens at the gateway's prices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from ccgate.core.records import Cost, PriceQuality, RequestRecord, RequestStatus, Usage, from_iso, utcnow
from ccgate.core.usage import MAX_TOKENS
from ccgate.errors import InvalidRequestError
from ccgate.proxy.engine import Pricer

MAX_ROWS = 1000
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_ID = 128
MAX_TEXT = 1000
MAX_PROJECT = 4096
MAX_TAGS = 32
MAX_TAG_TEXT = 200
# A row from further back than this, or from the future beyond clock skew, is refused: it would land in a
# budget window that is long closed, or charge one that has not begun.
MAX_AGE = timedelta(days=400)
MAX_SKEW = timedelta(minutes=10)
# No single request costs this much (a million input tokens and a full reply on the dearest model is tens of
# dollars): a row priced above it is refused, so forged token counts cannot push a budget's spent toward the
# database's integer limit.
MAX_ROW_COST_NANOS = 10_000 * 10**9

_TOKENS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "web_searches",
)
_TEXT = {
    "source": 40,
    "session_id": 200,
    "launch_id": 200,
    "tier": 100,
    "requested_model": 200,
    "provider": 100,
    "routed_model": 200,
    "endpoint": 40,
    "error_type": 100,
    "error_message": MAX_TEXT,
    "upstream_message_id": 200,
    "upstream_request_id": 200,
    "speed": 20,
    "project": MAX_PROJECT,
}
# Accepted and ignored: the gateway prices rows itself, a row belongs to the key that sends it whatever it
# claims, and the rest is the sidecar's own bookkeeping.
_IGNORED = frozenset(
    {"cost_nanos", "cost_usd", "price_quality", "priced_model", "cost_note", "synced_at", "attempts"}
    | {"key", "key_id", "team", "team_id", "customer", "customer_id", "instance_id"}
)
_KNOWN = frozenset({"id", "started_at", "ended_at", "status", "stream", "http_status", "ttfb_ms", "latency_ms", "tags"})
ALLOWED_FIELDS = _KNOWN | _IGNORED | frozenset(_TOKENS) | frozenset(_TEXT)


def looks_like_a_key(text: str) -> bool:
    """An id that reads like an API key, virtual key or admin token is neither stored nor echoed: a client that
    misplaced a secret must not find it in a report."""
    return text.lstrip().lower().startswith(("sk-", "cg-admin-"))


class RowRejected(ValueError):
    """One row cannot be stored; the message says why."""


@dataclass(frozen=True, slots=True)
class Parsed:
    rows: list[tuple[RequestRecord, dict[str, str]]]
    rejected: list[tuple[str, str]]  # (id as sent, why)


def parse_batch(payload: Any, pricer: Pricer, *, now: datetime | None = None) -> Parsed:
    """Validate a decoded body; raises InvalidRequestError for a batch that is wrong as a whole."""
    if not isinstance(payload, dict) or set(payload) - {"rows"}:
        raise InvalidRequestError(
            'a usage batch is a JSON object {"rows": [...]}', hint="send the rows as `ccgate sync` does"
        )
    rows = payload.get("rows")
    if not isinstance(rows, list):
        raise InvalidRequestError('"rows" must be a list of ledger rows', hint="send the rows as `ccgate sync` does")
    if len(rows) > MAX_ROWS:
        raise InvalidRequestError(
            f"a usage batch holds at most {MAX_ROWS} rows, this one {len(rows)}", hint="send it in smaller batches"
        )
    now = now or utcnow()
    parsed = Parsed([], [])
    for raw in rows:
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        shown = raw_id[:MAX_ID] if isinstance(raw_id, str) and not looks_like_a_key(raw_id) else ""
        try:
            record, tags = parse_row(raw, now)
        except RowRejected as why:
            parsed.rejected.append((shown, str(why)))
            continue
        priced = price(record, pricer)
        if (priced.cost.nanos or 0) > MAX_ROW_COST_NANOS:
            parsed.rejected.append((shown, "its tokens cost more than any single request can"))
            continue
        parsed.rows.append((priced, tags))
    return parsed


def price(record: RequestRecord, pricer: Pricer) -> RequestRecord:
    model = record.routed_model or record.requested_model or ""
    try:
        cost = pricer.cost(model, record.usage, provider=record.provider, at=record.started_at)
    except Exception:  # pricing must never fail a batch: the row stays, visibly unpriced
        cost = Cost(None, PriceQuality.UNPRICED, note="pricing failed at the gateway")
    return replace(record, cost=cost)


def parse_row(raw: Any, now: datetime) -> tuple[RequestRecord, dict[str, str]]:
    if not isinstance(raw, dict):
        raise RowRejected("a row must be a JSON object")
    unknown = sorted(set(raw) - ALLOWED_FIELDS)
    if unknown:
        raise RowRejected(f"unknown field {str(unknown[0])[:60]!r}")
    row_id = raw.get("id")
    if not isinstance(row_id, str) or not 0 < len(row_id) <= MAX_ID or not row_id.isprintable():
        raise RowRejected(f"id must be 1 to {MAX_ID} printable characters")
    if looks_like_a_key(row_id):
        raise RowRejected("id looks like an API key; send the row's own id")
    started = _time(raw, "started_at", required=True)
    assert started is not None
    if started < now - MAX_AGE or started > now + MAX_SKEW:
        raise RowRejected("started_at is too far in the past or in the future")
    ended = _time(raw, "ended_at", required=False)
    try:
        status = RequestStatus(str(raw.get("status")))
    except ValueError:
        raise RowRejected("status must be ok, error or interrupted") from None
    if status is RequestStatus.PENDING:
        raise RowRejected("a pending row cannot be ingested; send it once it is finished")
    tokens = {name: _count(raw, name) for name in _TOKENS}
    text = {name: _text(raw, name, limit) for name, limit in _TEXT.items()}
    stream = raw.get("stream", False)
    if not isinstance(stream, bool) and stream not in (0, 1):
        raise RowRejected("stream must be true or false")
    http_status = raw.get("http_status")
    if http_status is not None and (type(http_status) is not int or not 100 <= http_status <= 599):
        raise RowRejected("http_status must be an HTTP status code")
    record = RequestRecord(
        id=row_id,
        started_at=started,
        ended_at=ended,
        source=text["source"] or "sidecar",
        session_id=text["session_id"],
        project=text["project"],
        launch_id=text["launch_id"],
        tier=text["tier"],
        requested_model=text["requested_model"],
        provider=text["provider"],
        routed_model=text["routed_model"],
        endpoint=text["endpoint"] or "messages",
        stream=bool(stream),
        status=status,
        http_status=http_status,
        error_type=text["error_type"],
        error_message=text["error_message"],
        usage=Usage(**tokens, speed=text["speed"]),
        ttfb_ms=_millis(raw, "ttfb_ms"),
        latency_ms=_millis(raw, "latency_ms"),
        upstream_message_id=text["upstream_message_id"],
        upstream_request_id=text["upstream_request_id"],
    )
    return record, _tags(raw.get("tags"))


def _time(raw: Mapping[str, Any], name: str, *, required: bool) -> datetime | None:
    value = raw.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise RowRejected(f"{name} must be an ISO-8601 time")
    try:
        moment = from_iso(value)
    except (ValueError, OverflowError):
        raise RowRejected(f"{name} must be an ISO-8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _count(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name, 0)
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= MAX_TOKENS:
        raise RowRejected(f"{name} must be a whole number from 0 to {MAX_TOKENS}")
    return value


def _millis(raw: Mapping[str, Any], name: str) -> float | None:
    value = raw.get(name)
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 <= value < 10**9:
        raise RowRejected(f"{name} must be a duration in milliseconds")
    return float(value)


def _text(raw: Mapping[str, Any], name: str, limit: int) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or not _storable(value, multiline=name == "error_message"):
        raise RowRejected(f"{name} must be text of at most {limit} characters, without control characters")
    return value


def _storable(text: str, *, multiline: bool = False) -> bool:
    """Valid Unicode without control characters: a lone surrogate (JSON can spell one, `\\ud800`) is stored but
    cannot be encoded again, so every report that holds it would fail; escape sequences would reach terminals."""
    allowed = "\t\n\r" if multiline else ""
    if any((ord(c) < 32 or 127 <= ord(c) < 160) and c not in allowed for c in text):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _tags(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_TAGS:
        raise RowRejected(f"tags must be an object of at most {MAX_TAGS} text values")
    for key, item in value.items():
        if not isinstance(item, str) or not 0 < len(key) <= MAX_TAG_TEXT or len(item) > MAX_TAG_TEXT:
            raise RowRejected(f"tags must map names to text of at most {MAX_TAG_TEXT} characters")
        if not _storable(key) or not _storable(item):
            raise RowRejected("tags must be text without control characters")
    return dict(value)
