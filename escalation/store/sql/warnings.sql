-- Merchant warnings (SPEC R10): the warnings worker's queries and ListWarnings.

-- name: warning_candidates
-- Merchants that opened at least $4 sessions in [$1, $2) and have no warning yet for the period that
-- starts at $3. A merchant with fewer sessions cannot have enough rated ones, so it is not looked at.
SELECT c.merchant_id
FROM (
    SELECT merchant_id FROM sessions
    WHERE open_time >= $1 AND open_time < $2
    GROUP BY merchant_id
    HAVING count(*) >= $4
) c
WHERE NOT EXISTS (
    SELECT 1 FROM merchant_warnings w WHERE w.merchant_id = c.merchant_id AND w.period_start = $3
)
ORDER BY c.merchant_id;

-- name: insert_warning
-- The warning and its outbox row in one statement (one transaction). When another worker already
-- stored this merchant's warning for the period, ON CONFLICT inserts nothing, so no outbox row either:
-- however many workers run, one warning and one event per merchant and period. Returns the event id
-- when this call created it.
WITH w AS (
    INSERT INTO merchant_warnings (warning_id, merchant_id, period_start, period_end, kinds, payload, create_time)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT ON CONSTRAINT merchant_warnings_one_per_period DO NOTHING
    RETURNING warning_id, merchant_id, payload
)
INSERT INTO outbox (topic, message_key, event_id, content_type, payload)
SELECT $8, convert_to(w.merchant_id, 'UTF8'), w.warning_id::text, $9, w.payload FROM w
RETURNING event_id;

-- name: list_warnings
-- Newest first; keyset paging on (create_time, warning_id). $1 merchant (NULL: all), $2/$3 the last
-- row of the previous page, $4 limit.
SELECT warning_id, merchant_id, create_time, payload
FROM merchant_warnings
WHERE ($1::text IS NULL OR merchant_id = $1)
  AND ($2::timestamptz IS NULL OR (create_time, warning_id) < ($2, $3::uuid))
ORDER BY create_time DESC, warning_id DESC
LIMIT $4;
