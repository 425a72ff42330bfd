"""`ccgate blocks`: the 5-hour windows Claude subscriptions are limited by, as Claude Code starts them.

A window opens at the hour of the first request after the previous window closed (the hour in UTC, as the
transcript readers do) and lasts five hours. Because every window starts on a whole UTC hour, the hourly
roll-ups hold everything needed: windows are found and summed from them (plus the few rows still in
flight), never by walking a million requests. Only the first and last request of each window are looked up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ccgate.core.records import from_iso, to_iso, utcnow
from ccgate.errors import UserInputError
from ccgate.storage.reports import _RAW_SUMS, _ROLLUP_SUMS, Totals, one_snapshot, usd_string

if TYPE_CHECKING:
    from sqlite_utils import Database

BLOCK = timedelta(hours=5)
HOUR = timedelta(hours=1)


def total_tokens(totals: Totals) -> int:
    """Every token the window counted: input, output, cache reads and cache writes (as the limits do)."""
    return totals.input_tokens + totals.output_tokens + totals.cache_read_tokens + totals.cache_write_tokens


@dataclass(slots=True)
class Block:
    start: datetime  # UTC, a whole hour
    totals: Totals
    first: datetime | None = None
    last: datetime | None = None

    @property
    def end(self) -> datetime:
        return self.start + BLOCK

    def active(self, now: datetime) -> bool:
        return self.start <= now < self.end

    @property
    def tokens(self) -> int:
        return total_tokens(self.totals)

    def hours_used(self, now: datetime) -> Decimal | None:
        """Hours from the first request to the last (to now for the active window); None below a minute."""
        if self.first is None or self.last is None:
            return None
        until = now if self.active(now) else self.last
        seconds = (until - self.first).total_seconds()
        return None if seconds < 60 else Decimal(int(seconds)) / 3600


def group_hours(hours: Sequence[tuple[datetime, Totals]]) -> list[Block]:
    """Hour buckets (UTC, ascending) into windows: a window opens at the first busy hour at or after the end of
    the previous one and takes every bucket before its end."""
    blocks: list[Block] = []
    for hour, totals in hours:
        if blocks and hour < blocks[-1].end:
            blocks[-1].totals = blocks[-1].totals + totals
        else:
            blocks.append(Block(start=hour, totals=totals))
    return blocks


def load_blocks(db: Database, *, since: datetime | None = None, until: datetime | None = None) -> list[Block]:
    """Every window with a request in it (optionally those reaching past `since`, starting before `until`),
    oldest first. Windows chain from the first request ever, so the hours are always read from the start."""
    with one_snapshot(db):
        blocks = group_hours(_busy_hours(db, "", to_iso(until) if until else "9999"))
        if since is not None:
            blocks = [block for block in blocks if block.end > since]
        for block in blocks:
            _first_and_last(db, block)
    return blocks


def _busy_hours(db: Database, lo: str, hi: str) -> list[tuple[datetime, Totals]]:
    """(UTC hour, sums) of every hour in [lo, hi) with a request, ascending: roll-ups plus rows in flight."""
    sums: dict[str, Totals] = {}
    rows = db.execute(
        f"SELECT bucket, {_ROLLUP_SUMS} FROM request_rollups "  # noqa: S608 - fixed text
        "WHERE bucket >= ? AND bucket < ? GROUP BY bucket",
        (lo, hi),
    ).fetchall()
    pending = db.execute(
        f"SELECT substr(started_at, 1, 13) || ':00:00.000000Z', {_RAW_SUMS} FROM requests "  # noqa: S608
        "WHERE status = 'pending' AND +started_at >= ? AND +started_at < ? GROUP BY 1",
        (lo, hi),
    ).fetchall()
    for row in [*rows, *pending]:
        totals = Totals.from_row(row[1:])
        if totals.requests:
            key = str(row[0])
            sums[key] = sums[key] + totals if key in sums else totals
    return [(from_iso(key), sums[key]) for key in sorted(sums)]


LOOKBACK = timedelta(hours=24)


def active_block(db: Database, now: datetime) -> Block | None:
    """The window in progress at `now` (None when there is none), as `load_blocks` would find it, from the last
    day's hours only (the status line shows it on every render).

    Windows chain from the first request ever, but a busy hour five hours or more after the previous one always
    opens a window: the chain restarts there. When the last day holds such a restart whose gap lies inside it,
    the windows from it on are exact; otherwise (busy around the clock) every hour is read, as `blocks` does.
    """
    floor = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    lookback = floor - LOOKBACK
    with one_snapshot(db):
        hours = _busy_hours(db, to_iso(lookback), "9999")  # rows stamped after `now` too, as `blocks` counts them
        restart = next(
            (
                index
                for index, (hour, _) in enumerate(hours)
                if hour - BLOCK >= lookback and (index == 0 or hour - hours[index - 1][0] >= BLOCK)
            ),
            None,
        )
        if restart is not None:
            blocks = group_hours(hours[restart:])
        elif not hours or hours[-1][0] <= now - BLOCK:
            return None  # no request in the last five hours: no window is open, whatever came before
        else:
            blocks = group_hours(_busy_hours(db, "", "9999"))
        block = next((block for block in reversed(blocks) if block.active(now)), None)
        if block is None:
            return None
        _first_and_last(db, block)
    return block


def _first_and_last(db: Database, block: Block) -> None:
    bounds = (to_iso(block.start), to_iso(block.end))
    first = db.execute(
        "SELECT started_at FROM requests WHERE started_at >= ? AND started_at < ? ORDER BY started_at LIMIT 1", bounds
    ).fetchone()
    last = db.execute(
        "SELECT started_at FROM requests WHERE started_at >= ? AND started_at < ? ORDER BY started_at DESC LIMIT 1",
        bounds,
    ).fetchone()
    block.first = from_iso(first[0]) if first else None
    block.last = from_iso(last[0]) if last else None


def parse_token_limit(text: str | None, blocks: Sequence[Block], now: datetime) -> int | None:
    """`--token-limit N` or `max` (the most tokens any finished window used)."""
    if text is None:
        return None
    if text.strip().lower() == "max":
        finished = [block.tokens for block in blocks if not block.active(now)]
        return max(finished) if finished else None
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        value = -1
    if value <= 0:
        raise UserInputError(f"--token-limit {text!r} is not a positive number", hint="give a token count or `max`")
    return value


@dataclass(frozen=True, slots=True)
class Burn:
    tokens_per_hour: int
    cost_nanos_per_hour: int


def burn_rate(block: Block, now: datetime) -> Burn | None:
    hours = block.hours_used(now)
    if hours is None:
        return None
    return Burn(int(block.tokens / hours), int(block.totals.cost_nanos / hours))


@dataclass(frozen=True, slots=True)
class Projection:
    """Where the active window ends at its current rate."""

    remaining: timedelta
    tokens: int
    cost_nanos: int


def projection(block: Block, now: datetime) -> Projection | None:
    if not block.active(now):
        return None
    remaining = block.end - now
    burn = burn_rate(block, now)
    if burn is None:
        return Projection(remaining, block.tokens, block.totals.cost_nanos)
    hours = Decimal(int(remaining.total_seconds())) / 3600
    return Projection(
        remaining,
        block.tokens + int(burn.tokens_per_hour * hours),
        block.totals.cost_nanos + int(burn.cost_nanos_per_hour * hours),
    )


def block_to_json(block: Block, *, now: datetime, tz: tzinfo, limit: int | None) -> dict[str, Any]:
    """One window for `ccgate blocks --json`: local ISO times, exact dollars as decimal strings."""
    totals = block.totals
    burn = burn_rate(block, now)
    ahead = projection(block, now)
    document: dict[str, Any] = {
        "start": block.start.astimezone(tz).isoformat(),
        "end": block.end.astimezone(tz).isoformat(),
        "first_request": None if block.first is None else block.first.astimezone(tz).isoformat(),
        "last_request": None if block.last is None else block.last.astimezone(tz).isoformat(),
        "active": block.active(now),
        "requests": totals.requests,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cache_read_tokens": totals.cache_read_tokens,
        "cache_write_tokens": totals.cache_write_tokens,
        "total_tokens": block.tokens,
        "cost_usd": usd_string(totals.cost_nanos),
        "unpriced_requests": totals.unpriced_requests,
        "estimated_requests": totals.estimated_requests,
        "burn_rate": None
        if burn is None
        else {"tokens_per_hour": burn.tokens_per_hour, "cost_usd_per_hour": usd_string(burn.cost_nanos_per_hour)},
        "projection": None
        if ahead is None
        else {
            "remaining_minutes": int(ahead.remaining.total_seconds() // 60),
            "total_tokens": ahead.tokens,
            "cost_usd": usd_string(ahead.cost_nanos),
        },
    }
    if limit is not None:
        document["over_limit"] = block.tokens > limit
        if ahead is not None:
            document["projection"]["over_limit"] = ahead.tokens > limit
    return document


def blocks_to_json(blocks: Sequence[Block], *, now: datetime | None = None, tz: tzinfo, limit: int | None) -> Any:
    moment = now or utcnow()
    return {
        "token_limit": limit,
        "blocks": [block_to_json(block, now=moment, tz=tz, limit=limit) for block in blocks],
    }
