-- escalation: no-transaction
-- 0011: SPEC R12 idle close. An open session whose last platform message was answered closes by
-- itself (close_reason IDLE, no ticket) once nobody has written for the merchant's idle_timeout.
--
-- sessions.idle_deadline: set by a merchant message (append_message: its send time + idle_timeout),
-- cleared by a platform message (which starts the reply deadline instead, R5) and by the end. At most
-- one of reply_deadline and idle_deadline is set. It is a column of its own rather than reply_deadline
-- with a kind: reply_deadline is API (Session.reply_deadline), R10's statistics and the reminders
-- read it, and a partial index per column keeps each claim an index range scan.
-- No CHECK ties the two columns together: replicas of the previous release keep writing during a
-- rolling deploy and know nothing of idle_deadline; the idle claim itself requires state = 'OPEN' and
-- reply_deadline IS NULL, so no such write can make it close a session that waits for a reply.
--
-- No-transaction, statement by statement (each safe to run twice), for the concurrent index build:
-- sessions is the big table, and a plain CREATE INDEX would block its writers for the whole scan.
-- 5–120 min, default 30 min (domain/reception.py); one small row per merchant.
ALTER TABLE reception_settings ADD COLUMN IF NOT EXISTS idle_timeout_seconds bigint NOT NULL DEFAULT 1800
    CONSTRAINT reception_settings_idle_timeout_range CHECK (idle_timeout_seconds BETWEEN 300 AND 7200);

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS idle_deadline timestamptz;

-- The new close reason. Every existing row passes the new (wider) rule; validating it takes only a
-- SHARE UPDATE EXCLUSIVE lock, which lets reads and writes go on. The drop only widens the rule
-- (the new one is added at once, and takes every value the old one took).
-- squawk-ignore ban-drop-constraint
ALTER TABLE sessions DROP CONSTRAINT IF EXISTS sessions_close_reason_known;
ALTER TABLE sessions ADD CONSTRAINT sessions_close_reason_known
    CHECK (close_reason IN ('RESOLVED', 'PLATFORM_ESCALATED', 'MERCHANT_TIMEOUT', 'IDLE')) NOT VALID;
ALTER TABLE sessions VALIDATE CONSTRAINT sessions_close_reason_known;

-- The idle claim (deadlines.sql claim_idle_sessions) and next_wakeup read only these rows: the
-- sessions that may close as IDLE. A row a previous-release writer left inconsistent is not in it, so
-- it can neither be closed nor hold the worker awake.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sessions_idle_due ON sessions (idle_deadline)
    WHERE idle_deadline IS NOT NULL AND reply_deadline IS NULL AND state = 'OPEN';

-- Sessions answered before this migration: idle since their last message (SPEC R12 counts from it).
-- Forgotten ones close on the worker's next round and give their agents' capacity back.
UPDATE sessions s
SET idle_deadline = coalesce(
        (SELECT max(m.send_time) FROM messages m WHERE m.session_id = s.session_id), s.open_time)
    + make_interval(secs => (SELECT rs.idle_timeout_seconds FROM reception_settings rs
                             WHERE rs.merchant_id = s.merchant_id))
WHERE s.state = 'OPEN' AND s.reply_deadline IS NULL AND s.idle_deadline IS NULL;
