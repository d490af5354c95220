-- The per-merchant event log.

-- name: allocate_event_cursors
-- Locks the merchant row: cursors are gapless because only one transaction at a time bumps them.
UPDATE merchants SET last_event_cursor = last_event_cursor + $2
WHERE merchant_id = $1
RETURNING last_event_cursor, clock_timestamp() AS at;

-- name: insert_event
INSERT INTO merchant_events (merchant_id, cursor, session_id, agent_id, kind, payload, event_time)
VALUES ($1, $2, $3, $4, $5, $6, $7);
