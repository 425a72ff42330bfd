"""Budget arithmetic: periods, calendar and rolling windows, and the admission rule. Pure: no I/O, clock injected.

Admission rule
--------------
Every budget that applies to a request is looked at as a `BudgetState`: its `limit`, what is already `spent`
in the current window, and what in-flight requests have `reserved` (each reserves an upper bound of its own
cost). A request that wants to reserve `r` nano-dollars gets, per budget:

* **reject** if ``spent >= limit`` -- the budget is used up; only the window's reset (or a higher limit) helps;
* **fit** if ``spent + reserved + r <= limit`` -- even if every in-flight request costs its full reservation,
  the limit holds;
* **lone** if ``reserved == 0`` and ``spent < limit`` -- nothing else is in flight, so this request may run even
  though its own upper bound does not fit; the budget then overshoots by at most this one request;
* **wait** otherwise -- spent is below the limit but reservations fill it; in-flight requests will settle (most
  for far less than they reserved), so the caller waits for that instead of failing.

`decide` rejects if any budget rejects, waits if any budget waits, and admits only when every budget is *fit*
or *lone*. Budgets are examined in sorted key order, so the blocking budget reported is deterministic.

A reservation is an upper bound of the request's cost (`input_tokens_bound` over a `scan_body` of the body,
then the price catalog's dearest rates). Once the reply's first usage is known it may shrink to the real input
cost plus the output bound (`shrunk_reservation`); it never grows, so everything below still holds.

Why this bounds overshoot to one request: an over-limit spend can only come from a *lone* admission (a *fit*
admission keeps ``spent + reserved <= limit`` as long as real costs stay within reservations). While a lone
request is in flight, ``reserved >= r > limit - spent``, so no other request *fits* and none is *lone*: all
wait. When it settles, either ``spent >= limit`` (everyone is rejected) or the next one goes. So 50 concurrent
requests against a nearly spent budget overshoot by at most one request, while ten parallel sub-agents whose
reservations together exceed a mostly unspent budget are all served in turn.

Windows
-------
Calendar windows are aligned in the user's timezone: a day starts at local midnight, a week on Monday, a month
on the 1st, a year on January 1st; multiples are aligned to a fixed origin (``Nd`` to 1970-01-01, ``Nw`` to the
Monday 1970-01-05, ``Nmo`` to January so ``3mo`` are quarters, ``Ny`` to years divisible by N). Windows of up to
an hour are counted in elapsed time from local midnight, so they keep their exact length and sit on the clock
(``1h`` starts on the hour, ``15min`` at :00/:15/...), also on DST days. Windows over an hour and up to a day are
wall-clock intervals from local midnight (``6h``: 00-06, 06-12, ...), so like a day, the one holding a DST change
is an hour shorter or longer. Any window that would cross local midnight ends there. Minute/hour windows longer
than a day are aligned to the Unix epoch. A wall time that a DST change skips maps to the first instant after
the gap; a repeated wall time maps to its first occurrence. Windows tile time: each ends where the next starts.
All returned datetimes are UTC.

Rolling windows (``calendar=False``) are ``(now - duration, now]`` with a month counted as 30 days and a year as
365; `rolling_buckets` lists the epoch-aligned bucket starts a store keeps for them.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from enum import StrEnum
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from ccgate.core.records import format_usd, nanos_to_usd, usd_to_nanos
from ccgate.errors import ConfigError, UserInputError

if TYPE_CHECKING:
    from ccgate.core.settings import Config


class PeriodUnit(StrEnum):
    MINUTE = "min"
    HOUR = "h"
    DAY = "d"
    WEEK = "w"
    MONTH = "mo"
    YEAR = "y"


_ALIASES: dict[str, tuple[int, PeriodUnit]] = {
    "hourly": (1, PeriodUnit.HOUR),
    "daily": (1, PeriodUnit.DAY),
    "weekly": (1, PeriodUnit.WEEK),
    "monthly": (1, PeriodUnit.MONTH),
    "yearly": (1, PeriodUnit.YEAR),
}
_NAMES = {value: name for name, value in _ALIASES.items()}
_PERIOD_RE = re.compile(r"^(\d{1,6})\s*(min|h|d|w|mo|y)$", re.ASCII)  # "１d" or "1١d" (= 11d) are not periods
# Keeps every window inside datetime's range (years 1..9999) and away from nonsense.
_MAX_COUNT = {
    PeriodUnit.MINUTE: 525_600,
    PeriodUnit.HOUR: 8_760,
    PeriodUnit.DAY: 3_660,
    PeriodUnit.WEEK: 520,
    PeriodUnit.MONTH: 120,
    PeriodUnit.YEAR: 10,
}
VALID_PERIOD_FORMS = (
    "N followed by min, h, d, w, mo or y (e.g. 5min, 1h, 1d, 1w, 1mo, 1y), or hourly, daily, weekly, monthly, yearly"
)

_DAY = timedelta(days=1)
_HOUR = timedelta(hours=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH_MONDAY_ORDINAL = date(1970, 1, 5).toordinal()


@dataclass(frozen=True, slots=True)
class Period:
    """A budget period such as `1d` or `15min`."""

    count: int
    unit: PeriodUnit

    @property
    def text(self) -> str:
        """The canonical spelling, e.g. `1d`."""
        return f"{self.count}{self.unit.value}"

    @property
    def name(self) -> str:
        """What people call it: `daily` for `1d`, otherwise the canonical spelling."""
        return _NAMES.get((self.count, self.unit), self.text)

    def approx_duration(self) -> timedelta:
        """Length of a rolling window: exact for min/h/d/w; a month counts 30 days and a year 365."""
        per_unit = {
            PeriodUnit.MINUTE: timedelta(minutes=1),
            PeriodUnit.HOUR: timedelta(hours=1),
            PeriodUnit.DAY: _DAY,
            PeriodUnit.WEEK: timedelta(weeks=1),
            PeriodUnit.MONTH: timedelta(days=30),
            PeriodUnit.YEAR: timedelta(days=365),
        }[self.unit]
        return per_unit * self.count

    def __str__(self) -> str:
        return self.text


def parse_period(text: str) -> Period:
    """One period syntax everywhere (config, CLI, gateway admin)."""
    cleaned = text.strip().lower()
    if cleaned in _ALIASES:
        count, unit = _ALIASES[cleaned]
        return Period(count, unit)
    match = _PERIOD_RE.match(cleaned)
    if match is None:
        raise UserInputError(f"{text!r} is not a period", hint=f"use {VALID_PERIOD_FORMS}")
    count, unit = int(match.group(1)), PeriodUnit(match.group(2))
    if not 1 <= count <= _MAX_COUNT[unit]:
        raise UserInputError(
            f"{text!r} is out of range: the count must be between 1 and {_MAX_COUNT[unit]} for `{unit.value}`",
            hint=f"use {VALID_PERIOD_FORMS}",
        )
    return Period(count, unit)


def _wall(moment: datetime, tz: tzinfo) -> datetime:
    return moment.astimezone(tz).replace(tzinfo=None)


def local_to_utc(wall: datetime, tz: tzinfo) -> datetime:
    """The first instant at which the clock in `tz` shows `wall` (or, inside a DST gap, first passes it)."""
    wall = wall.replace(tzinfo=None)
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if _wall(first, tz) == wall:
        return first
    # Skipped by a DST gap: binary-search the transition, the first instant whose wall time is >= `wall`.
    other = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    low, high = min(first, other), max(first, other)
    if _wall(high, tz) < wall:  # not a plain gap (odd tzinfo); the later reading is the safe answer
        return high
    lo_s, hi_s = 0, int((high - low).total_seconds())
    while lo_s < hi_s:
        mid = (lo_s + hi_s) // 2
        if _wall(low + timedelta(seconds=mid), tz) >= wall:
            hi_s = mid
        else:
            lo_s = mid + 1
    return low + timedelta(seconds=lo_s)


def local_midnight(day: date, tz: tzinfo) -> datetime:
    """The first instant (UTC) of `day` in `tz`; on a day whose midnight a DST change skips, the first after it.

    The one place local days start: budget windows, `cost` periods and days, and the status line use it.
    """
    return local_to_utc(datetime(day.year, day.month, day.day), tz)


_midnight = local_midnight


def _as_utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("window() needs an aware datetime")
    return now.astimezone(UTC)


def window(period: Period, now: datetime, tz: tzinfo, *, calendar: bool = True) -> tuple[datetime, datetime]:
    """The `[start, end)` window holding `now`, in UTC; see the module docstring for the alignment rules."""
    now = _as_utc(now)
    n = period.count
    if not calendar:
        return now - period.approx_duration(), now
    today = _wall(now, tz).date()
    unit = period.unit
    if unit is PeriodUnit.DAY:
        first = _EPOCH_ORDINAL + (today.toordinal() - _EPOCH_ORDINAL) // n * n
        return _midnight(date.fromordinal(first), tz), _midnight(date.fromordinal(first + n), tz)
    if unit is PeriodUnit.WEEK:
        span = 7 * n
        first = _EPOCH_MONDAY_ORDINAL + (today.toordinal() - _EPOCH_MONDAY_ORDINAL) // span * span
        return _midnight(date.fromordinal(first), tz), _midnight(date.fromordinal(first + span), tz)
    if unit is PeriodUnit.MONTH:
        index = (today.year * 12 + today.month - 1) // n * n
        end_index = index + n
        return (
            _midnight(date(index // 12, index % 12 + 1, 1), tz),
            _midnight(date(end_index // 12, end_index % 12 + 1, 1), tz),
        )
    if unit is PeriodUnit.YEAR:
        year = today.year // n * n
        return _midnight(date(year, 1, 1), tz), _midnight(date(year + n, 1, 1), tz)
    size = period.approx_duration()
    if size > _DAY:
        start = _EPOCH + (now - _EPOCH) // size * size
        return start, start + size
    day_start = _midnight(today, tz)
    day_end = _midnight(today + _DAY, tz)
    if size <= _HOUR:
        start = day_start + (now - day_start) // size * size
        return start, min(start + size, day_end)
    # Multi-hour windows are wall-clock intervals, so a DST change lengthens or shortens the one holding it.
    wall_midnight = datetime(today.year, today.month, today.day)

    def edge(k: int) -> datetime:
        return day_end if k * size >= _DAY else local_to_utc(wall_midnight + k * size, tz)

    k = (_wall(now, tz) - wall_midnight) // size
    while now >= edge(k + 1):
        k += 1
    while k > 0 and now < edge(k):
        k -= 1
    return edge(k), edge(k + 1)


_BUCKET_SIZES = tuple(
    timedelta(seconds=s) for s in (1, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
)


def bucket_size(period: Period, *, max_buckets: int = 60) -> timedelta:
    """The bucket width a rolling window of `period` is kept in: the smallest round size giving <= max_buckets."""
    duration = period.approx_duration()
    for size in _BUCKET_SIZES:
        if duration / size <= max_buckets:
            return size
    return _BUCKET_SIZES[-1]


def rolling_buckets(period: Period, now: datetime, *, size: timedelta | None = None) -> list[datetime]:
    """Starts (UTC, epoch-aligned) of the buckets overlapping the rolling window `(now - duration, now]`.

    The oldest bucket may lie partly outside the window; counting it whole errs on the safe side for a budget.
    """
    now = _as_utc(now)
    size = size or bucket_size(period)
    oldest = now - period.approx_duration()
    first = _EPOCH + (oldest - _EPOCH) // size * size
    last = _EPOCH + (now - _EPOCH) // size * size
    count = (last - first) // size + 1
    return [first + i * size for i in range(count)]


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """One configured budget: `project` None applies to every request."""

    key: str
    period: Period
    limit_nanos: int
    project: str | None
    warn_at: Decimal
    label: str

    def applies_to(self, project: str | None) -> bool:
        return self.project is None or self.project == project

    @property
    def short_label(self) -> str:
        """`daily`, or `daily, app` for a project budget: for tight spaces such as the status line."""
        return self.period.name if self.project is None else f"{self.period.name}, {_project_label(self.project)}"

    def raise_command(self, committed_nanos: int = 0) -> str:
        """The command that doubles this budget (or sets $10, for a zero limit).

        `committed_nanos` is what is spent (plus held by requests in flight): when doubling would not get past
        it, the suggestion is a round amount above it plus the old limit, so following it lets requests through.
        """
        suggested = self.limit_nanos * 2 if self.limit_nanos else usd_to_nanos(Decimal(10))
        if suggested <= committed_nanos:
            suggested = _round_amount_above(committed_nanos + self.limit_nanos)
        amount = format(nanos_to_usd(suggested).normalize(), "f")
        command = f"ccgate budget set {self.period.name} {amount}"
        if self.project is not None:
            command += f" --project {shlex.quote(self.project)}"
        return command


def _round_amount_above(nanos: int) -> int:
    """The next amount above `nanos` with one significant digit: $0.04 -> $0.05, $23.10 -> $30, $300 -> $400."""
    magnitude: int = 10 ** (len(str(max(nanos, 1))) - 1)
    return (nanos // magnitude + 1) * magnitude


def _project_label(project: str) -> str:
    return PurePath(project).name or project


def rules_from_config(config: Config) -> list[BudgetRule]:
    """The `[[budgets]]` of config.toml as rules; a bad period is a ConfigError."""
    rules: list[BudgetRule] = []
    seen: dict[str, int] = {}
    for index, budget in enumerate(config.budgets):
        try:
            period = parse_period(budget.period)
        except UserInputError as exc:
            raise ConfigError(f"budgets[{index}].period: {exc.message}", hint=exc.hint) from exc
        base = f"{period.text}@{budget.project or '*'}"
        seen[base] = seen.get(base, 0) + 1
        key = base if seen[base] == 1 else f"{base}#{seen[base]}"
        label = f"{period.name} budget"
        if budget.project is not None:
            label += f" for project {_project_label(budget.project)}"
        rules.append(
            BudgetRule(
                key=key,
                period=period,
                limit_nanos=usd_to_nanos(budget.limit_usd),
                project=budget.project,
                warn_at=budget.warn_at,
                label=label,
            )
        )
    return rules


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget at one moment: what its admission decision and the status displays look at."""

    key: str
    label: str
    limit_nanos: int
    spent_nanos: int
    reserved_nanos: int
    resets_at: datetime

    @property
    def left_nanos(self) -> int:
        return max(0, self.limit_nanos - self.spent_nanos)

    @property
    def used_fraction(self) -> Decimal:
        """spent / limit, exact; 1 for a zero limit."""
        if self.limit_nanos <= 0:
            return Decimal(1)
        return Decimal(self.spent_nanos) / Decimal(self.limit_nanos)


