-- The transactional outbox, drained by the relay (workers/outbox.py).

-- name: claim_outbox
-- Oldest unpublished rows this relay can lock, minus any row whose key still has an older unpublished
-- row held by another relay (publishing it now could overtake that one). Rows of uncommitted
-- transactions are invisible until they commit and are picked up then: nothing is skipped, unlike
-- "id > last seen", which loses rows that commit out of id order.
WITH claimed AS (
    SELECT id, topic, message_key, event_id, content_type, payload, create_time
    FROM outbox
    WHERE published_time IS NULL
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
SELECT c.id, c.topic, c.message_key, c.event_id, c.content_type, c.payload, c.create_time
FROM claimed c
WHERE NOT EXISTS (
    SELECT 1 FROM outbox o
    WHERE o.message_key = c.message_key AND o.published_time IS NULL AND o.id < c.id
      AND o.id NOT IN (SELECT id FROM claimed)
)
ORDER BY c.id;

-- name: mark_published
UPDATE outbox SET published_time = clock_timestamp(), attempts = attempts + 1, last_error = NULL
WHERE id = ANY($1::bigint[]);

-- name: record_failure
UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1::bigint[]) AND published_time IS NULL;

-- name: outbox_backlog
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM clock_timestamp() - min(create_time)), 0)::float8 AS oldest_age
FROM outbox WHERE published_time IS NULL;

-- name: purge_published
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE published_time < clock_timestamp() - make_interval(secs => $1)
    LIMIT 10000
);
