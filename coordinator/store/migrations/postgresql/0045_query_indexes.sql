-- Indexes that fit the list, filter and count queries (issue 15); see the SQLite 0045 for the why.

CREATE INDEX jobs_by_state ON jobs (state);

CREATE TABLE job_labels (
    workspace_id  TEXT NOT NULL,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    job_id        TEXT NOT NULL,
    PRIMARY KEY (workspace_id, key, value, job_id)
);

INSERT INTO job_labels (workspace_id, key, value, job_id)
    SELECT jobs.workspace_id, label.key, label.value, jobs.id
    FROM jobs, jsonb_each_text(jobs.labels::jsonb) AS label;

CREATE FUNCTION jobs_labels_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_labels (workspace_id, key, value, job_id)
        SELECT NEW.workspace_id, label.key, label.value, NEW.id FROM jsonb_each_text(NEW.labels::jsonb) AS label;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_labels_insert AFTER INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION jobs_labels_insert();

CREATE FUNCTION jobs_labels_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_labels WHERE workspace_id = OLD.workspace_id AND job_id = OLD.id
        AND key IN (SELECT label.key FROM jsonb_each_text(OLD.labels::jsonb) AS label);
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_labels_delete AFTER DELETE ON jobs FOR EACH ROW EXECUTE FUNCTION jobs_labels_delete();
