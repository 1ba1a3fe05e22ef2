-- Retries and dependencies (issue 16); see the SQLite 0035 for the why.
ALTER TABLE jobs ADD COLUMN retry TEXT;
ALTER TABLE jobs ADD COLUMN not_before BIGINT;
ALTER TABLE jobs ADD COLUMN dependencies_pending BIGINT NOT NULL DEFAULT 0;

CREATE TABLE job_dependencies (
    job_id        TEXT NOT NULL REFERENCES jobs(id),
    depends_on    TEXT NOT NULL REFERENCES jobs(id),
    workspace_id  TEXT NOT NULL,
    position      BIGINT NOT NULL,
    condition     TEXT NOT NULL CHECK (condition IN ('succeeded', 'failed', 'finished')),
    satisfied     BIGINT,
    PRIMARY KEY (job_id, depends_on)
);
CREATE INDEX job_dependents ON job_dependencies (depends_on) WHERE satisfied IS NULL;
CREATE INDEX jobs_retry_due ON jobs (workspace_id, not_before) WHERE state = 'QUEUED' AND not_before IS NOT NULL;