@dataclass(frozen=True, slots=True)
class Admit:
    """Every applicable budget has room (or is idle and not yet used up)."""


@dataclass(frozen=True, slots=True)
class Wait:
    """`blocking` is not used up but in-flight reservations fill it: wait for them to settle."""

    blocking: BudgetState


@dataclass(frozen=True, slots=True)
class Reject:
    """`blocking` has spent its limit."""

    blocking: BudgetState


Decision = Admit | Wait | Reject


def decide(states: Sequence[BudgetState], reserve_nanos: int) -> Decision:
    """Apply the admission rule of the module docstring to every applicable budget."""
    if reserve_nanos < 0:
        raise ValueError("reserve_nanos must not be negative")
    ordered = sorted(states, key=lambda s: s.key)
    for state in ordered:
        if state.spent_nanos >= state.limit_nanos:
            return Reject(state)
    for state in ordered:
        fits = state.spent_nanos + state.reserved_nanos + reserve_nanos <= state.limit_nanos
        if not fits and state.reserved_nanos > 0:
            return Wait(state)
    return Admit()


class BudgetLevel(StrEnum):
    OK = "ok"
    WARN = "warn"
    EXHAUSTED = "exhausted"


def warn_level(state: BudgetState, warn_at: Decimal) -> BudgetLevel:
    """`exhausted` once spent reaches the limit, `warn` from `warn_at` (a fraction, e.g. 0.8) of it."""
    if state.spent_nanos >= state.limit_nanos:
        return BudgetLevel.EXHAUSTED
    if Decimal(state.spent_nanos) >= warn_at * Decimal(state.limit_nanos):
        return BudgetLevel.WARN
    return BudgetLevel.OK


