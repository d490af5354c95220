-- 0005: idempotency keys per verified sender, and the session size bound (SPEC R4, R7; issue 9 §5, §7).

-- A client_msg_id belongs to the sender that used it, not to its side: two agents of one shop (or
-- two platform agents) never share one. The new key is a superset of the old, so existing rows fit.
CREATE UNIQUE INDEX messages_sender_client_msg_id ON messages (session_id, sender, sender_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;
DROP INDEX messages_client_msg_id;

-- Stored content bytes of a session's messages, kept by append_message under the session row lock
-- so the bound (escalation/domain/limits.py) is checked atomically. last_seq already counts messages.
ALTER TABLE sessions ADD COLUMN content_bytes bigint NOT NULL DEFAULT 0;
UPDATE sessions s SET content_bytes = m.total
FROM (SELECT session_id, sum(octet_length(content))::bigint AS total FROM messages GROUP BY session_id) m
WHERE m.session_id = s.session_id;
