-- Sessions and messages. Every writer first locks the session row (lock_session), so the rules of
-- R5/R6 are applied by one transaction at a time per session.

-- name: lock_merchant_for_open
-- Also returns the session this platform agent ($2) already opened with this request id ($3), if any.
-- (After waiting for the lock that part may be stale: a concurrent twin's insert then fails on
-- sessions_request_id, and open_session replays it.)
SELECT m.disabled, rs.reply_timeout_seconds, prior.session_id AS prior_session_id, prior.request_hash AS prior_hash
FROM merchants m
JOIN reception_settings rs USING (merchant_id)
LEFT JOIN sessions prior ON prior.platform_agent_id = $2 AND prior.request_id = $3
WHERE m.merchant_id = $1
FOR UPDATE OF m;

-- name: find_session_by_request
SELECT session_id, request_hash FROM sessions WHERE platform_agent_id = $1 AND request_id = $2;

-- name: assignment_candidates
-- $2: seconds within which a stream's server must have refreshed its presence row.
SELECT e.agent_id, e.open_sessions, e.capacity, e.last_assign_time,
       EXISTS (SELECT 1 FROM agent_presence p
               WHERE p.merchant_id = e.merchant_id AND p.agent_id = e.agent_id
                 AND p.seen_time > clock_timestamp() - make_interval(secs => $2)) AS connected
FROM agent_eligibility e
WHERE e.merchant_id = $1 AND e.eligible;

-- name: take_assignment
UPDATE agents SET open_sessions = open_sessions + 1, last_assign_time = clock_timestamp()
WHERE merchant_id = $1 AND agent_id = $2;

-- name: insert_session
INSERT INTO sessions (session_id, merchant_id, assigned_agent_id, platform_agent_id, order_id, category,
                      request_id, request_hash, assignment, open_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, clock_timestamp());

-- name: merchant_caller
-- R1/R9: where a merchant agent ($2) stands in its shop ($1) now; no row: not an agent of that shop.
SELECT a.disabled, a.im_permission, (m.main_account_id = a.agent_id) AS main_account
FROM agents a JOIN merchants m ON m.merchant_id = a.merchant_id
WHERE a.merchant_id = $1 AND a.agent_id = $2;

-- name: lock_session
-- $2: the caller's agent id, to tell whether it may use IM. $3 merchant, $4 assigned agent, $5 platform
-- agent: the caller's scope (R9, NULL = any). The scope is part of the query so that a session outside
-- it is neither returned nor locked nor waited for: "exists but not yours" takes the path of "absent".
SELECT s.session_id, s.merchant_id, s.assigned_agent_id, s.platform_agent_id, s.state, s.last_seq,
       s.content_bytes, s.reply_deadline, rs.reply_timeout_seconds, t.ticket_id, s.open_time,
       NOT EXISTS (SELECT 1 FROM messages mm WHERE mm.session_id = s.session_id AND mm.sender = 'MERCHANT')
           AS awaiting_first_reply,
       coalesce(ca.im_permission AND NOT ca.disabled, false) AS caller_may_im
FROM sessions s
JOIN reception_settings rs ON rs.merchant_id = s.merchant_id
LEFT JOIN tickets t ON t.session_id = s.session_id
LEFT JOIN agents ca ON ca.merchant_id = s.merchant_id AND ca.agent_id = $2
WHERE s.session_id = $1
  AND ($3::text IS NULL OR s.merchant_id = $3)
  AND ($4::text IS NULL OR s.assigned_agent_id = $4)
  AND ($5::text IS NULL OR s.platform_agent_id = $5)
FOR UPDATE OF s;

-- name: find_message_by_client_id
-- A separate statement after lock_session on purpose: it must see what a transaction we waited for
-- committed (a join in the locking statement would read the snapshot from before the wait).
-- The key belongs to the verified sender ($2 side, $3 id), not to its side alone (issue 9 §7).
SELECT session_id, seq, sender, sender_id, kind, client_msg_id, template_id, content, send_time
FROM messages WHERE session_id = $1 AND sender = $2 AND sender_id = $3 AND client_msg_id = $4;

-- name: append_message
-- SPEC R5 with the database clock, one instant per message: a platform message starts the reply
-- deadline unless one is running; a merchant message clears it. $6: reply timeout, $7: remind
-- before (seconds). The caller holds the session row lock and has checked the session is open.
-- SPEC R7 size bound: no row (so no message) when the session already holds $10 messages or the
-- content would take its stored bytes past $11; the caller tells which from the locked row.
WITH t AS (SELECT clock_timestamp() AS at),
s AS (
    UPDATE sessions SET
        last_seq = last_seq + 1,
        content_bytes = content_bytes + octet_length($9::bytea),
        reply_deadline = CASE
            WHEN $2 = 'MERCHANT' THEN NULL
            ELSE coalesce(reply_deadline, (SELECT at FROM t) + make_interval(secs => $6)) END,
        remind_time = CASE
            WHEN $2 = 'MERCHANT' THEN NULL
            WHEN reply_deadline IS NOT NULL THEN remind_time
            ELSE greatest((SELECT at FROM t), (SELECT at FROM t) + make_interval(secs => $6 - $7)) END
    WHERE session_id = $1 AND state = 'OPEN'
      AND last_seq < $10 AND content_bytes + octet_length($9::bytea) <= $11
    RETURNING session_id, last_seq
)
INSERT INTO messages (session_id, seq, sender, sender_id, kind, client_msg_id, template_id, content, send_time)
SELECT s.session_id, s.last_seq, $2, $3, $4, $5, $8, $9, (SELECT at FROM t) FROM s
RETURNING session_id, seq, sender, sender_id, kind, client_msg_id, template_id, content, send_time;

-- name: session_size
-- What the R7 size bound counts: messages (last_seq) and their stored content bytes.
SELECT last_seq, content_bytes FROM sessions WHERE session_id = $1;

-- name: end_session
UPDATE sessions SET state = 'ENDED', close_reason = $2, close_time = clock_timestamp(),
                    reply_deadline = NULL, remind_time = NULL
WHERE session_id = $1 AND state = 'OPEN'
RETURNING session_id, merchant_id, assigned_agent_id, platform_agent_id, order_id, category, open_time, close_time;

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

-- name: insert_ticket
INSERT INTO tickets (ticket_id, session_id, merchant_id, reason, category, handle_by, transcript_digest, payload, create_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9);

-- name: insert_outbox
INSERT INTO outbox (topic, message_key, event_id, content_type, payload, traceparent) VALUES ($1, $2, $3, $4, $5, $6);

-- name: get_template_body
SELECT body FROM reply_templates WHERE merchant_id = $1 AND template_id = $2;

-- name: mark_read
-- R8 read receipts: the merchant has read up to $2 (never moves backwards, never past the last message).
UPDATE sessions SET merchant_read_seq = least(greatest(merchant_read_seq, $2), last_seq)
WHERE session_id = $1 AND merchant_read_seq < least($2, last_seq)
RETURNING merchant_read_seq, clock_timestamp() AS at;

-- name: watch_state
-- moves: the session's latest assignment step (0: never moved, SPEC R13).
SELECT state, merchant_read_seq, last_seq, assigned_agent_id,
       (SELECT coalesce(max(a.step), 0) FROM session_assignments a WHERE a.session_id = s.session_id) AS moves
FROM sessions s WHERE session_id = $1;

-- name: sessions_open
SELECT coalesce(sum(open_sessions), 0)::bigint FROM agents;
