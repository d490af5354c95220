-- The PostgreSQL work of one OpenSession (one opening message) as escalation/services/sessions.py
-- sends it: one call of the open_session function (migration 0010), in its own implicit transaction.
-- Run by `make bench` with `pgbench -M prepared`: every :variable is a bound parameter, as the
-- service's $n are. The statement names the query of escalation/store/sql/ it reproduces; a test
-- (tests/integration/test_bench_pgbench_scripts.py) checks that the texts agree.
--
-- pgbench variables are numbers, so the bench database names merchants "1".."N" and merchant m's
-- agents "m1".."m3" (as the number m*10+a). The function picks the agent (SPEC R2) and builds every
-- payload itself; the opening message's content (:open_contents) is a real serialized protobuf the
-- bench computes with the service's own code and passes with -D.
\set merchant random(1, :merchants)
\set request random(1, 9223372036854775806)
-- name: open_session
SELECT * FROM open_session(
    p_platform_agent_id => :platform_agent, p_request_id => :request, p_request_hash => :request_hash,
    p_merchant_id => :merchant, p_category => :category, p_order_id => :request,
    p_kinds => :message_kinds::text[], p_contents => :open_contents::bytea[], p_rule_version => :rule_version,
    p_presence_window => :presence_window, p_reply_timeout_override => NULL, p_remind_before => :remind_before,
    p_max_messages => :max_messages, p_max_content_bytes => :max_content_bytes, p_idle_timeout_override => NULL);
