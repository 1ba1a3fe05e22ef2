-- The claim looks up a workspace's queue by placement shape (selector and resources) instead of
-- walking it in order (issue 16): the distinct shapes come from this index by skip-ahead, the
-- agent keeps those it can run, and each one's best job (priority DESC, oldest) is one seek.
-- A claim costs the number of distinct shapes queued, not the number of jobs queued ahead.
DROP INDEX IF EXISTS jobs_claim;
CREATE INDEX jobs_claim_shapes ON jobs (workspace_id, labels, resources, priority DESC, created_at, id)
    WHERE state = 'QUEUED';
