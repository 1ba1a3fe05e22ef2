-- Indexes that fit the list, filter and count queries of a store with millions of jobs (issue 15).
-- The plans are checked by tests/test_query_plans.py; the figures are in docs/performance.md.

-- /metrics counts jobs by state: one seek per state into this index, never the table.
CREATE INDEX jobs_by_state ON jobs (state);

-- label=key=value filters: one row per (job, label), walked newest job first. Kept by triggers,
-- so every path that inserts a job (one, an array, a restore) is covered without its knowing.
-- A job's labels never change after it is submitted.
CREATE TABLE job_labels (
    workspace_id  TEXT NOT NULL,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    job_id        TEXT NOT NULL,
    PRIMARY KEY (workspace_id, key, value, job_id)
) WITHOUT ROWID;

INSERT INTO job_labels (workspace_id, key, value, job_id)
    SELECT jobs.workspace_id, label.key, label.value, jobs.id FROM jobs, json_each(jobs.labels) AS label;

CREATE TRIGGER jobs_labels_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO job_labels (workspace_id, key, value, job_id)
        SELECT NEW.workspace_id, label.key, label.value, NEW.id FROM json_each(NEW.labels) AS label;
END;

CREATE TRIGGER jobs_labels_delete AFTER DELETE ON jobs BEGIN
    DELETE FROM job_labels WHERE workspace_id = OLD.workspace_id AND job_id = OLD.id
        AND key IN (SELECT label.key FROM json_each(OLD.labels) AS label);
END;
