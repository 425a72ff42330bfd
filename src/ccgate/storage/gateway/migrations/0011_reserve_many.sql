-- ccgate: postgresql only
-- ccgate_reserve_many_v1: ccgate_reserve_v1 for several admissions in one call and one transaction. An instance
-- that has admissions waiting while one call is in flight sends them together in the next: every admission of a
-- team otherwise takes the team's budget rows one at a time, each in its own transaction, and at c=32 that queue
-- was what bounded one PostgreSQL. Every row any of them needs is locked first, in the one global order
-- (rate limits by level and id, their counter rows by level, id and minute, then budgets by lock_rank and id:
-- the order ccgate_reserve_v1 and add_tokens take them in), so it waits in no cycle with another batch, a lone
-- admission, a token count or an admin change. Then each admission in turn is
-- ccgate_reserve_v1's arithmetic, seeing what the ones before it in the batch counted and held. A budget's spent
-- and reserved are read once per batch (the sum over its live reservations was most of the time per admission)
-- (per window) and then moved by what the batch holds (in every window read of each budget it holds on): exact, because no one else can add a reservation while the batch has
-- the budget's row, and a settle or release meanwhile only lowers what the batch reads (a settle moves its
-- hold into spent at once); reading them once is as conservative as reading them at the batch's start. Parameters are one array element per admission, except the budget definitions: p_ids,
-- p_updated, p_first, p_last are every admission's lists one after another, p_budget_ask says whose each is.
-- Rows returned are v1's, with the admission's position (1-based) first and whole numbers as BIGINT (NUMERIC
-- cost the client a Decimal per value). Only adds a function: the previous release keeps calling v1.
CREATE FUNCTION ccgate_reserve_many_v1(
    p_customer TEXT[], p_team TEXT[], p_key TEXT[], p_provider TEXT[],
    p_budget_ask INTEGER[], p_ids TEXT[], p_updated TEXT[], p_first TEXT[], p_last TEXT[],
    p_bound BIGINT[], p_now TEXT[], p_reservation TEXT[], p_instance TEXT[], p_expires TEXT[],
    p_rate BOOLEAN[], p_minute TEXT[]
) RETURNS TABLE (ask INTEGER, kind TEXT, item TEXT, note TEXT, a BIGINT, b BIGINT, c BIGINT, d BIGINT)
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    v_row RECORD;
    v_i INTEGER;
    v_limited BOOLEAN;
    v_admit BOOLEAN;
    v_ids TEXT[];
    v_updated TEXT[];
    v_want_ids TEXT[];
    v_want_updated TEXT[];
    v_first TEXT[];
    v_last TEXT[];
    -- each budget's state the first time an admission of the batch needs it (per window), kept up to date with
    -- what the batch holds: v_seen 'id first last', and beside it the limit, override, spent and reserved
    v_seen TEXT[] := '{}';
    v_limit_of NUMERIC[] := '{}';
    v_override_of NUMERIC[] := '{}';
    v_until_of TEXT[] := '{}';
    v_spent_of NUMERIC[] := '{}';
    v_reserved_of NUMERIC[] := '{}';
    v_j INTEGER;
    v_p INTEGER;
    v_limit NUMERIC;
