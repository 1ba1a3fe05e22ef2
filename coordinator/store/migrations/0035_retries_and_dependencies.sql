-- Retries and dependencies (issue 16).
-- A job's retry policy as submitted (JSON: attempts, on, exitCodes, backoffSeconds); NULL: none.
ALTER TABLE jobs ADD COLUMN retry TEXT;
-- A QUEUED job is not claimable before this time (ms): the backoff after a failed attempt.
ALTER TABLE jobs ADD COLUMN not_before INTEGER;
-- How many of the job's dependencies have not met their condition yet; claimable only at 0.
ALTER TABLE jobs ADD COLUMN dependencies_pending INTEGER NOT NULL DEFAULT 0;
-- One row per dependency of a job (Slurm's afterok / afternotok / afterany). ``satisfied`` is
-- NULL while the dependency has not ended, then 1 (condition met) or 0 (it can never be met).
CREATE TABLE job_dependencies (
    job_id        TEXT NOT NULL REFERENCES jobs(id),
    depends_on    TEXT NOT NULL REFERENCES jobs(id),
    workspace_id  TEXT NOT NULL,
    position      INTEGER NOT NULL,
    condition     TEXT NOT NULL CHECK (condition IN ('succeeded', 'failed', 'finished')),
    satisfied     INTEGER,
    PRIMARY KEY (job_id, depends_on)
);
-- The dependents still waiting on a job, found when it ends.
CREATE INDEX job_dependents ON job_dependencies (depends_on) WHERE satisfied IS NULL;
-- The next moment a retried job of a workspace becomes claimable (a waiting claim wakes then).
CREATE INDEX jobs_retry_due ON jobs (workspace_id, not_before) WHERE state = 'QUEUED' AND not_before IS NOT NULL;
