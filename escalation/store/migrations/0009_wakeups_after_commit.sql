-- 0009: no NOTIFY inside a writing transaction (issue 13 §1).
--
-- A transaction that NOTIFYs takes one database-wide lock at commit and holds it through its WAL flush,
-- so every writing commit of the deployment queued behind that lock and none could be grouped. The
-- wake-ups now leave each process after its write has committed, from a statement that writes nothing
-- (escalation/store/signals.py); the tables stay the truth and every listener also polls, so a lost
-- wake-up costs at most one poll interval (docs/realtime.md). The access-change signals of 0008 stay:
-- they fire on directory changes, which are rare and off every hot path.
--
-- The functions dropped below are trigger functions no client calls (squawk's ban-drop-function guards
-- functions a client may call); left behind they would only mislead a reader.

DROP TRIGGER merchant_events_notify ON merchant_events;
-- squawk-ignore ban-drop-function
DROP FUNCTION notify_merchant_event();

DROP TRIGGER sessions_notify_deadline ON sessions;
-- squawk-ignore ban-drop-function
DROP FUNCTION notify_deadline();

DROP TRIGGER outbox_notify ON outbox;
-- squawk-ignore ban-drop-function
DROP FUNCTION notify_outbox();
