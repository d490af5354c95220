-- The transactional outbox, drained by the relay (workers/outbox.py).

-- name: claim_outbox
-- The oldest unpublished rows this relay can lock. Rows of uncommitted transactions are invisible
-- until they commit and are picked up then: nothing is skipped, unlike "id > last seen", which
-- loses rows that commit out of id order.
SELECT id, topic, message_key, event_id, content_type, payload, create_time
FROM outbox
WHERE published_time IS NULL
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: oldest_foreign_pending
-- Per key of the claimed rows ($1), the oldest unpublished row this relay did not claim ($2) among
-- those older than its newest claimed row ($3): another relay holds it, and our younger rows of that
-- key must wait for it. Bounded by $3, the scan reads about one batch of index entries, and the plan
-- stays cheap even when the table's statistics are stale (a sudden backlog before autovacuum runs).
SELECT message_key, min(id) AS oldest
FROM outbox
WHERE published_time IS NULL AND message_key = ANY($1::bytea[]) AND id < $3 AND id <> ALL($2::bigint[])
GROUP BY message_key;

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
