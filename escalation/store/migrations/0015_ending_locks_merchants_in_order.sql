-- 0015: end_sessions_locked (0010, 0014) locks the batch's merchant rows in merchant order before it
-- writes anything, so two deadline workers and OpenSession never wait on each other in a cycle (found by
-- a review: tests/integration/test_writers_and_workers_deadlock_free.py). Lock order everywhere: session
-- rows (the caller's), merchant rows (by merchant id), agent rows (docs/performance.md).
-- The function is that of 0014 with this change only.

CREATE OR REPLACE FUNCTION end_sessions_locked(
    p_session_ids uuid[], p_reason text, p_makes_ticket boolean, p_sla_categories text[], p_sla_seconds float8[],
    p_digest_algorithm text, p_topic text, p_content_type text, p_traceparent text
) RETURNS TABLE (
    session_id uuid, merchant_id text, assigned_agent_id text, platform_agent_id text, order_id text,
    category text, open_time timestamptz, close_time timestamptz, ticket_id uuid, handle_by timestamptz,
    session_pb bytea
)
LANGUAGE plpgsql
-- Generic plans: a custom plan would inline and fold the encoders again on every call.
SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    s sessions;
    m messages;
    digest bytea;
    transcript bytea;
    new_ticket uuid;
    due timestamptz;
    payload bytea;
    entry bytea;
    category_number int;
    reason_number int := pb_close_reason(p_reason);
    per record;
BEGIN
    -- Merchant rows first, in one order, before anything else: the ticket inserts below take a
    -- foreign-key lock on their merchant row in close order, and the events' cursor update locks it
    -- again, so a batch of several merchants (the deadline worker's) took them out of order and
    -- deadlocked with OpenSession (FOR UPDATE of its merchant) and another worker's batch. NO KEY
    -- UPDATE: the key never changes, and it still queues behind (and ahead of) OpenSession's lock.
    PERFORM 1 FROM merchants mm
    WHERE mm.merchant_id IN (SELECT ss.merchant_id FROM sessions ss WHERE ss.session_id = ANY(p_session_ids))
    ORDER BY mm.merchant_id COLLATE "C"
    FOR NO KEY UPDATE;
    IF p_makes_ticket THEN
        FOR s IN SELECT * FROM sessions ss WHERE ss.session_id = ANY(p_session_ids)
                 ORDER BY ss.close_time, ss.session_id
        LOOP
            digest := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
            transcript := '\x'::bytea;
            FOR m IN SELECT * FROM messages mm WHERE mm.session_id = s.session_id ORDER BY mm.seq LOOP
                -- d_i = SHA-256(d_{i-1} || canonical(message_i)) (domain/tickets.py transcript_digest)
                digest := sha256(digest || transcript_part(m));
                entry := message_pb(m);
                transcript := transcript || pb_len_field(9, entry);
            END LOOP;
            new_ticket := gen_random_uuid();
            category_number := pb_category(s.category);
            due := s.close_time + make_interval(secs => p_sla_seconds[array_position(p_sla_categories, s.category)]);
            -- escalation.v1.ServiceTicket, fields in number order (services/tickets.py build()).
            payload := pb_string_field(1, new_ticket::text) || pb_string_field(2, s.session_id::text)
                || pb_string_field(3, s.merchant_id) || pb_string_field(4, s.assigned_agent_id)
                || pb_string_field(5, s.platform_agent_id) || pb_string_field(6, s.order_id)
                || pb_uint_field(7, category_number) || pb_uint_field(8, reason_number)
                || transcript
                || pb_timestamp_field(10, s.open_time) || pb_timestamp_field(11, s.close_time)
                || pb_timestamp_field(12, due) || pb_string_field(13, encode(digest, 'hex'))
                || pb_string_field(14, p_digest_algorithm) || pb_timestamp_field(15, s.close_time)
                -- SPEC R13: the assignment history, ServiceTicket field 16 (0013's encoder).
                || assignment_history_pb(s.session_id);
            INSERT INTO tickets (ticket_id, session_id, merchant_id, reason, category, handle_by, transcript_digest,
                                 payload, create_time)
            VALUES (new_ticket, s.session_id, s.merchant_id, p_reason, s.category, due, encode(digest, 'hex'),
                    payload, s.close_time);
            INSERT INTO outbox (topic, message_key, event_id, content_type, payload, traceparent)
            VALUES (p_topic, convert_to(s.merchant_id, 'UTF8'), new_ticket::text, p_content_type, payload,
                    p_traceparent);
        END LOOP;
    END IF;

    -- The events, one append per merchant in merchant id order (the lock order of store/events.py).
    FOR per IN
        SELECT e.merchant_id,
               array_agg(e.kind ORDER BY e.close_time, e.session_id, e.n) AS kinds,
               array_agg(e.session_id ORDER BY e.close_time, e.session_id, e.n) AS session_ids,
               array_agg(e.assigned_agent_id ORDER BY e.close_time, e.session_id, e.n) AS agent_ids,
               array_agg(e.payload ORDER BY e.close_time, e.session_id, e.n) AS payloads
        FROM (
            -- SessionClosed{session} (13), then TicketCreated{session_id, ticket_id, handle_by} (14).
            -- Each encoding is computed in a subquery of its own (OFFSET 0 keeps the planner from
            -- merging them), so that every helper gets a plain column and is inlined.
            SELECT b.merchant_id, b.session_id, b.assigned_agent_id, b.close_time, k.n, k.kind, k.payload
            FROM (
                SELECT a.*, pb_len_field(1, a.pb) AS closed_body,
                       pb_string_field(1, a.session_id::text) || pb_string_field(2, a.ticket_id::text)
                           || pb_timestamp_field(3, a.handle_by) AS created_body
                FROM (
                    SELECT ss.merchant_id, ss.session_id, ss.assigned_agent_id, ss.close_time, t.ticket_id,
                           t.handle_by, session_pb(ss, t.ticket_id) AS pb
                    FROM sessions ss LEFT JOIN tickets t ON t.session_id = ss.session_id
                    WHERE ss.session_id = ANY(p_session_ids)
                    OFFSET 0
                ) AS a
                OFFSET 0
            ) AS b
            CROSS JOIN LATERAL (VALUES
                (1, 'session_closed', merchant_event_pb(b.session_id, 13, b.closed_body)),
                (2, 'ticket_created', CASE WHEN b.ticket_id IS NOT NULL
                                           THEN merchant_event_pb(b.session_id, 14, b.created_body) END)
            ) AS k(n, kind, payload)
            WHERE k.payload IS NOT NULL
        ) AS e
        GROUP BY e.merchant_id
        ORDER BY e.merchant_id COLLATE "C"
    LOOP
        PERFORM append_merchant_events(per.merchant_id, per.kinds, per.session_ids, per.agent_ids, per.payloads);
    END LOOP;

    -- The agents' open counts. Several agents: lock them in one order first, so two batches never wait
    -- on each other.
    IF cardinality(p_session_ids) > 1 THEN
        PERFORM 1 FROM agents a
        WHERE (a.merchant_id, a.agent_id) IN (
            SELECT ss.merchant_id, ss.assigned_agent_id FROM sessions ss WHERE ss.session_id = ANY(p_session_ids))
        ORDER BY a.merchant_id, a.agent_id
        FOR UPDATE;
    END IF;
    UPDATE agents a SET open_sessions = a.open_sessions - d.n
    FROM (SELECT ss.merchant_id, ss.assigned_agent_id, count(*) AS n FROM sessions ss
          WHERE ss.session_id = ANY(p_session_ids) GROUP BY ss.merchant_id, ss.assigned_agent_id) AS d
    WHERE a.merchant_id = d.merchant_id AND a.agent_id = d.assigned_agent_id;

    RETURN QUERY
    SELECT ss.session_id, ss.merchant_id, ss.assigned_agent_id, ss.platform_agent_id, ss.order_id, ss.category,
           ss.open_time, ss.close_time, t.ticket_id, t.handle_by, session_pb(ss, t.ticket_id)
    FROM sessions ss LEFT JOIN tickets t ON t.session_id = ss.session_id
    WHERE ss.session_id = ANY(p_session_ids)
    ORDER BY ss.close_time, ss.session_id;
END $$;
