-- The PostgreSQL work of one SendMessage from a platform agent (with a client_msg_id), statement for
-- statement as escalation/services/sessions.py (add_message) sends it today: 6 round trips, BEGIN and
-- COMMIT included (a platform caller's scope needs no directory read). Conventions as in
-- open_session.sql: :variables are bound parameters (pgbench -M prepared), ids are numbers. The bench
-- opens sessions 1..:sessions beforehand with open_session.sql, session n for merchant
-- n % :merchants + 1 and its first agent, and bench_session(n) is its id (a helper in the bench
-- database, inlined: a subscript of a constant array); each message goes to one of them at random
-- (more sessions than clients, so rarely two wait on one row, as in the gRPC measurement).
--
-- When SendMessage becomes one server-side function call, this file becomes that one SELECT.
\set session random(1, :sessions)
\set merchant :session % :merchants + 1
\set agent :merchant * 10 + 1
\set client_msg random(1, 9223372036854775806)
BEGIN;
-- name: lock_session
SELECT s.session_id, s.merchant_id, s.assigned_agent_id, s.platform_agent_id, s.state, s.last_seq,
       s.content_bytes, s.reply_deadline, rs.reply_timeout_seconds, t.ticket_id, s.open_time,
       NOT EXISTS (SELECT 1 FROM messages mm WHERE mm.session_id = s.session_id AND mm.sender = 'MERCHANT')
           AS awaiting_first_reply,
       coalesce(ca.im_permission AND NOT ca.disabled, false) AS caller_may_im
FROM sessions s
JOIN reception_settings rs ON rs.merchant_id = s.merchant_id
LEFT JOIN tickets t ON t.session_id = s.session_id
LEFT JOIN agents ca ON ca.merchant_id = s.merchant_id AND ca.agent_id = :platform_agent
WHERE s.session_id = bench_session(:session)
  AND (NULL::text IS NULL OR s.merchant_id = NULL)
  AND (NULL::text IS NULL OR s.assigned_agent_id = NULL)
  AND (:platform_agent::text IS NULL OR s.platform_agent_id = :platform_agent)
FOR UPDATE OF s;
-- name: find_message_by_client_id
SELECT session_id, seq, sender, sender_id, kind, client_msg_id, template_id, content, send_time
FROM messages WHERE session_id = bench_session(:session) AND sender = :sender AND sender_id = :platform_agent AND client_msg_id = :client_msg;
-- name: append_message
WITH t AS (SELECT clock_timestamp() AS at),
s AS (
    UPDATE sessions SET
        last_seq = last_seq + 1,
        content_bytes = content_bytes + octet_length(:follow_up::bytea),
        reply_deadline = CASE
            WHEN :sender = 'MERCHANT' THEN NULL
            ELSE coalesce(reply_deadline, (SELECT at FROM t) + make_interval(secs => :reply_timeout)) END,
        remind_time = CASE
            WHEN :sender = 'MERCHANT' THEN NULL
            WHEN reply_deadline IS NOT NULL THEN remind_time
            ELSE greatest((SELECT at FROM t), (SELECT at FROM t) + make_interval(secs => :reply_timeout::float8 - :remind_before)) END
    WHERE session_id = bench_session(:session) AND state = 'OPEN'
      AND last_seq < :max_messages AND content_bytes + octet_length(:follow_up::bytea) <= :max_content_bytes
    RETURNING session_id, last_seq
)
INSERT INTO messages (session_id, seq, sender, sender_id, kind, client_msg_id, template_id, content, send_time)
SELECT s.session_id, s.last_seq, :sender, :platform_agent, :kind, :client_msg, NULL, :follow_up, (SELECT at FROM t) FROM s
RETURNING session_id, seq, sender, sender_id, kind, client_msg_id, template_id, content, send_time;
-- name: append_events
WITH bump AS (
    UPDATE merchants SET last_event_cursor = last_event_cursor + cardinality(:send_kinds::text[])
    WHERE merchant_id = :merchant
    RETURNING last_event_cursor - cardinality(:send_kinds::text[]) AS base, clock_timestamp() AS at
)
INSERT INTO merchant_events (merchant_id, cursor, session_id, agent_id, kind, payload, event_time)
SELECT :merchant, bump.base + e.ord, e.session_id, e.agent_id, e.kind, e.payload, bump.at
FROM bump,
     unnest(:send_kinds::text[], ARRAY[bench_session(:session)]::uuid[], ARRAY[:agent]::text[], :send_payloads::bytea[]) WITH ORDINALITY AS e(kind, session_id, agent_id, payload, ord)
RETURNING cursor;
COMMIT;
