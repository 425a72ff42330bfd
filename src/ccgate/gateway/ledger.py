"""The gateway's `LedgerSink`: request rows queued in memory and written in batches by one background task.

The proxy's calls only enqueue (the event loop never waits on the database for a request). Rows of the same
request coalesce: when the writer gets to it, a request's pending row that already has its final state is
written once, final -- and a batch of only pending rows waits a moment (`PENDING_DELAY_S`) for finals, so a short
request costs one write, after its reply. A batch the database refuses stays queued and is tried again; finished
rows' tokens are counted toward tokens-per-minute limits in the same write.

A request's settle rides with its final row (`carry`): the proxy settles a request just before it queues the
final row, and the two are written in one transaction -- one write per request instead of two, and the row is
marked charged as it is inserted rather than by a second write (`ledger.write_requests`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ccgate.core.records import RequestRecord, RequestStatus, new_request_id
from ccgate.storage.gateway.db import ConstraintError, DatabaseUnavailableError
from ccgate.storage.gateway.records import Charge, GatewayRow, KeyIdentity
from ccgate.storage.gateway.store import GatewayStore

log = logging.getLogger("ccgate.gateway")

BATCH_ROWS = 500
# How long a batch of only pending rows waits for a final row: a request that ends sooner is written once, final,
# after its reply (not while it runs, where the write competes with it for the CPU). A kill in that window leaves
# no row of such a request (its budget hold still lapses); one running longer has its pending row written then.
PENDING_DELAY_S = 0.025
# How long the writer lingers after a final row before it writes: the batch lands while the next request waits on
# its provider, not on that request's admission (a client sends its next request the moment a reply ends), and
# finals close together share a batch. At c=1 on SQLite: +8-12 % requests a second; at c=32 +20 %.
FINAL_LINGER_S = 0.002
# Rows kept in memory while the database is away; past it the oldest pending rows are dropped (and counted).
MAX_QUEUED = 100_000


@dataclass(frozen=True, slots=True)
class Owner:
    key_id: str
    team_id: str | None
    customer_id: str | None
    # for metric labels only
    key_name: str = ""
    team_name: str = ""

    @classmethod
    def of(cls, identity: KeyIdentity) -> Owner:
        customer = identity.customer.id if identity.customer else None
        return cls(identity.key.id, identity.team.id, customer, identity.key.name, identity.team.name)


class GatewayLedger:
    """One per process; `for_key` gives the `LedgerSink` the proxy core writes one key's rows to."""

    def __init__(
        self,
        store: GatewayStore,
        instance_id: str,
        *,
        on_final: Callable[[RequestRecord, Owner], None] | None = None,
        rate_limited: Callable[[], frozenset[str]] | None = None,
        pending_delay_s: float = PENDING_DELAY_S,
        final_linger_s: float = FINAL_LINGER_S,
    ) -> None:
        self.store = store
        self.pending_delay_s = pending_delay_s
        self.final_linger_s = final_linger_s
        self.on_final = on_final
        self.rate_limited = rate_limited
        self.instance_id = instance_id
        self._queue: dict[tuple[str, str], GatewayRow] = {}
        # (key id, client's row id) -> the fresh id a request got because a finished row already had that id
        self._renamed: dict[tuple[str, str], str] = {}
        # (key id, client's row id) of this process's requests in flight under a client's id: one at a time
        self._in_flight: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._final = asyncio.Event()  # a finished row was queued since the last batch was taken
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        # (key id, row id) -> a settle waiting for its final row; charge -> (when written, if never queued)
        self._charges: dict[tuple[str, str], Charge] = {}
        # by the charge itself (its id, the charge kept alive here): requests admitted from one lease share its
        # reservation
        self._after: dict[int, tuple[Charge, Callable[[], None], Callable[[], None]]] = {}
        # ids of the rows of the batch being written: one dropped meanwhile may still be committed with its settle
        self._writing: set[int] = set()
        self.dropped = 0
        self.last_error: str | None = None
        # told the tokens each written batch counted toward tokens-per-minute limits (the admission's leases)
        self.on_tokens: Callable[[Mapping[tuple[str, str | None], int]], None] | None = None

    def for_key(self, owner: Owner) -> KeyLedger:
        return KeyLedger(self, owner)

    def carry(
        self, key_id: str, row_id: str, charge: Charge, *, settled: Callable[[], None], alone: Callable[[], None]
    ) -> None:
        """Write a request's settle with its final row, which the proxy queues right after settling: `settled`
        runs once both are committed. If no final row of that id comes in this turn of the loop, `alone` runs
        instead (the caller settles on its own), so a settle is never left waiting."""
        slot = (key_id, row_id)
        self._charges[slot] = charge
        self._after[id(charge)] = (charge, settled, alone)
        asyncio.get_running_loop().call_soon(self._unclaimed, slot, charge)

    def _unclaimed(self, slot: tuple[str, str], charge: Charge) -> None:
        if self._charges.get(slot) is charge:
            del self._charges[slot]
            self._done(charge, written=False)

    def _done(self, charge: Charge, *, written: bool) -> None:
        """Tell the settle's owner, once: written with its row, or to be written on its own."""
        after = self._after.pop(id(charge), None)
        if after is not None:
            (after[1] if written else after[2])()

    def enqueue(self, owner: Owner, record: RequestRecord) -> None:
        if len(self._queue) >= MAX_QUEUED:
            oldest = next(iter(self._queue))
            dropped = self._queue.pop(oldest)
            self.dropped += 1
            if dropped.charge is not None and id(dropped) not in self._writing:  # the row is lost, its settle is not
                self._done(dropped.charge, written=False)
        slot = (owner.key_id, record.id)
        row = GatewayRow(record.copy(), owner.key_id, owner.team_id, owner.customer_id, instance_id=self.instance_id)
        if record.status is not RequestStatus.PENDING:
            row.charge = self._charges.pop(slot, None)
        renamed = self._renamed.get(slot)
        queued = self._queue.get(slot)
        if renamed is None and queued is not None and queued.record.started_at != record.started_at:
            # the id's previous request is still queued (not written yet): never coalesce two requests' rows
            renamed = new_request_id()
            log.warning("request id reused by key %s: stored under a fresh id", owner.key_id)
            if record.status is RequestStatus.PENDING:
                self._renamed[slot] = renamed
        if renamed is not None:  # a reused request id: this request's rows go under its fresh id
            row.record.id = renamed
            if record.status is not RequestStatus.PENDING:
                self._renamed.pop(slot, None)
            slot = (owner.key_id, renamed)
        # re-inserted at the end: rows are written in the order they last changed
        replaced = self._queue.pop(slot, None)
        if replaced is not None and replaced.charge is not None and row.charge is None:
            row.charge = replaced.charge
        self._queue[slot] = row
        self._idle.clear()
        self._wake.set()
        if record.status is not RequestStatus.PENDING:
            self._final.set()
            if self.on_final is not None:
                # metrics and the access line after the reply's last byte (the proxy enqueues the final row just
                # before it), not on the request's critical path
                asyncio.get_running_loop().call_soon(self.on_final, record, owner)

    def claim_id(self, key_id: str, row_id: str) -> bool:
        """Whether a request may use a client's row id: not while another request of this key is in flight
        under it here (their rows would be one row). Another instance's holder is caught when the row is
        written (`ledger.write_requests`). A True claim is given back with `release_id`."""
        slot = (key_id, row_id)
        if slot in self._in_flight:
            return False
        self._in_flight.add(slot)
        return True

    def release_id(self, key_id: str, row_id: str) -> None:
        self._in_flight.discard((key_id, row_id))

    @property
    def unsaved(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            if not self._final.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._final.wait(), self.pending_delay_s)
            if self._final.is_set() and self.final_linger_s > 0:
                await asyncio.sleep(self.final_linger_s)
            self._final.clear()
            slots = list(self._queue)[:BATCH_ROWS]
            batch = [self._queue[slot] for slot in slots]
            self._writing = {id(row) for row in batch}
            try:
                try:
                    # finished rows' tokens count toward tokens-per-minute limits in the same trip
                    tokens = self._tokens(batch)
                    reused = await self.store.write_requests(batch, tokens)
                except ConstraintError as error:  # refused, not lost: never stop writing (and settling) for one row
                    log.error("the database refused a batch of %d request row(s): %s", len(batch), error.message)
                    await self._one_by_one(slots, batch)
                    continue
            except DatabaseUnavailableError as error:
                self.last_error = error.message
                log.error("cannot write %d request row(s) yet: %s", len(batch), error.message)
                self._settle_dropped(batch)
                await asyncio.sleep(1.0)
                continue
            finally:
                self._writing = set()
            self.last_error = None
            self._written(slots, batch, reused)
            self._counted(tokens)

    def _written(self, slots: list[tuple[str, str]], batch: list[GatewayRow], reused: list[GatewayRow]) -> None:
        for slot, row in zip(slots, batch, strict=True):
            if self._queue.get(slot) is row:  # not changed again meanwhile
                del self._queue[slot]
        carried = {id(row) for row in reused}
        for row in batch:
            if row.charge is not None and id(row) not in carried:
                self._done(row.charge, written=True)
        for row in reused:
            self._rename(row)

    async def _one_by_one(self, slots: list[tuple[str, str]], batch: list[GatewayRow]) -> None:
        """A batch the database refused: each row in a write of its own, and a row refused alone is dropped (its
        settle written on its own), so one bad row never holds up every request queued after it."""
        for slot, row in zip(slots, batch, strict=True):
            if self._queue.get(slot) is not row:  # dropped (past MAX_QUEUED) or changed meanwhile: not to write
                self._settle_dropped([row])
                continue
            self._writing = {id(row)}
            try:
                tokens = self._tokens([row])
                reused = await self.store.write_requests([row], tokens)
            except ConstraintError as error:
                log.error("request row of key %s dropped, the database refused it: %s", row.key_id, error.message)
                self.dropped += 1
                if self._queue.get(slot) is row:
                    del self._queue[slot]
                self._settle_dropped([row])
                continue
            self._written([slot], [row], reused)
            self._counted(tokens)

    def _counted(self, tokens: dict[tuple[str, str | None], int]) -> None:
        if tokens and self.on_tokens is not None:
            self.on_tokens(tokens)

    def _settle_dropped(self, batch: list[GatewayRow]) -> None:
        """The settles of rows not written and no longer queued (dropped, by `MAX_QUEUED` or as refused) are
        written on their own; a row that was replaced in the queue handed its settle to its replacement."""
        for row in batch:
            if row.charge is None:
                continue
            queued = self._queue.get((row.key_id, row.record.id))
            if queued is None or queued.charge is not row.charge:
                self._done(row.charge, written=False)

    def _rename(self, row: GatewayRow) -> None:
        """A client reused the id of a finished request: this request is stored under a fresh id rather than
        overwrite that row (a sidecar retrying a failed attempt sends the same id again; refusing with 409 would
        break its retry). Its later rows follow the new id."""
        slot = (row.key_id, row.record.id)
        fresh = new_request_id()
        log.warning("request id reused by key %s: stored under a fresh id", row.key_id)
        newer = self._queue.pop(slot, None)  # this request's final, queued while its pending row was written
        source = newer if newer is not None else row
        if source.record.status is RequestStatus.PENDING:
            self._renamed[slot] = fresh
        moved = GatewayRow(
            source.record.copy(),
            source.key_id,
            source.team_id,
            source.customer_id,
            instance_id=self.instance_id,
            charge=source.charge if source.charge is not None else row.charge,  # not done: the row was not written
        )
        moved.record.id = fresh
        self._queue[(row.key_id, fresh)] = moved
        if moved.record.status is not RequestStatus.PENDING:
            self._final.set()
        self._idle.clear()
        self._wake.set()

    def _tokens(self, batch: list[GatewayRow]) -> dict[tuple[str, str | None], int]:
        """Tokens-per-minute limits count a request once it is finished (of keys and teams that have one)."""
        totals: dict[tuple[str, str | None], int] = {}
        limited = None if self.rate_limited is None else self.rate_limited()
        for row in batch:
            record = row.record
            if record.status is RequestStatus.PENDING:
                continue
            if limited is not None and row.key_id not in limited and row.team_id not in limited:
                continue
            tokens = record.usage.total_input_tokens + record.usage.output_tokens
            if tokens:
                owner = (row.key_id, row.team_id)
                totals[owner] = totals.get(owner, 0) + tokens
        return totals

    async def flush(self, wait_s: float = 10.0) -> bool:
        """Wait until every queued row is written (True), or `wait_s` seconds (False)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), wait_s)
        return not self._queue

    async def close(self, wait_s: float = 10.0) -> None:
        if not await self.flush(wait_s):
            log.error("%d request row(s) could not be written before shutdown", len(self._queue))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class KeyLedger:
    """The `LedgerSink` for one key's requests: every row is attributed to that key, its team and customer."""

    __slots__ = ("ledger", "owner")

    def __init__(self, ledger: GatewayLedger, owner: Owner) -> None:
        self.ledger = ledger
        self.owner = owner

    def write_pending(self, record: RequestRecord) -> None:
        self.ledger.enqueue(self.owner, record)

    def write_progress(self, record: RequestRecord) -> None:
        self.ledger.enqueue(self.owner, record)

    def write_final(self, record: RequestRecord) -> None:
        self.ledger.enqueue(self.owner, record)
