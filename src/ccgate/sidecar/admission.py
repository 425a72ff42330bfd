"""Budget admission for one server process: reserve before forwarding, settle with the real cost afterwards.

Spend per budget window is loaded once from the ledger (through an injected synchronous `spent_loader`, run in
a worker thread) and then kept in memory: `settle` adds each request's real cost at once, because the ledger
writer commits later. When a window rolls over (midnight, the 1st, ...) the new window is loaded afresh.
The arithmetic lives in `ccgate.core.budgets`; this module adds the asyncio waiting, reservations and (opt-in) expiry.

Everything here runs on the event loop thread: `settle`, `release` and `expire_stale` are plain synchronous
calls and the admission decision plus its reservation happen without an `await` in between, so they are atomic.
Waiters sleep on an `asyncio.Event` that every settle/release/expiry/reload sets and replaces (a Condition would
need its lock, which the synchronous `settle` cannot take); each woken waiter re-runs the decision.
`states()` reports only budgets already loaded in their current window; `await snapshot()` loads the rest.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

# BudgetRule and rules_from_config live in `budgets` (no asyncio there: `statusline` uses them too)
from ccgate.core.budgets import (
    Admit,
    BudgetRule,
    BudgetState,
    Reject,
    decide,
    format_budget_message,
    shrunk_reservation,
    window,
)
from ccgate.core.budgets import rules_from_config as rules_from_config
from ccgate.core.records import format_usd, utcnow
from ccgate.errors import BudgetExceededError, ConfigError, UnpricedModelError
from ccgate.local.timezone import resolve_timezone as resolve_timezone  # re-exported: its home is local.timezone

__all__ = [
    "AdmissionRequest",
    "BudgetGuard",
    "BudgetRule",
    "Reservation",
    "SpentLoader",
    "resolve_timezone",
    "rules_from_config",
]

SpentLoader = Callable[[datetime, datetime, "str | None"], int]
# The longest a request waits for reservations to clear, however busy the requests in flight are: Claude Code
# gives up on a request after 10 minutes (API_TIMEOUT_MS) anyway.
MAX_WAIT_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """What the proxy knows before forwarding: the project and an upper bound of the cost (None = unpriced)."""

    project: str | None
    reserve_nanos: int | None
    model: str | None = None


class Reservation:
    """An admitted request's hold on its budgets; hand it back to `settle` or `release` exactly once."""

    __slots__ = ("_holds", "_released", "_settled", "created_at", "id", "nanos", "progress")

    def __init__(self, id: int, nanos: int, holds: tuple[tuple[str, datetime], ...], created_at: datetime) -> None:
        self.id = id
        self.nanos = nanos
        # A counter that grows while the request moves (bytes received from the provider); see `watch`.
        self.progress: Callable[[], int] | None = None
        self._holds = holds  # (rule key, window start) pairs
        self.created_at = created_at
        self._released = False  # its reserved amount is no longer counted (settled, released or expired)
        self._settled = False  # its real cost has been counted

    @property
    def budget_keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self._holds)

    @property
    def done(self) -> bool:
        return self._released

    def __repr__(self) -> str:
        return f"Reservation(id={self.id}, nanos={self.nanos}, budgets={self.budget_keys}, done={self._released})"


@dataclass(slots=True)
class _Window:
    rule: BudgetRule
    start: datetime
    end: datetime
    spent: int
    reserved: int = 0

    def state(self) -> BudgetState:
        return BudgetState(
            key=self.rule.key,
            label=self.rule.label,
            limit_nanos=self.rule.limit_nanos,
            spent_nanos=self.spent,
            reserved_nanos=self.reserved,
            resets_at=self.end,
        )