BEGIN
    PERFORM 1 FROM rate_limits l
    WHERE EXISTS (
        SELECT 1 FROM unnest(p_key, p_team, p_rate) AS w(k, t, r)
        WHERE w.r AND ((l.level = 'key' AND l.target_id = w.k) OR (l.level = 'team' AND l.target_id = w.t)))
    ORDER BY l.level, l.id FOR UPDATE;
    -- every counter row the batch may move, taken now in (level, id) order: the order add_tokens (which locks
    -- no rate_limits row) takes a key's and then its team's, so the two never wait on each other in a cycle
    -- (taken admission by admission, one key's, the team's, then another key's, they could). A lone admission
    -- takes its key's and then its team's in that order anyway: it skips this statement.
    IF cardinality(p_key) > 1 THEN
        INSERT INTO rate_counters (rate_limit_id, minute, requests, tokens)
        SELECT l.id, w.m, 0, 0 FROM rate_limits l
        JOIN (SELECT DISTINCT k, t, m FROM unnest(p_key, p_team, p_rate, p_minute) AS u(k, t, r, m) WHERE u.r) AS w
            ON (l.level = 'key' AND l.target_id = w.k) OR (l.level = 'team' AND l.target_id = w.t)
        GROUP BY l.level, l.id, w.m
        ORDER BY l.level, l.id, w.m
        ON CONFLICT (rate_limit_id, minute) DO UPDATE SET requests = rate_counters.requests;
    END IF;
    PERFORM 1 FROM budgets bb
    WHERE EXISTS (
        SELECT 1 FROM unnest(p_customer, p_team, p_key, p_provider) AS w(cu, t, k, p)
        WHERE (bb.level = 'customer' AND bb.target_id = w.cu) OR (bb.level = 'team' AND bb.target_id = w.t)
           OR (bb.level = 'key' AND bb.target_id = w.k) OR (bb.level = 'provider' AND bb.target_id = w.p))
    ORDER BY bb.lock_rank, bb.id FOR UPDATE;

    FOR v_i IN 1 .. cardinality(p_key) LOOP
        ask := v_i;
        v_limited := FALSE;
        IF p_rate[v_i] THEN
            FOR v_row IN
                SELECT l.id, l.level, l.rpm, l.tpm, COALESCE(rc.requests, 0) AS used_requests,
                       COALESCE(rc.tokens, 0) AS used_tokens
                FROM rate_limits l
                LEFT JOIN rate_counters rc ON rc.rate_limit_id = l.id AND rc.minute = p_minute[v_i]
                WHERE (l.level = 'key' AND l.target_id = p_key[v_i]) OR (l.level = 'team' AND l.target_id = p_team[v_i])
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
                CONTINUE;
            END IF;
            INSERT INTO rate_counters (rate_limit_id, minute, requests, tokens)
            SELECT l.id, p_minute[v_i], 1, 0 FROM rate_limits l
            WHERE (l.level = 'key' AND l.target_id = p_key[v_i]) OR (l.level = 'team' AND l.target_id = p_team[v_i])
            ORDER BY l.level, l.id
            ON CONFLICT (rate_limit_id, minute) DO UPDATE SET requests = rate_counters.requests + 1;
        END IF;

        SELECT array_agg(bb.id ORDER BY bb.lock_rank, bb.id), array_agg(bb.updated_at ORDER BY bb.lock_rank, bb.id)
        INTO v_ids, v_updated
        FROM budgets bb
        WHERE (bb.level = 'customer' AND bb.target_id = p_customer[v_i])
           OR (bb.level = 'team' AND bb.target_id = p_team[v_i])
           OR (bb.level = 'key' AND bb.target_id = p_key[v_i])
           OR (bb.level = 'provider' AND bb.target_id = p_provider[v_i]);
        SELECT COALESCE(array_agg(w.id ORDER BY w.n), '{}'), COALESCE(array_agg(w.updated ORDER BY w.n), '{}'),
               COALESCE(array_agg(w.first_bucket ORDER BY w.n), '{}'),
               COALESCE(array_agg(w.last_bucket ORDER BY w.n), '{}')
        INTO v_want_ids, v_want_updated, v_first, v_last
        FROM unnest(p_budget_ask, p_ids, p_updated, p_first, p_last) WITH ORDINALITY
            AS w(whose, id, updated, first_bucket, last_bucket, n)
        WHERE w.whose = v_i;
        IF COALESCE(v_ids, '{}') <> v_want_ids OR COALESCE(v_updated, '{}') <> v_want_updated THEN
            kind := 'verdict'; item := 'stale'; note := NULL; a := NULL; b := NULL; c := NULL; d := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;

        v_admit := TRUE;
        FOR v_j IN 1 .. cardinality(v_want_ids) LOOP
            v_p := array_position(v_seen, v_want_ids[v_j] || ' ' || v_first[v_j] || ' ' || v_last[v_j]);
            IF v_p IS NULL THEN
                SELECT bb.limit_nanos::NUMERIC AS limit_nanos, bb.override_limit_nanos::NUMERIC AS override_nanos,
                       bb.override_until,
                       COALESCE((SELECT sum(s.spent_nanos) FROM budget_spend s
                                 WHERE s.budget_id = bb.id AND s.bucket_start >= v_first[v_j]
                                   AND s.bucket_start <= v_last[v_j]), 0)::NUMERIC AS spent,
                       COALESCE((SELECT sum(r.amount_nanos) FROM reservation_budgets rb
                                 JOIN reservations r ON r.id = rb.reservation_id
                                 WHERE rb.budget_id = bb.id AND r.expires_at > p_now[v_i]), 0)::NUMERIC AS reserved
                INTO v_row FROM budgets bb WHERE bb.id = v_want_ids[v_j];
                v_seen := v_seen || (v_want_ids[v_j] || ' ' || v_first[v_j] || ' ' || v_last[v_j]);
                v_limit_of := v_limit_of || v_row.limit_nanos;
                v_override_of := v_override_of || v_row.override_nanos;
                v_until_of := v_until_of || v_row.override_until;
                v_spent_of := v_spent_of || v_row.spent;
                v_reserved_of := v_reserved_of || v_row.reserved;
                v_p := cardinality(v_seen);
            END IF;
            v_limit := CASE WHEN v_override_of[v_p] IS NOT NULL AND v_until_of[v_p] IS NOT NULL
                                 AND p_now[v_i] < v_until_of[v_p]
                            THEN v_override_of[v_p] ELSE v_limit_of[v_p] END;
            -- ccgate.core.budgets.decide, as in ccgate_reserve_v1
            IF v_spent_of[v_p] >= v_limit
                OR (v_reserved_of[v_p] > 0 AND v_spent_of[v_p] + v_reserved_of[v_p] + p_bound[v_i] > v_limit) THEN
                v_admit := FALSE;
            END IF;
            kind := 'budget'; item := v_want_ids[v_j]; note := NULL;
            -- decided on NUMERIC above; a sum past BIGINT (never in practice) is reported capped
            a := LEAST(v_limit, 9223372036854775807); b := LEAST(v_spent_of[v_p], 9223372036854775807);
            c := LEAST(v_reserved_of[v_p], 9223372036854775807); d := NULL;
            RETURN NEXT;
        END LOOP;
        IF v_admit AND cardinality(v_want_ids) > 0 THEN
            INSERT INTO reservations (id, amount_nanos, instance_id, created_at, expires_at)
            VALUES (p_reservation[v_i], p_bound[v_i], p_instance[v_i], p_now[v_i], p_expires[v_i]);
            INSERT INTO reservation_budgets (budget_id, reservation_id) SELECT unnest(v_want_ids), p_reservation[v_i];
            -- a hold counts in every window of its budgets the batch has read, not only in this admission's
            FOR v_p IN 1 .. cardinality(v_seen) LOOP
                IF split_part(v_seen[v_p], ' ', 1) = ANY (v_want_ids) THEN
                    v_reserved_of[v_p] := v_reserved_of[v_p] + p_bound[v_i];
                END IF;
            END LOOP;
        END IF;
        kind := 'verdict'; item := CASE WHEN v_admit THEN 'admitted' ELSE 'not' END;
        note := NULL; a := NULL; b := NULL; c := NULL; d := NULL;
        RETURN NEXT;
    END LOOP;
END
$$;
