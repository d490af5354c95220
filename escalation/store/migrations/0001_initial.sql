-- 0001: merchants, agents, reception settings, sessions, messages, merchant events, tickets,
-- outbox, reply templates, warnings.
--
-- Enumerations are text with CHECK constraints, spelled like the proto enum values without their
-- prefix, so that a row reads the same in psql as in the API.

CREATE TABLE merchants (
    merchant_id        text PRIMARY KEY,
    display_name       text NOT NULL,
    main_account_id    text NOT NULL,
    disabled           boolean NOT NULL DEFAULT false,
    -- Last cursor handed out in merchant_events; bumped under this row's lock, hence gapless.
    last_event_cursor  bigint NOT NULL DEFAULT 0,
    create_time        timestamptz NOT NULL DEFAULT now(),
    update_time        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agents (
    merchant_id       text NOT NULL REFERENCES merchants (merchant_id) ON DELETE CASCADE,
    agent_id          text NOT NULL,
    display_name      text NOT NULL,
    main_account      boolean NOT NULL DEFAULT false,
    im_permission     boolean NOT NULL DEFAULT false,
    disabled          boolean NOT NULL DEFAULT false,
    reception_agent   boolean NOT NULL DEFAULT false,
    capacity          integer NOT NULL DEFAULT 10 CONSTRAINT agents_capacity_range CHECK (capacity BETWEEN 1 AND 50),
    -- Open platform sessions assigned to this agent; maintained in the transactions that open and
    -- end sessions so that the assignment rule reads one row per candidate.
    open_sessions     integer NOT NULL DEFAULT 0 CONSTRAINT agents_open_sessions_nonnegative CHECK (open_sessions >= 0),
    last_assign_time  timestamptz,
    create_time       timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, agent_id),
    -- The main account always has IM permission (SPEC R1: by default it receives everything).
    CONSTRAINT agents_main_account_has_im CHECK (NOT main_account OR im_permission)
);

CREATE UNIQUE INDEX agents_one_main_account ON agents (merchant_id) WHERE main_account;

CREATE TABLE reception_settings (
    merchant_id            text PRIMARY KEY REFERENCES merchants (merchant_id) ON DELETE CASCADE,
    reply_timeout_seconds  integer NOT NULL DEFAULT 180
        CONSTRAINT reception_settings_reply_timeout_range CHECK (reply_timeout_seconds BETWEEN 120 AND 180),
    update_time            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    session_id         uuid PRIMARY KEY,
    merchant_id        text NOT NULL REFERENCES merchants (merchant_id),
    assigned_agent_id  text NOT NULL,
    platform_agent_id  text NOT NULL,
    order_id           text,
    category           text NOT NULL CONSTRAINT sessions_category_known CHECK (category IN
        ('REFUND', 'ORDER_OPERATION', 'EXCHANGE', 'PRODUCT', 'NEGOTIATED_REFUND', 'LOGISTICS')),
    state              text NOT NULL DEFAULT 'OPEN' CONSTRAINT sessions_state_known CHECK (state IN ('OPEN', 'ENDED')),
    close_reason       text CONSTRAINT sessions_close_reason_known CHECK (close_reason IN
        ('RESOLVED', 'PLATFORM_ESCALATED', 'MERCHANT_TIMEOUT')),
    open_time          timestamptz NOT NULL DEFAULT now(),
    close_time         timestamptz,
    -- Database-clock instant at which the oldest unanswered platform message times out (SPEC R5).
    reply_deadline     timestamptz,
    -- When the reminder for the current deadline is due; cleared once sent.
    remind_time        timestamptz,
    last_seq           bigint NOT NULL DEFAULT 0,
    merchant_read_seq  bigint NOT NULL DEFAULT 0,
    platform_read_seq  bigint NOT NULL DEFAULT 0,
    -- AIP-155 idempotency: request ids are scoped to the platform agent who sent them.
    request_id         text NOT NULL,
    request_hash       bytea NOT NULL,
    -- escalation.v1.AssignmentDecision, serialized: the audit record of R2.
    assignment         bytea NOT NULL,
    FOREIGN KEY (merchant_id, assigned_agent_id) REFERENCES agents (merchant_id, agent_id),
    CONSTRAINT sessions_end_consistent CHECK (
        (state = 'OPEN' AND close_reason IS NULL AND close_time IS NULL)
        OR (state = 'ENDED' AND close_reason IS NOT NULL AND close_time IS NOT NULL
            AND reply_deadline IS NULL AND remind_time IS NULL)
    )
);