class BudgetGuard:
    """Exact admission under concurrency for one process (see `ccgate.core.budgets` for the rule)."""

    def __init__(
        self,
        rules: Sequence[BudgetRule],
        *,
        spent_loader: SpentLoader,
        clock: Callable[[], datetime] = utcnow,
        tz: tzinfo | None = None,
        wait_timeout: float = 30.0,
        max_wait: float = MAX_WAIT_SECONDS,
        reservation_ttl: float | None = None,
    ) -> None:
        """`wait_timeout`: a request kept out only by reservations gives up (402) once none of the requests in
        flight on its budget made progress for this many seconds, or after `max_wait` seconds in all.
        `reservation_ttl`: seconds after which an unsettled reservation is dropped as crashed; None (the
        default) keeps it until `settle`/`release`, so a stream of any length keeps its hold."""
        self._rules: dict[str, BudgetRule] = {}
        self._sorted_rules: tuple[BudgetRule, ...] = ()
        self._spent_loader = spent_loader
        self._clock = clock
        self._tz = tz if tz is not None else resolve_timezone()
        self._wait_timeout = wait_timeout
        self._max_wait = max(max_wait, wait_timeout)
        self._ttl = None if reservation_ttl is None else timedelta(seconds=reservation_ttl)
        self._windows: dict[str, _Window] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._reservations: dict[int, Reservation] = {}
        self._ids = itertools.count(1)
        self._changed: asyncio.Event | None = None
        self.update_rules(rules)

    @property
    def timezone(self) -> tzinfo:
        return self._tz

    @property
    def rules(self) -> tuple[BudgetRule, ...]:
        """In key order; asked on every request, so kept ready rather than sorted each time."""
        return self._sorted_rules

    def update_rules(self, rules: Sequence[BudgetRule]) -> None:
        """Apply a reloaded config: loaded spend survives for budgets whose period and scope are unchanged."""
        new = {rule.key: rule for rule in rules}
        if len(new) != len(rules):
            raise ConfigError("two budgets share one key", hint="give every budget its own period/project")
        for key in list(self._windows):
            kept = new.get(key)
            old = self._windows[key]
            if kept is None or (kept.period, kept.project) != (old.rule.period, old.rule.project):
                del self._windows[key]
            else:
                old.rule = kept
        self._rules = new
        self._sorted_rules = tuple(new[key] for key in sorted(new))
        self._notify()  # a raised limit may let waiters in

    def _applicable(self, project: str | None) -> list[BudgetRule]:
        return [self._rules[key] for key in sorted(self._rules) if self._rules[key].applies_to(project)]

    def _current(self, rule: BudgetRule, now: datetime) -> _Window | None:
        held = self._windows.get(rule.key)
        if held is not None and held.start <= now < held.end:
            return held
        return None

    async def _ensure_loaded(self, rules: Sequence[BudgetRule]) -> None:
        """Load each rule's current window once, locking budgets in sorted key order."""
        for rule in rules:  # already sorted by key
            if self._current(rule, self._clock()) is not None:
                continue
            lock = self._load_locks.setdefault(rule.key, asyncio.Lock())
            async with lock:
                now = self._clock()
                if self._current(rule, now) is not None or self._rules.get(rule.key) is not rule:
                    continue
                start, end = window(rule.period, now, self._tz)
                spent = await asyncio.to_thread(self._spent_loader, start, end, rule.project)
                if self._rules.get(rule.key) is rule:
                    self._windows[rule.key] = _Window(rule=rule, start=start, end=end, spent=int(spent))

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        """Wake every waiter: spend or reservations changed. A fresh event serves the next round."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def admit(self, request: AdmissionRequest) -> Reservation:
        """Reserve `request.reserve_nanos` on every applicable budget, waiting while reservations fill one.

        Raises UnpricedModelError for an unpriced request under a budget, BudgetExceededError when a budget is
        spent, or stays fully reserved while the requests in flight make no progress for `wait_timeout` seconds,
        or for `max_wait` seconds in all.
        """
        rules = self._applicable(request.project)
        if not rules:
            return Reservation(next(self._ids), 0, (), self._clock())
        if request.reserve_nanos is None:
            model = request.model or "MODEL"
            raise UnpricedModelError(
                f"model {model} has no known price and a budget applies, so its cost cannot be bounded",
                hint=f"set one with `ccgate price set {model} --input USD --output USD` (0 if it is free)",
            )
        reserve = request.reserve_nanos
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._max_wait
        stall_at = give_up_at
        mark: tuple[tuple[int, int, int], ...] | None = None
        while True:
            await self._ensure_loaded(rules)
            self.expire_stale()
            now = self._clock()
            windows = [self._current(rule, now) for rule in rules]
            if any(held is None or held.rule is not rule for held, rule in zip(windows, rules, strict=True)):
                # a window rolled over or the rules were reloaded while loading: look again
                rules = self._applicable(request.project)
                continue
            live = [held for held in windows if held is not None]
            decision = decide([held.state() for held in live], reserve)
            if isinstance(decision, Admit):
                for held in live:
                    held.reserved += reserve
                reservation = Reservation(
                    next(self._ids), reserve, tuple((held.rule.key, held.start) for held in live), now
                )
                self._reservations[reservation.id] = reservation
                return reservation
            blocking = decision.blocking
            if isinstance(decision, Reject):
                rule = self._rules[blocking.key]
                committed = blocking.spent_nanos + blocking.reserved_nanos
                raise BudgetExceededError(format_budget_message(blocking, rule.raise_command(committed), tz=self._tz))
            event = self._event()
            rules = self._applicable(request.project)  # for the next round: update_rules may change them
            now_t = loop.time()
            if now_t >= give_up_at:
                raise self._still_reserved(blocking, reserve, stalled=False)
            if mark is None:  # the first wait: what the requests in flight have done so far
                mark, stall_at = self._progress_mark(blocking.key), now_t + self._wait_timeout
            elif now_t >= stall_at:
                moved = self._progress_mark(blocking.key)
                if moved == mark:
                    raise self._still_reserved(blocking, reserve, stalled=True)
                mark, stall_at = moved, now_t + self._wait_timeout
            try:
                await asyncio.wait_for(event.wait(), min(stall_at, give_up_at) - now_t)
            except TimeoutError:
                continue  # look again: maybe the requests in flight moved without settling anything
            # something settled, shrank or was released: that is progress
            stall_at = loop.time() + self._wait_timeout

    def _progress_mark(self, key: str) -> tuple[tuple[int, int, int], ...]:
        """What the requests holding budget `key` have done: it changes when one starts, ends, shrinks or
        receives bytes from its provider."""
        return tuple(
            (held.id, held.nanos, held.progress() if held.progress is not None else -1)
            for held in self._reservations.values()
            if key in held.budget_keys
        )

    def _still_reserved(self, blocking: BudgetState, reserve: int, *, stalled: bool) -> BudgetExceededError:
        rule = self._rules.get(blocking.key)
        command = rule.raise_command(blocking.spent_nanos + blocking.reserved_nanos + reserve) if rule else None
        why = (
            f"and none of them made progress for {self._wait_timeout:g} s"
            if stalled
            else f"for {self._max_wait / 60:g} minutes"
            if self._max_wait >= 60
            else f"for {self._max_wait:g} s"
        )
        return BudgetExceededError(
            f"{blocking.label} is fully reserved by requests in flight {why}: "
            f"{format_usd(blocking.spent_nanos)} spent and {format_usd(blocking.reserved_nanos)} reserved "
            f"of {format_usd(blocking.limit_nanos)}, and this request may cost up to {format_usd(reserve)}. "
            "Try again when they finish" + (f", or raise it with `{command}`" if command else "")
        )

    def watch(self, reservation: Reservation, progress: Callable[[], int]) -> None:
        """Let waiters see the request move: `progress` is a counter that grows while it does (bytes received)."""
        reservation.progress = progress

    def shrink(self, reservation: Reservation, bound_nanos: int) -> None:
        """The reply has begun and its input is known: hold only `bound_nanos` (see `budgets.shrunk_reservation`)
        from now on, and let waiters look again."""
        if reservation._released:
            return
        new = shrunk_reservation(reservation.nanos, bound_nanos)
        freed = reservation.nanos - new
        if freed <= 0:
            return
        for key, start in reservation._holds:
            held = self._windows.get(key)
            if held is not None and held.start == start:
                held.reserved -= freed
        reservation.nanos = new
        self._notify()

    def _drop(self, reservation: Reservation, spent: int | None) -> None:
        for key, start in reservation._holds:
            held = self._windows.get(key)
            if held is None or held.start != start:
                continue  # the budget was removed or its window rolled over: nothing to adjust
            if not reservation._released:
                held.reserved -= reservation.nanos
            if spent is not None:
                held.spent += spent

    def settle(self, reservation: Reservation, actual_nanos: int) -> None:
        """Swap the reservation for the real cost in one step (also after expiry: the cost still counts)."""
        if actual_nanos < 0:
            raise ValueError("actual_nanos must not be negative")
        if reservation._settled:
            return
        self._reservations.pop(reservation.id, None)
        self._drop(reservation, actual_nanos)
        reservation._released = reservation._settled = True
        self._notify()

    def release(self, reservation: Reservation) -> None:
        """The request failed before it cost anything: give the reservation back."""
        if reservation._released:
            return
        self._reservations.pop(reservation.id, None)
        self._drop(reservation, None)
        reservation._released = True
        self._notify()

    def expire_stale(self) -> int:
        """Drop reservations older than the TTL (their request crashed without settling); returns how many.

        Without a TTL nothing expires: this process settles or releases every reservation it makes.
        """
        if self._ttl is None:
            return 0
        cutoff = self._clock() - self._ttl
        stale = [r for r in self._reservations.values() if r.created_at < cutoff]
        for reservation in stale:
            self.release(reservation)
        return len(stale)

    def states(self, project: str | None = None) -> list[BudgetState]:
        """Loaded budgets in their current window (sorted by key); project None means every budget.

        Budgets not loaded yet (no request so far in this window) are left out; `snapshot` loads them.
        """
        now = self._clock()
        rules = list(self.rules) if project is None else self._applicable(project)
        return [held.state() for rule in rules if (held := self._current(rule, now)) is not None]

    async def snapshot(self, project: str | None = None) -> list[BudgetState]:
        """Like `states`, loading any budget whose current window is not in memory yet."""
        rules = list(self.rules) if project is None else self._applicable(project)
        await self._ensure_loaded(rules)
        return self.states(project)