def format_local(moment: datetime, tz: tzinfo) -> str:
    """`2026-11-26 00:00 CET`: a reset time as the user reads it."""
    local = moment.astimezone(tz)
    zone = local.tzname() or local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M} {zone}"


def format_budget_message(state: BudgetState, command_hint: str, *, tz: tzinfo = UTC) -> str:
    """The 402 text: which budget, spent of limit, local reset time, and the command that raises it.

    The servers' error envelope prefixes `ccgate: `. Never says "credit balance is too low": Claude Code
    replaces messages containing that phrase with its own.
    """
    return (
        f"{state.label} reached: {format_usd(state.spent_nanos)} spent of {format_usd(state.limit_nanos)} "
        f"(resets {format_local(state.resets_at, tz)}). Raise it with `{command_hint}`"
    )


# ---- reservation bounds -------------------------------------------------------------------------------------
#
# A reservation must be an upper bound of what the provider bills, or "at most one request over" fails. A body's
# byte count bounds the tokens of everything written in it, but not what the provider adds or fetches itself:
# the hidden system prompt that comes with tools, the hidden definitions of Anthropic-defined tools, an image's
# pixels (a small PNG can be fewer bytes than its tokens), images and documents fetched by URL or `file_id`,
# and server tools (web search, web fetch, code execution, MCP servers) whose results join the input mid-reply.

