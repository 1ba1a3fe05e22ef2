-- Job arrays and fair share between submitters (issue 16); see the SQLite 0040 for the why.

CREATE TABLE job_arrays (
    id               TEXT PRIMARY KEY,
    workspace_id     TEXT NOT NULL REFERENCES workspaces(id),
    name             TEXT,
    count            INTEGER NOT NULL,
    max_parallel     INTEGER,
    active           INTEGER NOT NULL DEFAULT 0,
    submitted_by     TEXT,
    created_at       BIGINT NOT NULL,
    idempotency_key  TEXT,
    request_hash     TEXT
);
CREATE INDEX job_arrays_by_workspace ON job_arrays (workspace_id, id);
CREATE UNIQUE INDEX job_arrays_idempotency ON job_arrays (workspace_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

ALTER TABLE jobs ADD COLUMN array_id TEXT;
ALTER TABLE jobs ADD COLUMN array_index INTEGER;
ALTER TABLE jobs ADD COLUMN submitted_by TEXT;
CREATE INDEX jobs_by_array ON jobs (array_id, state) WHERE array_id IS NOT NULL;

DROP INDEX IF EXISTS jobs_claim_shapes;
CREATE INDEX jobs_claim_shapes ON jobs (workspace_id, labels, resources, submitted_by, array_id,
                                        priority DESC, created_at, id)
    WHERE state = 'QUEUED';
CREATE INDEX jobs_queue_position ON jobs (workspace_id, priority, submitted_by, created_at, id)
    WHERE state = 'QUEUED';

CREATE TABLE submitter_turns (
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    submitter     TEXT NOT NULL,
    last_turn     BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, submitter)
);
