-- The meter tick marks the ledger rows it is rolling up (rolled_up = 2) before summing them,
-- so a row committed meanwhile by another replica is left for the next tick, never lost.
CREATE INDEX usage_records_rolling ON usage_records (workspace_id) WHERE rolled_up = 2;