# Anthropic adds a hidden tool-use system prompt (~350 tokens on Claude 4) whenever `tools` is present.
TOOL_USE_PROMPT_TOKENS = 1_000
# An Anthropic-defined client tool (bash_, text_editor_, computer_, memory_...) brings a hidden definition and
# prompt: computer use, the largest, ~1,200 tokens.
DEFINED_TOOL_TOKENS = 2_000
# An image is billed by its pixels: ~1,600 tokens at the standard size limit, a few thousand on high-resolution
# models, whatever its bytes.
IMAGE_TOKENS = 5_000
# The bound on a server tool's uses when the request gives no `max_uses` (Anthropic sets none).
DEFAULT_SERVER_TOOL_USES = 50
MAX_SERVER_TOOL_USES = 10_000  # a `max_uses` past this counts as this (it cannot overflow an integer column)
# The context window assumed for a model whose window is unknown: the largest any current model offers.
DEFAULT_CONTEXT_WINDOW = 1_000_000

_CLIENT_TOOL_PREFIXES = (b"bash_", b"text_editor_", b"computer_", b"memory_")
# a versioned Anthropic-defined tool type ends in a date: `web_search_20250305`, `bash_20250124`, ...
_DATED_RE = re.compile(rb'_20\d{6}"')
# in a body with images or documents: each source, and the values that make the provider fetch or paginate
# an escaped ASCII letter, digit or underscore (Go and others escape <, > and &, never these)
_ESCAPED_ASCII = re.compile(rb"\\u00(?:3[0-9]|4[1-9a-fA-F]|5[0-9aAfF]|6[1-9a-fA-F]|7[0-9aA])")
_SOURCE_RE = re.compile(rb'"(source|url|file|file_id|document)"\s*(:?)')


