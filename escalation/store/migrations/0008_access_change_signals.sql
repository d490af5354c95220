-- 0008: every change that narrows what an identity may see or do wakes the streams it concerns
-- (issue 10 §1, SPEC R9). The hubs then re-read access from the tables; the payload only says whose.

-- The shop's main account moved (OpsService.UpsertMerchant): "merchant\t" concerns every agent of it.
CREATE FUNCTION notify_merchant_access() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('escalation_agents', NEW.merchant_id || E'\t');
    RETURN NULL;
END $$;

CREATE TRIGGER merchants_notify_access
    AFTER UPDATE OF main_account_id ON merchants
    FOR EACH ROW
    WHEN (OLD.main_account_id IS DISTINCT FROM NEW.main_account_id)
    EXECUTE FUNCTION notify_merchant_access();

-- Besides IM permission and disabled (0003): designation and the main-account flag.
DROP TRIGGER agents_notify_access ON agents;
CREATE TRIGGER agents_notify_access
    AFTER UPDATE OF im_permission, disabled, reception_agent, main_account ON agents
    FOR EACH ROW
    WHEN (OLD.im_permission IS DISTINCT FROM NEW.im_permission
          OR OLD.disabled IS DISTINCT FROM NEW.disabled
          OR OLD.reception_agent IS DISTINCT FROM NEW.reception_agent
          OR OLD.main_account IS DISTINCT FROM NEW.main_account)
    EXECUTE FUNCTION notify_agent_access();
