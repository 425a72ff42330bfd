"""Budget leases: most requests of a busy key admitted from memory, without a round trip to the database.

When an admission finds every budget of a key far from its limit, it reserves room for many requests at once -- a lease
-- and this instance admits that key's next requests from it for `LEASE_LIFE_S`. The lease is sized on the room seen
last and cut to the room its admission found (an admission with nothing else reserved is admitted whatever its size: the
one request's overshoot budgets allow, never a lease's). A lease is an ordinary reservation row of the instance, so
every other instance counts it as held: budgets stay exact (a lease can make another instance's request wait for it,
never overspend). Requests admitted from a lease add their spend with their ledger row as usual, and leave the row
alone. When the lease ends, what its requests do not hold is given back at once (the row lowered to the bounds still in
flight plus the spend not yet written, and again as they shrink) and the row deleted once the last of them is written.

A key or team with a rate limit: the lease also counts a number of this minute's requests at once (`take_slots`), and
gives back the ones it did not use; a request of that key admitted on its own uses one of them. It ends once the tokens
its ledger counts for the key or team fill what tokens-per-minute limits had left. A request refused for a rate limit's
requests asks once more after a lease's life, when other instances' leases have given back their unused slots (429 only
when the limit's requests were admitted). Near a limit -- a budget's room under `LEASE_ROOM_SHARE` leases, a rate limit
with under `SLOT_HEADROOM` times the slots left -- there is no lease and each request is admitted on its own, as exactly
as ever. A change to a budget or rate limit ends this instance's leases at once, another instance's within
`LEASE_LIFE_S`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ccgate.storage.gateway.records import BudgetView, Reservation

# How long a lease admits requests: the bound on how late another instance sees a budget or rate limit change.
LEASE_LIFE_S = 1.0
# A lease holds room for this many requests like the one that took it...
LEASE_REQUESTS = 64
# ...but never more than this share of the room any of its budgets has left, and none below `MIN_REQUESTS`.
LEASE_ROOM_SHARE = 32
MIN_REQUESTS = 4
# Request slots a lease counts at once against a rate limit (see `admission.take_slots`).
LEASE_SLOTS = 256

Who = tuple[str, str | None, str | None, str | None]  # key, team, customer, provider ids


@dataclass(slots=True, eq=False)
class Lease:
    who: Who
    reservation: Reservation
    alerting: tuple[str, ...]
    # what it can still cover: its reservation less the spend its requests have written (that spend is in the
    # budgets now, and the row keeps holding it too until the lease ends: never less than the truth)
    amount: int
    until: float  # loop time: no request is admitted from it after this
    generation: int  # `GatewayStore.limits_changed` when its admission began
    held: int = 0  # bounds of the requests admitted from it that have not ended
    unwritten: int = 0  # spend of its ended requests not yet written with their rows
    open: int = 0  # its requests whose settle is not yet written (or that were released)
    rated: bool = False  # request slots were counted for it (a rate limit applies)
    slots: int = 0  # of those, not used yet
    slot_ids: tuple[str, ...] = ()
    slot_minute: datetime | None = None
    # tokens its rate limits had left this minute when its slots were counted, less those counted since for its key
    # or team: at 0 it ends (its requests are not checked against tokens per minute)
    tokens_left: int | None = None
    ended: bool = False

    @property
    def free(self) -> int:
        return self.amount - self.held - self.unwritten

    @property
    def keep(self) -> int:
        """What its row must still hold once it ends: its requests' bounds in flight and their unwritten spend."""
        return self.held + self.unwritten


def room_left(views: tuple[BudgetView, ...], held: int) -> int:
    """The least room any of the budgets has after an admission that holds `held` (its views are from before)."""
    return max(0, min(v.state.limit_nanos - v.state.spent_nanos - v.state.reserved_nanos for v in views) - held)


def lease_extra(bound: int, room: int | None) -> int:
    """How much more than `bound` to reserve as a lease, given the room seen last (0: no lease)."""
    if bound <= 0 or room is None:
        return 0
    extra = min(bound * LEASE_REQUESTS, room // LEASE_ROOM_SHARE)
    return extra if extra >= bound * MIN_REQUESTS else 0
