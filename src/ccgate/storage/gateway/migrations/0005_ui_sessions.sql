-- The dashboard (/ui): server-side sessions and the indexes its request list pages with.
-- A session is found by the SHA-256 of its cookie (the cookie itself is never stored); it acts as the admin
-- token named `token_name` (the audit's actor) with that token's role and team at sign-in. New tables and
-- indexes only: the previous release, running beside this one, never reads them.
CREATE TABLE ui_sessions (
    id_hash TEXT PRIMARY KEY,
    token_name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'viewer', 'team_admin')),
    team_id TEXT,
    csrf_secret TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL
);
CREATE INDEX ui_sessions_expires ON ui_sessions (expires_at);
CREATE INDEX ui_sessions_token ON ui_sessions (token_name);

-- The requests page lists newest first, keyset-paginated on (started_at, id, key_id), under one filter at a time
-- (team has requests_team_started already; no filter uses requests_started_at).
CREATE INDEX requests_key_started ON requests (key_id, started_at);
CREATE INDEX requests_project_started ON requests (project, started_at);
CREATE INDEX requests_model_started ON requests (requested_model, started_at);
CREATE INDEX requests_status_started ON requests (status, started_at);
CREATE INDEX audit_log_actor_at ON audit_log (actor, at);

-- The overview reads spend per hour and team (or model) from the hourly roll-up: these covering indexes stream
-- those groups in hour order without touching the table (3-5x faster than the primary key on a big roll-up); a
-- team page filters the model one by team_id, also within the index.
CREATE INDEX request_hourly_team_cost ON request_hourly (hour, team_id, cost_nanos, requests, unpriced_requests);
CREATE INDEX request_hourly_model_cost ON request_hourly (hour, model, team_id, cost_nanos, requests, unpriced_requests);
