-- Names that people would take for one (`Core` and `core`, `ｃｏｒｅ`, a decomposed `é`) were refused only by the
-- admin layer, which reads the existing names and then inserts: two creates at the same moment both passed. Each
-- named table gets `name_folded` (ccgate.core.names.fold_name of the name, computed by the gateway: NFKC and case
-- folding cannot be written in SQL both backends run) under a unique index, so the database refuses the second.
--
-- Beside the previous release: it inserts rows without this column, so the column is nullable with no default,
-- and NULL means "not folded yet": both backends treat NULLs as distinct in a unique index, so the old release's
-- inserts never fail here. Such rows (and every row that exists now) are folded by this release when it starts
-- (`GatewayStore.fill_folded_names`, which leaves NULL a row whose folded name another row already holds: names
-- from before the admin check existed). Until then the admin layer's own check still sees them by name.
-- Keys: only live keys hold a name (as `virtual_keys_live_name`), so a revoked key's name can be given again.
ALTER TABLE customers ADD COLUMN name_folded TEXT;
ALTER TABLE teams ADD COLUMN name_folded TEXT;
ALTER TABLE virtual_keys ADD COLUMN name_folded TEXT;
ALTER TABLE admin_tokens ADD COLUMN name_folded TEXT;
ALTER TABLE provider_configs ADD COLUMN name_folded TEXT;
CREATE UNIQUE INDEX customers_name_folded ON customers (name_folded);
CREATE UNIQUE INDEX teams_name_folded ON teams (name_folded);
CREATE UNIQUE INDEX virtual_keys_live_name_folded ON virtual_keys (name_folded) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX admin_tokens_name_folded ON admin_tokens (name_folded);
CREATE UNIQUE INDEX provider_configs_name_folded ON provider_configs (name_folded);

-- ccgate: postgresql only
-- ccgate_settle_v1 as in 0006, with one change: the first UPDATE marks the request's row only when it is this
-- instance's (`instance_id = p_instance`). Another instance's pending row of the same id is another request in
-- flight: this request's cost goes into the budgets in full and that row's charged_nanos is left for its own
-- settle (before, it took this request's cost, and its own settle then found it charged). Same signature, so the
-- previous release, calling it beside this one, gets the fix too.
CREATE OR REPLACE FUNCTION ccgate_settle_v1(
    p_key TEXT, p_row TEXT, p_nanos BIGINT, p_instance TEXT, p_now TEXT, p_reservation TEXT,
    p_ids TEXT[], p_buckets TEXT[]
) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_owed BIGINT := p_nanos;
    v_changed INTEGER;
    v_source TEXT;
    v_charged BIGINT;
    v_charged_by TEXT;
    v_instance TEXT;
BEGIN
    IF p_row IS NOT NULL AND p_nanos > 0 THEN
        UPDATE requests SET charged_nanos = p_nanos, charged_by = 'settle'
        WHERE key_id = p_key AND id = p_row AND status = 'pending' AND charged_nanos IS NULL
          AND instance_id = p_instance;
        GET DIAGNOSTICS v_changed = ROW_COUNT;
        IF v_changed = 0 THEN
            SELECT source, charged_nanos, charged_by, instance_id INTO v_source, v_charged, v_charged_by, v_instance
            FROM requests WHERE key_id = p_key AND id = p_row FOR UPDATE;
            IF NOT FOUND THEN
                INSERT INTO requests (key_id, id, source, status, started_at, received_at, instance_id,
                                      charged_nanos, charged_by)
                VALUES (p_key, p_row, 'proxied', 'pending', p_now, p_now, p_instance, p_nanos, 'settle')
                ON CONFLICT (key_id, id) DO NOTHING;
            ELSIF (v_source = 'ingested' AND v_charged_by = 'ingest')
                OR (v_charged_by = 'recovery' AND v_instance = p_instance) THEN
                UPDATE requests SET charged_nanos = GREATEST(COALESCE(v_charged, 0), p_nanos), charged_by = 'settle'
                WHERE key_id = p_key AND id = p_row;
                v_owed := GREATEST(0, p_nanos - COALESCE(v_charged, 0));
            END IF;
        END IF;
    END IF;
    PERFORM 1 FROM budgets bb WHERE bb.id = ANY (p_ids) ORDER BY bb.lock_rank, bb.id FOR UPDATE;
    DELETE FROM reservations WHERE id = p_reservation;
    GET DIAGNOSTICS v_changed = ROW_COUNT;
    IF v_owed > 0 THEN
        INSERT INTO budget_spend (budget_id, bucket_start, spent_nanos)
        SELECT bb.id, w.bucket, v_owed
        FROM unnest(p_ids, p_buckets) AS w(id, bucket) JOIN budgets bb ON bb.id = w.id
        ON CONFLICT (budget_id, bucket_start) DO UPDATE SET spent_nanos = budget_spend.spent_nanos + excluded.spent_nanos;
    END IF;
    RETURN v_changed > 0;
END
$$;
