-- The declared schema: `make schema` writes this file from the migrations; do not edit it.
CREATE FUNCTION public.append_merchant_events(p_merchant_id text, p_kinds text[], p_session_ids uuid[], p_agent_ids text[], p_payloads bytea[]) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    WITH bump AS (
        UPDATE merchants SET last_event_cursor = last_event_cursor + cardinality(p_kinds)
        WHERE merchant_id = p_merchant_id
        RETURNING last_event_cursor - cardinality(p_kinds) AS base, clock_timestamp() AS at
    )
    INSERT INTO merchant_events (merchant_id, cursor, session_id, agent_id, kind, payload, event_time)
    SELECT p_merchant_id, bump.base + e.ord, e.session_id, e.agent_id, e.kind, e.payload, bump.at
    FROM bump, unnest(p_kinds, p_session_ids, p_agent_ids, p_payloads) WITH ORDINALITY
               AS e(kind, session_id, agent_id, payload, ord);
END $$;
CREATE TABLE public.messages (
    session_id uuid NOT NULL,
    seq bigint NOT NULL,
    sender text NOT NULL,
    sender_id text NOT NULL,
    kind text NOT NULL,
    client_msg_id text,
    template_id text,
    content bytea NOT NULL,
    send_time timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT messages_kind_known CHECK ((kind = ANY (ARRAY['TEXT'::text, 'ORDER_CARD'::text, 'IMAGE'::text, 'EMOJI'::text]))),
    CONSTRAINT messages_sender_known CHECK ((sender = ANY (ARRAY['PLATFORM'::text, 'MERCHANT'::text]))),
    CONSTRAINT messages_seq_positive CHECK ((seq >= 1))
);
CREATE FUNCTION public.append_message_locked(p_session_id uuid, p_sender text, p_sender_id text, p_kind text, p_client_msg_id text, p_template_id text, p_content bytea, p_reply_timeout double precision, p_remind_before double precision, p_max_messages bigint, p_max_content_bytes bigint, p_idle_timeout_override double precision) RETURNS public.messages
    LANGUAGE plpgsql
    AS $$
DECLARE
    at timestamptz := clock_timestamp();
    next_seq bigint;
    appended messages;
BEGIN
    UPDATE sessions s SET
        last_seq = s.last_seq + 1,
        content_bytes = s.content_bytes + octet_length(p_content),
        -- ===== SPEC R5, the reply deadline: the one place a message moves it =====================
        -- A platform message starts the deadline unless one is running; a merchant message clears it
        -- (domain/session.py after_message is the rule). The reminder is due p_remind_before earlier.
        reply_deadline = CASE
            WHEN p_sender = 'MERCHANT' THEN NULL
            ELSE coalesce(s.reply_deadline, at + make_interval(secs => p_reply_timeout)) END,
        remind_time = CASE
            WHEN p_sender = 'MERCHANT' THEN NULL
            WHEN s.reply_deadline IS NOT NULL THEN s.remind_time
            ELSE greatest(at, at + make_interval(secs => p_reply_timeout - p_remind_before)) END,
        -- ===== end of the deadline rule ==========================================================
        -- ===== SPEC R12, the idle deadline: the one place a message moves it ======================
        -- A merchant message (which just cleared the reply deadline) starts or restarts it; a platform
        -- message cancels it, its reply deadline taking over (domain/session.py after_message).
        -- p_idle_timeout_override: the dev override (seconds); NULL: the merchant's setting.
        idle_deadline = CASE
            WHEN p_sender = 'MERCHANT' THEN at + make_interval(secs => coalesce(p_idle_timeout_override,
                (SELECT rs.idle_timeout_seconds FROM reception_settings rs WHERE rs.merchant_id = s.merchant_id)))
            ELSE NULL END
        -- ===== end of the idle deadline rule ======================================================
    WHERE s.session_id = p_session_id AND s.state = 'OPEN'
      AND s.last_seq < p_max_messages AND s.content_bytes + octet_length(p_content) <= p_max_content_bytes
    RETURNING s.last_seq INTO next_seq;
    IF NOT FOUND THEN
        -- The caller holds the lock and saw the session open, so only the size bound refuses.
        PERFORM raise_refusal('SESSION_FULL', CASE
            WHEN (SELECT s.last_seq FROM sessions s WHERE s.session_id = p_session_id) >= p_max_messages
            THEN 'messages' ELSE 'content_bytes:' || octet_length(p_content) END);
    END IF;
    INSERT INTO messages (session_id, seq, sender, sender_id, kind, client_msg_id, template_id, content, send_time)
    VALUES (p_session_id, next_seq, p_sender, p_sender_id, p_kind, p_client_msg_id, p_template_id, p_content, at)
    RETURNING * INTO appended;
    RETURN appended;
