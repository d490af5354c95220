-- 0010: one round trip per write RPC (issue 13 item 2). OpenSession, SendMessage/Reply and CloseSession
-- each run as one call of a server-side function in its own implicit transaction (open_session,
-- send_message, close_session), instead of 6-10 statements sent one at a time while the merchant or
-- session row is locked; the deadline worker runs the same ending (end_sessions_locked) after its
-- claim. docs/performance.md explains the write path: locks taken and in which order, and how the
-- event payloads are built. Later changes to these rules (e.g. the deadline a merchant message leaves,
-- in append_message_locked) are CREATE OR REPLACE FUNCTION in a later migration.
--
-- The rules stay where they were specified: escalation/domain/assignment.py (R2) and
-- escalation/domain/session.py (R5) are the pure specification, escalation/services/records.py the
-- row -> protobuf conversion; the integration tests prove these functions agree with them.
--
-- A refusal is raised with SQLSTATE EX001, the domain error's reason in HINT and what its message
-- needs in DETAIL; escalation/store/db.py translate() turns it into that domain error.

-- --- protobuf wire format (https://protobuf.dev/programming-guides/encoding/) ------------------------
-- proto3 leaves a scalar at its default (0, '', false) out; a set message field is always written,
-- even when empty. These follow that, field by field in number order, as Python's serializer does, so
-- a payload built here is byte for byte what records.py + SerializeToString() would have stored.

-- Cost: these run on every write, so they are written to be cheap. The SQL-language ones are single
-- expressions that PostgreSQL inlines into the calling query when their arguments are simple (a column,
-- a variable), so a renderer costs a few expression evaluations instead of function calls (a SQL
-- function that is not inlined is planned again on every call from PL/pgSQL: about a millisecond).
-- So: callers pass variables or columns, not nested encodings (those are first assigned to a
-- variable), and a function using a STABLE builtin (convert_to, to_char) is declared STABLE, not
-- IMMUTABLE, which would forbid inlining it. Only what needs a statement (a loop) is PL/pgSQL.

-- Base-128 varint of a value >= 0: one byte inline (tags, small counts and lengths: most of them), longer
-- ones by this loop. (A longer inline expression costs more to set up on every call than it saves.)
CREATE FUNCTION pb_varint_long(value bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
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

CREATE FUNCTION pb_varint(value bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value >= 0 AND value < 128 THEN set_byte('\x00'::bytea, 0, value::int)
                ELSE pb_varint_long(value) END
$$;

-- A length-delimited field (wire type 2): a string's UTF-8 bytes, bytes, or an embedded message.
-- NULL is "not set" (nothing written); an empty value is written, as a set message field is.
CREATE FUNCTION pb_len_field(field int, value bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL THEN '\x'::bytea
                ELSE pb_varint(field::bigint << 3 | 2) || pb_varint(octet_length(value)) || value END
$$;

CREATE FUNCTION pb_string_field(field int, value text) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT pb_len_field(field, nullif(convert_to(value, 'UTF8'), '\x'::bytea))
$$;

-- int32/int64/enum/bool fields of non-negative values (wire type 0).
CREATE FUNCTION pb_uint_field(field int, value bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL OR value = 0 THEN '\x'::bytea
                ELSE pb_varint(field::bigint << 3) || pb_varint(value) END
$$;

-- A double (wire type 1): IEEE 754, little-endian (float8send is big-endian).
CREATE FUNCTION pb_double_field(field int, value float8) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL OR value = 0 THEN '\x'::bytea
                ELSE pb_varint(field::bigint << 3 | 1)
                     || substr(float8send(value), 8, 1) || substr(float8send(value), 7, 1)
                     || substr(float8send(value), 6, 1) || substr(float8send(value), 5, 1)
                     || substr(float8send(value), 4, 1) || substr(float8send(value), 3, 1)
                     || substr(float8send(value), 2, 1) || substr(float8send(value), 1, 1) END
$$;

-- The bytes pb_uint_field writes for a field number below 16 (a one-byte tag), without writing them.
CREATE FUNCTION pb_uint_field_size(value bigint) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL OR value = 0 THEN 0 ELSE 1 + octet_length(pb_varint(value)) END
$$;

-- google.protobuf.Timestamp{seconds (1), nanos (2)} as a field. Its length (at most 12 bytes) is
-- computed, not measured, so that the field is one inlinable expression.
CREATE FUNCTION pb_timestamp_parts_field(field int, seconds bigint, nanos bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pb_varint(field::bigint << 3 | 2)
        || set_byte('\x00'::bytea, 0, pb_uint_field_size(seconds) + pb_uint_field_size(nanos))
        || pb_uint_field(1, seconds) || pb_uint_field(2, nanos)
$$;

-- google.protobuf.Timestamp as records.timestamp() sets it: seconds and nanos of the microsecond value.
CREATE FUNCTION pb_timestamp_field(field int, value timestamptz) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
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

-- --- rows -> escalation.v1 messages (the same fields as escalation/services/records.py) --------------

-- escalation.v1.Category and CloseReason numbers of the names the tables store.
CREATE FUNCTION pb_category(category text) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE category WHEN 'REFUND' THEN 1 WHEN 'ORDER_OPERATION' THEN 2 WHEN 'EXCHANGE' THEN 3
                         WHEN 'PRODUCT' THEN 4 WHEN 'NEGOTIATED_REFUND' THEN 5 WHEN 'LOGISTICS' THEN 6 END
$$;

CREATE FUNCTION pb_close_reason(reason text) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE reason WHEN 'RESOLVED' THEN 1 WHEN 'PLATFORM_ESCALATED' THEN 2 WHEN 'MERCHANT_TIMEOUT' THEN 3 END
$$;

-- escalation.v1.Message (records.message).
CREATE FUNCTION message_pb(m messages) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT pb_string_field(1, m.session_id::text)
        || pb_uint_field(2, m.seq)
        || pb_uint_field(3, CASE m.sender WHEN 'PLATFORM' THEN 1 WHEN 'MERCHANT' THEN 2 END)
        || pb_string_field(4, m.sender_id)
        || pb_string_field(5, m.client_msg_id)
        || pb_timestamp_field(6, m.send_time)
        || pb_len_field(7, m.content)
        || pb_string_field(8, m.template_id)
$$;

-- escalation.v1.Session (records.session); ticket_id comes from the tickets row, when there is one.
CREATE FUNCTION session_pb(s sessions, ticket_id uuid) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
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

-- escalation.v1.MerchantEvent as store/events.py append() stores it: session_id (3) and the one kind
-- field (10 session_assigned, 11 message_added, 13 session_closed, ...) holding ``body``; cursor and
-- event_time are the row's columns, put in by readers (events.from_row).
CREATE FUNCTION merchant_event_pb(session_id uuid, kind_field int, body bytea) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT pb_string_field(3, session_id::text) || pb_len_field(kind_field, body)
$$;

-- --- shared steps ---------------------------------------------------------------------------------

CREATE FUNCTION raise_refusal(reason text, detail text DEFAULT '') RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'refused: %', reason USING ERRCODE = 'EX001', HINT = reason, DETAIL = coalesce(detail, '');
END $$;

-- store/sql/events.sql append_events as a step of a function: appends events to one merchant's log.
-- Bumping the merchant row locks it until commit, so cursors are gapless and commit in order.
-- (PL/pgSQL, not SQL: its statement's plan is cached for the session instead of planned on every call.)
CREATE FUNCTION append_merchant_events(
    p_merchant_id text, p_kinds text[], p_session_ids uuid[], p_agent_ids text[], p_payloads bytea[]
) RETURNS void
LANGUAGE plpgsql AS $$
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

-- Appends one message to a session whose row the caller has locked and seen OPEN (SPEC R4, R5, R7).
-- One database instant per message: its send_time and the deadline it starts. Refuses with
-- SESSION_FULL when the session already holds p_max_messages messages or the content would take its
-- stored bytes past p_max_content_bytes (R7; DETAIL says which bound, and the message's size).
CREATE FUNCTION append_message_locked(
    p_session_id uuid, p_sender text, p_sender_id text, p_kind text, p_client_msg_id text, p_template_id text,
    p_content bytea, p_reply_timeout float8, p_remind_before float8, p_max_messages bigint,
    p_max_content_bytes bigint
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
            ELSE greatest(at, at + make_interval(secs => p_reply_timeout - p_remind_before)) END
        -- ===== end of the deadline rule ==========================================================
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

-- --- SendMessage, Reply, and a reply frame of Connect ------------------------------------------------

-- Appends a platform message (p_sender 'PLATFORM') or a merchant reply ('MERCHANT') to a session in
-- the caller's scope (SPEC R3, R4, R5, R7, R9), with its MessageAdded event (R8). Returns the message
-- row, the escalation.v1.Message it is (message_pb), for the session's first merchant message the
-- seconds since it opened (first_reply_seconds, for the metric; NULL otherwise), and the session's
-- merchant_id and the reply timeout in force (seconds), for what the caller does after the commit.
--
-- Scope: p_caller_merchant_id is the shop of a merchant caller (NULL for the platform), whose standing
-- is read here; p_scope_platform_agent_id limits a platform caller to the sessions it opened (NULL:
-- a supervisor, all). A session outside the scope is neither locked nor waited for: SESSION_NOT_FOUND.
--
-- Order (each step a statement of its own, so it sees what a transaction we waited for committed):
-- caller's standing; session row lock; the client_msg_id replay (before every check of current
-- state, R4); IM permission; template; session open (R6); append; event (merchant row lock).
-- Refusals: IM_PERMISSION_REQUIRED, AGENT_DISABLED, SESSION_NOT_FOUND, CLIENT_MSG_ID_REUSED,
-- TEMPLATE_NOT_FOUND, SESSION_CLOSED (DETAIL: the ticket id or ''), SESSION_FULL.
CREATE FUNCTION send_message(
    p_session_id uuid, p_sender text, p_sender_id text, p_caller_merchant_id text, p_scope_platform_agent_id text,
    p_kind text, p_client_msg_id text, p_template_id text, p_content bytea,
    p_reply_timeout_override float8, p_remind_before float8, p_max_messages bigint, p_max_content_bytes bigint,
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
        reply_timeout_seconds, p_remind_before, p_max_messages, p_max_content_bytes);
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

-- --- OpenSession ----------------------------------------------------------------------------------

-- SPEC R2's order of two candidates, exactly (domain/assignment.py _key): lower saturation
-- open/capacity, compared as open_a * capacity_b < open_b * capacity_a (no rounding: 1/3 and 2/6 tie);
-- then the least recently assigned, never-assigned first; then agent id by code point (COLLATE "C",
-- as Python compares strings, whatever the database's collation).
CREATE FUNCTION assignment_precedes(
    a_open int, a_capacity int, a_last timestamptz, a_agent text,
    b_open int, b_capacity int, b_last timestamptz, b_agent text
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN a_open::bigint * b_capacity <> b_open::bigint * a_capacity
            THEN a_open::bigint * b_capacity < b_open::bigint * a_capacity
        WHEN (a_last IS NULL) <> (b_last IS NULL) THEN a_last IS NULL
        WHEN a_last <> b_last THEN a_last < b_last
        ELSE a_agent COLLATE "C" < b_agent COLLATE "C" END
$$;

-- Opens a session for p_merchant_id and assigns it (SPEC R2) with its opening platform messages
-- (p_kinds/p_contents, R4, R5) and their events (R8: SessionAssigned, then MessageAdded each), or
-- replays the session this platform agent already opened with this request id (AIP-155).
-- Returns replayed, the session (opened_session row, session_pb: escalation.v1.Session), the opening messages
-- (opened_messages rows, message_pbs), the winner's saturation before the open and the reply timeout
-- in force (seconds; both NULL on a replay).
--
-- Locks, in order: the merchant row (FOR UPDATE: one pick at a time per shop, and the shop's event
-- cursor later), the winner's agent row (the count increment). The request id lookup comes after the
-- merchant lock, in a statement of its own, so it sees a twin that we waited for; a twin opened for
-- another merchant at the same moment is caught by the unique index (ON CONFLICT DO NOTHING waits for
-- it) and replayed too.
-- Refusals: REQUEST_ID_REUSED, MERCHANT_NOT_FOUND, MERCHANT_DISABLED, NO_ELIGIBLE_AGENT, SESSION_FULL.
CREATE FUNCTION open_session(
    p_platform_agent_id text, p_request_id text, p_request_hash bytea, p_merchant_id text, p_category text,
    p_order_id text, p_kinds text[], p_contents bytea[], p_rule_version text, p_presence_window float8,
    p_reply_timeout_override float8, p_remind_before float8, p_max_messages bigint, p_max_content_bytes bigint,
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
                    reply_timeout_seconds, p_remind_before, p_max_messages, p_max_content_bytes);
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

-- --- Ending: CloseSession and the deadline worker ----------------------------------------------------

-- google.protobuf.Timestamp.ToJsonString() of a microsecond value: RFC 3339 in UTC with 0, 3 or 6
-- fractional digits, as the transcript digest covers it (domain/tickets.py canonical()).
CREATE FUNCTION pb_json_time(value timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(value AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN extract(microseconds FROM value)::bigint % 1000000 = 0 THEN 'Z'
                WHEN extract(microseconds FROM value)::bigint % 1000 = 0
                    THEN '.' || lpad((extract(microseconds FROM value)::bigint % 1000000 / 1000)::text, 3, '0') || 'Z'
                ELSE '.' || lpad((extract(microseconds FROM value)::bigint % 1000000)::text, 6, '0') || 'Z' END
$$;

-- The bytes of one message that the transcript digest chain covers: domain/tickets.py canonical(),
-- each part prefixed with its length as 8 bytes big-endian (int8send).
CREATE FUNCTION transcript_part(m messages) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT int8send(octet_length(m.seq::text)) || convert_to(m.seq::text, 'UTF8')
        || int8send(octet_length('SENDER_' || m.sender)) || convert_to('SENDER_' || m.sender, 'UTF8')
        || int8send(octet_length(convert_to(m.sender_id, 'UTF8'))) || convert_to(m.sender_id, 'UTF8')
        || int8send(octet_length(pb_json_time(m.send_time))) || convert_to(pb_json_time(m.send_time), 'UTF8')
        || int8send(octet_length(convert_to(coalesce(m.template_id, ''), 'UTF8')))
        || convert_to(coalesce(m.template_id, ''), 'UTF8')
        || int8send(octet_length(m.content)) || m.content
$$;

-- What ending sessions writes (SPEC R6, R7), the one place for every way a session ends: the platform's
-- close (close_session below) and the deadline worker's batch (services/ending.py, after its claim).
-- p_session_ids have just been ended (state ENDED, close_time set) by the caller's statement, which
-- holds their row locks. For each, in close order (close_time, session_id):
--   - when p_makes_ticket (domain/session.py CloseReason.makes_ticket: the rule of which reasons make
--     one stays in Python): the escalation.v1.ServiceTicket (services/tickets.py
--     build() is the specification: transcript, SLA deadline handle_by = close_time + the category's
--     p_sla_seconds, SHA-256 chained digest) and its outbox row (p_topic, key = merchant id, event_id =
--     ticket id, p_content_type, p_traceparent: the span that ends it, docs/tracing.md);
--   - the merchant's SessionClosed (and TicketCreated) events, merchants locked in merchant id order;
--   - one open session less for its agent (agent rows locked in one order).
-- Lock order: sessions (the caller's), merchants, agents — as everywhere else (store/events.py).
-- Returns the ended sessions as read back, each with its ticket_id, handle_by and session_pb.
CREATE FUNCTION end_sessions_locked(
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
                || pb_string_field(14, p_digest_algorithm) || pb_timestamp_field(15, s.close_time);
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

-- CloseSession (SPEC R6, R7, R9): ends a session in the platform caller's scope (p_scope_platform_agent_id:
-- the agent that opened it; NULL: a supervisor) as p_reason, and writes what that means
-- (end_sessions_locked, with the same ticket/SLA/topic/trace parameters). Locks the session row first; outside
-- the scope: SESSION_NOT_FOUND, never waited for. Returns the ended session (with ticket_id) and its
-- escalation.v1.Session. Refusals: SESSION_NOT_FOUND, SESSION_CLOSED (DETAIL: the ticket id or '').
CREATE FUNCTION close_session(
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
                           reply_deadline = NULL, remind_time = NULL
    WHERE ss.session_id = p_session_id;
    RETURN QUERY SELECT * FROM end_sessions_locked(
        ARRAY[p_session_id], p_reason, p_makes_ticket, p_sla_categories, p_sla_seconds, p_digest_algorithm,
        p_topic, p_content_type, p_traceparent);
END $$;
