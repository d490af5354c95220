-- Post-commit wake-ups (store/signals.py).

-- name: send_signals
-- One batch of wake-ups, sent after the writes they announce committed. $1, $2: parallel arrays of
-- channel and payload. The statement reads and writes no table, so its transaction gets no xid until
-- commit and flushes no WAL of its own: the commit-time notify lock is held for microseconds, not
-- through a disk flush, and no writing transaction ever takes it (issue 13 §1).
SELECT count(pg_notify(n.channel, n.payload)) FROM unnest($1::text[], $2::text[]) AS n(channel, payload);
