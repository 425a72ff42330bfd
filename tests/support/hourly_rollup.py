"""TEMPORARY (gw-ui branch only): fills `request_hourly` from `requests`, standing in for the gw-rollup branch,
which keeps the roll-up current at every row write. The lead drops this at the merge."""

from __future__ import annotations

from ccgate.storage.gateway import Database

_SUMS = """
    count(*), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), coalesce(sum(cache_read_tokens), 0),
    coalesce(sum(cache_write_5m_tokens + cache_write_1h_tokens), 0), coalesce(sum(cost_nanos), 0),
    coalesce(sum(CASE WHEN cost_nanos IS NULL THEN 1 ELSE 0 END), 0),
    coalesce(sum(CASE WHEN cost_nanos IS NOT NULL AND price_quality = 'estimated' THEN 1 ELSE 0 END), 0),
    coalesce(sum(CASE WHEN coalesce(origin, 'gateway') NOT IN ('sidecar', 'gateway') THEN 1 ELSE 0 END), 0)
"""
_DIMENSIONS = (
    "substr(started_at, 1, 13), key_id, coalesce(team_id, ''), coalesce(customer_id, ''), coalesce(project, ''), "
    "coalesce(requested_model, ''), coalesce(provider, '')"
)

_INSERT = (
    "INSERT INTO request_hourly (hour, key_id, team_id, customer_id, project, model, provider, requests, "  # noqa: S608
    "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_nanos, unpriced_requests, "
    "estimated_requests, imported_requests) "
    f"SELECT {_DIMENSIONS}, {_SUMS} FROM requests GROUP BY {_DIMENSIONS}"
)


async def refresh_hourly_for_tests(db: Database) -> None:
    """Rebuild the whole roll-up from every raw row (what `gateway report` sums too)."""
    async with db.transaction() as conn:
        await conn.execute("DELETE FROM request_hourly")
        await conn.execute(_INSERT)
