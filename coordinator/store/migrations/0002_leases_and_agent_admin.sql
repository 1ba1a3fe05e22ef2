-- Liveness, leases and agent administration (issue 4).
-- When an agent was last declared DOWN (null while it is alive): shown to admins, and lets
-- the liveness loop tell a fresh DOWN from one whose lease window is already running.
ALTER TABLE agents ADD COLUMN down_at INTEGER;

-- The liveness loop scans live agents by their last heartbeat.
CREATE INDEX agents_by_heartbeat ON agents (last_heartbeat_at) WHERE deleted_at IS NULL;

-- Listing a workspace's registration tokens, newest first.
CREATE INDEX tokens_by_workspace_kind ON tokens (workspace_id, kind, id);

-- `GET /v0/jobs?state=...` pages through one state without scanning the others.
CREATE INDEX jobs_by_workspace_state ON jobs (workspace_id, state, id);
