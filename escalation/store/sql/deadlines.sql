-- The deadline worker's claims. Each runs inside the transaction that acts on what it claimed.
-- "Now" is a parameter: NULL (production) is the database clock, clock_timestamp(); a test passes an
-- instant instead of sleeping until one.

-- name: claim_due_sessions
-- Ends up to $1 sessions whose deadline has passed at $2 (NULL: by the database clock), in one
-- statement; rows a racing reply holds are skipped (and looked at again next round).
WITH due AS (
    SELECT session_id, reply_deadline FROM sessions
    WHERE reply_deadline <= coalesce($2::timestamptz, clock_timestamp())
    ORDER BY reply_deadline
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE sessions s
SET state = 'ENDED', close_reason = 'MERCHANT_TIMEOUT', close_time = coalesce($2::timestamptz, clock_timestamp()),
    reply_deadline = NULL, remind_time = NULL, idle_deadline = NULL
FROM due
WHERE s.session_id = due.session_id
RETURNING s.session_id, s.merchant_id, s.assigned_agent_id, s.platform_agent_id, s.order_id, s.category,
          s.open_time, s.close_time, due.reply_deadline;

-- name: claim_idle_sessions
-- SPEC R12: closes up to $1 answered sessions (no reply deadline pending) whose idle deadline has
-- passed at $2 (NULL: by the database clock) as IDLE, in one statement; rows a racing message holds
-- are skipped (and looked at again next round, when that message has moved or cleared the deadline).
-- state and reply_deadline are checked as well (the predicate of the index sessions_idle_due): a
-- writer that knows nothing of idle_deadline (a replica of the previous release during a deploy) may
-- have left one beside a pending reply deadline or on an ended session.
WITH due AS (
    SELECT session_id, idle_deadline FROM sessions
    WHERE idle_deadline <= coalesce($2::timestamptz, clock_timestamp())
      AND state = 'OPEN' AND reply_deadline IS NULL
    ORDER BY idle_deadline
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE sessions s
SET state = 'ENDED', close_reason = 'IDLE', close_time = coalesce($2::timestamptz, clock_timestamp()),
    idle_deadline = NULL, remind_time = NULL
FROM due
WHERE s.session_id = due.session_id
RETURNING s.session_id, s.merchant_id, s.assigned_agent_id, s.platform_agent_id, s.order_id, s.category,
          s.open_time, s.close_time, due.idle_deadline;

-- name: claim_due_reminders
-- Up to $1 sessions whose reminder is due at $2 (NULL: the database clock).
WITH due AS (
    SELECT session_id FROM sessions
    -- An overdue session gets no reminder: it is about to end (a worker that was down catches up).
    WHERE remind_time <= coalesce($2::timestamptz, clock_timestamp())
      AND reply_deadline > coalesce($2::timestamptz, clock_timestamp())
    ORDER BY remind_time
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE sessions s SET remind_time = NULL
FROM due
WHERE s.session_id = due.session_id
RETURNING s.session_id, s.merchant_id, s.assigned_agent_id, s.reply_deadline;

-- name: next_wakeup
-- Seconds from $1 (NULL: the database clock) until the nearest deadline, reminder or idle deadline
-- (R12); NULL when none is pending.
SELECT extract(epoch FROM least(
    (SELECT min(reply_deadline) FROM sessions WHERE reply_deadline IS NOT NULL),
    (SELECT min(remind_time) FROM sessions WHERE remind_time IS NOT NULL),
    (SELECT min(idle_deadline) FROM sessions
     WHERE idle_deadline IS NOT NULL AND reply_deadline IS NULL AND state = 'OPEN')
) - coalesce($1::timestamptz, clock_timestamp()))::float8 AS seconds;
