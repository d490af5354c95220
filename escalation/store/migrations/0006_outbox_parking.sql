-- 0006: parked outbox rows (SPEC R7): a row that cannot be published stops blocking the others.
--
-- parked_time: set when the relay gives up on a row (a non-retriable error such as a record above the
-- size limit, or too many failures while the broker accepted other rows); `escalation outbox retry`
-- clears it. A parked row is neither pending nor published: it is skipped by the claim and by the
-- per-key ordering check, so later rows of its key flow (docs/delivery.md explains why).
-- isolated_failures: failures of this row in rounds where the broker acknowledged other rows. Unlike
-- attempts, a broker outage (nothing acknowledged) does not count, so an outage never parks a row.
ALTER TABLE outbox
    ADD COLUMN parked_time timestamptz,
    ADD COLUMN isolated_failures integer NOT NULL DEFAULT 0;

DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (id) WHERE published_time IS NULL AND parked_time IS NULL;

DROP INDEX outbox_pending_by_key;
CREATE INDEX outbox_pending_by_key ON outbox (message_key, id) WHERE published_time IS NULL AND parked_time IS NULL;

-- The parked-rows gauge and the retry command read only these (few) rows.
CREATE INDEX outbox_parked ON outbox (id) WHERE parked_time IS NOT NULL AND published_time IS NULL;
