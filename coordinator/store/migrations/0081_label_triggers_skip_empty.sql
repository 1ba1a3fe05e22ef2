-- A job without labels (stored as '{}') has no job_labels rows to keep: its insert and delete
-- triggers are not run at all. The same rows as before; a submission saves the trigger's call.
DROP TRIGGER jobs_labels_insert;
CREATE TRIGGER jobs_labels_insert AFTER INSERT ON jobs WHEN NEW.labels <> '{}' BEGIN
    INSERT INTO job_labels (workspace_id, key, value, job_id)
        SELECT NEW.workspace_id, label.key, label.value, NEW.id FROM json_each(NEW.labels) AS label;
END;

DROP TRIGGER jobs_labels_delete;
CREATE TRIGGER jobs_labels_delete AFTER DELETE ON jobs WHEN OLD.labels <> '{}' BEGIN
    DELETE FROM job_labels WHERE workspace_id = OLD.workspace_id AND job_id = OLD.id
        AND key IN (SELECT label.key FROM json_each(OLD.labels) AS label);
END;
