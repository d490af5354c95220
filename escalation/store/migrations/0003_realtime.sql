-- 0003: real-time fan-out. The event log (merchant_events) is the truth; NOTIFY only wakes the
-- servers' stream hubs, which then read the log from each stream's cursor.

CREATE FUNCTION notify_merchant_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Identical payloads within one transaction are folded into one notification.
    PERFORM pg_notify('escalation_events', NEW.merchant_id);
    RETURN NULL;
END $$;

CREATE TRIGGER merchant_events_notify
    AFTER INSERT ON merchant_events
    FOR EACH ROW
    EXECUTE FUNCTION notify_merchant_event();

-- An agent losing IM permission (or being disabled) must be cut off its open streams at once.
CREATE FUNCTION notify_agent_access() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('escalation_agents', NEW.merchant_id || E'\t' || NEW.agent_id);
    RETURN NULL;
END $$;

CREATE TRIGGER agents_notify_access
    AFTER UPDATE OF im_permission, disabled ON agents
    FOR EACH ROW
    WHEN (OLD.im_permission IS DISTINCT FROM NEW.im_permission OR OLD.disabled IS DISTINCT FROM NEW.disabled)
    EXECUTE FUNCTION notify_agent_access();

-- Which agents hold a live Connect stream, on any replica: recorded with each assignment (R1).
-- Each server refreshes seen_time of its own rows; rows of a crashed server go stale and stop counting.
CREATE TABLE agent_presence (
    stream_id     uuid PRIMARY KEY,
    server_id     text NOT NULL,
    merchant_id   text NOT NULL,
    agent_id      text NOT NULL,
    connect_time  timestamptz NOT NULL DEFAULT now(),
    seen_time     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX agent_presence_agent ON agent_presence (merchant_id, agent_id, seen_time);
CREATE INDEX agent_presence_server ON agent_presence (server_id);
