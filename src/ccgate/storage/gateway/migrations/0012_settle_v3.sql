-- ccgate: postgresql only
-- ccgate_settle_v3: ccgate_settle_v2 (0009) with the spend added in two steps, as a ledger batch adds it: every
-- missing bucket row is made first, then each bucket is added to in the budgets' fixed order. v2 inserted a new
-- bucket's row (which takes its budget's row, key share, for the foreign key) while it held the spend row of a
-- budget before it; a recovery or a sync, which takes the budget rows and then the spend rows, closed a cycle with
-- it, and PostgreSQL failed one of the two after a second. Only adds a function: the previous release keeps
-- calling v2.
CREATE FUNCTION ccgate_settle_v3(
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
    v_id TEXT;
    v_bucket TEXT;
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
    DELETE FROM reservations WHERE id = p_reservation;
    GET DIAGNOSTICS v_changed = ROW_COUNT;
    IF v_owed > 0 THEN
        -- every missing bucket row first: inserting one takes its budget's row (key share, for the foreign key),
        -- and no spend row may be held meanwhile
        INSERT INTO budget_spend (budget_id, bucket_start, spent_nanos)
        SELECT bb.id, w.bucket, 0
        FROM unnest(p_ids, p_buckets) AS w(id, bucket) JOIN budgets bb ON bb.id = w.id
        ORDER BY bb.lock_rank, bb.id
        ON CONFLICT (budget_id, bucket_start) DO NOTHING;
        FOR v_id, v_bucket IN
            SELECT bb.id, w.bucket FROM unnest(p_ids, p_buckets) AS w(id, bucket) JOIN budgets bb ON bb.id = w.id
            ORDER BY bb.lock_rank, bb.id
        LOOP
            UPDATE budget_spend SET spent_nanos = spent_nanos + v_owed WHERE budget_id = v_id AND bucket_start = v_bucket;
        END LOOP;
    END IF;
    RETURN v_changed > 0;
END
$$;
