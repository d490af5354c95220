-- The declared schema: `make schema` writes this file from the migrations; do not edit it.
CREATE FUNCTION public.assignment_history_pb(p_session_id uuid) RETURNS bytea
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
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
CREATE FUNCTION public.assignment_pb_len(field integer, value bytea) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN value IS NULL THEN '\x'::bytea
                ELSE assignment_pb_varint(field::bigint << 3 | 2) || assignment_pb_varint(octet_length(value)) || value END
$$;
CREATE FUNCTION public.assignment_pb_string(field integer, value text) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN value IS NULL OR value = '' THEN '\x'::bytea
                ELSE assignment_pb_len(field, convert_to(value, 'UTF8')) END
$$;
CREATE FUNCTION public.assignment_pb_uint(field integer, value bigint) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN value IS NULL OR value = 0 THEN '\x'::bytea
                ELSE assignment_pb_varint(field::bigint << 3) || assignment_pb_varint(value) END
$$;
CREATE FUNCTION public.assignment_pb_varint(value bigint) RETURNS bytea
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
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
CREATE FUNCTION public.assignment_step_pb(step bigint, reason text, from_agent_id text, to_agent_id text, actor_id text, actor_role text, at timestamp with time zone) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
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
CREATE FUNCTION public.notify_agent_access() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('escalation_agents', NEW.merchant_id || E'\t' || NEW.agent_id);
    RETURN NULL;
END $$;
CREATE FUNCTION public.notify_deadline() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('escalation_deadline',
                      extract(epoch FROM least(NEW.remind_time, NEW.reply_deadline))::text);
    RETURN NULL;
END $$;
CREATE FUNCTION public.notify_merchant_access() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('escalation_agents', NEW.merchant_id || E'\t');
    RETURN NULL;
END $$;
CREATE FUNCTION public.notify_merchant_event() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- Identical payloads within one transaction are folded into one notification.
    PERFORM pg_notify('escalation_events', NEW.merchant_id);
    RETURN NULL;
END $$;
CREATE FUNCTION public.notify_outbox() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- Identical notifications within one transaction are folded into one by PostgreSQL.
    PERFORM pg_notify('escalation_outbox', '');
    RETURN NULL;
END $$;
CREATE TABLE public.agents (
    merchant_id text NOT NULL,
    agent_id text NOT NULL,
    display_name text NOT NULL,
    main_account boolean DEFAULT false NOT NULL,
    im_permission boolean DEFAULT false NOT NULL,
    disabled boolean DEFAULT false NOT NULL,
    reception_agent boolean DEFAULT false NOT NULL,
    capacity integer DEFAULT 10 NOT NULL,
    open_sessions integer DEFAULT 0 NOT NULL,
    last_assign_time timestamp with time zone,
    create_time timestamp with time zone DEFAULT now() NOT NULL,
    update_time timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT agents_capacity_range CHECK (((capacity >= 1) AND (capacity <= 50))),
    CONSTRAINT agents_main_account_has_im CHECK (((NOT main_account) OR im_permission)),
    CONSTRAINT agents_open_sessions_nonnegative CHECK ((open_sessions >= 0))
);
CREATE VIEW public.agent_eligibility AS
 SELECT a.merchant_id,
    a.agent_id,
    a.display_name,
    a.main_account,
    a.im_permission,
    a.disabled,
    a.reception_agent,
    a.capacity,
    a.open_sessions,
    a.last_assign_time,
    a.create_time,
    a.update_time,
    ((NOT a.disabled) AND a.im_permission AND (a.reception_agent OR (a.main_account AND (NOT (EXISTS ( SELECT 1
           FROM public.agents d
          WHERE ((d.merchant_id = a.merchant_id) AND d.reception_agent))))))) AS eligible
   FROM public.agents a;
