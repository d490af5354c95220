-- SPEC R13: transfers and re-assignments (moves) and the assignment history.
-- Lock order, as everywhere (store/events.py): session rows, then the merchant row, then agent rows.
-- A directory change already holds the merchant row, so it takes session rows with SKIP LOCKED only.

-- name: find_transfer_by_request
-- TransferSession's AIP-155 key: $1 merchant, $2 the caller, $3 its request id.
SELECT session_id, request_hash FROM session_assignments
WHERE merchant_id = $1 AND actor_id = $2 AND request_id = $3;

-- name: lock_session_for_move
-- The session of shop $2 to move, locked (waiting for a writer that holds it); with its ticket, if any.
SELECT s.session_id, s.merchant_id, s.assigned_agent_id, s.state, t.ticket_id
FROM sessions s
LEFT JOIN tickets t ON t.session_id = s.session_id
WHERE s.session_id = $1 AND s.merchant_id = $2
FOR UPDATE OF s;

-- name: ineligible_holders
-- Agents of shop $1 that hold open sessions but are not eligible (SPEC R1): whose sessions R13 moves.
SELECT agent_id, disabled, im_permission FROM agent_eligibility
WHERE merchant_id = $1 AND NOT eligible AND open_sessions > 0;

-- name: open_sessions_of
-- The open sessions of shop $1 held by agents $2, oldest first (no lock: to tell which the next
-- statement skipped).
SELECT session_id FROM sessions
WHERE merchant_id = $1 AND assigned_agent_id = ANY($2::text[]) AND state = 'OPEN'
ORDER BY open_time, session_id;

-- name: lock_open_sessions_of
-- open_sessions_of, locked, skipping rows another transaction holds (it waits for the merchant row
-- this transaction holds: waiting for it in turn would deadlock). $3: only these sessions (NULL: all).
SELECT session_id, assigned_agent_id FROM sessions
WHERE merchant_id = $1 AND assigned_agent_id = ANY($2::text[]) AND state = 'OPEN'
  AND ($3::uuid[] IS NULL OR session_id = ANY($3::uuid[]))
ORDER BY open_time, session_id
FOR UPDATE SKIP LOCKED;

-- name: move_sessions
-- Moves locked open sessions: $1 ids, $2 the new agents (parallel arrays). Messages, the reply deadline
-- and the reminder stay as they are.
UPDATE sessions s SET assigned_agent_id = m.to_agent_id
FROM unnest($1::uuid[], $2::text[]) AS m(session_id, to_agent_id)
WHERE s.session_id = m.session_id AND s.state = 'OPEN';

-- name: insert_moves
-- One history row per move, numbered after the session's earlier moves (the caller holds the session
-- rows). Parallel arrays: $1 sessions, $2 merchants, $3 reasons, $4 from, $5 to, $6 actor ids,
-- $7 actor roles, $8 decisions, $9 request ids, $10 request hashes.
INSERT INTO session_assignments (session_id, step, merchant_id, reason, from_agent_id, to_agent_id, actor_id,
                                 actor_role, decision, request_id, request_hash, move_time)
SELECT m.session_id,
       coalesce((SELECT max(a.step) FROM session_assignments a WHERE a.session_id = m.session_id), 0) + 1,
       m.merchant_id, m.reason, m.from_agent_id, m.to_agent_id, m.actor_id, m.actor_role, m.decision,
       m.request_id, m.request_hash, clock_timestamp()
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bytea[],
            $9::text[], $10::bytea[])
     AS m(session_id, merchant_id, reason, from_agent_id, to_agent_id, actor_id, actor_role, decision, request_id,
          request_hash)
RETURNING session_id, step, reason, from_agent_id, to_agent_id, actor_id, actor_role, decision, move_time;

-- name: take_assignments
-- The new agents' counts: $1 merchants, $2 agents, $3 sessions each takes, $4 their last assignment time
-- (parallel arrays, one entry per agent; the caller has locked the rows in order).
UPDATE agents a SET open_sessions = a.open_sessions + t.n, last_assign_time = t.at
FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[]) AS t(m, g, n, at)
WHERE a.merchant_id = t.m AND a.agent_id = t.g;

-- name: session_moves
-- The moves of sessions $1, in step order per session (the assignment history after step 0).
SELECT session_id, step, reason, from_agent_id, to_agent_id, actor_id, actor_role, decision, move_time
FROM session_assignments WHERE session_id = ANY($1::uuid[]) ORDER BY session_id, step;

-- name: ticket_assignment_histories
-- Sessions $1's assignment histories as their tickets carry them (ServiceTicket field 16, migration 0013).
SELECT session_id, assignment_history_pb(session_id) AS pb FROM unnest($1::uuid[]) AS session_id;

-- name: moves_after
-- Session $1's moves after step $2, in step order (WatchSession tells the platform of each).
SELECT session_id, step, reason, from_agent_id, to_agent_id, actor_id, actor_role, decision, move_time
FROM session_assignments WHERE session_id = $1 AND step > $2 ORDER BY step;

-- name: watch_moves
SELECT coalesce(max(step), 0) FROM session_assignments WHERE session_id = $1;

-- Queries the moves share with the write path of before issue 13 (which now runs them inside its
-- server-side functions): the R2 candidates, the ended/moved sessions read back, agent locks and counts.

-- name: assignment_candidates
-- $2: seconds within which a stream's server must have refreshed its presence row.
SELECT e.agent_id, e.open_sessions, e.capacity, e.last_assign_time,
       EXISTS (SELECT 1 FROM agent_presence p
               WHERE p.merchant_id = e.merchant_id AND p.agent_id = e.agent_id
                 AND p.seen_time > clock_timestamp() - make_interval(secs => $2)) AS connected
FROM agent_eligibility e
WHERE e.merchant_id = $1 AND e.eligible;

-- name: lock_agents
SELECT 1 FROM agents
WHERE (merchant_id, agent_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
ORDER BY merchant_id, agent_id
FOR UPDATE;

-- name: release_assignments
UPDATE agents a SET open_sessions = a.open_sessions - d.n
FROM (SELECT m, g, count(*) AS n FROM unnest($1::text[], $2::text[]) AS u(m, g) GROUP BY m, g) d
WHERE a.merchant_id = d.m AND a.agent_id = d.g;

-- name: sessions_by_id
SELECT s.session_id, s.merchant_id, s.assigned_agent_id, s.platform_agent_id, s.order_id, s.category, s.state,
       s.close_reason, s.open_time, s.close_time, s.reply_deadline, s.last_seq, s.assignment, t.ticket_id
FROM sessions s
LEFT JOIN tickets t ON t.session_id = s.session_id
WHERE s.session_id = ANY($1::uuid[])
ORDER BY s.close_time, s.session_id;
