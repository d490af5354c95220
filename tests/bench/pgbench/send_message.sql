-- The PostgreSQL work of one SendMessage from a platform agent (with a client_msg_id) as
-- escalation/services/sessions.py (add_message) sends it: one call of the send_message function
-- (migration 0010), in its own implicit transaction. Conventions as in open_session.sql: :variables
-- are bound parameters (pgbench -M prepared), ids are numbers. The bench opens sessions 1..:sessions
-- beforehand with open_session.sql, and bench_session(n) is session n's id (a helper in the bench
-- database, inlined: a subscript of a constant array); each message goes to one of them at random
-- (more sessions than clients, so rarely two wait on one row, as in the gRPC measurement).
\set session random(1, :sessions)
\set client_msg random(1, 9223372036854775806)
-- name: send_message
SELECT * FROM send_message(
    p_session_id => bench_session(:session), p_sender => :sender, p_sender_id => :platform_agent,
    p_caller_merchant_id => NULL, p_scope_platform_agent_id => :platform_agent, p_kind => :kind,
    p_client_msg_id => :client_msg, p_template_id => NULL, p_content => :follow_up,
    p_reply_timeout_override => NULL, p_remind_before => :remind_before, p_max_messages => :max_messages,
    p_max_content_bytes => :max_content_bytes, p_idle_timeout_override => NULL);
