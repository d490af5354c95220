-- The transactional outbox, drained by the relay (workers/outbox.py).

-- name: claim_outbox
-- The oldest unpublished rows this relay can lock. Rows of uncommitted transactions are invisible
-- until they commit and are picked up then: nothing is skipped, unlike "id > last seen", which
-- loses rows that commit out of id order.
-- Parked rows are left out: they wait for `escalation outbox retry`, not for the relay.
SELECT id, topic, message_key, event_id, content_type, payload, create_time, attempts, isolated_failures, traceparent
FROM outbox
WHERE published_time IS NULL AND parked_time IS NULL
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: oldest_foreign_pending
-- Per key of the claimed rows ($1), the oldest unpublished row this relay did not claim ($2) among
-- those older than its newest claimed row ($3): another relay holds it, and our younger rows of that
-- key must wait for it. Bounded by $3, the scan reads about one batch of index entries, and the plan
-- stays cheap even when the table's statistics are stale (a sudden backlog before autovacuum runs).
-- A parked row holds nobody back (docs/delivery.md: later rows of its key flow).
SELECT message_key, min(id) AS oldest
FROM outbox
WHERE published_time IS NULL AND parked_time IS NULL AND message_key = ANY($1::bytea[]) AND id < $3 AND id <> ALL($2::bigint[])
GROUP BY message_key;

-- name: mark_published
UPDATE outbox SET published_time = clock_timestamp(), attempts = attempts + 1, last_error = NULL
WHERE id = ANY($1::bigint[]);

-- name: record_failure
-- $3: whether the broker acknowledged other rows in the same round (the failure is this row's own).
UPDATE outbox
SET attempts = attempts + 1, last_error = $2, isolated_failures = isolated_failures + $3::boolean::int
WHERE id = ANY($1::bigint[]) AND published_time IS NULL;

-- name: park
-- The relay gives up on a row until an operator re-drives it; the error stays for them to read.
UPDATE outbox
SET attempts = attempts + 1, last_error = $2, parked_time = clock_timestamp(),
    isolated_failures = isolated_failures + $3::boolean::int
WHERE id = $1 AND published_time IS NULL;

-- name: list_parked
-- What `escalation outbox retry` is about to re-drive: all parked rows, or only row $1.
SELECT id, topic, event_id, attempts, last_error, parked_time, octet_length(payload) AS payload_bytes
FROM outbox
WHERE parked_time IS NOT NULL AND published_time IS NULL AND ($1::bigint IS NULL OR id = $1)
ORDER BY id
FOR UPDATE;

-- name: unpark
-- Back to pending with a fresh failure budget.
UPDATE outbox SET parked_time = NULL, isolated_failures = 0
WHERE id = ANY($1::bigint[]) AND parked_time IS NOT NULL AND published_time IS NULL
RETURNING id;

-- name: wake_relays
-- The insert trigger's NOTIFY, for rows that became pending again (delivered at commit).
SELECT pg_notify('escalation_outbox', '');

-- name: outbox_backlog
-- Pending rows (age of the oldest) and parked rows, each counted from its own partial index.
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM clock_timestamp() - min(create_time)), 0)::float8 AS oldest_age,
       (SELECT count(*) FROM outbox WHERE parked_time IS NOT NULL AND published_time IS NULL) AS parked
FROM outbox WHERE published_time IS NULL AND parked_time IS NULL;

-- name: purge_published
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE published_time < clock_timestamp() - make_interval(secs => $1)
    LIMIT 10000
);
