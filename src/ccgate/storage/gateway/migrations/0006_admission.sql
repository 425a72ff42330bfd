-- Admission and settle in one round trip on PostgreSQL: two functions doing what storage/gateway/admission.py
-- did in 4-6 statements (and as many round trips) per request. SQLite needs none (its whole transaction runs as
-- one job on the database thread), so both are PostgreSQL only. Functions, not one statement: in READ
-- COMMITTED each statement of a function gets a fresh snapshot, so what is read after the budget rows are
-- locked includes what the previous holder of those locks committed (one statement would read the snapshot
-- from before it waited, and admit past the limit). Only adds objects: the previous release ignores them.
-- The arithmetic mirrors ccgate.core.budgets.decide; tests/gateway/test_admission_one_trip.py checks both agree.

-- ccgate: postgresql only
-- Rate limits (optional), then the applying budgets locked in the fixed order (customer, team, key, provider,
-- then id). p_ids/p_updated are the caller's cached budget definitions in that order: if the database's differ
-- (a budget created, changed or deleted) nothing is reserved and one 'stale' row says so. p_first/p_last:
-- each budget's counted buckets (window start twice for a calendar budget), computed by the caller from the
-- budget's period, calendar flag and timezone, which never change. Rows returned: ('rate', id, level, rpm,
-- tpm, requests, tokens) per rate limit, ('budget', id, NULL, limit in force, spent, reserved) per budget,
-- then ('verdict', 'admitted' | 'not' | 'rate' | 'stale').
CREATE FUNCTION ccgate_reserve_v1(
    p_customer TEXT, p_team TEXT, p_key TEXT, p_provider TEXT,
    p_ids TEXT[], p_updated TEXT[], p_first TEXT[], p_last TEXT[],
    p_bound BIGINT, p_now TEXT, p_reservation TEXT, p_instance TEXT, p_expires TEXT,
    p_rate BOOLEAN, p_minute TEXT
) RETURNS TABLE (kind TEXT, item TEXT, note TEXT, a NUMERIC, b NUMERIC, c NUMERIC, d NUMERIC)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_row RECORD;
    v_limited BOOLEAN := FALSE;
    v_admit BOOLEAN := TRUE;
    v_ids TEXT[];
    v_updated TEXT[];
