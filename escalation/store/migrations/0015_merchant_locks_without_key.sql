-- 0015: OpenSession (and, in store/sql/directory.sql, every directory change) lock their merchant row
-- FOR NO KEY UPDATE instead of FOR UPDATE. Found by a review: a deadline worker's batch inserts tickets
-- (each takes a foreign-key KEY SHARE lock on its merchant row, in close order) and then appends events
-- (NO KEY UPDATE of the merchant rows, in merchant order); an OpenSession's FOR UPDATE, which conflicts
-- with KEY SHARE, queued behind one worker's ticket and ahead of the other worker's event append, and
-- the three deadlocked (tests/integration/test_writers_and_workers_deadlock_free.py). NO KEY UPDATE
-- conflicts with itself (one pick at a time per shop, SPEC R2) but not with KEY SHARE, so no cycle
-- remains; locking the batch's merchants up front instead cost the deadline workers 5x their throughput
-- (make bench --only deadlines). Lock order everywhere: session rows, merchant rows by merchant id,
-- agent rows (docs/performance.md). The function is that of 0012 with this change only.

CREATE OR REPLACE FUNCTION open_session(
    p_platform_agent_id text, p_request_id text, p_request_hash bytea, p_merchant_id text, p_category text,
    p_order_id text, p_kinds text[], p_contents bytea[], p_rule_version text, p_presence_window float8,
    p_reply_timeout_override float8, p_remind_before float8, p_max_messages bigint, p_max_content_bytes bigint,
    p_idle_timeout_override float8 DEFAULT NULL,
    OUT replayed boolean, OUT opened_session sessions, OUT session_pb bytea, OUT opened_messages messages[],
    OUT message_pbs bytea[], OUT saturation float8, OUT reply_timeout_seconds float8
)
LANGUAGE plpgsql
-- Generic plans: a custom plan would inline and fold the encoders again on every call.
SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    merchant record;
    merchant_found boolean;
    prior record;
    c record;
    best record;
    have_best boolean := false;
    candidates bytea := '\x'::bytea;
    candidate bytea;
    decision bytea;
    events bytea[];
    one_pb bytea;
    new_id uuid := gen_random_uuid();
    msg messages;
    i int;
