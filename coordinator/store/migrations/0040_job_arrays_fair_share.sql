-- Job arrays and fair share between submitters (issue 16).
--
-- An array is one row here and `count` task rows in jobs (array_id, array_index). `active` is
-- how many of its tasks are ASSIGNED or RUNNING: a claim takes a slot with a compare-and-set
-- (`active = active + 1 WHERE active < max_parallel`, row count checked), every transition out
-- of ASSIGNED/RUNNING gives it back, so maxParallel holds however many claims race.
CREATE TABLE job_arrays (
    id               TEXT PRIMARY KEY,
    workspace_id     TEXT NOT NULL REFERENCES workspaces(id),
    name             TEXT,
    count            INTEGER NOT NULL,
    max_parallel     INTEGER,
    active           INTEGER NOT NULL DEFAULT 0,
    submitted_by     TEXT,
    created_at       INTEGER NOT NULL,
    idempotency_key  TEXT,
    request_hash     TEXT
);
CREATE INDEX job_arrays_by_workspace ON job_arrays (workspace_id, id);
CREATE UNIQUE INDEX job_arrays_idempotency ON job_arrays (workspace_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

ALTER TABLE jobs ADD COLUMN array_id TEXT;
ALTER TABLE jobs ADD COLUMN array_index INTEGER;
-- Who submitted the job (a user id, else the token's id): dispatch is shared between submitters.
ALTER TABLE jobs ADD COLUMN submitted_by TEXT;
-- An array's summary (counts per state) and its cancel read only its own tasks.
CREATE INDEX jobs_by_array ON jobs (array_id, state) WHERE array_id IS NOT NULL;

-- The claim's placement shapes now include the submitter and the array: each submitter's (and
-- each array's) best job is one seek, an array at its maxParallel is skipped as one shape, and
-- the claim shares dispatch between submitters without reading their queues.
DROP INDEX IF EXISTS jobs_claim_shapes;
CREATE INDEX jobs_claim_shapes ON jobs (workspace_id, labels, resources, submitted_by, array_id,
                                        priority DESC, created_at, id)
    WHERE state = 'QUEUED';
-- A queued job's position: counts by priority and submitter over this index, never a table walk.
CREATE INDEX jobs_queue_position ON jobs (workspace_id, priority, submitted_by, created_at, id)
    WHERE state = 'QUEUED';

-- Round robin between submitters: the workspace-wide turn at which each was last dispatched.
-- The claim serves, within the best priority, the submitter whose last turn is oldest.
CREATE TABLE submitter_turns (
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    submitter     TEXT NOT NULL,
    last_turn     INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, submitter)
);
