-- Secrets sign newest first; two made in the same millisecond are told apart by a real column
-- (per webhook, rising), as on SQLite (0025 there replaced its rowid).
ALTER TABLE webhook_secrets ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
