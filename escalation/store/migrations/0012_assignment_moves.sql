-- 0012: SPEC R13 — a session's assignment history. One row per *move* (a transfer, or a re-assignment
-- because its agent stopped being eligible); the initial assignment stays on the session row
-- (sessions.assignment holds its decision), so OpenSession writes nothing here. GetSession and tickets
-- show the history as the initial step followed by these rows in step order (docs/sessions.md).
CREATE TABLE session_assignments (
    session_id uuid NOT NULL REFERENCES sessions (session_id),
    -- 1, 2, ... per session (step 0 is the initial assignment on the session row).
    step bigint NOT NULL,
    merchant_id text NOT NULL,
    -- Why: TRANSFERRED (TransferSession) or, for a re-assignment, why the agent stopped being eligible.
    reason text NOT NULL,
    from_agent_id text NOT NULL,
    to_agent_id text NOT NULL,
    -- Who: the caller of TransferSession, or of the directory change that made the agent ineligible.
    actor_id text NOT NULL,
    actor_role text NOT NULL,
    -- Re-assignments: the R2 decision (escalation.v1.AssignmentDecision) with every candidate's inputs.
    decision bytea,
    -- TransferSession's idempotency key (AIP-155), scoped to the shop and the caller, and the request's hash.
    request_id text,
    request_hash bytea,
    move_time timestamptz NOT NULL,
    CONSTRAINT session_assignments_pkey PRIMARY KEY (session_id, step),
    CONSTRAINT session_assignments_step_positive CHECK (step >= 1),
    CONSTRAINT session_assignments_reason_known CHECK (
        reason IN ('TRANSFERRED', 'AGENT_DISABLED', 'IM_PERMISSION_REMOVED', 'NOT_RECEPTION_AGENT')),
    CONSTRAINT session_assignments_moves CHECK (from_agent_id <> to_agent_id),
    CONSTRAINT session_assignments_keyed CHECK ((request_id IS NULL) = (request_hash IS NULL))
);

CREATE UNIQUE INDEX session_assignments_request_id ON session_assignments (merchant_id, actor_id, request_id)
    WHERE request_id IS NOT NULL;
