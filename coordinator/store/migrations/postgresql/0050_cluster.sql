-- Several coordinator replicas on one database (issue 14); see the SQLite 0050 for the why.

CREATE TABLE leader_leases (
    name         TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    token        BIGINT NOT NULL,
    acquired_at  BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);

CREATE TABLE replicas (
    id          TEXT PRIMARY KEY,
    started_at  BIGINT NOT NULL,
    seen_at     BIGINT NOT NULL
);
CREATE INDEX replicas_seen ON replicas (seen_at);

CREATE TABLE cluster_bootstrap (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    done_at  BIGINT NOT NULL
);
INSERT INTO cluster_bootstrap (id, done_at) SELECT 1, MIN(created_at) FROM users HAVING COUNT(*) > 0;
