-- Reply timeliness (SPEC R10). escalation.domain.timeliness defines every figure as pure Python;
-- this computes the same in one statement, and an integration test replays random timelines through
-- both. docs/stats.md explains the definitions.

-- name: database_now
SELECT clock_timestamp();

-- name: response_figures
-- One row per merchant in $1 that opened a session in [$3, $4) (assigned to agent $2 unless NULL),
-- as known at $5 (the "now" that decides whether an unanswered run is still pending). $6: the reply
-- limit in seconds (180). Merchants without such a session have no row: their figures are all zero.
-- Durations are summed in microseconds so that the means are exact.
WITH s AS (
    SELECT s.session_id, s.merchant_id, s.close_reason, s.close_time,
           EXISTS (SELECT 1 FROM tickets t WHERE t.session_id = s.session_id) AS has_ticket
    FROM sessions s
    WHERE s.merchant_id = ANY($1::text[]) AND s.open_time >= $3 AND s.open_time < $4
      AND ($2::text IS NULL OR s.assigned_agent_id = $2)
),
numbered AS (
    -- turn: the merchant messages so far (including this one). Platform messages with the same turn
    -- form a run; the merchant message whose turn is one higher answers the whole run.
    SELECT m.session_id, m.seq, m.sender, m.send_time,
           count(*) FILTER (WHERE m.sender = 'MERCHANT') OVER (PARTITION BY m.session_id ORDER BY m.seq) AS turn
    FROM s JOIN messages m USING (session_id)
),
runs AS (
    SELECT p.session_id, p.turn, count(*) AS messages,
           (array_agg(p.send_time ORDER BY p.seq))[1] AS first_send_time
    FROM numbered p
    WHERE p.sender = 'PLATFORM'
    GROUP BY p.session_id, p.turn
),
judged AS (
    -- Response time is measured from the run's first message: the platform has waited since then,
    -- exactly as the R5 deadline runs from the oldest unanswered platform message.
    SELECT r.session_id, r.messages, a.send_time - r.first_send_time AS response,
           r.turn = min(r.turn) OVER (PARTITION BY r.session_id) AS first_run,
           CASE
               WHEN a.send_time IS NOT NULL THEN
                   CASE WHEN a.send_time - r.first_send_time <= make_interval(secs => $6) THEN 'IN_3M' ELSE 'LATE' END
               WHEN s.close_reason = 'MERCHANT_TIMEOUT' THEN 'MISSED'
               -- Unanswered: missed once the limit passed while the session could still take a reply.
               WHEN coalesce(s.close_time, $5) - r.first_send_time > make_interval(secs => $6) THEN 'MISSED'
               WHEN s.close_reason IS NULL THEN 'PENDING'
               ELSE 'CUT_OFF'
           END AS outcome
    FROM runs r
    JOIN s USING (session_id)
    LEFT JOIN numbered a ON a.session_id = r.session_id AND a.sender = 'MERCHANT' AND a.turn = r.turn + 1
),
per_session AS (
    SELECT s.session_id, s.merchant_id, s.close_reason, s.has_ticket,
           coalesce(bool_or(j.outcome IN ('LATE', 'MISSED')), false) AS failed,
           coalesce(bool_or(j.outcome = 'PENDING'), false) AS pending,
           coalesce(bool_or(j.outcome = 'IN_3M'), false) AS any_in_3m,
           max(j.response) FILTER (WHERE j.first_run) AS first_response,
           coalesce(sum(j.messages), 0) AS platform_messages,
           coalesce(sum(j.messages) FILTER (WHERE j.outcome IN ('IN_3M', 'LATE', 'MISSED')), 0) AS rated,
           coalesce(sum(j.messages) FILTER (WHERE j.outcome = 'IN_3M'), 0) AS in_3m,
           coalesce(sum(j.messages) FILTER (WHERE j.response IS NOT NULL), 0) AS answered,
           coalesce(sum(j.messages * extract(epoch FROM j.response) * 1000000), 0) AS response_us
    FROM s LEFT JOIN judged j USING (session_id)
    GROUP BY s.session_id, s.merchant_id, s.close_reason, s.has_ticket
)
SELECT merchant_id,
       count(*) AS sessions,
       count(*) FILTER (WHERE failed OR (NOT pending AND any_in_3m)) AS sessions_rated,
       count(*) FILTER (WHERE NOT failed AND NOT pending AND any_in_3m) AS sessions_answered_in_3m,
       count(first_response) AS sessions_answered,
       coalesce(sum(extract(epoch FROM first_response) * 1000000), 0)::bigint AS first_response_us,
       sum(platform_messages)::bigint AS platform_messages,
       sum(rated)::bigint AS platform_messages_rated,
       sum(in_3m)::bigint AS platform_messages_answered_in_3m,
       sum(answered)::bigint AS platform_messages_answered,
       sum(response_us)::bigint AS response_us,
       count(*) FILTER (WHERE close_reason = 'MERCHANT_TIMEOUT') AS timeouts,
       count(*) FILTER (WHERE has_ticket) AS tickets
FROM per_session
GROUP BY merchant_id;
