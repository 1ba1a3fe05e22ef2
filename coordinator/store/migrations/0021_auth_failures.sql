-- Failed authentication, counted per client address and minute (issue 11): one row per
-- address, minute and workspace (the one a recognised but dead token belongs to; '' when no
-- token was recognised), instead of one audit row per request. Numbered 0021 to stay clear of
-- migrations other branches add.
CREATE TABLE auth_failures (
    minute        INTEGER NOT NULL,  -- epoch ms at the start of the minute
    source        TEXT NOT NULL,
    workspace_id  TEXT NOT NULL DEFAULT '',
    failures      INTEGER NOT NULL,
    PRIMARY KEY (minute, source, workspace_id)
) WITHOUT ROWID;