END $$;
CREATE FUNCTION public.assignment_history_pb(p_session_id uuid) RETURNS bytea
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT assignment_pb_len(16, assignment_step_pb(0, 'OPENED', NULL, coalesce(first.from_agent_id, s.assigned_agent_id),
                                                    s.platform_agent_id, 'platform', s.open_time))
           || coalesce((SELECT string_agg(assignment_pb_len(16, assignment_step_pb(m.step, m.reason, m.from_agent_id,
                                                                                   m.to_agent_id, m.actor_id,
                                                                                   m.actor_role, m.move_time)),
                                          '\x'::bytea ORDER BY m.step)
                        FROM session_assignments m WHERE m.session_id = s.session_id), '\x'::bytea)
    FROM sessions s
    LEFT JOIN session_assignments first ON first.session_id = s.session_id AND first.step = 1
    WHERE s.session_id = p_session_id
$$;
CREATE FUNCTION public.assignment_pb_len(field integer, value bytea) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN value IS NULL THEN '\x'::bytea
                ELSE assignment_pb_varint(field::bigint << 3 | 2) || assignment_pb_varint(octet_length(value)) || value END
$$;
CREATE FUNCTION public.assignment_pb_string(field integer, value text) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN value IS NULL OR value = '' THEN '\x'::bytea
                ELSE assignment_pb_len(field, convert_to(value, 'UTF8')) END
$$;
CREATE FUNCTION public.assignment_pb_uint(field integer, value bigint) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN value IS NULL OR value = 0 THEN '\x'::bytea
                ELSE assignment_pb_varint(field::bigint << 3) || assignment_pb_varint(value) END
$$;
CREATE FUNCTION public.assignment_pb_varint(value bigint) RETURNS bytea
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
DECLARE
    encoded bytea := '\x'::bytea;
BEGIN
    IF value < 0 THEN
        RAISE EXCEPTION 'assignment_pb_varint: % is negative', value;
    END IF;
    WHILE value >= 128 LOOP
        encoded := encoded || set_byte('\x00'::bytea, 0, (value & 127)::int | 128);
        value := value >> 7;
    END LOOP;
    RETURN encoded || set_byte('\x00'::bytea, 0, value::int);
