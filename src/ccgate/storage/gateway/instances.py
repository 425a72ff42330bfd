"""Which gateway instances are alive: a heartbeat held as a reservation row of no amount and no budget.

An instance's budget holds and its heartbeat are renewed by the same `renew` call, so they lapse together
when the instance dies (kill -9, a lost machine). The pending rows of an instance without a live heartbeat
can then be marked `interrupted` by any other instance, with the usage they had recorded so far.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ccgate.core.records import from_iso, new_request_id, to_iso
from ccgate.storage.gateway.admission import _APPLYING, charge, load_budgets
from ccgate.storage.gateway.db import Database, Row
from ccgate.storage.gateway.ledger import add_hourly, hourly_contribution


async def beat(db: Database, instance_id: str, ttl: timedelta, now: datetime) -> None:
    """Renew this instance's reservations and heartbeat; recreate the heartbeat if it had lapsed (a long stall)."""
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE reservations SET expires_at = ? WHERE instance_id = ? AND expires_at > ?",
            (to_iso(now + ttl), instance_id, to_iso(now)),
        )
        row = await conn.fetchone(
            "SELECT 1 FROM reservations r WHERE r.instance_id = ? AND r.expires_at > ? AND NOT EXISTS "
            "(SELECT 1 FROM reservation_budgets rb WHERE rb.reservation_id = r.id)",
            (instance_id, to_iso(now)),
        )
        if row is None:
            await conn.execute(
                "INSERT INTO reservations (id, amount_nanos, instance_id, created_at, expires_at) "
                "VALUES (?, 0, ?, ?, ?)",
                (new_request_id(), instance_id, to_iso(now), to_iso(now + ttl)),
            )


async def stop(db: Database, instance_id: str) -> None:
    """A clean shutdown: this instance's holds and heartbeat go at once rather than at their expiry."""
    await db.execute("DELETE FROM reservations WHERE instance_id = ?", (instance_id,))


async def recover_dead(db: Database, now: datetime) -> int:
    """Mark `interrupted` the pending rows of instances whose heartbeat lapsed, and charge what they cost so far
    (the provider bills a cut stream) to the budgets they would have settled on; returns how many rows."""
    lock = " FOR UPDATE OF r" if db.backend == "postgresql" else ""
    async with db.transaction() as conn:
        rows = await conn.fetch(
            "SELECT r.key_id, r.id, r.team_id, r.customer_id, r.cost_nanos, r.started_at, p.id, r.charged_nanos "
            "FROM requests r "
            "LEFT JOIN provider_configs p ON p.name = r.provider "
            "WHERE r.status = 'pending' AND r.instance_id IS NOT NULL AND r.instance_id NOT IN "
            f"(SELECT instance_id FROM reservations WHERE expires_at > ?) ORDER BY r.key_id, r.id{lock}",
            (to_iso(now),),
        )
        finished: list[Row] = []
        for key_id, row_id, team_id, customer_id, cost, started_at, provider_id, charged in rows:
            # only what is not in the budgets yet (its instance may have settled before it lost the database);
            # the mark lets that instance, if it comes back, settle just the rest (`admission.claim_charge`)
            already = int(charged or 0)
            owed = max(0, int(cost or 0) - already)
            changed = await conn.fetch(
                "UPDATE requests SET status = 'interrupted', ended_at = coalesce(ended_at, ?), charged_nanos = ?, "
                "charged_by = 'recovery' WHERE key_id = ? AND id = ? AND status = 'pending' "
                f"RETURNING {hourly_contribution()}",
                (to_iso(now), already + owed, key_id, row_id),
            )
            finished.extend(changed)
            if changed and owed:
                budgets = await load_budgets(conn, _APPLYING, (customer_id, team_id, key_id, provider_id))
                await charge(conn, db, [budget.id for budget in budgets], owed, from_iso(str(started_at)))
        await add_hourly(conn, finished)  # last: the hourly rows are the last locks any transaction takes
    return len(rows)


async def holds_renewed_until(db: Database, budget_id: str, now: datetime, *, other_than: str) -> str:
    """The latest expiry among other instances' live holds on a budget: it moves whenever they renew them, so a
    request waiting on another instance's long stream sees that stream is alive."""
    row = await db.fetchone(
        "SELECT max(r.expires_at) FROM reservations r JOIN reservation_budgets rb ON rb.reservation_id = r.id "
        "WHERE rb.budget_id = ? AND r.expires_at > ? AND r.instance_id != ?",
        (budget_id, to_iso(now), other_than),
    )
    return "" if row is None or row[0] is None else str(row[0])
