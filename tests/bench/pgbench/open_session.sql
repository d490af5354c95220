-- The PostgreSQL work of one OpenSession (one opening message), statement for statement as
-- escalation/services/sessions.py sends it today: 9 round trips, BEGIN and COMMIT included.
-- Run by `make bench` with `pgbench -M prepared`: every :variable is a bound parameter, as the
-- service's $n are. Each statement names the query of escalation/store/sql/ it reproduces; a test
-- (tests/integration/test_bench_pgbench_scripts.py) checks that the texts agree.
--
-- pgbench variables are numbers, so the bench database names merchants "1".."N", merchant m's agents
-- "m1".."m3" (as the number m*10+a), and session n's id is bench_uuid(n) (a helper defined in that
-- database: the number as 32 hex digits). The assignment rule runs in Python in the service, not
-- here: the script takes one of the merchant's agents at random, which is the same row work.
-- Constant payloads (:opening, :assignment, :open_payloads...) are real serialized protobufs the
-- bench computes with the service's own code and passes with -D.
--
-- When OpenSession becomes one server-side function call, this file becomes that one SELECT.
\set merchant random(1, :merchants)
\set agent :merchant * 10 + random(1, 3)
\set session random(1, 9223372036854775806)
\set request random(1, 9223372036854775806)
BEGIN;
-- name: lock_merchant_for_open
SELECT m.disabled, rs.reply_timeout_seconds, prior.session_id AS prior_session_id, prior.request_hash AS prior_hash
FROM merchants m
JOIN reception_settings rs USING (merchant_id)
LEFT JOIN sessions prior ON prior.platform_agent_id = :platform_agent AND prior.request_id = :request
WHERE m.merchant_id = :merchant
FOR UPDATE OF m;
-- name: assignment_candidates
SELECT e.agent_id, e.open_sessions, e.capacity, e.last_assign_time,
       EXISTS (SELECT 1 FROM agent_presence p
               WHERE p.merchant_id = e.merchant_id AND p.agent_id = e.agent_id
                 AND p.seen_time > clock_timestamp() - make_interval(secs => :presence_window)) AS connected
FROM agent_eligibility e
WHERE e.merchant_id = :merchant AND e.eligible;
-- name: take_assignment
UPDATE agents SET open_sessions = open_sessions + 1, last_assign_time = clock_timestamp()
WHERE merchant_id = :merchant AND agent_id = :agent;
-- name: insert_session
INSERT INTO sessions (session_id, merchant_id, assigned_agent_id, platform_agent_id, order_id, category,
                      request_id, request_hash, assignment, open_time)
VALUES (bench_uuid(:session), :merchant, :agent, :platform_agent, :request, :category, :request, :request_hash, :assignment, clock_timestamp());
-- name: append_message
WITH t AS (SELECT clock_timestamp() AS at),
s AS (
    UPDATE sessions SET
        last_seq = last_seq + 1,
        content_bytes = content_bytes + octet_length(:opening::bytea),
        reply_deadline = CASE
            WHEN :sender = 'MERCHANT' THEN NULL
            ELSE coalesce(reply_deadline, (SELECT at FROM t) + make_interval(secs => :reply_timeout)) END,
        remind_time = CASE
            WHEN :sender = 'MERCHANT' THEN NULL
            WHEN reply_deadline IS NOT NULL THEN remind_time
            ELSE greatest((SELECT at FROM t), (SELECT at FROM t) + make_interval(secs => :reply_timeout::float8 - :remind_before)) END
    WHERE session_id = bench_uuid(:session) AND state = 'OPEN'
      AND last_seq < :max_messages AND content_bytes + octet_length(:opening::bytea) <= :max_content_bytes
    RETURNING session_id, last_seq
)
INSERT INTO messages (session_id, seq, sender, sender_id, kind, client_msg_id, template_id, content, send_time)
SELECT s.session_id, s.last_seq, :sender, :platform_agent, :kind, NULL, NULL, :opening, (SELECT at FROM t) FROM s
RETURNING session_id, seq, sender, sender_id, kind, client_msg_id, template_id, content, send_time;
-- name: get_session
SELECT s.session_id, s.merchant_id, s.assigned_agent_id, s.platform_agent_id, s.order_id, s.category, s.state,
       s.close_reason, s.open_time, s.close_time, s.reply_deadline, s.last_seq, s.assignment, t.ticket_id
FROM sessions s
LEFT JOIN tickets t ON t.session_id = s.session_id
WHERE s.session_id = bench_uuid(:session);
-- name: append_events
WITH bump AS (
    UPDATE merchants SET last_event_cursor = last_event_cursor + cardinality(:open_kinds::text[])
    WHERE merchant_id = :merchant
    RETURNING last_event_cursor - cardinality(:open_kinds::text[]) AS base, clock_timestamp() AS at
)
INSERT INTO merchant_events (merchant_id, cursor, session_id, agent_id, kind, payload, event_time)
SELECT :merchant, bump.base + e.ord, e.session_id, e.agent_id, e.kind, e.payload, bump.at
FROM bump,
     unnest(:open_kinds::text[], ARRAY[bench_uuid(:session), bench_uuid(:session)]::uuid[], ARRAY[:agent, :agent]::text[], :open_payloads::bytea[]) WITH ORDINALITY AS e(kind, session_id, agent_id, payload, ord)
RETURNING cursor;
COMMIT;
