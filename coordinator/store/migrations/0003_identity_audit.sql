-- Identity (token lineage, invitations) and the append-only audit log.

-- Refresh tokens rotate within a family; access tokens point at what minted them (a PAT or a
-- refresh family), so revoking the parent revokes what it minted.
ALTER TABLE tokens ADD COLUMN family_id TEXT;
ALTER TABLE tokens ADD COLUMN parent_id TEXT;
ALTER TABLE tokens ADD COLUMN created_by TEXT;
CREATE INDEX tokens_by_workspace ON tokens (workspace_id, kind, id);
CREATE INDEX tokens_by_family ON tokens (family_id) WHERE family_id IS NOT NULL;
CREATE INDEX tokens_by_parent ON tokens (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX memberships_by_user ON memberships (user_id, workspace_id);

CREATE TABLE invitations (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    user_id       TEXT NOT NULL REFERENCES users(id),
    code_hash     TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL,
    created_by    TEXT,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    redeemed_at   INTEGER,
    revoked_at    INTEGER
);
CREATE INDEX invitations_by_member ON invitations (workspace_id, user_id);

CREATE TABLE audit_events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    workspace_id  TEXT,
    at            INTEGER NOT NULL,
    actor         TEXT,
    action        TEXT NOT NULL,
    target        TEXT,
    result        TEXT NOT NULL,
    status        INTEGER NOT NULL,
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
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit rows are append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit rows are append-only');
END;
