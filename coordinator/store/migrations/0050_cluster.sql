-- Several coordinator replicas on one database (issue 14).

-- A named lease (today one: 'cluster', held by the replica that runs liveness, the meter
-- tick and invoices). Taken and renewed by compare-and-set; every takeover by another holder
-- increments token, and the leader's writes check the token in their own transaction, so a
-- deposed leader's late write is refused (fencing).
CREATE TABLE leader_leases (
    name         TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    token        INTEGER NOT NULL,
    acquired_at  INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);

-- Replicas announce themselves every few seconds: how many are alive sets each one's share
-- of the workspace rate limits.
CREATE TABLE replicas (
    id          TEXT PRIMARY KEY,
    started_at  INTEGER NOT NULL,
    seen_at     INTEGER NOT NULL
);
CREATE INDEX replicas_seen ON replicas (seen_at);

-- One row once the first owner and workspace exist: replicas starting at once on an empty
-- database race to insert it, and only the winner bootstraps.
CREATE TABLE cluster_bootstrap (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    done_at  INTEGER NOT NULL
);
INSERT INTO cluster_bootstrap (id, done_at) SELECT 1, MIN(created_at) FROM users HAVING COUNT(*) > 0;
