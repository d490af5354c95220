-- Merchants, agents, reception settings and reply templates.

-- name: upsert_merchant
INSERT INTO merchants AS m (merchant_id, display_name, main_account_id, disabled)
VALUES ($1, $2, $3, $4)
ON CONFLICT (merchant_id) DO UPDATE
SET display_name = EXCLUDED.display_name,
    main_account_id = EXCLUDED.main_account_id,
    disabled = EXCLUDED.disabled,
    update_time = now()
RETURNING merchant_id, display_name, main_account_id, disabled, create_time, update_time;

-- name: ensure_reception_settings
INSERT INTO reception_settings (merchant_id) VALUES ($1) ON CONFLICT (merchant_id) DO NOTHING;

-- name: demote_other_main_accounts
UPDATE agents SET main_account = false, update_time = now()
WHERE merchant_id = $1 AND main_account AND agent_id <> $2;

-- name: upsert_main_account
INSERT INTO agents (merchant_id, agent_id, display_name, main_account, im_permission)
VALUES ($1, $2, $2, true, true)
ON CONFLICT (merchant_id, agent_id) DO UPDATE
SET main_account = true, im_permission = true, update_time = now()
WHERE NOT agents.main_account OR NOT agents.im_permission;

-- name: lock_merchant
-- NO KEY UPDATE: serializes with OpenSession and other changes of the shop, not with the foreign-key
-- KEY SHARE locks of ticket and session inserts (migration 0015).
SELECT merchant_id, main_account_id, disabled FROM merchants WHERE merchant_id = $1 FOR NO KEY UPDATE;

-- name: get_merchant
SELECT merchant_id, main_account_id, disabled FROM merchants WHERE merchant_id = $1;

-- name: upsert_agent
INSERT INTO agents (merchant_id, agent_id, display_name, im_permission, disabled, capacity)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (merchant_id, agent_id) DO UPDATE
SET display_name = EXCLUDED.display_name,
    im_permission = EXCLUDED.im_permission,
    disabled = EXCLUDED.disabled,
    capacity = EXCLUDED.capacity,
    update_time = now();

-- name: get_agent
SELECT merchant_id, agent_id, display_name, main_account, im_permission, disabled, reception_agent,
       capacity, open_sessions, update_time, eligible
FROM agent_eligibility WHERE merchant_id = $1 AND agent_id = $2;

-- name: list_agents
SELECT merchant_id, agent_id, display_name, main_account, im_permission, disabled, reception_agent,
       capacity, open_sessions, update_time, eligible
FROM agent_eligibility
WHERE merchant_id = $1 AND ($2::text IS NULL OR agent_id > $2)
ORDER BY agent_id
LIMIT $3;

-- name: agents_by_id
SELECT agent_id, im_permission FROM agents WHERE merchant_id = $1 AND agent_id = ANY($2::text[]);

-- name: set_reception_agents
UPDATE agents SET reception_agent = (agent_id = ANY($2::text[])), update_time = now()
WHERE merchant_id = $1 AND reception_agent IS DISTINCT FROM (agent_id = ANY($2::text[]));

-- name: touch_reception_settings
UPDATE reception_settings SET update_time = now() WHERE merchant_id = $1;

-- name: get_reception_settings
SELECT s.merchant_id, s.reply_timeout_seconds, s.idle_timeout_seconds, s.update_time,
       coalesce(array_agg(e.agent_id ORDER BY e.agent_id) FILTER (WHERE e.reception_agent), '{}') AS reception_agent_ids,
       coalesce(array_agg(e.agent_id ORDER BY e.agent_id) FILTER (WHERE e.eligible), '{}') AS eligible_agent_ids
FROM reception_settings s
LEFT JOIN agent_eligibility e ON e.merchant_id = s.merchant_id
WHERE s.merchant_id = $1
GROUP BY s.merchant_id;

-- name: update_reply_timeout
UPDATE reception_settings SET reply_timeout_seconds = $2, update_time = now() WHERE merchant_id = $1;

-- name: update_idle_timeout
-- SPEC R12. Idle deadlines already running keep their instant (as reply deadlines do on
-- update_reply_timeout); the next merchant message starts one with the new value.
UPDATE reception_settings SET idle_timeout_seconds = $2, update_time = now() WHERE merchant_id = $1;

-- name: create_reply_template
INSERT INTO reply_templates (template_id, merchant_id, title, body) VALUES ($1, $2, $3, $4)
RETURNING template_id, title, body, create_time;

-- name: delete_reply_template
DELETE FROM reply_templates WHERE merchant_id = $1 AND template_id = $2;

-- name: get_reply_template
SELECT template_id, title, body, create_time FROM reply_templates WHERE merchant_id = $1 AND template_id = $2;

-- name: list_reply_templates
SELECT template_id, title, body, create_time FROM reply_templates
WHERE merchant_id = $1 AND ($2::timestamptz IS NULL OR (create_time, template_id) > ($2, $3))
ORDER BY create_time, template_id
LIMIT $4;
