-- 0014: SPEC R13 in the one-call write functions (0010, 0012), which were written before the
-- assignment history existed (0013):
--   - end_sessions_locked appends the session's assignment history to each ticket it writes
--     (ServiceTicket field 16, assignment_history_pb of 0013; services/tickets.py build(history_pb=…)
--     is the specification);
--   - send_message answers a sender's retry with its original message after the session moved to
--     another agent (R4: "a retry of a send that succeeded returns the original whatever changed
--     since"); any other write to a session outside the caller's scope stays SESSION_NOT_FOUND (R9).
-- The functions are those of 0010/0012 with these changes only.

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

CREATE OR REPLACE FUNCTION send_message(
    p_session_id uuid, p_sender text, p_sender_id text, p_caller_merchant_id text, p_scope_platform_agent_id text,
    p_kind text, p_client_msg_id text, p_template_id text, p_content bytea,
    p_reply_timeout_override float8, p_remind_before float8, p_max_messages bigint, p_max_content_bytes bigint,
    p_idle_timeout_override float8 DEFAULT NULL,
    OUT session_id uuid, OUT seq bigint, OUT sender text, OUT sender_id text, OUT kind text,
    OUT client_msg_id text, OUT template_id text, OUT content bytea, OUT send_time timestamptz,
    OUT message_pb bytea, OUT first_reply_seconds float8, OUT merchant_id text, OUT reply_timeout_seconds float8
)
LANGUAGE plpgsql
-- Generic plans: a custom plan would inline and fold the encoders again on every call.
SET plan_cache_mode = force_generic_plan AS $$
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
