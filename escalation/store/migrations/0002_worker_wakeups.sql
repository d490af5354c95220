-- 0002: wake-ups for the background workers, and the index the outbox relay's per-key ordering needs.
--
-- LISTEN/NOTIFY only wakes a worker early; the tables stay the truth and the workers poll as a
-- fallback, so a lost notification delays work by at most one poll interval.

-- The deadline worker sleeps until the nearest deadline or reminder; tell it when a nearer one appears.
-- The payload is the instant (epoch seconds) the worker should next look.
CREATE FUNCTION notify_deadline() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('escalation_deadline',
                      extract(epoch FROM least(NEW.remind_time, NEW.reply_deadline))::text);
    RETURN NULL;
END $$;

-- Sessions are inserted without a deadline; append_message sets it, so updates are all we watch.
CREATE TRIGGER sessions_notify_deadline
    AFTER UPDATE OF reply_deadline, remind_time ON sessions
    FOR EACH ROW
    WHEN ((NEW.reply_deadline IS NOT NULL AND NEW.reply_deadline IS DISTINCT FROM OLD.reply_deadline)
          OR (NEW.remind_time IS NOT NULL AND NEW.remind_time IS DISTINCT FROM OLD.remind_time))
    EXECUTE FUNCTION notify_deadline();

CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Identical notifications within one transaction are folded into one by PostgreSQL.
    PERFORM pg_notify('escalation_outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH ROW
    EXECUTE FUNCTION notify_outbox();

-- The relay publishes a row only when no older unpublished row of the same key is held by another
-- relay, so per-key (per-merchant) order survives several relays.
CREATE INDEX outbox_pending_by_key ON outbox (message_key, id) WHERE published_time IS NULL;
