-- Per UTC hour sums of finished rows (status != 'pending'), kept current in the transaction that makes a row
-- final, so reports and the dashboard read hours instead of scanning raw rows. `hour` is
-- substr(started_at, 1, 13), e.g. '2026-12-07T16'; '' stands for none; `model` is the requested model, as in
-- request_rollups. request_rollups stays as it was (the previous release, running beside this one, reads it).
-- The previous release does not write this table: after it stops, `ccgate gateway rollups rebuild` squares it.
CREATE TABLE request_hourly (
    hour TEXT NOT NULL,
    key_id TEXT NOT NULL,
    team_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    project TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    requests BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    cost_nanos BIGINT NOT NULL,
    unpriced_requests BIGINT NOT NULL,
    estimated_requests BIGINT NOT NULL,
    imported_requests BIGINT NOT NULL,
    PRIMARY KEY (hour, key_id, team_id, customer_id, project, model, provider)
);

-- Backfill: the finished raw rows by hour, plus the days whose raw rows were already pruned (kept only as
-- per-day sums: they land on the day's first hour). A raw row never sits in both: pruning deletes what it rolls
-- up, so a raw row of a pruned day arrived later.
INSERT INTO request_hourly (hour, key_id, team_id, customer_id, project, model, provider, requests, input_tokens,
    output_tokens, cache_read_tokens, cache_write_tokens, cost_nanos, unpriced_requests, estimated_requests,
    imported_requests)
SELECT hour, key_id, team_id, customer_id, project, model, provider, sum(requests), sum(input_tokens),
    sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens), sum(cost_nanos), sum(unpriced_requests),
    sum(estimated_requests), sum(imported_requests)
FROM (
    SELECT substr(started_at, 1, 13) AS hour, key_id, coalesce(team_id, '') AS team_id,
        coalesce(customer_id, '') AS customer_id, coalesce(project, '') AS project,
        coalesce(requested_model, '') AS model, coalesce(provider, '') AS provider, 1 AS requests,
        input_tokens, output_tokens, cache_read_tokens, cache_write_5m_tokens + cache_write_1h_tokens
        AS cache_write_tokens, coalesce(cost_nanos, 0) AS cost_nanos,
        CASE WHEN cost_nanos IS NULL THEN 1 ELSE 0 END AS unpriced_requests,
        CASE WHEN cost_nanos IS NOT NULL AND price_quality = 'estimated' THEN 1 ELSE 0 END AS estimated_requests,
        CASE WHEN coalesce(origin, 'gateway') NOT IN ('sidecar', 'gateway') THEN 1 ELSE 0 END AS imported_requests
    FROM requests WHERE status != 'pending'
    UNION ALL
    SELECT day || 'T00', key_id, team_id, customer_id, project, model, provider, requests, input_tokens,
        output_tokens, cache_read_tokens, cache_write_tokens, cost_nanos, unpriced_requests, estimated_requests,
        imported_requests
    FROM request_rollups
) AS finished
GROUP BY hour, key_id, team_id, customer_id, project, model, provider;
