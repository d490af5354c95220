-- Sessions and messages. Every writer first locks the session row (lock_session, or inside the write
-- functions of migrations/0010), so the rules of R5/R6 are applied by one transaction at a time per session.

-- name: merchant_caller
-- R1/R9: where a merchant agent ($2) stands in its shop ($1) now; no row: not an agent of that shop.
SELECT a.disabled, a.im_permission, (m.main_account_id = a.agent_id) AS main_account
FROM agents a JOIN merchants m ON m.merchant_id = a.merchant_id
WHERE a.merchant_id = $1 AND a.agent_id = $2;

-- name: lock_session
-- $2 merchant, $3 assigned agent, $4 platform agent: the caller's scope (R9, NULL = any). The scope is
-- part of the query so that a session outside it is neither returned nor locked nor waited for:
-- "exists but not yours" takes the path of "absent". (Messages: send_message in migrations/0010.)
SELECT s.session_id, s.merchant_id, s.assigned_agent_id, s.platform_agent_id, s.state, t.ticket_id
FROM sessions s
LEFT JOIN tickets t ON t.session_id = s.session_id
WHERE s.session_id = $1
  AND ($2::text IS NULL OR s.merchant_id = $2)
  AND ($3::text IS NULL OR s.assigned_agent_id = $3)
  AND ($4::text IS NULL OR s.platform_agent_id = $4)
FOR UPDATE OF s;

-- name: get_session
SELECT s.session_id, s.merchant_id, s.assigned_agent_id, s.platform_agent_id, s.order_id, s.category, s.state,
       s.close_reason, s.open_time, s.close_time, s.reply_deadline, s.last_seq, s.assignment, t.ticket_id
FROM sessions s
LEFT JOIN tickets t ON t.session_id = s.session_id
WHERE s.session_id = $1;

-- name: get_session_in_scope
-- get_session within the caller's scope (R9): $2 merchant, $3 assigned agent, $4 platform agent, NULL = any.
SELECT s.session_id, s.merchant_id, s.assigned_agent_id, s.platform_agent_id, s.order_id, s.category, s.state,
       s.close_reason, s.open_time, s.close_time, s.reply_deadline, s.last_seq, s.assignment, t.ticket_id
FROM sessions s
LEFT JOIN tickets t ON t.session_id = s.session_id
WHERE s.session_id = $1
  AND ($2::text IS NULL OR s.merchant_id = $2)
  AND ($3::text IS NULL OR s.assigned_agent_id = $3)
  AND ($4::text IS NULL OR s.platform_agent_id = $4);

-- name: list_sessions
-- Newest first; keyset paging on (open_time, session_id). NULL parameters mean "no filter".
-- $1 merchant, $2 assigned agent, $3 platform agent, $4 state, $5 opened at or after, $6 opened before,
-- $7/$8 the last row of the previous page, $9 limit.
SELECT s.session_id, s.merchant_id, s.assigned_agent_id, s.platform_agent_id, s.order_id, s.category, s.state,
       s.close_reason, s.open_time, s.close_time, s.reply_deadline, s.last_seq, s.assignment, t.ticket_id
FROM sessions s
LEFT JOIN tickets t ON t.session_id = s.session_id
WHERE ($1::text IS NULL OR s.merchant_id = $1)
  AND ($2::text IS NULL OR s.assigned_agent_id = $2)
  AND ($3::text IS NULL OR s.platform_agent_id = $3)
  AND ($4::text IS NULL OR s.state = $4)
  AND ($5::timestamptz IS NULL OR s.open_time >= $5)
  AND ($6::timestamptz IS NULL OR s.open_time < $6)
  AND ($7::timestamptz IS NULL OR (s.open_time, s.session_id) < ($7, $8::uuid))
ORDER BY s.open_time DESC, s.session_id DESC
LIMIT $9;

-- name: list_messages
SELECT session_id, seq, sender, sender_id, kind, client_msg_id, template_id, content, send_time
FROM messages WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3;

-- name: mark_read
-- R8 read receipts: the merchant has read up to $2 (never moves backwards, never past the last message).
UPDATE sessions SET merchant_read_seq = least(greatest(merchant_read_seq, $2), last_seq)
WHERE session_id = $1 AND merchant_read_seq < least($2, last_seq)
RETURNING merchant_read_seq, clock_timestamp() AS at;

-- name: watch_state
SELECT state, merchant_read_seq, last_seq FROM sessions WHERE session_id = $1;

-- name: sessions_open
SELECT coalesce(sum(open_sessions), 0)::bigint FROM agents;

-- name: send_message
-- One round trip for SendMessage, Reply and a Connect reply frame (migrations/0010 send_message).
SELECT * FROM send_message(
    p_session_id => $1, p_sender => $2, p_sender_id => $3, p_caller_merchant_id => $4,
    p_scope_platform_agent_id => $5, p_kind => $6, p_client_msg_id => $7, p_template_id => $8, p_content => $9,
    p_reply_timeout_override => $10, p_remind_before => $11, p_max_messages => $12, p_max_content_bytes => $13,
    p_idle_timeout_override => $14);

-- name: open_session
-- One round trip for OpenSession (migrations/0010 open_session).
SELECT * FROM open_session(
    p_platform_agent_id => $1, p_request_id => $2, p_request_hash => $3, p_merchant_id => $4, p_category => $5,
    p_order_id => $6, p_kinds => $7, p_contents => $8, p_rule_version => $9, p_presence_window => $10,
    p_reply_timeout_override => $11, p_remind_before => $12, p_max_messages => $13, p_max_content_bytes => $14,
    p_idle_timeout_override => $15);

-- name: close_session
-- One round trip for CloseSession (migrations/0010 close_session).
SELECT * FROM close_session(
    p_session_id => $1, p_scope_platform_agent_id => $2, p_reason => $3, p_makes_ticket => $4,
    p_sla_categories => $5, p_sla_seconds => $6, p_digest_algorithm => $7, p_topic => $8, p_content_type => $9,
    p_traceparent => $10);

-- name: end_sessions_locked
-- What ending writes, for sessions the caller's statement has just ended (migrations/0010).
SELECT * FROM end_sessions_locked(
    p_session_ids => $1, p_reason => $2, p_makes_ticket => $3, p_sla_categories => $4, p_sla_seconds => $5,
    p_digest_algorithm => $6, p_topic => $7, p_content_type => $8, p_traceparent => $9);
