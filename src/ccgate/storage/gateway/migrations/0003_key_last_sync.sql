-- When the gateway last took a usage batch (`POST /v1/usage`) from each key: `/v1/me`, `whoami`, the admin's
-- `key list` and `gateway report --by key` show it. Nullable: a key that never synced, and the previous release
-- (which does not know the column) keeps running beside this one.
ALTER TABLE virtual_keys ADD COLUMN last_sync_at TEXT;