BEGIN
    IF p_rate THEN
        PERFORM 1 FROM rate_limits l
        WHERE (l.level = 'key' AND l.target_id = p_key) OR (l.level = 'team' AND l.target_id = p_team)
        ORDER BY l.level, l.id FOR UPDATE;
        FOR v_row IN
            SELECT l.id, l.level, l.rpm, l.tpm, COALESCE(rc.requests, 0) AS used_requests,
                   COALESCE(rc.tokens, 0) AS used_tokens
            FROM rate_limits l
            LEFT JOIN rate_counters rc ON rc.rate_limit_id = l.id AND rc.minute = p_minute
            WHERE (l.level = 'key' AND l.target_id = p_key) OR (l.level = 'team' AND l.target_id = p_team)
            ORDER BY l.level, l.id
        LOOP
            IF (v_row.rpm IS NOT NULL AND v_row.used_requests >= v_row.rpm)
                OR (v_row.tpm IS NOT NULL AND v_row.used_tokens >= v_row.tpm) THEN
                v_limited := TRUE;
            END IF;
            kind := 'rate'; item := v_row.id; note := v_row.level;
            a := v_row.rpm; b := v_row.tpm; c := v_row.used_requests; d := v_row.used_tokens;
            RETURN NEXT;
        END LOOP;
        IF v_limited THEN
            kind := 'verdict'; item := 'rate'; note := NULL; a := NULL; b := NULL; c := NULL; d := NULL;
            RETURN NEXT;
            RETURN;
        END IF;
        -- counter rows in the order add_tokens takes them (level, id), so the two never wait on each other in a cycle
        INSERT INTO rate_counters (rate_limit_id, minute, requests, tokens)
        SELECT l.id, p_minute, 1, 0 FROM rate_limits l
        WHERE (l.level = 'key' AND l.target_id = p_key) OR (l.level = 'team' AND l.target_id = p_team)
        ORDER BY l.level, l.id
        ON CONFLICT (rate_limit_id, minute) DO UPDATE SET requests = rate_counters.requests + 1;
    END IF;

    PERFORM 1 FROM budgets bb
    WHERE (bb.level = 'customer' AND bb.target_id = p_customer) OR (bb.level = 'team' AND bb.target_id = p_team)
       OR (bb.level = 'key' AND bb.target_id = p_key) OR (bb.level = 'provider' AND bb.target_id = p_provider)
    ORDER BY bb.lock_rank, bb.id FOR UPDATE;
    SELECT array_agg(bb.id ORDER BY bb.lock_rank, bb.id), array_agg(bb.updated_at ORDER BY bb.lock_rank, bb.id)
    INTO v_ids, v_updated
    FROM budgets bb
    WHERE (bb.level = 'customer' AND bb.target_id = p_customer) OR (bb.level = 'team' AND bb.target_id = p_team)
       OR (bb.level = 'key' AND bb.target_id = p_key) OR (bb.level = 'provider' AND bb.target_id = p_provider);
    IF COALESCE(v_ids, '{}') <> p_ids OR COALESCE(v_updated, '{}') <> p_updated THEN
        kind := 'verdict'; item := 'stale'; note := NULL; a := NULL; b := NULL; c := NULL; d := NULL;
        RETURN NEXT;
        RETURN;
    END IF;

    FOR v_row IN
        SELECT bb.id,
               CASE WHEN bb.override_limit_nanos IS NOT NULL AND bb.override_until IS NOT NULL
                         AND p_now < bb.override_until
                    THEN bb.override_limit_nanos ELSE bb.limit_nanos END::NUMERIC AS limit_now,
               COALESCE((SELECT sum(s.spent_nanos) FROM budget_spend s
                         WHERE s.budget_id = bb.id AND s.bucket_start >= w.first_bucket
                           AND s.bucket_start <= w.last_bucket), 0)::NUMERIC AS spent,
               COALESCE((SELECT sum(r.amount_nanos) FROM reservation_budgets rb
                         JOIN reservations r ON r.id = rb.reservation_id
                         WHERE rb.budget_id = bb.id AND r.expires_at > p_now), 0)::NUMERIC AS reserved
        FROM unnest(p_ids, p_first, p_last) WITH ORDINALITY AS w(id, first_bucket, last_bucket, position)
        JOIN budgets bb ON bb.id = w.id
        ORDER BY w.position
    LOOP
        -- ccgate.core.budgets.decide: spent reached the limit refuses; a bound that does not fit waits, unless
        -- nothing is reserved there (the lone request is let through while spent is below the limit)
        IF v_row.spent >= v_row.limit_now
            OR (v_row.reserved > 0 AND v_row.spent + v_row.reserved + p_bound > v_row.limit_now) THEN
            v_admit := FALSE;
        END IF;
        kind := 'budget'; item := v_row.id; note := NULL;
        a := v_row.limit_now; b := v_row.spent; c := v_row.reserved; d := NULL;
        RETURN NEXT;
    END LOOP;
    IF v_admit AND cardinality(p_ids) > 0 THEN
        INSERT INTO reservations (id, amount_nanos, instance_id, created_at, expires_at)
        VALUES (p_reservation, p_bound, p_instance, p_now, p_expires);
        INSERT INTO reservation_budgets (budget_id, reservation_id) SELECT unnest(p_ids), p_reservation;
    END IF;
    kind := 'verdict'; item := CASE WHEN v_admit THEN 'admitted' ELSE 'not' END;
    note := NULL; a := NULL; b := NULL; c := NULL; d := NULL;
    RETURN NEXT;
END
$$;

-- ccgate: postgresql only
-- Replace a reservation by the real cost: charge the request's row once (admission.claim_charge, same rules),
-- lock the reservation's budgets in the fixed order, delete the reservation, add what is owed to each budget
-- that still exists in the bucket the caller computed for it (p_buckets, beside p_ids). p_row NULL: no row to
-- mark. Returns whether the reservation was still there.
CREATE FUNCTION ccgate_settle_v1(
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
        WHERE key_id = p_key AND id = p_row AND status = 'pending' AND charged_nanos IS NULL;
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
