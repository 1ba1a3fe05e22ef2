-- The whole schema as of SQLite migration 0024, for PostgreSQL (issue 14). Later steps get one
-- file each here, numbered as their SQLite twin; tests/test_store_schema_parity.py fails CI when
-- the two schemas' tables or columns drift apart.
--
-- Types: TEXT as in SQLite; every INTEGER is BIGINT (times are epoch milliseconds, usage is in
-- micro-units); REAL is DOUBLE PRECISION (SQLite's REAL is 8 bytes too); BLOB is BYTEA. JSON
-- columns stay TEXT, as on SQLite, so the store's SQL and values are the same on both; where a
-- query looks inside one it casts (``::jsonb``, through ``tx.dialect``). Booleans are BIGINT 0/1.
-- ``INTEGER PRIMARY KEY AUTOINCREMENT`` is an identity column (ids only grow, gaps allowed).

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE workspaces (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL,
    plan                 TEXT NOT NULL,
    default_region       TEXT,
    created_at           BIGINT NOT NULL,
    max_member_priority  BIGINT NOT NULL DEFAULT 50
);

CREATE TABLE memberships (
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    user_id       TEXT NOT NULL REFERENCES users(id),
    role          TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX memberships_by_user ON memberships (user_id, workspace_id);

CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    user_id       TEXT,
    agent_id      TEXT,
    name          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    family_id     TEXT,
    parent_id     TEXT,
    created_by    TEXT
);
CREATE INDEX tokens_by_workspace_kind ON tokens (workspace_id, kind, id);
CREATE INDEX tokens_by_workspace ON tokens (workspace_id, kind, id);
CREATE INDEX tokens_by_family ON tokens (family_id) WHERE family_id IS NOT NULL;
CREATE INDEX tokens_by_parent ON tokens (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE agents (
    id                 TEXT PRIMARY KEY,
    workspace_id       TEXT NOT NULL REFERENCES workspaces(id),
    name               TEXT NOT NULL,
    state              TEXT NOT NULL,
    labels             TEXT NOT NULL,
    capacity           TEXT NOT NULL,
    version            TEXT NOT NULL,
    registered_at      BIGINT NOT NULL,
    last_heartbeat_at  BIGINT,
    drain_requested    BIGINT NOT NULL DEFAULT 0,
    last_seq           BIGINT NOT NULL DEFAULT 0,
    deleted_at         BIGINT,
    down_at            BIGINT
);
CREATE INDEX agents_by_workspace ON agents (workspace_id, id);
CREATE INDEX agents_by_heartbeat ON agents (last_heartbeat_at) WHERE deleted_at IS NULL;

CREATE TABLE jobs (
    id                       TEXT PRIMARY KEY,
    workspace_id             TEXT NOT NULL REFERENCES workspaces(id),
    state                    TEXT NOT NULL,
    type                     TEXT NOT NULL,
    command                  TEXT NOT NULL,
    name                     TEXT,
    labels                   TEXT NOT NULL,
    resources                TEXT,
    env                      TEXT NOT NULL,
    timeout_seconds          BIGINT NOT NULL,
    created_at               BIGINT NOT NULL,
    started_at               BIGINT,
    finished_at              BIGINT,
    exit_code                BIGINT,
    runtime_ms               BIGINT,
    agent_id                 TEXT,
    assigned_at              BIGINT,
    epoch                    BIGINT NOT NULL DEFAULT 0,
    reason                   TEXT,
    cpu_seconds              DOUBLE PRECISION,
    gpu_seconds              DOUBLE PRECISION,
    gb_seconds               DOUBLE PRECISION,
    cancel_requested         BIGINT NOT NULL DEFAULT 0,
    log_size                 BIGINT NOT NULL DEFAULT 0,
    idempotency_key          TEXT,
    request_hash             TEXT,
    unreported_since         BIGINT,
    signal                   TEXT,
    priority                 BIGINT NOT NULL DEFAULT 50,
    assignment_confirmed_at  BIGINT
);
CREATE INDEX jobs_by_workspace ON jobs (workspace_id, id);
CREATE INDEX jobs_queued ON jobs (workspace_id, created_at) WHERE state = 'QUEUED';
CREATE INDEX jobs_by_agent ON jobs (agent_id) WHERE state IN ('ASSIGNED', 'RUNNING');
CREATE UNIQUE INDEX jobs_idempotency ON jobs (workspace_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_by_workspace_state ON jobs (workspace_id, state, id);
-- The claim: a workspace's queued jobs of one placement shape, best first. A claimer locks the
-- row it takes with FOR UPDATE SKIP LOCKED and walks on past rows another claimer holds.
CREATE INDEX jobs_claim_shapes ON jobs (workspace_id, labels, resources, priority DESC, created_at, id)
    WHERE state = 'QUEUED';

CREATE TABLE job_logs (
    job_id    TEXT NOT NULL,
    "offset"  BIGINT NOT NULL,
    data      BYTEA NOT NULL,
    PRIMARY KEY (job_id, "offset")
);

CREATE TABLE invitations (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    user_id       TEXT NOT NULL REFERENCES users(id),
    code_hash     TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,
    created_by    TEXT,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    redeemed_at   BIGINT,
    revoked_at    BIGINT
);
CREATE INDEX invitations_by_member ON invitations (workspace_id, user_id);

CREATE TABLE audit_events (
    seq           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    workspace_id  TEXT,
    at            BIGINT NOT NULL,
    actor         TEXT,
    action        TEXT NOT NULL,
    target        TEXT,
    result        TEXT NOT NULL,
    status        BIGINT NOT NULL,
    error_code    TEXT,
    request_id    TEXT NOT NULL,
    source        TEXT,
    method        TEXT NOT NULL,
    path          TEXT NOT NULL
);
CREATE INDEX audit_by_workspace ON audit_events (workspace_id, seq);
CREATE INDEX audit_by_action ON audit_events (workspace_id, action, seq);
CREATE INDEX audit_by_actor ON audit_events (workspace_id, actor, seq);

-- The audit log is append-only, for the API and for any code path that might forget.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit rows are append-only';
END;
$$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

CREATE TABLE usage_records (
    agent_id           TEXT NOT NULL,
    seq                BIGINT NOT NULL,
    workspace_id       TEXT NOT NULL,
    job_id             TEXT NOT NULL,
    gpu_model          TEXT NOT NULL DEFAULT '',
    recorded_at        BIGINT NOT NULL,
    cpu_micros         BIGINT NOT NULL,
    gpu_micros         BIGINT NOT NULL,
    gb_micros          BIGINT NOT NULL,
    rolled_up          BIGINT NOT NULL DEFAULT 0,
    gpu_memory_micros  BIGINT NOT NULL DEFAULT 0,
    gpu_util_micros    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, seq)
);
CREATE INDEX usage_records_open ON usage_records (workspace_id, recorded_at) WHERE rolled_up = 0;
CREATE INDEX usage_records_by_job ON usage_records (job_id);

CREATE TABLE usage_hourly (
    workspace_id       TEXT NOT NULL,
    hour_start         BIGINT NOT NULL,
    gpu_model          TEXT NOT NULL DEFAULT '',
    cpu_micros         BIGINT NOT NULL DEFAULT 0,
    gpu_micros         BIGINT NOT NULL DEFAULT 0,
    gb_micros          BIGINT NOT NULL DEFAULT 0,
    gpu_memory_micros  BIGINT NOT NULL DEFAULT 0,
    gpu_util_micros    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, hour_start, gpu_model)
);

CREATE TABLE meter_state (
    id            BIGINT PRIMARY KEY CHECK (id = 1),
    last_tick_at  BIGINT NOT NULL,
    next_tick_at  BIGINT NOT NULL
);

CREATE TABLE billing_state (
    workspace_id            TEXT PRIMARY KEY REFERENCES workspaces(id),
    soft_cap_usd            TEXT,
    hard_cap_usd            TEXT,
    requested_soft_cap_usd  TEXT,
    requested_hard_cap_usd  TEXT,
    limits_pending          BIGINT NOT NULL DEFAULT 0,
    limits_effective_at     BIGINT,
    hard_cap_reached        BIGINT NOT NULL DEFAULT 0,
    soft_cap_notified_month BIGINT,
    next_invoice_month      BIGINT
);

CREATE TABLE invoices (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    period_start  BIGINT NOT NULL,
    period_end    BIGINT NOT NULL,
    issued_at     BIGINT NOT NULL,
    body          TEXT NOT NULL,
    UNIQUE (workspace_id, period_start)
);

CREATE TABLE webhooks (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    url           TEXT NOT NULL,
    events        TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    deleted_at    BIGINT
);
CREATE INDEX webhooks_by_workspace ON webhooks (workspace_id, id) WHERE deleted_at IS NULL;

CREATE TABLE webhook_secrets (
    webhook_id  TEXT NOT NULL REFERENCES webhooks(id),
    secret      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT
);
CREATE INDEX webhook_secrets_by_hook ON webhook_secrets (webhook_id);

CREATE TABLE webhook_events (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL,
    type          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    body          BYTEA NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    webhook_id       TEXT NOT NULL REFERENCES webhooks(id),
    event_id         TEXT NOT NULL REFERENCES webhook_events(id),
    ordering_key     TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts         BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    next_attempt_at  BIGINT NOT NULL,
    completed_at     BIGINT
);
CREATE INDEX webhook_deliveries_heads ON webhook_deliveries (webhook_id, ordering_key, id) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';

CREATE TABLE webhook_attempts (
    id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    delivery_id   BIGINT NOT NULL REFERENCES webhook_deliveries(id),
    webhook_id    TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    attempted_at  BIGINT NOT NULL,
    status_code   BIGINT,
    latency_ms    BIGINT NOT NULL,
    error         TEXT
);
CREATE INDEX webhook_attempts_by_hook ON webhook_attempts (webhook_id, id);

CREATE TABLE job_attempts (
    job_id                 TEXT NOT NULL REFERENCES jobs(id),
    epoch                  BIGINT NOT NULL,
    workspace_id           TEXT NOT NULL,
    agent_id               TEXT NOT NULL,
    assigned_at            BIGINT NOT NULL,
    started_at             BIGINT,
    finished_at            BIGINT,
    state                  TEXT NOT NULL,
    exit_code              BIGINT,
    reason                 TEXT,
    cpu_seconds            DOUBLE PRECISION NOT NULL DEFAULT 0,
    gpu_seconds            DOUBLE PRECISION NOT NULL DEFAULT 0,
    gb_seconds             DOUBLE PRECISION NOT NULL DEFAULT 0,
    gpu_memory_gb_seconds  DOUBLE PRECISION,
    gpu_util_seconds       DOUBLE PRECISION,
    gpu_model              TEXT,
    PRIMARY KEY (job_id, epoch)
);

CREATE TABLE price_versions (
    id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    effective_at  BIGINT NOT NULL UNIQUE,
    recorded_at   BIGINT NOT NULL,
    body          TEXT NOT NULL
);

CREATE TABLE auth_failures (
    minute        BIGINT NOT NULL,
    source        TEXT NOT NULL,
    workspace_id  TEXT NOT NULL DEFAULT '',
    failures      BIGINT NOT NULL,
    PRIMARY KEY (minute, source, workspace_id)
);