END $$;
CREATE FUNCTION public.assignment_precedes(a_open integer, a_capacity integer, a_last timestamp with time zone, a_agent text, b_open integer, b_capacity integer, b_last timestamp with time zone, b_agent text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE
        WHEN a_open::bigint * b_capacity <> b_open::bigint * a_capacity
            THEN a_open::bigint * b_capacity < b_open::bigint * a_capacity
        WHEN (a_last IS NULL) <> (b_last IS NULL) THEN a_last IS NULL
        WHEN a_last <> b_last THEN a_last < b_last
        ELSE a_agent COLLATE "C" < b_agent COLLATE "C" END
$$;
CREATE FUNCTION public.assignment_step_pb(step bigint, reason text, from_agent_id text, to_agent_id text, actor_id text, actor_role text, at timestamp with time zone) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT assignment_pb_uint(1, step)
           || assignment_pb_uint(2, CASE reason WHEN 'OPENED' THEN 1 WHEN 'TRANSFERRED' THEN 2
                                                WHEN 'AGENT_DISABLED' THEN 3 WHEN 'IM_PERMISSION_REMOVED' THEN 4
                                                WHEN 'NOT_RECEPTION_AGENT' THEN 5 END)
           || assignment_pb_string(3, from_agent_id) || assignment_pb_string(4, to_agent_id)
           || assignment_pb_string(5, actor_id) || assignment_pb_string(6, actor_role)
           || assignment_pb_len(7, assignment_pb_uint(1, floor(e)::bigint)
                                   || assignment_pb_uint(2, ((e - floor(e)) * 1000000000)::bigint))
    FROM (SELECT extract(epoch FROM at) AS e) AS epoch
$$;
CREATE FUNCTION public.close_session(p_session_id uuid, p_scope_platform_agent_id text, p_reason text, p_makes_ticket boolean, p_sla_categories text[], p_sla_seconds double precision[], p_digest_algorithm text, p_topic text, p_content_type text, p_traceparent text) RETURNS TABLE(session_id uuid, merchant_id text, assigned_agent_id text, platform_agent_id text, order_id text, category text, open_time timestamp with time zone, close_time timestamp with time zone, ticket_id uuid, handle_by timestamp with time zone, session_pb bytea)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
#variable_conflict use_column
DECLARE
    state text;
BEGIN
    SELECT ss.state INTO state FROM sessions ss
    WHERE ss.session_id = p_session_id
      AND (p_scope_platform_agent_id IS NULL OR ss.platform_agent_id = p_scope_platform_agent_id)
    FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM raise_refusal('SESSION_NOT_FOUND');
    END IF;
    IF state = 'ENDED' THEN
        PERFORM raise_refusal('SESSION_CLOSED',
                              (SELECT t.ticket_id::text FROM tickets t WHERE t.session_id = p_session_id));
    END IF;
    UPDATE sessions ss SET state = 'ENDED', close_reason = p_reason, close_time = clock_timestamp(),
                           reply_deadline = NULL, remind_time = NULL, idle_deadline = NULL
    WHERE ss.session_id = p_session_id;
    RETURN QUERY SELECT * FROM end_sessions_locked(
        ARRAY[p_session_id], p_reason, p_makes_ticket, p_sla_categories, p_sla_seconds, p_digest_algorithm,
        p_topic, p_content_type, p_traceparent);
END $$;
CREATE FUNCTION public.end_sessions_locked(p_session_ids uuid[], p_reason text, p_makes_ticket boolean, p_sla_categories text[], p_sla_seconds double precision[], p_digest_algorithm text, p_topic text, p_content_type text, p_traceparent text) RETURNS TABLE(session_id uuid, merchant_id text, assigned_agent_id text, platform_agent_id text, order_id text, category text, open_time timestamp with time zone, close_time timestamp with time zone, ticket_id uuid, handle_by timestamp with time zone, session_pb bytea)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
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
CREATE FUNCTION public.merchant_event_pb(session_id uuid, kind_field integer, body bytea) RETURNS bytea
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT pb_string_field(3, session_id::text) || pb_len_field(kind_field, body)
$$;
CREATE FUNCTION public.message_pb(m public.messages) RETURNS bytea
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT pb_string_field(1, m.session_id::text)
        || pb_uint_field(2, m.seq)
        || pb_uint_field(3, CASE m.sender WHEN 'PLATFORM' THEN 1 WHEN 'MERCHANT' THEN 2 END)
        || pb_string_field(4, m.sender_id)
        || pb_string_field(5, m.client_msg_id)
        || pb_timestamp_field(6, m.send_time)
        || pb_len_field(7, m.content)
        || pb_string_field(8, m.template_id)
$$;
CREATE FUNCTION public.notify_agent_access() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('escalation_agents', NEW.merchant_id || E'\t' || NEW.agent_id);
    RETURN NULL;
END $$;
CREATE FUNCTION public.notify_merchant_access() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('escalation_agents', NEW.merchant_id || E'\t');
    RETURN NULL;
END $$;
CREATE TABLE public.sessions (
    session_id uuid NOT NULL,
    merchant_id text NOT NULL,
    assigned_agent_id text NOT NULL,
    platform_agent_id text NOT NULL,
    order_id text,
    category text NOT NULL,
    state text DEFAULT 'OPEN'::text NOT NULL,
    close_reason text,
    open_time timestamp with time zone DEFAULT now() NOT NULL,
    close_time timestamp with time zone,
    reply_deadline timestamp with time zone,
    remind_time timestamp with time zone,
    last_seq bigint DEFAULT 0 NOT NULL,
    merchant_read_seq bigint DEFAULT 0 NOT NULL,
    platform_read_seq bigint DEFAULT 0 NOT NULL,
    request_id text NOT NULL,
    request_hash bytea NOT NULL,
    assignment bytea NOT NULL,
    content_bytes bigint DEFAULT 0 NOT NULL,
    idle_deadline timestamp with time zone,
    CONSTRAINT sessions_category_known CHECK ((category = ANY (ARRAY['REFUND'::text, 'ORDER_OPERATION'::text, 'EXCHANGE'::text, 'PRODUCT'::text, 'NEGOTIATED_REFUND'::text, 'LOGISTICS'::text]))),
    CONSTRAINT sessions_close_reason_known CHECK ((close_reason = ANY (ARRAY['RESOLVED'::text, 'PLATFORM_ESCALATED'::text, 'MERCHANT_TIMEOUT'::text, 'IDLE'::text]))),
    CONSTRAINT sessions_end_consistent CHECK ((((state = 'OPEN'::text) AND (close_reason IS NULL) AND (close_time IS NULL)) OR ((state = 'ENDED'::text) AND (close_reason IS NOT NULL) AND (close_time IS NOT NULL) AND (reply_deadline IS NULL) AND (remind_time IS NULL)))),
    CONSTRAINT sessions_state_known CHECK ((state = ANY (ARRAY['OPEN'::text, 'ENDED'::text])))
);
CREATE FUNCTION public.open_session(p_platform_agent_id text, p_request_id text, p_request_hash bytea, p_merchant_id text, p_category text, p_order_id text, p_kinds text[], p_contents bytea[], p_rule_version text, p_presence_window double precision, p_reply_timeout_override double precision, p_remind_before double precision, p_max_messages bigint, p_max_content_bytes bigint, p_idle_timeout_override double precision DEFAULT NULL::double precision, OUT replayed boolean, OUT opened_session public.sessions, OUT session_pb bytea, OUT opened_messages public.messages[], OUT message_pbs bytea[], OUT saturation double precision, OUT reply_timeout_seconds double precision) RETURNS record
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
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
CREATE FUNCTION public.pb_category(category text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE category WHEN 'REFUND' THEN 1 WHEN 'ORDER_OPERATION' THEN 2 WHEN 'EXCHANGE' THEN 3
                         WHEN 'PRODUCT' THEN 4 WHEN 'NEGOTIATED_REFUND' THEN 5 WHEN 'LOGISTICS' THEN 6 END
$$;
CREATE FUNCTION public.pb_close_reason(reason text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE reason WHEN 'RESOLVED' THEN 1 WHEN 'PLATFORM_ESCALATED' THEN 2 WHEN 'MERCHANT_TIMEOUT' THEN 3
                       WHEN 'IDLE' THEN 4 END
$$;
CREATE FUNCTION public.pb_double_field(field integer, value double precision) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN value IS NULL OR value = 0 THEN '\x'::bytea
                ELSE pb_varint(field::bigint << 3 | 1)
                     || substr(float8send(value), 8, 1) || substr(float8send(value), 7, 1)
                     || substr(float8send(value), 6, 1) || substr(float8send(value), 5, 1)
                     || substr(float8send(value), 4, 1) || substr(float8send(value), 3, 1)
                     || substr(float8send(value), 2, 1) || substr(float8send(value), 1, 1) END
$$;
CREATE FUNCTION public.pb_json_time(value timestamp with time zone) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT to_char(value AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN extract(microseconds FROM value)::bigint % 1000000 = 0 THEN 'Z'
                WHEN extract(microseconds FROM value)::bigint % 1000 = 0
                    THEN '.' || lpad((extract(microseconds FROM value)::bigint % 1000000 / 1000)::text, 3, '0') || 'Z'
                ELSE '.' || lpad((extract(microseconds FROM value)::bigint % 1000000)::text, 6, '0') || 'Z' END
$$;
CREATE FUNCTION public.pb_len_field(field integer, value bytea) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN value IS NULL THEN '\x'::bytea
                ELSE pb_varint(field::bigint << 3 | 2) || pb_varint(octet_length(value)) || value END
$$;
CREATE FUNCTION public.pb_string_field(field integer, value text) RETURNS bytea
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT pb_len_field(field, nullif(convert_to(value, 'UTF8'), '\x'::bytea))
$$;
CREATE FUNCTION public.pb_timestamp_field(field integer, value timestamp with time zone) RETURNS bytea
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    AS $$
DECLARE
    micros bigint;
    seconds bigint;
    nanos bigint;
BEGIN
    IF value IS NULL THEN
        RETURN '\x'::bytea;
    END IF;
    micros := (extract(epoch FROM value) * 1000000)::bigint;  -- numeric: exact
    seconds := micros / 1000000;
    nanos := micros % 1000000 * 1000;
    RETURN pb_timestamp_parts_field(field, seconds, nanos);
END $$;
CREATE FUNCTION public.pb_timestamp_parts_field(field integer, seconds bigint, nanos bigint) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT pb_varint(field::bigint << 3 | 2)
        || set_byte('\x00'::bytea, 0, pb_uint_field_size(seconds) + pb_uint_field_size(nanos))
        || pb_uint_field(1, seconds) || pb_uint_field(2, nanos)
$$;
CREATE FUNCTION public.pb_uint_field(field integer, value bigint) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN value IS NULL OR value = 0 THEN '\x'::bytea
                ELSE pb_varint(field::bigint << 3) || pb_varint(value) END
$$;
CREATE FUNCTION public.pb_uint_field_size(value bigint) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN value IS NULL OR value = 0 THEN 0 ELSE 1 + octet_length(pb_varint(value)) END
$$;
CREATE FUNCTION public.pb_varint(value bigint) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN value >= 0 AND value < 128 THEN set_byte('\x00'::bytea, 0, value::int)
                ELSE pb_varint_long(value) END
$$;
CREATE FUNCTION public.pb_varint_long(value bigint) RETURNS bytea
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
DECLARE
    encoded bytea := '\x'::bytea;
BEGIN
    IF value < 0 THEN
        -- Every value written here (sequence numbers, counts, lengths, times after 1970) is >= 0.
        RAISE EXCEPTION 'pb_varint: % is negative', value;
    END IF;
    WHILE value >= 128 LOOP
        encoded := encoded || set_byte('\x00'::bytea, 0, (value & 127)::int | 128);
        value := value >> 7;
    END LOOP;
    RETURN encoded || set_byte('\x00'::bytea, 0, value::int);
END $$;
CREATE FUNCTION public.raise_refusal(reason text, detail text DEFAULT ''::text) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    RAISE EXCEPTION 'refused: %', reason USING ERRCODE = 'EX001', HINT = reason, DETAIL = coalesce(detail, '');
END $$;
CREATE FUNCTION public.send_message(p_session_id uuid, p_sender text, p_sender_id text, p_caller_merchant_id text, p_scope_platform_agent_id text, p_kind text, p_client_msg_id text, p_template_id text, p_content bytea, p_reply_timeout_override double precision, p_remind_before double precision, p_max_messages bigint, p_max_content_bytes bigint, p_idle_timeout_override double precision DEFAULT NULL::double precision, OUT session_id uuid, OUT seq bigint, OUT sender text, OUT sender_id text, OUT kind text, OUT client_msg_id text, OUT template_id text, OUT content bytea, OUT send_time timestamp with time zone, OUT message_pb bytea, OUT first_reply_seconds double precision, OUT merchant_id text, OUT reply_timeout_seconds double precision) RETURNS record
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
#variable_conflict use_column
DECLARE
    caller record;
    scope_merchant text;
    scope_agent text;
    may_im boolean := false;
    s record;
    msg messages;
    body text;
    msg_kind text := p_kind;
    msg_content bytea := p_content;
    awaiting_first_reply boolean := false;
    added bytea;
    moved_away boolean := false;
BEGIN
    IF p_caller_merchant_id IS NOT NULL THEN
        -- Where the merchant agent stands in its shop now (SPEC R1, R9; services/callers.py).
        SELECT a.disabled, a.im_permission, m.main_account_id = a.agent_id AS main_account INTO caller
        FROM agents a JOIN merchants m ON m.merchant_id = a.merchant_id
        WHERE a.merchant_id = p_caller_merchant_id AND a.agent_id = p_sender_id;
        IF NOT FOUND THEN
            PERFORM raise_refusal('IM_PERMISSION_REQUIRED', 'not_in_directory');
        END IF;
        IF caller.disabled THEN
            PERFORM raise_refusal('AGENT_DISABLED');
        END IF;
        may_im := caller.im_permission;
        scope_merchant := p_caller_merchant_id;
        scope_agent := CASE WHEN caller.main_account THEN NULL ELSE p_sender_id END;
    END IF;
    SELECT ss.merchant_id, ss.assigned_agent_id, ss.state, ss.open_time, rs.reply_timeout_seconds INTO s
    FROM sessions ss JOIN reception_settings rs ON rs.merchant_id = ss.merchant_id
    WHERE ss.session_id = p_session_id
      AND (scope_merchant IS NULL OR ss.merchant_id = scope_merchant)
      AND (scope_agent IS NULL OR ss.assigned_agent_id = scope_agent)
      AND (p_scope_platform_agent_id IS NULL OR ss.platform_agent_id = p_scope_platform_agent_id)
    FOR UPDATE OF ss;
    IF NOT FOUND THEN
        -- R4 after R13: the session may have moved to another agent since this sender's send. The
        -- sender's own message is still the answer to its retry (it reveals nothing new); anything
        -- else stays SESSION_NOT_FOUND. Only a session of the caller's own shop (agent ids are per
        -- shop) and, for the platform, one it opened.
        SELECT ss.merchant_id INTO s FROM sessions ss
        WHERE ss.session_id = p_session_id
          AND (scope_merchant IS NULL OR ss.merchant_id = scope_merchant)
          AND (p_scope_platform_agent_id IS NULL OR ss.platform_agent_id = p_scope_platform_agent_id);
        IF NOT FOUND OR p_client_msg_id IS NULL THEN
            PERFORM raise_refusal('SESSION_NOT_FOUND');
        END IF;
        moved_away := true;
    ELSE
        reply_timeout_seconds := coalesce(p_reply_timeout_override, s.reply_timeout_seconds);
    END IF;
    merchant_id := s.merchant_id;
    IF p_client_msg_id IS NOT NULL THEN
        -- R4: the key belongs to the session and the verified sender; a retry returns the original.
        SELECT * INTO msg FROM messages m
        WHERE m.session_id = p_session_id AND m.sender = p_sender AND m.sender_id = p_sender_id
          AND m.client_msg_id = p_client_msg_id;
        IF FOUND THEN
            -- A template reply is the same when it names the same template (its body is whatever
            -- the template said when the original was stored).
            IF (p_template_id IS NOT NULL AND msg.template_id IS NOT DISTINCT FROM p_template_id)
               OR (p_template_id IS NULL AND msg.template_id IS NULL AND msg.kind = p_kind AND msg.content = p_content)
            THEN
                SELECT msg.session_id, msg.seq, msg.sender, msg.sender_id, msg.kind, msg.client_msg_id,
                       msg.template_id, msg.content, msg.send_time, message_pb(msg)
                INTO session_id, seq, sender, sender_id, kind, client_msg_id, template_id, content, send_time,
                     message_pb;
                RETURN;
            END IF;
            PERFORM raise_refusal('CLIENT_MSG_ID_REUSED');
        END IF;
    END IF;
    IF moved_away THEN
        PERFORM raise_refusal('SESSION_NOT_FOUND');  -- not a retry of this sender's: outside its scope (R9)
    END IF;
    IF p_sender = 'MERCHANT' AND NOT may_im THEN
        PERFORM raise_refusal('IM_PERMISSION_REQUIRED');
    END IF;
    IF p_template_id IS NOT NULL THEN
        SELECT t.body INTO body FROM reply_templates t
        WHERE t.merchant_id = s.merchant_id AND t.template_id = p_template_id;
        IF NOT FOUND THEN
            PERFORM raise_refusal('TEMPLATE_NOT_FOUND');
        END IF;
        -- MessageContent{text: Text{body}}, as MessageContent(text=Text(body=...)).SerializeToString().
        msg_kind := 'TEXT';
        msg_content := pb_string_field(1, body);
        msg_content := pb_len_field(1, msg_content);
    END IF;
    IF s.state = 'ENDED' THEN
        PERFORM raise_refusal('SESSION_CLOSED',
                              (SELECT t.ticket_id::text FROM tickets t WHERE t.session_id = p_session_id));
    END IF;
    IF p_sender = 'MERCHANT' THEN
        awaiting_first_reply := NOT EXISTS (
            SELECT 1 FROM messages m WHERE m.session_id = p_session_id AND m.sender = 'MERCHANT');
    END IF;
    msg := append_message_locked(
        p_session_id, p_sender, p_sender_id, msg_kind, p_client_msg_id, p_template_id, msg_content,
        reply_timeout_seconds, p_remind_before, p_max_messages, p_max_content_bytes, p_idle_timeout_override);
    SELECT msg.session_id, msg.seq, msg.sender, msg.sender_id, msg.kind, msg.client_msg_id, msg.template_id,
           msg.content, msg.send_time, message_pb(msg)
    INTO session_id, seq, sender, sender_id, kind, client_msg_id, template_id, content, send_time, message_pb;
    added := pb_len_field(1, message_pb);  -- MessageAdded{message}
    PERFORM append_merchant_events(
        s.merchant_id, ARRAY['message_added'], ARRAY[p_session_id], ARRAY[s.assigned_agent_id],
        ARRAY[merchant_event_pb(p_session_id, 11, added)]);
    IF awaiting_first_reply THEN
        first_reply_seconds := extract(epoch FROM msg.send_time - s.open_time)::float8;
    END IF;
END $$;
CREATE FUNCTION public.session_pb(s public.sessions, ticket_id uuid) RETURNS bytea
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT pb_string_field(1, s.session_id::text)
        || pb_string_field(2, s.merchant_id)
        || pb_string_field(3, s.assigned_agent_id)
        || pb_string_field(4, s.platform_agent_id)
        || pb_string_field(5, s.order_id)
        || pb_uint_field(6, pb_category(s.category))
        || pb_uint_field(7, CASE s.state WHEN 'OPEN' THEN 1 WHEN 'ENDED' THEN 2 END)
        || pb_uint_field(8, pb_close_reason(s.close_reason))
        || pb_timestamp_field(9, s.open_time)
        || pb_timestamp_field(10, s.close_time)
        || pb_timestamp_field(11, s.reply_deadline)
        || pb_uint_field(12, s.last_seq)
        || pb_string_field(13, ticket_id::text)
        || pb_len_field(14, s.assignment)
$$;
CREATE FUNCTION public.transcript_part(m public.messages) RETURNS bytea
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT int8send(octet_length(m.seq::text)) || convert_to(m.seq::text, 'UTF8')
        || int8send(octet_length('SENDER_' || m.sender)) || convert_to('SENDER_' || m.sender, 'UTF8')
        || int8send(octet_length(convert_to(m.sender_id, 'UTF8'))) || convert_to(m.sender_id, 'UTF8')
        || int8send(octet_length(pb_json_time(m.send_time))) || convert_to(pb_json_time(m.send_time), 'UTF8')
        || int8send(octet_length(convert_to(coalesce(m.template_id, ''), 'UTF8')))
        || convert_to(coalesce(m.template_id, ''), 'UTF8')
        || int8send(octet_length(m.content)) || m.content
$$;
CREATE TABLE public.agents (
    merchant_id text NOT NULL,
    agent_id text NOT NULL,
    display_name text NOT NULL,
    main_account boolean DEFAULT false NOT NULL,
    im_permission boolean DEFAULT false NOT NULL,
    disabled boolean DEFAULT false NOT NULL,
    reception_agent boolean DEFAULT false NOT NULL,
    capacity integer DEFAULT 10 NOT NULL,
    open_sessions integer DEFAULT 0 NOT NULL,
    last_assign_time timestamp with time zone,
    create_time timestamp with time zone DEFAULT now() NOT NULL,
    update_time timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT agents_capacity_range CHECK (((capacity >= 1) AND (capacity <= 50))),
    CONSTRAINT agents_main_account_has_im CHECK (((NOT main_account) OR im_permission)),
    CONSTRAINT agents_open_sessions_nonnegative CHECK ((open_sessions >= 0))
);
CREATE VIEW public.agent_eligibility AS
 SELECT a.merchant_id,
    a.agent_id,
    a.display_name,
    a.main_account,
    a.im_permission,
    a.disabled,
    a.reception_agent,
    a.capacity,
    a.open_sessions,
    a.last_assign_time,
    a.create_time,
    a.update_time,
    ((NOT a.disabled) AND a.im_permission AND (a.reception_agent OR (a.main_account AND (NOT (EXISTS ( SELECT 1
           FROM public.agents d
          WHERE ((d.merchant_id = a.merchant_id) AND d.reception_agent))))))) AS eligible
   FROM public.agents a;
CREATE TABLE public.agent_presence (
    stream_id uuid NOT NULL,
    server_id text NOT NULL,
    merchant_id text NOT NULL,
    agent_id text NOT NULL,
    connect_time timestamp with time zone DEFAULT now() NOT NULL,
    seen_time timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.merchant_events (
    merchant_id text NOT NULL,
    cursor bigint NOT NULL,
    session_id uuid,
    agent_id text,
    kind text NOT NULL,
    payload bytea NOT NULL,
    event_time timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.merchant_warnings (
    warning_id uuid NOT NULL,
    merchant_id text NOT NULL,
    period_start timestamp with time zone NOT NULL,
    period_end timestamp with time zone NOT NULL,
    kinds text[] NOT NULL,
    payload bytea NOT NULL,
    create_time timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.merchants (
    merchant_id text NOT NULL,
    display_name text NOT NULL,
    main_account_id text NOT NULL,
    disabled boolean DEFAULT false NOT NULL,
    last_event_cursor bigint DEFAULT 0 NOT NULL,
    create_time timestamp with time zone DEFAULT now() NOT NULL,
    update_time timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.outbox (
    id bigint NOT NULL,
    topic text NOT NULL,
    message_key bytea NOT NULL,
    event_id text NOT NULL,
    content_type text NOT NULL,
    payload bytea NOT NULL,
    create_time timestamp with time zone DEFAULT now() NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    last_error text,
    published_time timestamp with time zone,
    parked_time timestamp with time zone,
    isolated_failures integer DEFAULT 0 NOT NULL,
    traceparent text
);
ALTER TABLE public.outbox ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.outbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE TABLE public.reception_settings (
    merchant_id text NOT NULL,
    reply_timeout_seconds integer DEFAULT 180 NOT NULL,
    update_time timestamp with time zone DEFAULT now() NOT NULL,
    idle_timeout_seconds bigint DEFAULT 1800 NOT NULL,
    CONSTRAINT reception_settings_idle_timeout_range CHECK (((idle_timeout_seconds >= 300) AND (idle_timeout_seconds <= 7200))),
    CONSTRAINT reception_settings_reply_timeout_range CHECK (((reply_timeout_seconds >= 120) AND (reply_timeout_seconds <= 180)))
);
CREATE TABLE public.reply_templates (
    template_id text NOT NULL,
    merchant_id text NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    create_time timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.session_assignments (
    session_id uuid NOT NULL,
    step bigint NOT NULL,
    merchant_id text NOT NULL,
    reason text NOT NULL,
    from_agent_id text NOT NULL,
    to_agent_id text NOT NULL,
    actor_id text NOT NULL,
    actor_role text NOT NULL,
    decision bytea,
    request_id text,
    request_hash bytea,
    move_time timestamp with time zone NOT NULL,
    CONSTRAINT session_assignments_keyed CHECK (((request_id IS NULL) = (request_hash IS NULL))),
    CONSTRAINT session_assignments_moves CHECK ((from_agent_id <> to_agent_id)),
    CONSTRAINT session_assignments_reason_known CHECK ((reason = ANY (ARRAY['TRANSFERRED'::text, 'AGENT_DISABLED'::text, 'IM_PERMISSION_REMOVED'::text, 'NOT_RECEPTION_AGENT'::text]))),
    CONSTRAINT session_assignments_step_positive CHECK ((step >= 1))
);
CREATE TABLE public.tickets (
    ticket_id uuid NOT NULL,
    session_id uuid NOT NULL,
    merchant_id text NOT NULL,
    reason text NOT NULL,
    category text NOT NULL,
    handle_by timestamp with time zone NOT NULL,
    transcript_digest text NOT NULL,
    payload bytea NOT NULL,
    create_time timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT tickets_reason_known CHECK ((reason = ANY (ARRAY['PLATFORM_ESCALATED'::text, 'MERCHANT_TIMEOUT'::text])))
);
ALTER TABLE ONLY public.agent_presence
    ADD CONSTRAINT agent_presence_pkey PRIMARY KEY (stream_id);
ALTER TABLE ONLY public.agents
    ADD CONSTRAINT agents_pkey PRIMARY KEY (merchant_id, agent_id);
ALTER TABLE ONLY public.merchant_events
    ADD CONSTRAINT merchant_events_pkey PRIMARY KEY (merchant_id, cursor);
ALTER TABLE ONLY public.merchant_warnings
    ADD CONSTRAINT merchant_warnings_one_per_period UNIQUE (merchant_id, period_start);
ALTER TABLE ONLY public.merchant_warnings
    ADD CONSTRAINT merchant_warnings_pkey PRIMARY KEY (warning_id);
ALTER TABLE ONLY public.merchants
    ADD CONSTRAINT merchants_pkey PRIMARY KEY (merchant_id);
ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_pkey PRIMARY KEY (session_id, seq);
ALTER TABLE ONLY public.outbox
    ADD CONSTRAINT outbox_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.reception_settings
    ADD CONSTRAINT reception_settings_pkey PRIMARY KEY (merchant_id);
ALTER TABLE ONLY public.reply_templates
    ADD CONSTRAINT reply_templates_pkey PRIMARY KEY (template_id);
ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);
ALTER TABLE ONLY public.session_assignments
    ADD CONSTRAINT session_assignments_pkey PRIMARY KEY (session_id, step);
ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (session_id);
ALTER TABLE ONLY public.tickets
    ADD CONSTRAINT tickets_pkey PRIMARY KEY (ticket_id);
ALTER TABLE ONLY public.tickets
    ADD CONSTRAINT tickets_session_id_key UNIQUE (session_id);
CREATE INDEX agent_presence_agent ON public.agent_presence USING btree (merchant_id, agent_id, seen_time);
CREATE INDEX agent_presence_server ON public.agent_presence USING btree (server_id);
CREATE UNIQUE INDEX agents_one_main_account ON public.agents USING btree (merchant_id) WHERE main_account;
CREATE INDEX merchant_events_event_time ON public.merchant_events USING btree (event_time);
CREATE INDEX merchant_warnings_create_time ON public.merchant_warnings USING btree (create_time DESC, warning_id DESC);
CREATE INDEX merchant_warnings_merchant_create_time ON public.merchant_warnings USING btree (merchant_id, create_time DESC, warning_id DESC);
CREATE UNIQUE INDEX messages_sender_client_msg_id ON public.messages USING btree (session_id, sender, sender_id, client_msg_id) WHERE (client_msg_id IS NOT NULL);
CREATE INDEX outbox_parked ON public.outbox USING btree (id) WHERE ((parked_time IS NOT NULL) AND (published_time IS NULL));
CREATE INDEX outbox_pending ON public.outbox USING btree (id) WHERE ((published_time IS NULL) AND (parked_time IS NULL));
CREATE INDEX outbox_pending_by_key ON public.outbox USING btree (message_key, id) WHERE ((published_time IS NULL) AND (parked_time IS NULL));
CREATE INDEX reply_templates_merchant ON public.reply_templates USING btree (merchant_id, create_time, template_id);
CREATE UNIQUE INDEX session_assignments_request_id ON public.session_assignments USING btree (merchant_id, actor_id, request_id) WHERE (request_id IS NOT NULL);
CREATE INDEX sessions_agent_open_time ON public.sessions USING btree (merchant_id, assigned_agent_id, open_time DESC, session_id DESC);
CREATE INDEX sessions_due ON public.sessions USING btree (reply_deadline) WHERE (reply_deadline IS NOT NULL);
CREATE INDEX sessions_idle_due ON public.sessions USING btree (idle_deadline) WHERE ((idle_deadline IS NOT NULL) AND (reply_deadline IS NULL) AND (state = 'OPEN'::text));
CREATE INDEX sessions_merchant_open_time ON public.sessions USING btree (merchant_id, open_time DESC, session_id DESC);
CREATE INDEX sessions_open_time ON public.sessions USING btree (open_time);
CREATE INDEX sessions_platform_agent_open_time ON public.sessions USING btree (platform_agent_id, open_time DESC, session_id DESC);
CREATE INDEX sessions_remind_due ON public.sessions USING btree (remind_time) WHERE (remind_time IS NOT NULL);
CREATE UNIQUE INDEX sessions_request_id ON public.sessions USING btree (platform_agent_id, request_id);
CREATE INDEX tickets_merchant_create_time ON public.tickets USING btree (merchant_id, create_time);
CREATE TRIGGER agents_notify_access AFTER UPDATE OF im_permission, disabled, reception_agent, main_account ON public.agents FOR EACH ROW WHEN (((old.im_permission IS DISTINCT FROM new.im_permission) OR (old.disabled IS DISTINCT FROM new.disabled) OR (old.reception_agent IS DISTINCT FROM new.reception_agent) OR (old.main_account IS DISTINCT FROM new.main_account))) EXECUTE FUNCTION public.notify_agent_access();
CREATE TRIGGER merchants_notify_access AFTER UPDATE OF main_account_id ON public.merchants FOR EACH ROW WHEN ((old.main_account_id IS DISTINCT FROM new.main_account_id)) EXECUTE FUNCTION public.notify_merchant_access();
ALTER TABLE ONLY public.agents
    ADD CONSTRAINT agents_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id) ON DELETE CASCADE;
ALTER TABLE ONLY public.merchant_events
    ADD CONSTRAINT merchant_events_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id) ON DELETE CASCADE;
ALTER TABLE ONLY public.merchant_warnings
    ADD CONSTRAINT merchant_warnings_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id) ON DELETE CASCADE;
ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.sessions(session_id) ON DELETE CASCADE;
ALTER TABLE ONLY public.reception_settings
    ADD CONSTRAINT reception_settings_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id) ON DELETE CASCADE;
ALTER TABLE ONLY public.reply_templates
    ADD CONSTRAINT reply_templates_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id) ON DELETE CASCADE;
ALTER TABLE ONLY public.session_assignments
    ADD CONSTRAINT session_assignments_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.sessions(session_id);
ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_merchant_id_assigned_agent_id_fkey FOREIGN KEY (merchant_id, assigned_agent_id) REFERENCES public.agents(merchant_id, agent_id);
ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id);
ALTER TABLE ONLY public.tickets
    ADD CONSTRAINT tickets_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id);
ALTER TABLE ONLY public.tickets
    ADD CONSTRAINT tickets_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.sessions(session_id);
