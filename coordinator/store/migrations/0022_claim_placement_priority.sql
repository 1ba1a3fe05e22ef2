-- Placement without starvation and priorities (issue 16). An agent's claim filters QUEUED jobs
-- by its labels and free capacity in the query and takes the best one (priority DESC, then
-- oldest), instead of scanning the 256 oldest in Python. The index walks a workspace's queue in
-- that order and holds the selector and resources, so a job the agent cannot run is skipped
-- from the index alone, without reading its table row.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 50;
-- The highest priority a member may give a job; admins and owners are not limited.
ALTER TABLE workspaces ADD COLUMN max_member_priority INTEGER NOT NULL DEFAULT 50;
CREATE INDEX jobs_claim ON jobs (workspace_id, priority DESC, created_at, id, labels, resources)
    WHERE state = 'QUEUED';
