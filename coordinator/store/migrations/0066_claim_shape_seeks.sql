-- The claim's placement shapes by seeks, not by a walk of the queue (issue 15).
--
-- A claim lists the distinct shapes (selector, resources, submitter, array) of its workspace's
-- QUEUED jobs. A DISTINCT over the four columns of jobs_claim_shapes read every queued entry
-- (SQLite skips ahead only with ANALYZE statistics, which the coordinator never gathers): 14 ms
-- at 10,000 queued jobs. The claim now seeks from one shape to the next (a recursive query: one
-- seek per shape, however many jobs each holds), which needs the shape as one key it can compare
-- with '>': the four columns joined by a newline, a character none of them ever holds (JSON text
-- escapes it; the others are ids), the nullable ones as ''. The best job of a shape is then an
-- equality on that key, and the index is read in its order (priority, then age).
DROP INDEX IF EXISTS jobs_claim_shapes;
CREATE INDEX jobs_claim_shapes ON jobs (
    workspace_id,
    (labels || char(10) || COALESCE(resources, '') || char(10) || COALESCE(submitted_by, '') || char(10) || COALESCE(array_id, '')),
    priority DESC, created_at, id)
    WHERE state = 'QUEUED';