@dataclass(frozen=True, slots=True)
class BodyScan:
    """What a byte scan of a Messages body says about input the provider may bill beyond the body's bytes.

    The scan errs on the side of a bigger bound: it looks at values wherever they are, so a tool named "tools"
    or an enum holding "url" only makes the bound bigger; text inside a JSON string cannot match (its quotes are
    escaped).
    """

    tools: bool = False
    defined_tools: int = 0
    images: int = 0  # image and document blocks (each counted as an image besides its bytes)
    # URL/file sources, documents, server tools, MCP servers: billed input is bounded only by the context window
    unbounded: bool = False
    # server tools and MCP servers: their results join the input after `message_start` reported it
    input_grows: bool = False
    web_search_tools: int = 0


def scan_body(raw: bytes, head: Mapping[str, Any] | None = None) -> BodyScan:
    """Scan a request body's bytes without parsing it: one substring search (C speed), and a regex only when the
    body holds a `"source"` (images, documents) at all.

    `head` is what the proxy's head parse read: `tools` and `mcp_servers` as their JSON text (bytes), so only the
    tools are searched for dated tool types; any other value (a full parse's list) or no head scans the body.
    """
    if head is None:
        tools: Any = raw if b'"tools"' in raw else None
        mcp = b'"mcp_servers"' in raw
    else:
        tools, mcp = head.get("tools"), head.get("mcp_servers") is not None
        if tools is not None and not isinstance(tools, bytes):
            tools = raw  # parsed by the slow path: search the body itself
    images, unbounded = 0, False
    if b'"source"' in raw:  # every image and document block has one; a Claude Code body usually none
        for name, colon in _SOURCE_RE.findall(raw):  # one pass, quick over base64 (it has no quotes)
            if name == b"source":
                images += 1
            elif name == b"file_id" or not colon:  # a file by id, or "url"/"file"/"document" as a value
                unbounded = True
    defined = web_search = 0
    grows = mcp
    for match in _DATED_RE.finditer(tools or b""):
        name = tools[tools.rfind(b'"', 0, match.start()) + 1 : match.end() - 1]
        defined += 1
        if not name.startswith(_CLIENT_TOOL_PREFIXES):
            # a server tool, or one ccgate does not know: assume the provider runs it and bills its results
            grows = True
            web_search += name.startswith(b"web_search_")
    if _has_escaped_ascii(raw):
        # "\u0075rl" is "url" to the provider but not to these searches; no client escapes plain ASCII letters
        unbounded = grows = True
    return BodyScan(
        tools=tools is not None,
        defined_tools=defined,
        images=images,
        unbounded=unbounded or grows,
        input_grows=grows,
        web_search_tools=web_search,
    )