BEGIN
    SELECT m.disabled, rs.reply_timeout_seconds INTO merchant
    FROM merchants m JOIN reception_settings rs ON rs.merchant_id = m.merchant_id
    WHERE m.merchant_id = p_merchant_id
    -- NO KEY UPDATE (0015): still one open at a time per shop (it conflicts with itself), but not with
    -- the KEY SHARE a ticket or session insert takes on its merchant row (foreign key).
    FOR NO KEY UPDATE OF m;
    merchant_found := FOUND;

    SELECT s.session_id, s.request_hash INTO prior FROM sessions s
    WHERE s.platform_agent_id = p_platform_agent_id AND s.request_id = p_request_id;
    IF NOT FOUND THEN
        IF NOT merchant_found THEN
            PERFORM raise_refusal('MERCHANT_NOT_FOUND');
        END IF;
        IF merchant.disabled THEN
            PERFORM raise_refusal('MERCHANT_DISABLED');
        END IF;
        reply_timeout_seconds := coalesce(p_reply_timeout_override, merchant.reply_timeout_seconds);

        -- R2: every eligible candidate, in agent id order (the order the decision lists them in).
        FOR c IN
            SELECT e.agent_id, e.open_sessions, e.capacity, e.last_assign_time,
                   EXISTS (SELECT 1 FROM agent_presence p
                           WHERE p.merchant_id = e.merchant_id AND p.agent_id = e.agent_id
                             AND p.seen_time > clock_timestamp() - make_interval(secs => p_presence_window))
                       AS connected
            FROM agent_eligibility e
            WHERE e.merchant_id = p_merchant_id AND e.eligible
            ORDER BY e.agent_id COLLATE "C"
        LOOP
            -- escalation.v1.AssignmentCandidate
            candidate := pb_string_field(1, c.agent_id) || pb_uint_field(2, c.open_sessions)
                || pb_uint_field(3, c.capacity) || pb_double_field(4, c.open_sessions::float8 / c.capacity)
                || pb_timestamp_field(5, c.last_assign_time);
            candidates := candidates || pb_len_field(4, candidate);
            IF NOT have_best THEN
                best := c;
                have_best := true;
            ELSIF assignment_precedes(
                c.open_sessions, c.capacity, c.last_assign_time, c.agent_id,
                best.open_sessions, best.capacity, best.last_assign_time, best.agent_id) THEN
                best := c;
            END IF;
        END LOOP;
        IF NOT have_best THEN
            PERFORM raise_refusal('NO_ELIGIBLE_AGENT');
        END IF;
        -- escalation.v1.AssignmentDecision: stored for audit; agent_connected is recorded, never used
        -- to choose (R1: online status is not considered).
        decision := pb_string_field(1, p_rule_version) || pb_string_field(2, best.agent_id)
            || pb_uint_field(3, best.connected::int) || candidates || pb_timestamp_field(5, clock_timestamp());

        INSERT INTO sessions (session_id, merchant_id, assigned_agent_id, platform_agent_id, order_id, category,
                              request_id, request_hash, assignment, open_time)
        VALUES (new_id, p_merchant_id, best.agent_id, p_platform_agent_id, p_order_id, p_category,
                p_request_id, p_request_hash, decision, clock_timestamp())
        ON CONFLICT (platform_agent_id, request_id) DO NOTHING;
        IF FOUND THEN
            UPDATE agents a SET open_sessions = a.open_sessions + 1, last_assign_time = clock_timestamp()
            WHERE a.merchant_id = p_merchant_id AND a.agent_id = best.agent_id;
            opened_messages := '{}';
            message_pbs := '{}';
            events := '{}';
            FOR i IN 1 .. coalesce(cardinality(p_contents), 0) LOOP
                msg := append_message_locked(
                    new_id, 'PLATFORM', p_platform_agent_id, p_kinds[i], NULL, NULL, p_contents[i],
                    reply_timeout_seconds, p_remind_before, p_max_messages, p_max_content_bytes, p_idle_timeout_override);
                one_pb := message_pb(msg);
                opened_messages := opened_messages || msg;
                message_pbs := message_pbs || one_pb;
                one_pb := pb_len_field(1, one_pb);  -- MessageAdded{message}
                events := events || merchant_event_pb(new_id, 11, one_pb);
            END LOOP;
            replayed := false;
            SELECT s.* INTO opened_session FROM sessions s WHERE s.session_id = new_id;
            session_pb := session_pb(opened_session, NULL);
            saturation := best.open_sessions::float8 / best.capacity;
            one_pb := pb_len_field(1, session_pb);  -- SessionAssigned{session}
            PERFORM append_merchant_events(
                p_merchant_id,
                ARRAY['session_assigned'] || array_fill('message_added'::text, ARRAY[cardinality(message_pbs)]),
                array_fill(new_id, ARRAY[cardinality(message_pbs) + 1]),
                array_fill(best.agent_id, ARRAY[cardinality(message_pbs) + 1]),
                merchant_event_pb(new_id, 10, one_pb) || events);
            RETURN;
        END IF;
        -- A twin with this request id committed meanwhile (for another merchant): replay it.
        SELECT s.session_id, s.request_hash INTO prior FROM sessions s
        WHERE s.platform_agent_id = p_platform_agent_id AND s.request_id = p_request_id;
    END IF;

    -- AIP-155 replay: the same request id returns the session as it is now, with its opening messages.
    IF prior.request_hash <> p_request_hash THEN
        PERFORM raise_refusal('REQUEST_ID_REUSED');
    END IF;
    replayed := true;
    SELECT s.* INTO opened_session FROM sessions s WHERE s.session_id = prior.session_id;
    session_pb := session_pb(opened_session, (SELECT t.ticket_id FROM tickets t WHERE t.session_id = prior.session_id));
    -- seq is gapless from 1: the opening messages are the first cardinality(p_contents).
    SELECT coalesce(array_agg(m ORDER BY m.seq), '{}'), coalesce(array_agg(message_pb(m) ORDER BY m.seq), '{}')
    INTO opened_messages, message_pbs
    FROM messages m
    WHERE m.session_id = prior.session_id AND m.seq <= coalesce(cardinality(p_contents), 0);
END $$;
