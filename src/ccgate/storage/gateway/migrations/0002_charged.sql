-- Charging is idempotent per request row: how much of the row's cost is already in the budgets, and who put it
-- there ('settle': the instance that served it; 'recovery': another instance, after the first one's heartbeat
-- lapsed; 'ingest': a sidecar's sync). Nullable columns only: the previous release, running beside this one,
-- neither reads nor writes them (its row upsert names its columns).
ALTER TABLE requests ADD COLUMN charged_nanos BIGINT;
ALTER TABLE requests ADD COLUMN charged_by TEXT;