CREATE UNIQUE INDEX sessions_request_id ON sessions (platform_agent_id, request_id);
CREATE INDEX sessions_due ON sessions (reply_deadline) WHERE reply_deadline IS NOT NULL;
CREATE INDEX sessions_remind_due ON sessions (remind_time) WHERE remind_time IS NOT NULL;
CREATE INDEX sessions_merchant_open_time ON sessions (merchant_id, open_time DESC, session_id DESC);
CREATE INDEX sessions_agent_open_time ON sessions (merchant_id, assigned_agent_id, open_time DESC, session_id DESC);
CREATE INDEX sessions_platform_agent_open_time ON sessions (platform_agent_id, open_time DESC, session_id DESC);

CREATE TABLE messages (
    session_id     uuid NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    seq            bigint NOT NULL CONSTRAINT messages_seq_positive CHECK (seq >= 1),
    sender         text NOT NULL CONSTRAINT messages_sender_known CHECK (sender IN ('PLATFORM', 'MERCHANT')),
    sender_id      text NOT NULL,
    kind           text NOT NULL CONSTRAINT messages_kind_known CHECK (kind IN ('TEXT', 'ORDER_CARD', 'IMAGE', 'EMOJI')),
    client_msg_id  text,
    template_id    text,
    -- escalation.v1.MessageContent, serialized.
    content        bytea NOT NULL,
    send_time      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, seq)
);

CREATE UNIQUE INDEX messages_client_msg_id ON messages (session_id, sender, client_msg_id)
    WHERE client_msg_id IS NOT NULL;

-- The durable per-merchant event log behind Connect (SPEC R8).
CREATE TABLE merchant_events (
    merchant_id  text NOT NULL REFERENCES merchants (merchant_id) ON DELETE CASCADE,
    cursor       bigint NOT NULL,
    session_id   uuid,
    -- The session's assigned agent when the event was written, so sub-accounts can be filtered.
    agent_id     text,
    kind         text NOT NULL,
    -- escalation.v1.MerchantEvent, serialized.
    payload      bytea NOT NULL,
    event_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, cursor)
);

CREATE INDEX merchant_events_event_time ON merchant_events (event_time);

CREATE TABLE tickets (
    ticket_id          uuid PRIMARY KEY,
    session_id         uuid NOT NULL REFERENCES sessions (session_id),
    merchant_id        text NOT NULL REFERENCES merchants (merchant_id),
    reason             text NOT NULL CONSTRAINT tickets_reason_known CHECK (reason IN ('PLATFORM_ESCALATED', 'MERCHANT_TIMEOUT')),
    category           text NOT NULL,
    handle_by          timestamptz NOT NULL,
    transcript_digest  text NOT NULL,
    -- escalation.v1.ServiceTicket, serialized: exactly what was published.
    payload            bytea NOT NULL,
    create_time        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tickets_session_id_key UNIQUE (session_id)
);

CREATE INDEX tickets_merchant_create_time ON tickets (merchant_id, create_time);

-- Transactional outbox: rows are written with the change they announce and published later.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           text NOT NULL,
    message_key     bytea NOT NULL,
    event_id        text NOT NULL,
    content_type    text NOT NULL,
    payload         bytea NOT NULL,
    create_time     timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    published_time  timestamptz
);

CREATE INDEX outbox_pending ON outbox (id) WHERE published_time IS NULL;

CREATE TABLE reply_templates (
    template_id   text PRIMARY KEY,
    merchant_id   text NOT NULL REFERENCES merchants (merchant_id) ON DELETE CASCADE,
    title         text NOT NULL,
    body          text NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX reply_templates_merchant ON reply_templates (merchant_id, create_time, template_id);

CREATE TABLE merchant_warnings (
    warning_id     uuid PRIMARY KEY,
    merchant_id    text NOT NULL REFERENCES merchants (merchant_id) ON DELETE CASCADE,
    period_start   timestamptz NOT NULL,
    period_end     timestamptz NOT NULL,
    kinds          text[] NOT NULL,
    -- escalation.v1.MerchantWarning, serialized.
    payload        bytea NOT NULL,
    create_time    timestamptz NOT NULL DEFAULT now(),
    -- One warning per merchant per period, however many warnings workers run.
    CONSTRAINT merchant_warnings_one_per_period UNIQUE (merchant_id, period_start)
);

CREATE INDEX merchant_warnings_create_time ON merchant_warnings (create_time DESC, warning_id DESC);

-- SPEC R1 in one place: an agent is eligible iff it is designated (or it is the main account and
-- nobody is designated), has IM permission and is not disabled. escalation.domain.reception mirrors
-- this rule for pure tests; an integration test proves they agree.
CREATE VIEW agent_eligibility AS
SELECT
    a.*,
    (NOT a.disabled AND a.im_permission AND (
        a.reception_agent
        OR (a.main_account AND NOT EXISTS (
            SELECT 1 FROM agents d WHERE d.merchant_id = a.merchant_id AND d.reception_agent))
    )) AS eligible
FROM agents a;
