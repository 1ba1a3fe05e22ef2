-- Identity, workspaces, agents, jobs and their logs.
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE workspaces (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    plan            TEXT NOT NULL,
    default_region  TEXT,
    created_at      INTEGER NOT NULL
);

CREATE TABLE memberships (
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    user_id       TEXT NOT NULL REFERENCES users(id),
    role          TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
);

CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    user_id       TEXT,
    agent_id      TEXT,
    name          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    revoked_at    INTEGER
);

CREATE TABLE agents (
    id                 TEXT PRIMARY KEY,
    workspace_id       TEXT NOT NULL REFERENCES workspaces(id),
    name               TEXT NOT NULL,
    state              TEXT NOT NULL,
    labels             TEXT NOT NULL,
    capacity           TEXT NOT NULL,
    version            TEXT NOT NULL,
    registered_at      INTEGER NOT NULL,
    last_heartbeat_at  INTEGER,
    drain_requested    INTEGER NOT NULL DEFAULT 0,
    last_seq           INTEGER NOT NULL DEFAULT 0,
    deleted_at         INTEGER
);
CREATE INDEX agents_by_workspace ON agents (workspace_id, id);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    workspace_id      TEXT NOT NULL REFERENCES workspaces(id),
    state             TEXT NOT NULL,
    type              TEXT NOT NULL,
    command           TEXT NOT NULL,
    name              TEXT,
    labels            TEXT NOT NULL,
    resources         TEXT,
    env               TEXT NOT NULL,
    timeout_seconds   INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    exit_code         INTEGER,
    runtime_ms        INTEGER,
    agent_id          TEXT,
    assigned_at       INTEGER,
    epoch             INTEGER NOT NULL DEFAULT 0,
    reason            TEXT,
    cpu_seconds       REAL,
    gpu_seconds       REAL,
    gb_seconds        REAL,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    log_size          INTEGER NOT NULL DEFAULT 0,
    idempotency_key   TEXT,
    request_hash      TEXT
);
CREATE INDEX jobs_by_workspace ON jobs (workspace_id, id);
CREATE INDEX jobs_queued ON jobs (workspace_id, created_at) WHERE state = 'QUEUED';
CREATE INDEX jobs_by_agent ON jobs (agent_id) WHERE state IN ('ASSIGNED', 'RUNNING');
CREATE UNIQUE INDEX jobs_idempotency ON jobs (workspace_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE job_logs (
    job_id  TEXT NOT NULL,
    offset  INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (job_id, offset)
) WITHOUT ROWID;
