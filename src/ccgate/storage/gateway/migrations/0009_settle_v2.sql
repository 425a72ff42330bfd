-- ccgate: postgresql only
-- ccgate_settle_v2: ccgate_settle_v1 (as 0008 left it) without locking the reservation's budget rows, so a
-- settle no longer queues behind the admissions of its team and customer, nor they behind it: with both taking
-- those rows, every request of a team held them twice, and at c=32 an admission waited ~75 ms for them.
-- Why the lock is not needed: an admission reads spent and reserved in ONE statement (one snapshot), and a settle
-- commits "reservation gone, spend added" at once, so an admission counts a settling request either by its
-- reservation or by its spend, never by neither. Admissions still lock the budget rows among themselves (two of
-- them must not both take the last room). The spend rows a settle adds to are taken in the budgets' fixed order,
-- so two settles never wait on each other in a cycle; a settle takes no budget row, so it cannot wait in a cycle
-- with an admission or an admin change (both take budget rows first). Only adds a function: the previous
-- release keeps calling ccgate_settle_v1, which still locks, and the two mix safely.
CREATE FUNCTION ccgate_settle_v2(
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
    DELETE FROM reservations WHERE id = p_reservation;
    GET DIAGNOSTICS v_changed = ROW_COUNT;
    IF v_owed > 0 THEN
        INSERT INTO budget_spend (budget_id, bucket_start, spent_nanos)
        SELECT bb.id, w.bucket, v_owed
        FROM unnest(p_ids, p_buckets) AS w(id, bucket) JOIN budgets bb ON bb.id = w.id
        ORDER BY bb.lock_rank, bb.id
        ON CONFLICT (budget_id, bucket_start) DO UPDATE SET spent_nanos = budget_spend.spent_nanos + excluded.spent_nanos;
    END IF;
    RETURN v_changed > 0;
END
$$;
