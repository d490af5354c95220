-- 0004: indexes for reply timeliness (SPEC R10).

-- The warnings worker looks at every merchant's sessions of the trailing 24 hours; the per-merchant
-- index (merchant_id, open_time) cannot serve a range on open_time alone.
CREATE INDEX sessions_open_time ON sessions (open_time);

-- ListWarnings filtered by merchant, newest first.
CREATE INDEX merchant_warnings_merchant_create_time ON merchant_warnings (merchant_id, create_time DESC, warning_id DESC);
