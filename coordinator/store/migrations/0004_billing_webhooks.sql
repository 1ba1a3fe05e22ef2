-- Usage ledger and hourly roll-ups, billing limits and invoices, webhooks and their outbox.
-- Usage quantities are integer micro-units (1e-6 CPU-second, GPU-second, GB-second) so that
-- sums in SQL are exact and a window's sum equals the sum of the jobs' own figures.

CREATE TABLE usage_records (
    agent_id      TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    workspace_id  TEXT NOT NULL,
    job_id        TEXT NOT NULL,
    gpu_model     TEXT NOT NULL DEFAULT '',
    recorded_at   INTEGER NOT NULL,
    cpu_micros    INTEGER NOT NULL,
    gpu_micros    INTEGER NOT NULL,
    gb_micros     INTEGER NOT NULL,
    rolled_up     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, seq)
);
CREATE INDEX usage_records_open ON usage_records (workspace_id, recorded_at) WHERE rolled_up = 0;
CREATE INDEX usage_records_by_job ON usage_records (job_id);

CREATE TABLE usage_hourly (
    workspace_id  TEXT NOT NULL,
    hour_start    INTEGER NOT NULL,
    gpu_model     TEXT NOT NULL DEFAULT '',
    cpu_micros    INTEGER NOT NULL DEFAULT 0,
    gpu_micros    INTEGER NOT NULL DEFAULT 0,
    gb_micros     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, hour_start, gpu_model)
) WITHOUT ROWID;

CREATE TABLE meter_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_tick_at  INTEGER NOT NULL,
    next_tick_at  INTEGER NOT NULL
);

-- Caps are decimal strings (exact); NULL means no cap. requested_* is the latest PATCH,
-- copied to soft_cap_usd / hard_cap_usd by the next meter tick.
CREATE TABLE billing_state (
    workspace_id            TEXT PRIMARY KEY REFERENCES workspaces(id),
    soft_cap_usd            TEXT,
    hard_cap_usd            TEXT,
    requested_soft_cap_usd  TEXT,
    requested_hard_cap_usd  TEXT,
    limits_pending          INTEGER NOT NULL DEFAULT 0,
    limits_effective_at     INTEGER,
    hard_cap_reached        INTEGER NOT NULL DEFAULT 0,
    soft_cap_notified_month INTEGER,
    next_invoice_month      INTEGER
);

CREATE TABLE invoices (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    period_start  INTEGER NOT NULL,
    period_end    INTEGER NOT NULL,
    issued_at     INTEGER NOT NULL,
    body          TEXT NOT NULL,
    UNIQUE (workspace_id, period_start)
);

CREATE TABLE webhooks (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    url           TEXT NOT NULL,
    events        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    deleted_at    INTEGER
);
CREATE INDEX webhooks_by_workspace ON webhooks (workspace_id, id) WHERE deleted_at IS NULL;

-- Signing secrets must be usable for HMAC, so they are kept as issued (not hashed).
-- A rotated-out secret gets expires_at and keeps signing until then.
CREATE TABLE webhook_secrets (
    webhook_id  TEXT NOT NULL REFERENCES webhooks(id),
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER
);
CREATE INDEX webhook_secrets_by_hook ON webhook_secrets (webhook_id);

CREATE TABLE webhook_events (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL,
    type          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    body          BLOB NOT NULL
);

-- The outbox: one row per (event, webhook). ordering_key (the job id) keeps deliveries of
-- one job to one endpoint in order: only the oldest pending row of a key is ever sent.
CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id       TEXT NOT NULL REFERENCES webhooks(id),
    event_id         TEXT NOT NULL REFERENCES webhook_events(id),
    ordering_key     TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    completed_at     INTEGER
);
CREATE INDEX webhook_deliveries_heads ON webhook_deliveries (webhook_id, ordering_key, id) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';

CREATE TABLE webhook_attempts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id   INTEGER NOT NULL REFERENCES webhook_deliveries(id),
    webhook_id    TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    attempted_at  INTEGER NOT NULL,
    status_code   INTEGER,
    latency_ms    INTEGER NOT NULL,
    error         TEXT
);
CREATE INDEX webhook_attempts_by_hook ON webhook_attempts (webhook_id, id);
