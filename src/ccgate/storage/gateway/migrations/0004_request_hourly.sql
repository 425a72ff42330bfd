-- TEMPORARY (gw-ui branch only): the hourly roll-up the gw-rollup branch creates and keeps current. The dashboard
-- reads it; its tests fill it with `refresh_hourly_for_tests`. The lead drops this file at the merge.
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
