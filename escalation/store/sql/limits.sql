-- Replay lookups of the write rate limits (api/limits.py), run only when a bucket would refuse: a
-- retry of a write that already succeeded is answered from the store and never refused (SPEC R4).
-- Same keys as the services' own replay lookups (services/sessions.py), each on its unique index.

-- name: is_opened_request
-- sessions_request_id: (platform_agent_id, request_id).
SELECT EXISTS (SELECT 1 FROM sessions WHERE platform_agent_id = $1 AND request_id = $2);

-- name: is_sent_message
-- messages_sender_client_msg_id: (session_id, sender, sender_id, client_msg_id). A merchant agent id
-- is unique only within its shop ($5), so the session must be that shop's.
SELECT EXISTS (
    SELECT 1 FROM messages m JOIN sessions s USING (session_id)
    WHERE m.session_id = $1 AND m.sender = $2 AND m.sender_id = $3 AND m.client_msg_id = $4
      AND ($5::text IS NULL OR s.merchant_id = $5));
