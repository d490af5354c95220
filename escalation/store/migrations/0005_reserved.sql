-- 0005: reserved for the session size bound (issue 9 §5, another branch). This placeholder only keeps
-- the versions gapless on the outbox branch; drop it when that branch's 0005 is merged.
SELECT 1;