def _has_escaped_ascii(raw: bytes) -> bool:
    """Whether a JSON string escapes a plain ASCII letter, digit or underscore (`\\u0075`); a backslash that is
    itself escaped (`\\\\u0075`, text about escapes, such as source code) does not count."""
    for match in _ESCAPED_ASCII.finditer(raw):
        at = match.start() - 1
        while at >= 0 and raw[at] == 0x5C:  # backslashes before this one
            at -= 1
        if (match.start() - 1 - at) % 2 == 0:
            return True
    return False


def input_tokens_bound(scan: BodyScan, body_bytes: int, context_window: int | None) -> int:
    """An upper bound of the input tokens a request is billed for.

    Every body byte is at most one token; on top come the hidden tool prompt, defined tools' definitions and
    images. A body whose input the provider fetches or produces itself is bounded by the model's context window
    (`DEFAULT_CONTEXT_WINDOW` when unknown) -- or by the bytes-based bound, if that is larger.
    """
    bound = (
        body_bytes
        + (TOOL_USE_PROMPT_TOKENS if scan.tools else 0)
        + scan.defined_tools * DEFINED_TOOL_TOKENS
        + scan.images * IMAGE_TOKENS
    )
    if scan.unbounded:
        bound = max(bound, context_window or DEFAULT_CONTEXT_WINDOW)
    return bound


def web_search_uses_bound(scan: BodyScan, tools: object) -> int:
    """How many web searches a request may be billed for: each web search tool's `max_uses` if it is a positive
    integer, else `DEFAULT_SERVER_TOOL_USES`. `tools` is the body's parsed `tools` (anything else: the default
    for every web search tool the scan saw)."""
    if scan.web_search_tools == 0:
        return 0
    if not isinstance(tools, list):
        return scan.web_search_tools * DEFAULT_SERVER_TOOL_USES
    total = 0
    for tool in tools:
        if not isinstance(tool, dict) or not str(tool.get("type", "")).startswith("web_search_"):
            continue
        uses = tool.get("max_uses")
        if isinstance(uses, int) and not isinstance(uses, bool) and uses > 0:
            total += min(uses, MAX_SERVER_TOOL_USES)
        else:
            total += DEFAULT_SERVER_TOOL_USES
    # tools the scan saw elsewhere than in `tools` (or a list it could not read) get the default each
    return total or scan.web_search_tools * DEFAULT_SERVER_TOOL_USES


def shrunk_reservation(reserved_nanos: int, bound_nanos: int) -> int:
    """A reservation once the reply has begun: the real input cost plus the output bound (`bound_nanos`), never
    more than was reserved, so shrinking only ever frees budget. It stays an upper bound of the real cost as long
    as `bound_nanos` is one: the caller keeps the full output bound until the end, and never shrinks a request
    whose input grows mid-reply (server tools)."""
    if bound_nanos < 0:
        raise ValueError("bound_nanos must not be negative")
    return min(reserved_nanos, bound_nanos)
