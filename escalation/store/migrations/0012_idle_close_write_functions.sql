-- 0012 (after 0010 and 0011): SPEC R12 in the write functions of 0010, which were
-- written before the idle deadline existed. append_message_locked gets the idle block (a merchant
-- message starts or restarts the idle deadline, a platform message cancels it: domain/session.py
-- after_message) and the dev override p_idle_timeout_override, threaded through send_message and
-- open_session; pb_close_reason knows IDLE (CLOSE_REASON_IDLE = 4); close_session clears the idle deadline.
-- Which reasons make a ticket is the caller's p_makes_ticket (CloseReason.makes_ticket: IDLE makes none).
-- The functions are those of 0010 with these changes only.

CREATE OR REPLACE FUNCTION pb_close_reason(reason text) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE reason WHEN 'RESOLVED' THEN 1 WHEN 'PLATFORM_ESCALATED' THEN 2 WHEN 'MERCHANT_TIMEOUT' THEN 3
                       WHEN 'IDLE' THEN 4 END
$$;

-- Replaced below with one more parameter (defaulted, so every existing call still resolves); dropped
-- and created in this one transaction, so no caller sees neither.
-- squawk-ignore ban-drop-function
DROP FUNCTION send_message(uuid, text, text, text, text, text, text, text, bytea, float8, float8, bigint, bigint);
-- squawk-ignore ban-drop-function
DROP FUNCTION open_session(text, text, bytea, text, text, text, text[], bytea[], text, float8, float8, float8, bigint, bigint);
-- squawk-ignore ban-drop-function
DROP FUNCTION append_message_locked(uuid, text, text, text, text, text, bytea, float8, float8, bigint, bigint);

CREATE FUNCTION append_message_locked(
    p_session_id uuid, p_sender text, p_sender_id text, p_kind text, p_client_msg_id text, p_template_id text,
    p_content bytea, p_reply_timeout float8, p_remind_before float8, p_max_messages bigint,
    p_max_content_bytes bigint, p_idle_timeout_override float8
) RETURNS messages
LANGUAGE plpgsql AS $$
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

CREATE FUNCTION send_message(
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
        PERFORM raise_refusal('SESSION_NOT_FOUND');
    END IF;
    merchant_id := s.merchant_id;
    reply_timeout_seconds := coalesce(p_reply_timeout_override, s.reply_timeout_seconds);

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

CREATE FUNCTION open_session(
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
    FOR UPDATE OF m;
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

-- close_session of 0010, clearing the idle deadline too (an ended session has none pending).
-- CloseSession (SPEC R6, R7, R9): ends a session in the platform caller's scope (p_scope_platform_agent_id:
-- the agent that opened it; NULL: a supervisor) as p_reason, and writes what that means
-- (end_sessions_locked, with the same ticket/SLA/topic/trace parameters). Locks the session row first; outside
-- the scope: SESSION_NOT_FOUND, never waited for. Returns the ended session (with ticket_id) and its
-- escalation.v1.Session. Refusals: SESSION_NOT_FOUND, SESSION_CLOSED (DETAIL: the ticket id or '').
CREATE OR REPLACE FUNCTION close_session(
    p_session_id uuid, p_scope_platform_agent_id text, p_reason text, p_makes_ticket boolean, p_sla_categories text[],
    p_sla_seconds float8[], p_digest_algorithm text, p_topic text, p_content_type text, p_traceparent text
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
