-- 0007: the trace of the close that produced an outbox row (docs/tracing.md).
--
-- traceparent: the W3C traceparent of the span that ended the session (the closing RPC, or the
-- deadline worker's round), NULL when that process was not tracing. The relay sends the ticket's
-- Kafka record with a `traceparent` header continuing it, so a ticket links back to its close.
-- Nullable without a default: adding it rewrites nothing and holds its lock only for a moment.
-- LOCAL: for this migration's transaction only. A relay holding rows for a slow broker round must not
-- queue every writer behind this ALTER: give up and let the next deploy retry.
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '60s';
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS traceparent text;
