-- Every attempt at a job (one claim, one epoch) is its own row, with its own cumulative usage:
-- the ledger's deltas are taken per attempt, so a re-run never nets against an earlier one.
-- Numbered 0013 (the metering issue) to stay clear of migrations other branches add meanwhile.
CREATE TABLE job_attempts (
    job_id        TEXT NOT NULL REFERENCES jobs(id),
    epoch         INTEGER NOT NULL,
    workspace_id  TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    assigned_at   INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    state         TEXT NOT NULL,
    exit_code     INTEGER,
    reason        TEXT,
    cpu_seconds   REAL NOT NULL DEFAULT 0,
    gpu_seconds   REAL NOT NULL DEFAULT 0,
    gb_seconds    REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, epoch)
) WITHOUT ROWID;

-- Jobs claimed before this migration: their latest attempt, with the usage the job holds.
INSERT INTO job_attempts (job_id, epoch, workspace_id, agent_id, assigned_at, started_at, finished_at, state,
                          exit_code, reason, cpu_seconds, gpu_seconds, gb_seconds)
SELECT id, epoch, workspace_id, agent_id, COALESCE(assigned_at, started_at, created_at), started_at, finished_at,
       state, exit_code, reason, COALESCE(cpu_seconds, 0), COALESCE(gpu_seconds, 0), COALESCE(gb_seconds, 0)
FROM jobs WHERE epoch > 0 AND agent_id IS NOT NULL;

-- Price versions: a version applies to usage recorded from effective_at (a whole hour) until
-- the next version's effective_at. body: the prices as decimal strings.
CREATE TABLE price_versions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    effective_at  INTEGER NOT NULL UNIQUE,
    recorded_at   INTEGER NOT NULL,
    body          TEXT NOT NULL
);
