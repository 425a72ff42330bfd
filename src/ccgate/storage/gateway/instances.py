"""Which gateway instances are alive: a heartbeat held as a reservation row of no amount and no budget.

An instance's budget holds and its heartbeat are renewed by the same `renew` call, so they lapse together
when the instance dies (kill -9, a lost machine). The pending rows of an instance without a live heartbeat
can then be marked `interrupted` by any other instance, with the usage they had recorded so far.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ccgate.models import new_request_id, to_iso
from ccgate.storage.gateway.db import Database


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
    """Mark `interrupted` the pending rows of instances whose heartbeat lapsed; returns how many rows."""
    return await db.execute(
        "UPDATE requests SET status = 'interrupted', ended_at = coalesce(ended_at, ?) "
        "WHERE status = 'pending' AND instance_id IS NOT NULL AND instance_id NOT IN "
        "(SELECT instance_id FROM reservations WHERE expires_at > ?)",
        (to_iso(now), to_iso(now)),
    )
