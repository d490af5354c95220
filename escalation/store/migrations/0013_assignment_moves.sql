-- 0013: SPEC R13 — a session's assignment history. One row per *move* (a transfer, or a re-assignment
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

-- A ticket's assignment history (escalation.v1.ServiceTicket field 16, repeated AssignmentStep) as
-- protobuf bytes, for whatever writes the ticket to append to its serialized value: a repeated field's
-- entries may follow the other fields, which is where a serializer puts field 16. Step 0 comes from the
-- session row (the first move's from_agent_id, else the current agent, is the one it opened with), the
-- moves from session_assignments; steps carry no decision (GetSession shows those). The encoders follow
-- the ones of the one-round-trip write functions (proto3 defaults left out, field by field in number
-- order); once both migrations are in, these can be folded into them.
CREATE FUNCTION assignment_pb_varint(value bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    encoded bytea := '\x'::bytea;
BEGIN
    IF value < 0 THEN
        RAISE EXCEPTION 'assignment_pb_varint: % is negative', value;
    END IF;
    WHILE value >= 128 LOOP
        encoded := encoded || set_byte('\x00'::bytea, 0, (value & 127)::int | 128);
        value := value >> 7;
    END LOOP;
    RETURN encoded || set_byte('\x00'::bytea, 0, value::int);
END $$;

CREATE FUNCTION assignment_pb_len(field int, value bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL THEN '\x'::bytea
                ELSE assignment_pb_varint(field::bigint << 3 | 2) || assignment_pb_varint(octet_length(value)) || value END
$$;

CREATE FUNCTION assignment_pb_string(field int, value text) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL OR value = '' THEN '\x'::bytea
                ELSE assignment_pb_len(field, convert_to(value, 'UTF8')) END
$$;

CREATE FUNCTION assignment_pb_uint(field int, value bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL OR value = 0 THEN '\x'::bytea
                ELSE assignment_pb_varint(field::bigint << 3) || assignment_pb_varint(value) END
$$;

-- escalation.v1.AssignmentStep: step 1, reason 2 (AssignmentReason numbers), from 3, to 4, actor 5 and 6,
-- step_time 7 (google.protobuf.Timestamp of the microsecond value).
CREATE FUNCTION assignment_step_pb(
    step bigint, reason text, from_agent_id text, to_agent_id text, actor_id text, actor_role text, at timestamptz
) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT assignment_pb_uint(1, step)
           || assignment_pb_uint(2, CASE reason WHEN 'OPENED' THEN 1 WHEN 'TRANSFERRED' THEN 2
                                                WHEN 'AGENT_DISABLED' THEN 3 WHEN 'IM_PERMISSION_REMOVED' THEN 4
                                                WHEN 'NOT_RECEPTION_AGENT' THEN 5 END)
           || assignment_pb_string(3, from_agent_id) || assignment_pb_string(4, to_agent_id)
           || assignment_pb_string(5, actor_id) || assignment_pb_string(6, actor_role)
           || assignment_pb_len(7, assignment_pb_uint(1, floor(e)::bigint)
                                   || assignment_pb_uint(2, ((e - floor(e)) * 1000000000)::bigint))
    FROM (SELECT extract(epoch FROM at) AS e) AS epoch
$$;

CREATE FUNCTION assignment_history_pb(p_session_id uuid) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT assignment_pb_len(16, assignment_step_pb(0, 'OPENED', NULL, coalesce(first.from_agent_id, s.assigned_agent_id),
                                                    s.platform_agent_id, 'platform', s.open_time))
           || coalesce((SELECT string_agg(assignment_pb_len(16, assignment_step_pb(m.step, m.reason, m.from_agent_id,
                                                                                   m.to_agent_id, m.actor_id,
                                                                                   m.actor_role, m.move_time)),
                                          '\x'::bytea ORDER BY m.step)
                        FROM session_assignments m WHERE m.session_id = s.session_id), '\x'::bytea)
    FROM sessions s
    LEFT JOIN session_assignments first ON first.session_id = s.session_id AND first.step = 1
    WHERE s.session_id = p_session_id
$$;
