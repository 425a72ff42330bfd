"""The gateway's `Admission`: rate limits, then budgets (customer, team, key, provider) reserved in the database.

`admit` awaits the database; `settle`, `release` and `shrink` are synchronous for the proxy core, so their
database work runs as tracked tasks (retried while the database is briefly away) that `close` awaits.

Waiting: a request that only reservations keep out (`Waiting` from the store: spent is below the limit) asks
again whenever this instance settles, shrinks or releases a hold, and otherwise polls with a growing delay
(50 ms to 1 s) for other instances' changes. It gives up with 402 only when, for `wait_timeout` seconds,
nothing moved -- the blocking budget's spent and reserved, the bytes this instance's holders received, the
renewals of other instances' holds (their streams are alive) -- or after `max_wait`.
This instance's holds are renewed every third of their TTL while it lives (`run_heartbeat`), so a stream of
any length keeps its hold and a killed instance's holds lapse after at most one TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from ccgate.core.budgets import format_local
from ccgate.core.records import format_usd, utcnow
from ccgate.errors import BudgetExceededError, RateLimitedError, UnpricedModelError
from ccgate.gateway.leases import LEASE_LIFE_S, LEASE_SLOTS, Lease, Who, lease_extra, room_left
from ccgate.proxy.engine import ClientMeta
from ccgate.storage.gateway import instances
from ccgate.storage.gateway.admission import minute_of
from ccgate.storage.gateway.db import DatabaseUnavailableError
from ccgate.storage.gateway.records import (
    AdmissionResult,
    Admitted,
    BudgetView,
    Charge,
    RateDecision,
    RateLimited,
    Refused,
    Reservation,
)
from ccgate.storage.gateway.store import GatewayStore

log = logging.getLogger("ccgate.gateway")

RAISE_HINT = "ask your gateway admin to raise or override it (`ccgate gateway admin budget ...`)"
# How long a reply must have been running before its reservation is lowered to its real input (see `shrink`).
SHRINK_AFTER_S = 0.1
# How long after a reply its settle runs: then, not on the next request's admission (a client sends its next
# request the moment a reply ends). The hold only lasts that much longer, so budgets stay exact.
SETTLE_AFTER_S = 0.002
# How long a lease's unused request slots take to be given back once it ends: a request refused for a rate limit's
# requests asks once more after a lease's life and this (see `_slots_may_come_back`).
SLOTS_BACK_S = 0.5
# Tries (one a second) of a settle or release while the database is away, before it waits for the heartbeat.
DB_RETRIES = 30


@dataclass(slots=True, eq=False)
class Hold:
    """An admitted request's reservation (None when no budget applies to it)."""

    reservation: Reservation | None
    budget_ids: tuple[str, ...]
    progress: Callable[[], int] | None = None
    done: bool = False
    # budgets with an alert webhook, looked at once the request is settled; whose request it was
    alerting: tuple[str, ...] = ()
    owner: tuple[str, str | None, str | None, str | None] | None = None
    # (key id, row id) of the request's ledger row: its cost goes into the budgets once (`claim_charge`)
    row: tuple[str, str] | None = None
    # admitted from this instance's lease (the reservation is the lease's), holding `bound` of it
    lease: Lease | None = None
    bound: int = 0


Webhook = Callable[[str, dict[str, Any]], Coroutine[Any, Any, None]]


class ChargeCarrier(Protocol):
    """Writes a request's settle with its final row (`GatewayLedger`): one write per request, not two."""

    def carry(
        self, key_id: str, row_id: str, charge: Charge, *, settled: Callable[[], None], alone: Callable[[], None]
    ) -> None: ...

    async def flush(self, wait_s: float = 10.0) -> bool: ...

    # told the tokens each batch counted toward tokens-per-minute limits ((key id, team id) -> tokens)
    on_tokens: Callable[[Mapping[tuple[str, str | None], int]], None] | None


def ids_of(meta: ClientMeta) -> tuple[str, str | None, str | None]:
    extra = meta.extra
    return extra["key_id"], extra.get("team_id") or None, extra.get("customer_id") or None


