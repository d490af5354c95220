-- The per-merchant event log.

-- name: append_events
-- Appends events to one merchant's log. Bumping the merchant row locks it until commit, so cursors
-- are gapless and commit in order. $2..$5 are parallel arrays: kind, session, agent, payload.
WITH bump AS (
    UPDATE merchants SET last_event_cursor = last_event_cursor + cardinality($2::text[])
    WHERE merchant_id = $1
    RETURNING last_event_cursor - cardinality($2::text[]) AS base, clock_timestamp() AS at
)
INSERT INTO merchant_events (merchant_id, cursor, session_id, agent_id, kind, payload, event_time)
SELECT $1, bump.base + e.ord, e.session_id, e.agent_id, e.kind, e.payload, bump.at
FROM bump,
     unnest($2::text[], $3::uuid[], $4::text[], $5::bytea[]) WITH ORDINALITY AS e(kind, session_id, agent_id, payload, ord)
RETURNING cursor;

-- name: events_after
-- A stream's next page: events after its cursor up to the head it read; $3 limits a sub-account to
-- its own sessions' events (NULL: the whole shop, as a merchant feed reads it).
SELECT cursor, agent_id, payload, event_time FROM merchant_events
WHERE merchant_id = $1 AND cursor > $2 AND cursor <= $4 AND ($3::text IS NULL OR agent_id = $3)
ORDER BY cursor
LIMIT $5;

-- name: event_log_bounds
-- The newest cursor handed out and the oldest still retained (NULL when none is).
SELECT m.last_event_cursor AS head,
       (SELECT min(cursor) FROM merchant_events e WHERE e.merchant_id = m.merchant_id) AS oldest
FROM merchants m WHERE m.merchant_id = $1;

-- name: stream_access
-- May this merchant agent hold a Connect stream (IM permission, not disabled), and is it the main account?
SELECT a.im_permission AND NOT a.disabled AS may_connect, m.main_account_id = a.agent_id AS main_account
FROM agents a JOIN merchants m ON m.merchant_id = a.merchant_id
WHERE a.merchant_id = $1 AND a.agent_id = $2;

-- name: purge_events
DELETE FROM merchant_events WHERE event_time < clock_timestamp() - make_interval(secs => $1);

-- name: presence_add
INSERT INTO agent_presence (stream_id, server_id, merchant_id, agent_id) VALUES ($1, $2, $3, $4);

-- name: presence_remove
DELETE FROM agent_presence WHERE stream_id = $1;

-- name: presence_refresh
-- Only the streams still live on this server ($2): a row left behind must go stale, never stay fresh.
UPDATE agent_presence SET seen_time = clock_timestamp() WHERE server_id = $1 AND stream_id = ANY($2::uuid[]);

-- name: presence_forget_server
DELETE FROM agent_presence WHERE server_id = $1;

-- name: presence_purge_stale
DELETE FROM agent_presence WHERE seen_time < clock_timestamp() - interval '1 hour';

-- name: feed_position
-- A merchant feed's read: the head and the access of the agents $2 holding streams here, in one
-- snapshot, so every event up to this head is shown under access at least as new as its commit.
SELECT m.last_event_cursor AS head, m.main_account_id,
       coalesce(array_agg(a.agent_id) FILTER (WHERE a.agent_id IS NOT NULL), '{}') AS known,
       coalesce(array_agg(a.agent_id) FILTER (WHERE a.im_permission), '{}') AS with_im,
       coalesce(array_agg(a.agent_id) FILTER (WHERE a.disabled), '{}') AS disabled
FROM merchants m
LEFT JOIN agents a ON a.merchant_id = m.merchant_id AND a.agent_id = ANY($2::text[])
WHERE m.merchant_id = $1
GROUP BY m.merchant_id;

-- name: stream_position
-- One stream's own read: the log's head and oldest retained cursor, and the agent's access, in one
-- snapshot (see feed_position). No row: no such merchant.
SELECT m.last_event_cursor AS head,
       (SELECT min(cursor) FROM merchant_events e WHERE e.merchant_id = m.merchant_id) AS oldest,
       a.agent_id IS NOT NULL AS known,
       coalesce(a.im_permission, false) AS im_permission,
       coalesce(a.disabled, false) AS disabled,
       m.main_account_id = $2 AS main_account
FROM merchants m
LEFT JOIN agents a ON a.merchant_id = m.merchant_id AND a.agent_id = $2
WHERE m.merchant_id = $1;

-- name: presence_prune
-- This server's rows of streams that are no longer live (a release that could not reach the database).
DELETE FROM agent_presence WHERE server_id = $1 AND stream_id <> ALL($2::uuid[]);

-- name: event_heads
-- The newest cursor of each merchant $1 (a stream hub's fallback for a lost wake-up, store/signals.py).
SELECT merchant_id, last_event_cursor AS head FROM merchants WHERE merchant_id = ANY($1::text[]);