CREATE TABLE public.agent_presence (
    stream_id uuid NOT NULL,
    server_id text NOT NULL,
    merchant_id text NOT NULL,
    agent_id text NOT NULL,
    connect_time timestamp with time zone DEFAULT now() NOT NULL,
    seen_time timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.merchant_events (
    merchant_id text NOT NULL,
    cursor bigint NOT NULL,
    session_id uuid,
    agent_id text,
    kind text NOT NULL,
    payload bytea NOT NULL,
    event_time timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.merchant_warnings (
    warning_id uuid NOT NULL,
    merchant_id text NOT NULL,
    period_start timestamp with time zone NOT NULL,
    period_end timestamp with time zone NOT NULL,
    kinds text[] NOT NULL,
    payload bytea NOT NULL,
    create_time timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.merchants (
    merchant_id text NOT NULL,
    display_name text NOT NULL,
    main_account_id text NOT NULL,
    disabled boolean DEFAULT false NOT NULL,
    last_event_cursor bigint DEFAULT 0 NOT NULL,
    create_time timestamp with time zone DEFAULT now() NOT NULL,
    update_time timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.messages (
    session_id uuid NOT NULL,
    seq bigint NOT NULL,
    sender text NOT NULL,
    sender_id text NOT NULL,
    kind text NOT NULL,
    client_msg_id text,
    template_id text,
    content bytea NOT NULL,
    send_time timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT messages_kind_known CHECK ((kind = ANY (ARRAY['TEXT'::text, 'ORDER_CARD'::text, 'IMAGE'::text, 'EMOJI'::text]))),
    CONSTRAINT messages_sender_known CHECK ((sender = ANY (ARRAY['PLATFORM'::text, 'MERCHANT'::text]))),
    CONSTRAINT messages_seq_positive CHECK ((seq >= 1))
);
CREATE TABLE public.outbox (
    id bigint NOT NULL,
    topic text NOT NULL,
    message_key bytea NOT NULL,
    event_id text NOT NULL,
    content_type text NOT NULL,
    payload bytea NOT NULL,
    create_time timestamp with time zone DEFAULT now() NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    last_error text,
    published_time timestamp with time zone,
    parked_time timestamp with time zone,
    isolated_failures integer DEFAULT 0 NOT NULL,
    traceparent text
);
ALTER TABLE public.outbox ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.outbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);
CREATE TABLE public.reception_settings (
    merchant_id text NOT NULL,
    reply_timeout_seconds integer DEFAULT 180 NOT NULL,
    update_time timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT reception_settings_reply_timeout_range CHECK (((reply_timeout_seconds >= 120) AND (reply_timeout_seconds <= 180)))
);
CREATE TABLE public.reply_templates (
    template_id text NOT NULL,
    merchant_id text NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    create_time timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.session_assignments (
    session_id uuid NOT NULL,
    step bigint NOT NULL,
    merchant_id text NOT NULL,
    reason text NOT NULL,
    from_agent_id text NOT NULL,
    to_agent_id text NOT NULL,
    actor_id text NOT NULL,
    actor_role text NOT NULL,
    decision bytea,
    request_id text,
    request_hash bytea,
    move_time timestamp with time zone NOT NULL,
    CONSTRAINT session_assignments_keyed CHECK (((request_id IS NULL) = (request_hash IS NULL))),
    CONSTRAINT session_assignments_moves CHECK ((from_agent_id <> to_agent_id)),
    CONSTRAINT session_assignments_reason_known CHECK ((reason = ANY (ARRAY['TRANSFERRED'::text, 'AGENT_DISABLED'::text, 'IM_PERMISSION_REMOVED'::text, 'NOT_RECEPTION_AGENT'::text]))),
    CONSTRAINT session_assignments_step_positive CHECK ((step >= 1))
);
CREATE TABLE public.sessions (
    session_id uuid NOT NULL,
    merchant_id text NOT NULL,
    assigned_agent_id text NOT NULL,
    platform_agent_id text NOT NULL,
    order_id text,
    category text NOT NULL,
    state text DEFAULT 'OPEN'::text NOT NULL,
    close_reason text,
    open_time timestamp with time zone DEFAULT now() NOT NULL,
    close_time timestamp with time zone,
    reply_deadline timestamp with time zone,
    remind_time timestamp with time zone,
    last_seq bigint DEFAULT 0 NOT NULL,
    merchant_read_seq bigint DEFAULT 0 NOT NULL,
    platform_read_seq bigint DEFAULT 0 NOT NULL,
    request_id text NOT NULL,
    request_hash bytea NOT NULL,
    assignment bytea NOT NULL,
    content_bytes bigint DEFAULT 0 NOT NULL,
    CONSTRAINT sessions_category_known CHECK ((category = ANY (ARRAY['REFUND'::text, 'ORDER_OPERATION'::text, 'EXCHANGE'::text, 'PRODUCT'::text, 'NEGOTIATED_REFUND'::text, 'LOGISTICS'::text]))),
    CONSTRAINT sessions_close_reason_known CHECK ((close_reason = ANY (ARRAY['RESOLVED'::text, 'PLATFORM_ESCALATED'::text, 'MERCHANT_TIMEOUT'::text]))),
    CONSTRAINT sessions_end_consistent CHECK ((((state = 'OPEN'::text) AND (close_reason IS NULL) AND (close_time IS NULL)) OR ((state = 'ENDED'::text) AND (close_reason IS NOT NULL) AND (close_time IS NOT NULL) AND (reply_deadline IS NULL) AND (remind_time IS NULL)))),
    CONSTRAINT sessions_state_known CHECK ((state = ANY (ARRAY['OPEN'::text, 'ENDED'::text])))
);
CREATE TABLE public.tickets (
    ticket_id uuid NOT NULL,
    session_id uuid NOT NULL,
    merchant_id text NOT NULL,
    reason text NOT NULL,
    category text NOT NULL,
    handle_by timestamp with time zone NOT NULL,
    transcript_digest text NOT NULL,
    payload bytea NOT NULL,
    create_time timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT tickets_reason_known CHECK ((reason = ANY (ARRAY['PLATFORM_ESCALATED'::text, 'MERCHANT_TIMEOUT'::text])))
);
ALTER TABLE ONLY public.agent_presence
    ADD CONSTRAINT agent_presence_pkey PRIMARY KEY (stream_id);
ALTER TABLE ONLY public.agents
    ADD CONSTRAINT agents_pkey PRIMARY KEY (merchant_id, agent_id);
ALTER TABLE ONLY public.merchant_events
    ADD CONSTRAINT merchant_events_pkey PRIMARY KEY (merchant_id, cursor);
ALTER TABLE ONLY public.merchant_warnings
    ADD CONSTRAINT merchant_warnings_one_per_period UNIQUE (merchant_id, period_start);
ALTER TABLE ONLY public.merchant_warnings
    ADD CONSTRAINT merchant_warnings_pkey PRIMARY KEY (warning_id);
ALTER TABLE ONLY public.merchants
    ADD CONSTRAINT merchants_pkey PRIMARY KEY (merchant_id);
ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_pkey PRIMARY KEY (session_id, seq);
ALTER TABLE ONLY public.outbox
    ADD CONSTRAINT outbox_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.reception_settings
    ADD CONSTRAINT reception_settings_pkey PRIMARY KEY (merchant_id);
ALTER TABLE ONLY public.reply_templates
    ADD CONSTRAINT reply_templates_pkey PRIMARY KEY (template_id);
ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);
ALTER TABLE ONLY public.session_assignments
    ADD CONSTRAINT session_assignments_pkey PRIMARY KEY (session_id, step);
ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (session_id);
ALTER TABLE ONLY public.tickets
    ADD CONSTRAINT tickets_pkey PRIMARY KEY (ticket_id);
ALTER TABLE ONLY public.tickets
    ADD CONSTRAINT tickets_session_id_key UNIQUE (session_id);
CREATE INDEX agent_presence_agent ON public.agent_presence USING btree (merchant_id, agent_id, seen_time);
CREATE INDEX agent_presence_server ON public.agent_presence USING btree (server_id);
CREATE UNIQUE INDEX agents_one_main_account ON public.agents USING btree (merchant_id) WHERE main_account;
CREATE INDEX merchant_events_event_time ON public.merchant_events USING btree (event_time);
CREATE INDEX merchant_warnings_create_time ON public.merchant_warnings USING btree (create_time DESC, warning_id DESC);
CREATE INDEX merchant_warnings_merchant_create_time ON public.merchant_warnings USING btree (merchant_id, create_time DESC, warning_id DESC);
CREATE UNIQUE INDEX messages_sender_client_msg_id ON public.messages USING btree (session_id, sender, sender_id, client_msg_id) WHERE (client_msg_id IS NOT NULL);
CREATE INDEX outbox_parked ON public.outbox USING btree (id) WHERE ((parked_time IS NOT NULL) AND (published_time IS NULL));
CREATE INDEX outbox_pending ON public.outbox USING btree (id) WHERE ((published_time IS NULL) AND (parked_time IS NULL));
CREATE INDEX outbox_pending_by_key ON public.outbox USING btree (message_key, id) WHERE ((published_time IS NULL) AND (parked_time IS NULL));
CREATE INDEX reply_templates_merchant ON public.reply_templates USING btree (merchant_id, create_time, template_id);
CREATE UNIQUE INDEX session_assignments_request_id ON public.session_assignments USING btree (merchant_id, actor_id, request_id) WHERE (request_id IS NOT NULL);
CREATE INDEX sessions_agent_open_time ON public.sessions USING btree (merchant_id, assigned_agent_id, open_time DESC, session_id DESC);
CREATE INDEX sessions_due ON public.sessions USING btree (reply_deadline) WHERE (reply_deadline IS NOT NULL);
CREATE INDEX sessions_merchant_open_time ON public.sessions USING btree (merchant_id, open_time DESC, session_id DESC);
CREATE INDEX sessions_open_time ON public.sessions USING btree (open_time);
CREATE INDEX sessions_platform_agent_open_time ON public.sessions USING btree (platform_agent_id, open_time DESC, session_id DESC);
CREATE INDEX sessions_remind_due ON public.sessions USING btree (remind_time) WHERE (remind_time IS NOT NULL);
CREATE UNIQUE INDEX sessions_request_id ON public.sessions USING btree (platform_agent_id, request_id);
CREATE INDEX tickets_merchant_create_time ON public.tickets USING btree (merchant_id, create_time);
CREATE TRIGGER agents_notify_access AFTER UPDATE OF im_permission, disabled, reception_agent, main_account ON public.agents FOR EACH ROW WHEN (((old.im_permission IS DISTINCT FROM new.im_permission) OR (old.disabled IS DISTINCT FROM new.disabled) OR (old.reception_agent IS DISTINCT FROM new.reception_agent) OR (old.main_account IS DISTINCT FROM new.main_account))) EXECUTE FUNCTION public.notify_agent_access();
CREATE TRIGGER merchant_events_notify AFTER INSERT ON public.merchant_events FOR EACH ROW EXECUTE FUNCTION public.notify_merchant_event();
CREATE TRIGGER merchants_notify_access AFTER UPDATE OF main_account_id ON public.merchants FOR EACH ROW WHEN ((old.main_account_id IS DISTINCT FROM new.main_account_id)) EXECUTE FUNCTION public.notify_merchant_access();
CREATE TRIGGER outbox_notify AFTER INSERT ON public.outbox FOR EACH ROW EXECUTE FUNCTION public.notify_outbox();
CREATE TRIGGER sessions_notify_deadline AFTER UPDATE OF reply_deadline, remind_time ON public.sessions FOR EACH ROW WHEN ((((new.reply_deadline IS NOT NULL) AND (new.reply_deadline IS DISTINCT FROM old.reply_deadline)) OR ((new.remind_time IS NOT NULL) AND (new.remind_time IS DISTINCT FROM old.remind_time)))) EXECUTE FUNCTION public.notify_deadline();
ALTER TABLE ONLY public.agents
    ADD CONSTRAINT agents_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id) ON DELETE CASCADE;
ALTER TABLE ONLY public.merchant_events
    ADD CONSTRAINT merchant_events_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id) ON DELETE CASCADE;
ALTER TABLE ONLY public.merchant_warnings
    ADD CONSTRAINT merchant_warnings_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id) ON DELETE CASCADE;
ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.sessions(session_id) ON DELETE CASCADE;
ALTER TABLE ONLY public.reception_settings
    ADD CONSTRAINT reception_settings_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id) ON DELETE CASCADE;
ALTER TABLE ONLY public.reply_templates
    ADD CONSTRAINT reply_templates_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id) ON DELETE CASCADE;
ALTER TABLE ONLY public.session_assignments
    ADD CONSTRAINT session_assignments_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.sessions(session_id);
ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_merchant_id_assigned_agent_id_fkey FOREIGN KEY (merchant_id, assigned_agent_id) REFERENCES public.agents(merchant_id, agent_id);
ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id);
ALTER TABLE ONLY public.tickets
    ADD CONSTRAINT tickets_merchant_id_fkey FOREIGN KEY (merchant_id) REFERENCES public.merchants(merchant_id);
ALTER TABLE ONLY public.tickets
    ADD CONSTRAINT tickets_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.sessions(session_id);