def refused_message(view: BudgetView) -> str:
    """The 402 text: which budget, spent of limit, when it resets (in the budget's own timezone), who can help."""
    from zoneinfo import ZoneInfo

    state = view.state
    resets = format_local(state.resets_at, ZoneInfo(view.budget.timezone))
    return (
        f"{state.label} reached: {format_usd(state.spent_nanos)} spent of {format_usd(state.limit_nanos)} "
        f"(resets {resets}). {RAISE_HINT[0].upper()}{RAISE_HINT[1:]}"
    )


class GatewayAdmission:
    """One per process; `RequestAdmission` binds it to a request's routed provider."""

    def __init__(
        self,
        store: GatewayStore,
        instance_id: str,
        *,
        ttl: timedelta,
        wait_timeout: float = 30.0,
        max_wait: float = 600.0,
        provider_ids: Callable[[str], str | None] = lambda name: None,
        rate_limited: Callable[[], frozenset[str]] | None = None,
        budgeted: Callable[[], frozenset[str] | None] | None = None,
        webhook: Webhook | None = None,
        carrier: ChargeCarrier | None = None,
    ) -> None:
        """`rate_limited`: the ids of keys and teams with a rate limit (re-read every few seconds); requests of
        others skip the check. None: always check. `carrier`: where a request's settle is written with its
        ledger row (without one, or for a hold without a row, each settle is its own write)."""
        self.store = store
        self.instance_id = instance_id
        self.ttl = ttl
        self.wait_timeout = wait_timeout
        self.max_wait = max(max_wait, wait_timeout)
        self.provider_ids = provider_ids
        self.rate_limited = rate_limited
        self.budgeted = budgeted
        self.webhook = webhook
        self.carrier = carrier
        self._holds: set[Hold] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()
        # leases (`gateway.leases`): the live one per key and budgets, one being taken, the room seen last
        self._leases: dict[Who, Lease] = {}
        self._leasing: dict[Who, asyncio.Future[None]] = {}
        self._room: dict[Who, tuple[int, float]] = {}  # (least room, loop time it was seen)
        self._asking: dict[Who, int] = {}  # admissions of the key in flight to the database
        # rate-limited keys whose last lease got no request slots (near the limit): no lease until then
        self._slotless: dict[Who, float] = {}
        # live leases that end when their tokens-per-minute limits fill (`tokens_counted`)
        self._token_leases: set[Lease] = set()
        # writes that gave up while the database was away, in order, each with what runs once it is written: the
        # heartbeat writes them before it renews this instance's holds (renewed, a hold no one would end again
        # lived as long as the instance, and a settle's spend was lost)
        self._parked: list[tuple[Callable[[], Coroutine[Any, Any, Any]], Callable[[], None] | None]] = []
        store.limits_listeners.append(self._end_leases)
        if carrier is not None:
            carrier.on_tokens = self.tokens_counted

    # ---- the Admission protocol -------------------------------------------------------------------------------

    def applies(self, meta: ClientMeta) -> bool:
        return "key_id" in meta.extra

    async def admit(
        self, meta: ClientMeta, *, reserve_nanos: int | None, model: str, provider: str | None = None
    ) -> Hold:
        """Rate limits and the first reservation attempt in one round trip (`GatewayStore.admit`): a rate
        limited request holds nothing; later attempts of a waiting request reserve only."""
        key_id, team_id, customer_id = ids_of(meta)
        provider_id = None if provider is None else self.provider_ids(provider)
        bound = 0 if reserve_nanos is None else reserve_nanos

        def reserve() -> Coroutine[Any, Any, AdmissionResult]:
            return self.store.reserve(
                key_id=key_id,
                team_id=team_id,
                customer_id=customer_id,
                provider_id=provider_id,
                bound_nanos=bound,
                instance_id=self.instance_id,
                ttl=self.ttl,
            )

        budgeted = None if self.budgeted is None else self.budgeted()
        take_rate = self._has_rate_limit(key_id, team_id)
        if budgeted is not None and not any(i in budgeted for i in (key_id, team_id, customer_id, provider_id) if i):
            # no budget at any level: nothing to reserve, and no round trip for it
            if take_rate:
                limited = await self.store.take_request(key_id=key_id, team_id=team_id)
                if self._slots_may_come_back(limited):
                    await asyncio.sleep(LEASE_LIFE_S + SLOTS_BACK_S)
                    limited = await self.store.take_request(key_id=key_id, team_id=team_id)
                self._raise_if_limited(limited)
            return Hold(None, ())
        who: Who = (key_id, team_id, customer_id, provider_id)
        leased = await self._from_lease(who, bound, take_rate)
        if leased is not None:
            if meta.request_id is not None:
                leased.row = (key_id, meta.request_id)
            return leased
        extra = self._lease_wanted(who, bound, take_rate)
        # a request the lease cannot hold still uses one of its request slots, already counted
        count_rate = take_rate and not self._slot_of_lease(who)
        generation = self.store.limits_changed
        taking: asyncio.Future[None] | None = None
        if extra:
            taking = self._leasing[who] = asyncio.get_running_loop().create_future()

        def first_attempt() -> Coroutine[Any, Any, tuple[RateDecision, AdmissionResult | None]]:
            return self.store.admit(
                key_id=key_id,
                team_id=team_id,
                customer_id=customer_id,
                provider_id=provider_id,
                bound_nanos=bound + extra,
                instance_id=self.instance_id,
                ttl=self.ttl,
                take_rate=count_rate,
            )

        self._asking[who] = self._asking.get(who, 0) + 1
        try:
            limited, first = await self._attempt_first(first_attempt())
            if self._slots_may_come_back(limited):
                await asyncio.sleep(LEASE_LIFE_S + SLOTS_BACK_S)
                limited, first = await self._attempt_first(first_attempt())
            self._raise_if_limited(limited)
            assert first is not None  # only a rate limit answers None
            result: AdmissionResult = first
            if extra and isinstance(result, Admitted) and result.budgets:
                extra = self._lease_fitted(result, bound, extra)
                self._saw_room(who, room_left(result.budgets, bound + extra))
                if extra:
                    hold = self._lease_taken(who, result, bound, extra, generation, take_rate)
                    if meta.request_id is not None:
                        hold.row = (key_id, meta.request_id)
                    return hold
            if extra and not isinstance(result, Admitted):  # no room for a lease: this request alone (its rate
                self._saw_room(who, 0)  # limit is counted already)
                result = await self._attempt(reserve())
        finally:
            if self._asking[who] <= 1:
                del self._asking[who]
            else:
                self._asking[who] -= 1
            if taking is not None:
                if self._leasing.get(who) is taking:
                    del self._leasing[who]
                taking.set_result(None)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.max_wait
        mark: tuple[object, ...] | None = None
        stall_at = give_up_at
        delay = 0.05
        while True:
            if isinstance(result, Admitted):
                if result.budgets:
                    self._saw_room(who, room_left(result.budgets, bound))
                hold = self._admitted(result, reserve_nanos, model, who)
                if meta.request_id is not None:
                    hold.row = (key_id, meta.request_id)
                return hold
            if isinstance(result, Refused):
                raise BudgetExceededError(refused_message(result.blocking))
            state = result.blocking.state
            now = loop.time()
            budget_id = result.blocking.budget.id
            # progress: spend or holds changed, this instance's holders received bytes, or another instance
            # renewed its holds (its streams are alive; a dead instance's lapse and so change `reserved`)
            renewed = await instances.holds_renewed_until(
                self.store.db, budget_id, utcnow(), other_than=self.instance_id
            )
            moved = (state.spent_nanos, state.reserved_nanos, renewed, *self._progress(budget_id))
            if moved != mark:
                mark, stall_at = moved, now + self.wait_timeout
            elif now >= stall_at:
                raise self._still_reserved(result.blocking, bound, stalled=True)
            if now >= give_up_at:
                raise self._still_reserved(result.blocking, bound, stalled=False)
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(delay, max(0.0, give_up_at - now)))
            delay = min(delay * 2, 1.0)
            result = await self._attempt(reserve())

    # ---- leases (see `gateway.leases`) -------------------------------------------------------------------------

    async def _from_lease(self, who: Who, bound: int, take_rate: bool) -> Hold | None:
        """A request admitted from this instance's lease for its key and budgets, without a round trip; None when
        there is none that fits it (one being taken is waited for first)."""
        taking = self._leasing.get(who)
        if taking is not None:
            await asyncio.shield(taking)
        lease = self._leases.get(who)
        if lease is None:
            return None
        loop = asyncio.get_running_loop()
        if loop.time() >= lease.until or lease.generation != self.store.limits_changed:
            self._end_lease(lease)
            return None
        if bound <= 0 or lease.free < bound:
            return None
        if take_rate:
            if lease.rated and lease.slot_minute != minute_of(utcnow()):  # its slots were this minute's
                self._end_lease(lease)
                return None
            if not lease.rated:  # its slots are being counted
                return None
            if lease.slots <= 0:  # used up: the next admission takes a new lease
                self._end_lease(lease)
                return None
            lease.slots -= 1
        return self._draw(lease, bound)

    def _slot_of_lease(self, who: Who) -> bool:
        """Take one of this minute's request slots the live lease counted, if it has one left: a request of its key
        admitted on its own must not count another (the key would be told 429 while under its limit)."""
        lease = self._leases.get(who)
        if lease is None or lease.ended or not lease.rated or lease.slots <= 0:
            return False
        if lease.slot_minute != minute_of(utcnow()):
            return False
        lease.slots -= 1
        return True

    def _draw(self, lease: Lease, bound: int) -> Hold:
        lease.held += bound
        lease.open += 1
        hold = Hold(
            lease.reservation,
            lease.reservation.budget_ids,
            alerting=lease.alerting,
            owner=lease.who,
            lease=lease,
            bound=bound,
        )
        self._holds.add(hold)
        return hold

    def _lease_wanted(self, who: Who, bound: int, take_rate: bool) -> int:
        """How much more than `bound` this admission should reserve as a lease (0: none). Not while a live lease
        still has room for the request (it could not use it for a reason a new one would share: its request slots
        are still being counted), nor while a rate limit is too close to give a lease slots."""
        current = self._leases.get(who)
        if who in self._leasing or (current is not None and current.free >= bound and not current.ended):
            return 0
        if take_rate and self._slotless.get(who, 0.0) > asyncio.get_running_loop().time():
            return 0
        # only for a busy key: one admitted less than a lease's life ago (a key with a request every few seconds
        # would take a lease per request, and its end would be two more writes for nothing)
        # (or another of its requests is being admitted right now: the second of a burst after a pause)
        seen = self._room.get(who)
        if seen is None:
            return 0
        if not self._asking.get(who) and asyncio.get_running_loop().time() - seen[1] > LEASE_LIFE_S:
            return 0
        return lease_extra(bound, seen[0])

    def _saw_room(self, who: Who, room: int) -> None:
        """What an admission of the key found: the least room left, and when (a lease is only for a busy key)."""
        if len(self._room) > 10_000:
            self._room.clear()
        self._room[who] = (room, asyncio.get_running_loop().time())

    def _lease_fitted(self, result: Admitted, bound: int, extra: int) -> int:
        """The lease part `extra` of an admitted reservation, cut to what the room the admission found allows: it
        was sized on the room seen last, which other keys or instances may have spent since, and an admission with
        nothing else reserved is admitted whatever its size (the one request's overshoot budgets allow -- never a
        lease's). The reservation is lowered at once (in the background: this admission must not be cancelled
        holding it)."""
        fits = min(extra, lease_extra(bound, room_left(result.budgets, 0)))
        if fits < extra:
            reservation = result.reservation
            self._spawn(self._retrying(lambda: self.store.shrink(reservation, bound + fits)), "lease")
        return fits

    def _lease_taken(
        self, who: Who, result: Admitted, bound: int, extra: int, generation: int, take_rate: bool
    ) -> Hold:
        previous = self._leases.get(who)
        if previous is not None:
            self._end_lease(previous)
        loop = asyncio.get_running_loop()
        alerting = tuple(
            view.budget.id for view in result.budgets if view.budget.webhook_url and view.budget.thresholds
        )
        lease = Lease(
            who,
            result.reservation,
            alerting,
            amount=bound + extra,
            until=loop.time() + LEASE_LIFE_S,
            generation=generation,
        )
        self._leases[who] = lease
        loop.call_later(LEASE_LIFE_S, self._end_lease, lease)
        if take_rate:
            self._spawn(self._take_slots(lease), "lease slots")
        return self._draw(lease, bound)

    async def _take_slots(self, lease: Lease) -> None:
        key_id, team_id = lease.who[0], lease.who[1]
        now = utcnow()
        granted, ids, tokens_left = await self.store.take_slots(
            key_id=key_id, team_id=team_id, want=LEASE_SLOTS, now=now
        )
        if lease.ended or not granted:  # ended while they were counted, or none to have: it ends, they go back
            if not granted:
                if len(self._slotless) > 10_000:
                    self._slotless.clear()
                self._slotless[lease.who] = asyncio.get_running_loop().time() + LEASE_LIFE_S
            self._end_lease(lease)
            await self.store.give_back_slots(ids, now, granted)
            return
        lease.rated, lease.slots, lease.slot_ids, lease.slot_minute = True, granted, ids, minute_of(now)
        lease.tokens_left = tokens_left
        if tokens_left is not None:
            self._token_leases.add(lease)

    def tokens_counted(self, totals: Mapping[tuple[str, str | None], int]) -> None:
        """Finished requests' tokens were counted toward tokens-per-minute limits ((key id, team id) -> tokens, by
        the ledger): a lease whose limits they fill ends, so its key's next request is checked against them."""
        if not self._token_leases:
            return
        by_key: dict[str, int] = {}
        by_team: dict[str | None, int] = {}
        for (key_id, team_id), tokens in totals.items():
            by_key[key_id] = by_key.get(key_id, 0) + tokens
            by_team[team_id] = by_team.get(team_id, 0) + tokens
        for lease in list(self._token_leases):
            key_id, team_id = lease.who[0], lease.who[1]
            # the key's and its team's, each once
            counted = by_key.get(key_id, 0) + (by_team.get(team_id, 0) if team_id else 0)
            counted -= totals.get((key_id, team_id), 0) if team_id else 0
            assert lease.tokens_left is not None
            lease.tokens_left -= counted
            if lease.tokens_left <= 0:
                self._end_lease(lease)

    def _end_lease(self, lease: Lease) -> None:
        """No more requests from it; what its requests do not hold goes back to the budgets (and its unused
        request slots to the rate limits) at once, and its row once the last of them is written."""
        if lease.ended:
            return
        lease.ended = True
        self._token_leases.discard(lease)
        if self._leases.get(lease.who) is lease:
            del self._leases[lease.who]
        if lease.slots > 0 and lease.slot_minute is not None:
            unused, lease.slots = lease.slots, 0
            ids, minute = lease.slot_ids, lease.slot_minute
            self._spawn(self._retrying(lambda: self.store.give_back_slots(ids, minute, unused)), "lease slots")
        if lease.open == 0:
            self._drop_lease(lease)
        else:
            keep, reservation = lease.keep, lease.reservation
            self._spawn(self._retrying(lambda: self.store.shrink(reservation, keep)), "lease")

    def _end_leases(self) -> None:
        """A budget or rate limit changed through this process's store: every lease ends at once (its room and
        request slots go back), not when its key next asks."""
        for lease in list(self._leases.values()):
            self._end_lease(lease)

    def _drop_lease(self, lease: Lease) -> None:
        reservation = lease.reservation
        self._spawn(self._retrying(lambda: self.store.release(reservation)), "lease")

    def _lease_request_done(self, hold: Hold, written: int = 0) -> None:
        """A request admitted from a lease is over: its settle written (`written` its spend) or it was released."""
        lease = hold.lease
        assert lease is not None
        lease.unwritten -= written
        lease.amount -= written
        lease.open -= 1
        if lease.ended and lease.open == 0:
            self._drop_lease(lease)

    @staticmethod
    def _raise_if_limited(limited: RateDecision) -> None:
        if isinstance(limited, RateLimited):
            level = limited.limit.level.value
            raise RateLimitedError(
                f"the {level}'s rate limit of {limited.allowed} {limited.kind} a minute is reached",
                retry_after=limited.retry_after_s,
                hint=f"retry in {limited.retry_after_s} s, or ask your gateway admin to raise it",
            )

    @staticmethod
    def _slots_may_come_back(limited: RateDecision) -> bool:
        """Refused for a rate limit's requests, which may count request slots that leases (of any instance) hold
        and will not use: they are given back within a lease's life, so the request asks once more then rather
        than be told 429 while fewer requests than the limit were admitted (a real 429 comes that much later)."""
        return (
            isinstance(limited, RateLimited)
            and limited.kind == "requests"
            and limited.retry_after_s > LEASE_LIFE_S + SLOTS_BACK_S
        )

    def _has_rate_limit(self, key_id: str, team_id: str | None) -> bool:
        """Whether the key or its team may have a rate limit (requests of others skip counting)."""
        limited = None if self.rate_limited is None else self.rate_limited()
        return limited is None or key_id in limited or (team_id is not None and team_id in limited)

    async def _attempt_first(
        self, work: Coroutine[Any, Any, tuple[RateDecision, AdmissionResult | None]]
    ) -> tuple[RateDecision, AdmissionResult | None]:
        """`_attempt` for the first attempt, which also takes the rate limits."""
        attempt = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(self._release_orphan_first)
            raise

    async def _attempt(self, work: Coroutine[Any, Any, AdmissionResult]) -> AdmissionResult:
        """One reservation attempt; if the client leaves meanwhile, a hold it committed is given back (it would
        otherwise be renewed for as long as this instance lives)."""
        attempt = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(self._release_orphan)
            raise

    def _admitted(
        self,
        result: Admitted,
        reserve_nanos: int | None,
        model: str,
        owner: tuple[str, str | None, str | None, str | None],
    ) -> Hold:
        budget_ids = tuple(view.budget.id for view in result.budgets)
        alerting = tuple(
            view.budget.id for view in result.budgets if view.budget.webhook_url and view.budget.thresholds
        )
        hold = Hold(result.reservation if budget_ids else None, budget_ids, alerting=alerting, owner=owner)
        if reserve_nanos is None and budget_ids:
            self.release(hold)
            raise UnpricedModelError(
                f"model {model} has no known price and a budget applies, so its cost cannot be bounded",
                hint="ask your gateway admin to route it to a priced model or to set a price for it",
            )
        self._holds.add(hold)
        return hold

    def _release_result(self, result: AdmissionResult) -> None:
        if isinstance(result, Admitted) and result.budgets:
            self.release(Hold(result.reservation, tuple(view.budget.id for view in result.budgets)))

    def _release_orphan_first(self, attempt: asyncio.Future[Any]) -> None:
        if not attempt.cancelled() and attempt.exception() is None:
            _, result = attempt.result()
            if result is not None:
                self._release_result(result)

    def _release_orphan(self, attempt: asyncio.Future[Any]) -> None:
        if not attempt.cancelled() and attempt.exception() is None:
            self._release_result(attempt.result())

    def watch(self, hold: Hold, progress: Callable[[], int]) -> None:
        hold.progress = progress

    def shrink(self, hold: Hold, bound_nanos: int) -> None:
        """Lowered in the database only if the request is still running `SHRINK_AFTER_S` later: most replies
        that end sooner settle before anyone could use the room, and each skipped write is a round trip saved.
        A request admitted from a lease lowers what it holds of the lease (in memory) at once, and, once the lease
        has ended, the lease's row too (it holds only its requests in flight and their unwritten spend then)."""
        if hold.reservation is None or hold.done:
            return
        reservation = hold.reservation
        lease = hold.lease
        if lease is not None:
            lower = max(0, bound_nanos)
            if lower >= hold.bound:
                return
            lease.held -= hold.bound - lower
            hold.bound = lower

            def lower_row() -> None:
                if lease.ended and not hold.done:
                    self._spawn(self.store.shrink(reservation, lease.keep), "lease")

            asyncio.get_running_loop().call_later(SHRINK_AFTER_S, lower_row)
            return

        def later() -> None:
            if not hold.done:
                self._spawn(self.store.shrink(reservation, max(0, bound_nanos)), "shrink")

        asyncio.get_running_loop().call_later(SHRINK_AFTER_S, later)

    def settle(self, hold: Hold, actual_nanos: int) -> None:
        if hold.done and hold.lease is not None:
            return
        self._end(hold)
        if hold.reservation is None:
            return
        nanos = max(0, actual_nanos)
        if hold.lease is not None:  # its spend is the lease's until written
            hold.lease.held -= hold.bound
            hold.lease.unwritten += nanos
        if self.carrier is not None and hold.row is not None:
            self.carrier.carry(
                *hold.row,
                Charge(hold.reservation, nanos, keep_reservation=hold.lease is not None),
                settled=lambda: self._settled(hold, nanos),
                alone=lambda: self._settle_alone(hold, nanos),
            )
        else:
            self._settle_alone(hold, nanos)

    def _settled(self, hold: Hold, nanos: int) -> None:
        """A settle written with its row: waiting requests look again, and budget alerts are checked."""
        if hold.lease is not None:
            self._lease_request_done(hold, nanos)
        self._notify()
        if hold.alerting and self.webhook is not None and nanos > 0:
            self._spawn(self._alert(hold), "alert")

    def _settle_alone(self, hold: Hold, nanos: int) -> None:
        reservation = hold.reservation
        assert reservation is not None
        keep = hold.lease is not None
        settling = self._retrying(
            lambda: self.store.settle(reservation, nanos, row=hold.row, keep_reservation=keep),
            first_after=SETTLE_AFTER_S,
            then=None if hold.lease is None else lambda: self._lease_request_done(hold, nanos),
        )
        self._spawn(self._after_settle(settling, hold, nanos), "settle")

    async def _after_settle(self, settling: Coroutine[Any, Any, bool], hold: Hold, nanos: int) -> None:
        if await settling and hold.alerting and self.webhook is not None and nanos > 0:
            await self._alert(hold)

    async def _alert(self, hold: Hold) -> None:
        """Each threshold of a budget with a webhook fires once per window, across instances (`claim_alert`)."""
        from ccgate.gateway.webhooks import check_alerts

        assert hold.owner is not None and self.webhook is not None
        key_id, team_id, customer_id, provider_id = hold.owner
        await check_alerts(
            self.store,
            self.webhook,
            key_id=key_id,
            team_id=team_id,
            customer_id=customer_id,
            provider_id=provider_id,
            only=hold.alerting,
        )

    def release(self, hold: Hold) -> None:
        if hold.lease is not None:  # back into the lease: no write
            if not hold.done:
                self._end(hold)
                hold.lease.held -= hold.bound
                self._lease_request_done(hold)
            return
        self._end(hold)
        if hold.reservation is not None:
            reservation = hold.reservation
            self._spawn(self._retrying(lambda: self.store.release(reservation)), "release")

    # ---- bookkeeping ------------------------------------------------------------------------------------------

    def _end(self, hold: Hold) -> None:
        hold.done = True
        hold.progress = None
        self._holds.discard(hold)

    def _progress(self, budget_id: str) -> list[int]:
        """What this instance's requests on `budget_id` have done: grows while any of them moves."""
        marks = []
        for hold in self._holds:
            if budget_id in hold.budget_ids and hold.progress is not None:
                marks.append(hold.progress())
        return marks

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)

        def finished(done: asyncio.Task[Any]) -> None:
            self._tasks.discard(done)
            if not done.cancelled() and done.exception() is not None:
                log.error("budget %s failed: %s", what, done.exception())
            self._notify()

        task.add_done_callback(finished)

    async def _retrying(
        self,
        call: Callable[[], Coroutine[Any, Any, Any]],
        *,
        first_after: float = 0.0,
        then: Callable[[], None] | None = None,
    ) -> bool:
        """A settle must not be lost to a database restart: the spend would vanish from the budget. Past
        `DB_RETRIES` tries the write is parked for the heartbeat (False). `then` runs once it is written, or once it
        failed for another reason (nothing would write it again)."""
        if first_after > 0:
            await asyncio.sleep(first_after)
        attempt = 0
        while True:
            try:
                await call()
            except DatabaseUnavailableError as error:
                attempt += 1
                if attempt >= DB_RETRIES:
                    log.error("budget write parked until the database is back: %s", error.message)
                    self._parked.append((call, then))
                    return False
                await asyncio.sleep(1.0)
                continue
            except BaseException:
                if then is not None:
                    then()
                raise
            if then is not None:
                then()
            return True

    async def _unpark(self) -> None:
        """The writes parked while the database was away, in their order; stops at the first that fails again."""
        while self._parked:
            call, then = self._parked.pop(0)
            try:
                await call()
            except DatabaseUnavailableError:
                self._parked.insert(0, (call, then))
                raise
            except Exception:
                log.exception("a parked budget write failed")
            if then is not None:
                then()

    def _still_reserved(self, view: BudgetView, reserve: int, *, stalled: bool) -> BudgetExceededError:
        state = view.state
        why = (
            f"and none of them made progress for {self.wait_timeout:g} s"
            if stalled
            else f"for {self.max_wait / 60:g} minutes"
        )
        return BudgetExceededError(
            f"{state.label} is fully reserved by requests in flight {why}: {format_usd(state.spent_nanos)} spent "
            f"and {format_usd(state.reserved_nanos)} reserved of {format_usd(state.limit_nanos)}, and this request "
            f"may cost up to {format_usd(reserve)}. Try again when they finish, or {RAISE_HINT}"
        )

    # ---- lifetime ---------------------------------------------------------------------------------------------

    async def run_heartbeat(self) -> None:
        """Renew this instance's holds every third of the TTL; clear lapsed holds and dead instances' rows."""
        interval = self.ttl.total_seconds() / 3
        while True:
            try:
                # first: a hold whose release was parked is not renewed once more when the database is back
                await self._unpark()
            except DatabaseUnavailableError as error:  # still renewed: a live stream's hold must not lapse
                log.error("cannot write the budget writes parked while the database was away: %s", error.message)
            try:
                now = utcnow()
                await instances.beat(self.store.db, self.instance_id, self.ttl, now)
                recovered = await instances.recover_dead(self.store.db, now)
                if recovered:
                    log.warning("marked %d request(s) of a stopped gateway instance as interrupted", recovered)
                if await self.store.expire(now=now):
                    self._notify()
            except DatabaseUnavailableError as error:
                log.error("cannot renew this instance's budget holds: %s", error.message)
            except Exception:  # the heartbeat must outlive anything (a deadlock report, say); it is logged
                log.exception("renewing this instance's budget holds failed")
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Wait for every settle and release still running (those written with rows too), then drop this
        instance's holds."""
        with contextlib.suppress(ValueError):
            self.store.limits_listeners.remove(self._end_leases)
        self._end_leases()
        if self.carrier is not None:
            await self.carrier.flush()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        with contextlib.suppress(DatabaseUnavailableError):
            await self._unpark()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        with contextlib.suppress(DatabaseUnavailableError):
            await instances.stop(self.store.db, self.instance_id)


class RequestAdmission:
    """The process's admission bound to one request, so provider budgets see the provider it was routed to."""

    __slots__ = ("admission", "router")

    def __init__(self, admission: GatewayAdmission, router: Any) -> None:
        self.admission = admission
        self.router = router

    def applies(self, meta: ClientMeta) -> bool:
        return self.admission.applies(meta)

    async def admit(self, meta: ClientMeta, *, reserve_nanos: int | None, model: str) -> Hold:
        route = self.router.last
        provider = route.targets[0].provider if route is not None else None
        return await self.admission.admit(meta, reserve_nanos=reserve_nanos, model=model, provider=provider)

    def settle(self, reservation: Hold, actual_nanos: int) -> None:
        self.admission.settle(reservation, actual_nanos)

    def release(self, reservation: Hold) -> None:
        self.admission.release(reservation)

    def shrink(self, reservation: Hold, bound_nanos: int) -> None:
        self.admission.shrink(reservation, bound_nanos)

    def watch(self, reservation: Hold, progress: Callable[[], int]) -> None:
        self.admission.watch(reservation, progress)
