-- Secrets sign newest first; two made in the same millisecond were told apart by SQLite's
-- rowid, which PostgreSQL has not: a real column (per webhook, rising) replaces it.
ALTER TABLE webhook_secrets ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
UPDATE webhook_secrets SET seq = rowid;
