-- When the agent holding an ASSIGNED job first listed it in a heartbeat (NULL until then). A job
-- its agent has confirmed is being started: its `started` event may still sit behind a backlog
-- in the agent's spool, and the assignment lease must not hand it to a second agent meanwhile.
ALTER TABLE jobs ADD COLUMN assignment_confirmed_at INTEGER;
